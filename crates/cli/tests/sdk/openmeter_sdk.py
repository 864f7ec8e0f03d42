"""OpenMeter's own Python SDK (`openmeter` on PyPI), unchanged, against `tally serve`.

Run by crates/cli/tests/serve.rs (`the_openmeter_python_sdk_works_unchanged`) with the
server's URL and a bearer token:

    python openmeter_sdk.py http://127.0.0.1:PORT TOKEN

Creates a meter of every aggregation, ingests batches the three ways the SDK can
(one event, a CloudEvents batch, a JSON array), retries one, and checks every query
against a brute force over the same events computed here with exact decimals: windows
in UTC and Asia/Kolkata, group-by, filters (the SDK's GET and POST forms and the
advanced ones), subjects, group-by values, CSV, the meter's update and delete, the
event list and a refused event. Exits non-zero with the first mismatch.
"""

import csv
import datetime as dt
import io
import sys
from collections import defaultdict
from decimal import Decimal
from zoneinfo import ZoneInfo

from corehttp.exceptions import HttpResponseError
from openmeter import Client
from openmeter.models import Event, MeterCreate, MeterQueryRequest, MeterUpdate

URL, TOKEN = sys.argv[1], sys.argv[2]
UTC = dt.timezone.utc
KOLKATA = ZoneInfo("Asia/Kolkata")
client = Client(endpoint=URL, token=TOKEN)
checks = 0


def check(what, got, want):
    global checks
    checks += 1
    if got != want:
        sys.exit(f"FAILED {what}:\n  got  {got!r}\n  want {want!r}")


def close(a, b):
    return abs(Decimal(str(a)) - Decimal(b)) <= Decimal("1e-9") * max(1, abs(Decimal(b)))


# The events: 240 prompts 7 minutes apart from 2026-03-02 00:00Z (28 hours: a UTC day
# boundary and a Kolkata one inside), three subjects, two models, two kinds, values
# with fractions, eleven users.
BASE = dt.datetime(2026, 3, 2, tzinfo=UTC)
MODELS = ["gpt-4o", "claude"]
KINDS = ["input", "output"]
prompts = []
for i in range(240):
    prompts.append(
        {
            "id": f"p-{i}",
            "time": BASE + dt.timedelta(minutes=7 * i),
            "subject": f"c{i % 3}",
            "model": MODELS[(i // 3) % 2],
            "kind": KINDS[(i // 5) % 2],
            "tokens": Decimal(i * 3 % 17) + Decimal("0.25") * (i % 4),
            "user": f"u{i % 11}",
        }
    )


def event(p):
    return Event(
        id=p["id"],
        source="sdk-test",
        specversion="1.0",
        type="prompt",
        subject=p["subject"],
        time=p["time"],
        data={
            "tokens": float(p["tokens"]),
            "model": p["model"],
            "kind": p["kind"],
            "user": p["user"],
        },
    )


# 1. Meters of every aggregation (TIME_WEIGHTED is Tally's own).
meters = {
    "tokens_total": ("SUM", "$.tokens"),
    "prompts": ("COUNT", None),
    "users": ("UNIQUE_COUNT", "$.user"),
    "tokens_avg": ("AVG", "$.tokens"),
    "tokens_min": ("MIN", "$.tokens"),
    "tokens_max": ("MAX", "$.tokens"),
    "tokens_latest": ("LATEST", "$.tokens"),
}
for slug, (agg, value) in meters.items():
    m = client.meters.create(
        MeterCreate(
            slug=slug,
            aggregation=agg,
            event_type="prompt",
            value_property=value,
            group_by={"model": "$.model", "kind": "$.kind"},
        )
    )
    check(f"created {slug}", (m.slug, m.aggregation, m.event_type), (slug, agg, "prompt"))
    check(f"{slug} has an id and times", bool(m.id and m.created_at and m.updated_at), True)
client.meters.create(
    MeterCreate(slug="seats", aggregation="TIME_WEIGHTED", event_type="seats", value_property="$.seats")
)
listed = client.meters.list()
check("meters listed", sorted(m.slug for m in listed), sorted([*meters, "seats"]))
check("a meter by slug", client.meters.get("users").aggregation, "UNIQUE_COUNT")

# 2. Ingest: one event, CloudEvents batches, a JSON array; a batch retried (as after
#    a timeout) is counted once.
client.events.ingest_event(event(prompts[0]))
for start in range(1, 200, 50):
    client.events.ingest_events([event(p) for p in prompts[start : start + 50]])
client.events.ingest_events([event(p) for p in prompts[1:51]])  # the retry
client.events.ingest_events_json([event(p).as_dict() for p in prompts[200:]])
client.events.ingest_events_json([event(p).as_dict() for p in prompts[200:]])  # again
gauge = [
    ("c0", dt.datetime(2026, 3, 2, 0, 0, tzinfo=UTC), 2),
    ("c0", dt.datetime(2026, 3, 2, 0, 30, tzinfo=UTC), 5),
    ("c0", dt.datetime(2026, 3, 2, 1, 45, tzinfo=UTC), 1),
    ("c1", dt.datetime(2026, 3, 2, 0, 15, tzinfo=UTC), 4),
]
client.events.ingest_events(
    [
        Event(id=f"s-{n}", source="sdk-test", specversion="1.0", type="seats", subject=s, time=t, data={"seats": v})
        for n, (s, t, v) in enumerate(gauge)
    ]
)

# 3. A refused event: the value a meter of its type reads is missing (400, nothing stored).
try:
    bad = event(prompts[0])
    bad.id, bad.data = "bad-1", {"model": "gpt-4o", "kind": "input", "user": "u1"}
    client.events.ingest_events([event({**prompts[0], "id": "good-1"}), bad])
    sys.exit("FAILED: an event without tokens was accepted")
except HttpResponseError as e:
    check("a batch with an unreadable event is refused", e.status_code, 400)


# The brute force.
def window_start(t, size, zone):
    local = t.astimezone(zone)
    if size == "HOUR":
        local = local.replace(minute=0, second=0, microsecond=0)
    elif size == "DAY":
        local = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return local.astimezone(UTC)


def brute(agg, frm, to, size=None, zone=UTC, group=(), keep=lambda p: True):
    rows = defaultdict(list)
    for p in prompts:
        if frm <= p["time"] < to and keep(p):
            w = window_start(p["time"], size, zone) if size else frm
            rows[(w, *(p[g] for g in group))].append(p)
    out = {}
    for key, ps in rows.items():
        vals = [p["tokens"] for p in ps]
        if agg == "SUM":
            v = sum(vals)
        elif agg == "COUNT":
            v = Decimal(len(ps))
        elif agg == "UNIQUE_COUNT":
            v = Decimal(len({p["user"] for p in ps}))
        elif agg == "AVG":
            v = sum(vals) / len(vals)
        elif agg == "MIN":
            v = min(vals)
        elif agg == "MAX":
            v = max(vals)
        elif agg == "LATEST":
            v = max(ps, key=lambda p: p["time"])["tokens"]
        out[key] = v
    return out


def got(result, group=()):
    out = {}
    for r in result.data:
        key = (r.window_start.astimezone(UTC), *((r.subject if g == "subject" else r.group_by.get(g)) for g in group))
        out[key] = r.value
    return out


def same(what, result, want, group=()):
    g = got(result, group)
    check(f"{what}: rows", sorted(g), sorted(want))
    for k, v in want.items():
        if not close(g[k], v):
            check(f"{what}: {k}", g[k], str(v))


# 4. Every aggregation, whole range per subject, and by day in two zones.
FROM, TO = BASE, BASE + dt.timedelta(days=2)
for slug, (agg, _) in meters.items():
    r = client.meters.query_json(slug, from_parameter=FROM, to=TO, group_by=["subject"])
    same(f"{slug} per subject", r, brute(agg, FROM, TO, group=("subject",)), ("subject",))
    for zone_name, zone in [("UTC", UTC), ("Asia/Kolkata", KOLKATA)]:
        # Whole days of the zone, so no window is cut by the range.
        frm = dt.datetime(2026, 3, 2, tzinfo=zone).astimezone(UTC)
        to = dt.datetime(2026, 3, 4, tzinfo=zone).astimezone(UTC)
        r = client.meters.query_json(
            slug, from_parameter=frm, to=to, window_size="DAY", window_time_zone=zone_name, group_by=["model"]
        )
        same(f"{slug} by {zone_name} day and model", r, brute(agg, frm, to, "DAY", zone, ("model",)), ("model",))
    check(f"{slug}: the window size is echoed", r.window_size, "DAY")

# 5. Filters: the GET form (the SDK sends a Python dict), POST, advanced.
frm, to = BASE, BASE + dt.timedelta(hours=6)
r = client.meters.query_json(
    "tokens_total", from_parameter=frm, to=to, window_size="HOUR", subject=["c1", "c2"],
    filter_group_by={"model": "gpt-4o"}, group_by=["kind"],
)
same(
    "GET filterGroupBy, subjects, HOUR",
    r,
    brute("SUM", frm, to, "HOUR", UTC, ("kind",), lambda p: p["model"] == "gpt-4o" and p["subject"] != "c0"),
    ("kind",),
)
kf = dt.datetime(2026, 3, 2, tzinfo=KOLKATA).astimezone(UTC)
same(
    "POST query, Kolkata days",
    client.meters.query(
        "users",
        MeterQueryRequest(
            from_property=kf, to=kf + dt.timedelta(days=2), window_size="DAY", window_time_zone="Asia/Kolkata",
            filter_group_by={"kind": ["input"]}, group_by=["model", "subject"],
        ),
    ),
    brute("UNIQUE_COUNT", kf, kf + dt.timedelta(days=2), "DAY", KOLKATA, ("model", "subject"), lambda p: p["kind"] == "input"),
    ("model", "subject"),
)
r = client.meters.query_json(
    "prompts", from_parameter=FROM, to=TO, group_by=["model"],
    advanced_meter_group_by_filters={"kind": {"$ne": "output"}, "model": {"$in": ["gpt-4o", "claude"]}},
)
same("advanced filters", r, brute("COUNT", FROM, TO, group=("model",), keep=lambda p: p["kind"] != "output"), ("model",))

# 6. CSV.
text = client.meters.query_csv("prompts", from_parameter=FROM, to=TO, window_size="DAY", group_by=["model"])
rows = list(csv.DictReader(io.StringIO(text)))
want = brute("COUNT", FROM, TO, "DAY", UTC, ("model",))
check("CSV columns", list(rows[0].keys()), ["window_start", "window_end", "subject", "model", "value"])
check(
    "CSV rows",
    sorted((dt.datetime.fromisoformat(r["window_start"].replace("Z", "+00:00")).astimezone(UTC), r["model"], Decimal(r["value"])) for r in rows),
    sorted((k[0], k[1], v) for k, v in want.items()),
)

# 7. The gauge: value-hours per hour, clipped at the window edges.
r = client.meters.query_json(
    "seats", from_parameter=BASE, to=BASE + dt.timedelta(hours=2), window_size="HOUR", group_by=["subject"]
)
same(
    "TIME_WEIGHTED per hour",
    r,
    {
        (BASE, "c0"): Decimal("3.5"),  # 2 for 30 min, 5 for 30 min
        (BASE + dt.timedelta(hours=1), "c0"): Decimal("4"),  # 5 for 45 min, 1 for 15 min
        (BASE, "c1"): Decimal("3"),  # 4 from 00:15
        (BASE + dt.timedelta(hours=1), "c1"): Decimal("4"),
    },
    ("subject",),
)

# 8. Subjects and group-by values.
check("subjects", sorted(client.meters.list_subjects("tokens_total")), ["c0", "c1", "c2"])
check("group-by values", sorted(client.meters.list_group_by_values("tokens_total", "model")), ["claude", "gpt-4o"])
check(
    "group-by values within a range",
    client.meters.list_group_by_values("tokens_total", "kind", from_parameter=BASE, to=BASE + dt.timedelta(minutes=30)),
    ["input"],
)

# 9. The event list: newest first, within the range, by subject.
listed = client.events.list(subject="c1", from_parameter=BASE, to=BASE + dt.timedelta(days=2), limit=5)
newest = sorted((p for p in prompts if p["subject"] == "c1"), key=lambda p: p["time"], reverse=True)[:5]
check("events listed", [(e.event.subject, e.event.time, e.event.data["model"]) for e in listed],
      [(p["subject"], p["time"], p["model"]) for p in newest])

# 10. Update (name, description) and delete.
m = client.meters.update("users", MeterUpdate(name="Active users", description="distinct users a period"))
check("updated", (m.name, m.description, m.aggregation), ("Active users", "distinct users a period", "UNIQUE_COUNT"))
check("the update is kept", client.meters.get("users").name, "Active users")
client.meters.delete("tokens_latest")
try:
    client.meters.get("tokens_latest")
    sys.exit("FAILED: a deleted meter is still served")
except HttpResponseError as e:
    check("a deleted meter is 404", e.status_code, 404)

print(f"openmeter SDK: {checks} checks passed")
