//! The `tally` binary end to end, against a real database.

use rust_decimal::Decimal;
use tally_testdb::TestDb;

mod common;

use common::{json, tally};

#[tokio::test]
async fn import_then_verify_shows_exact_totals() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.csv");
    // 3 000 rows; quantities 0.000000000001 × i computed here, independently of Tally.
    let mut text = String::from("event_id,customer_id,service,quantity,recorded_at,metadata\n");
    let mut total = Decimal::ZERO;
    for i in 1..=3000u32 {
        let q = Decimal::new(i64::from(i), 12);
        total += q;
        text.push_str(&format!(
            ",cust-{},{},{},2026-11-{:02}T{:02}:{:02}:00Z,\"{{\"\"i\"\":{i}}}\"\n",
            i % 17,
            ["api", "storage", "bandwidth"][(i % 3) as usize],
            q,
            1 + i % 28,
            i % 24,
            i % 60
        ));
    }
    std::fs::write(&path, text).unwrap();
    let file = path.to_str().unwrap();
    let imported = json(&tally(&db, &["import", file, "--format", "json"]));
    assert_eq!(
        imported,
        serde_json::json!({"inserted": 3000, "duplicates": 0, "rejected": 0, "errors": []})
    );
    let again = json(&tally(
        &db,
        &["import", "--input", "csv", "--format", "json", file],
    ));
    assert_eq!(again["duplicates"], 3000);
    let v = json(&tally(&db, &["verify", "--format", "json"]));
    assert_eq!(v["events"], 3000);
    assert_eq!(v["mismatches"], 0);
    assert_eq!(
        v["quantity"].as_str().unwrap().parse::<Decimal>().unwrap(),
        total
    );
}

#[tokio::test]
async fn bad_input_names_the_field_exits_2_and_writes_nothing() {
    let db = TestDb::new().await.unwrap();
    for (args, needle) in [
        (
            &[
                "record",
                "--customer",
                "a b",
                "--service",
                "api",
                "--quantity",
                "1",
            ][..],
            "customer_id \"a b\"",
        ),
        (
            &[
                "record",
                "--customer",
                "a",
                "--service",
                "apis",
                "--quantity",
                "1",
            ],
            "service \"apis\"",
        ),
        (
            &[
                "record",
                "--customer",
                "a",
                "--service",
                "api",
                "--quantity",
                "-1",
            ],
            "quantity \"-1\"",
        ),
        (
            &[
                "record",
                "--customer",
                "a",
                "--service",
                "api",
                "--quantity",
                "1",
                "--at",
                "2026-01-01T00:00:00",
            ],
            "at \"2026-01-01T00:00:00\"",
        ),
        (
            &[
                "record",
                "--customer",
                "a",
                "--service",
                "api",
                "--quantity",
                "1",
                "--metadata",
                "[1]",
            ],
            "metadata \"[1]\"",
        ),
        (&["import", "--format", "xml", "x.csv"], "--format \"xml\""),
    ] {
        let out = tally(&db, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let v = json(&tally(&db, &["verify", "--format", "json"]));
    assert_eq!(v["events"], 0);
}

#[tokio::test]
async fn record_and_track_write_exactly_once() {
    let db = TestDb::new().await.unwrap();
    let id = "0195f000-0000-7000-8000-0000000000aa";
    let args = [
        "record",
        "--customer",
        "acme",
        "--service",
        "api",
        "--quantity",
        "2",
        "--event-id",
        id,
        "--format",
        "json",
    ];
    assert_eq!(json(&tally(&db, &args))["inserted"], true);
    assert_eq!(json(&tally(&db, &args))["inserted"], false);
    let t = json(&tally(
        &db,
        &[
            "track",
            "bandwidth",
            "--customer",
            "acme",
            "--bytes",
            "100",
            "--format",
            "json",
        ],
    ));
    assert_eq!(t["quantity"], "0.000000093132257");
    let v = json(&tally(&db, &["verify", "--format", "json"]));
    assert_eq!(v["events"], 2);
    assert_eq!(v["quantity"], "2.000000093132257");
}

fn keys(v: &serde_json::Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

fn assert_has(v: &serde_json::Value, want: &[&str]) {
    let have = keys(v);
    for k in want {
        assert!(have.contains(k), "missing {k:?} in {v}");
    }
}

fn is_decimal_string(v: &serde_json::Value) -> bool {
    v.as_str().is_some_and(|s| s.parse::<Decimal>().is_ok())
}

fn is_utc_time(v: &serde_json::Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.ends_with('Z') && tally::chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

#[tokio::test]
async fn read_commands_print_the_spec_json_shapes() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.ndjson");
    let today = tally::chrono::Utc::now().date_naive();
    let mut lines = String::new();
    for (i, days_ago) in [1i64, 1, 2, 3].iter().enumerate() {
        let day = today - tally::chrono::Duration::days(*days_ago);
        lines.push_str(&format!(
            "{{\"customer_id\":\"acme\",\"service\":\"api\",\"quantity\":\"{}\",\"recorded_at\":\"{day}T0{i}:30:00Z\"}}\n",
            (i + 1) * 100
        ));
    }
    std::fs::write(&path, lines).unwrap();
    json(&tally(
        &db,
        &["import", path.to_str().unwrap(), "--format", "json"],
    ));
    let from = (today - tally::chrono::Duration::days(5)).to_string();
    let to = (today + tally::chrono::Duration::days(1)).to_string();

    let r = json(&tally(
        &db,
        &[
            "report",
            "--customer",
            "acme",
            "--from",
            &from,
            "--to",
            &to,
            "--format",
            "json",
        ],
    ));
    assert_has(
        &r,
        &["customer_id", "from", "to", "services", "total_amount"],
    );
    assert!(
        is_utc_time(&r["from"]) && is_utc_time(&r["to"]) && is_decimal_string(&r["total_amount"])
    );
    let api = r["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "api")
        .unwrap();
    assert_has(
        api,
        &[
            "service",
            "unit",
            "quantity",
            "events",
            "unit_price",
            "amount",
        ],
    );
    assert_eq!(
        (
            api["quantity"].as_str(),
            api["events"].as_i64(),
            api["amount"].as_str()
        ),
        (Some("1000"), Some(4), Some("0.10"))
    );

    let a = json(&tally(
        &db,
        &[
            "aggregate",
            "--period",
            "daily",
            "--customer",
            "acme",
            "--from",
            &from,
            "--to",
            &to,
            "--format",
            "json",
        ],
    ));
    assert_has(&a, &["period", "tz", "buckets"]);
    let b = &a["buckets"][0];
    assert_has(
        b,
        &[
            "bucket",
            "customer_id",
            "service",
            "events",
            "quantity",
            "min",
            "max",
            "avg",
        ],
    );
    assert!(
        is_utc_time(&b["bucket"])
            && ["quantity", "min", "max", "avg"]
                .iter()
                .all(|k| is_decimal_string(&b[*k]))
    );

    for over in ["events", "hour", "day"] {
        let s = json(&tally(
            &db,
            &[
                "stats",
                "--customer",
                "acme",
                "--service",
                "api",
                "--days",
                "7",
                "--over",
                over,
                "--format",
                "json",
            ],
        ));
        assert_has(
            &s,
            &[
                "customer_id",
                "service",
                "over",
                "count",
                "total",
                "avg",
                "min",
                "max",
                "median",
                "p95",
                "p99",
            ],
        );
        assert_eq!(s["over"], over);
        assert_eq!(s["total"], "1000", "{over}");
        assert!(
            ["total", "avg", "min", "max", "median", "p95", "p99"]
                .iter()
                .all(|k| is_decimal_string(&s[*k]))
        );
    }

    let t = json(&tally(
        &db,
        &[
            "trends",
            "--customer",
            "acme",
            "--service",
            "api",
            "--days",
            "4",
            "--format",
            "json",
        ],
    ));
    let days = t["days"].as_array().unwrap();
    assert_eq!(days.len(), 4);
    assert_has(
        &days[0],
        &["date", "service", "total", "previous", "change_pct"],
    );
    assert_eq!(days[0]["change_pct"], serde_json::Value::Null);

    let p = json(&tally(
        &db,
        &[
            "peaks",
            "--customer",
            "acme",
            "--service",
            "api",
            "--by",
            "day",
            "--limit",
            "2",
            "--format",
            "json",
        ],
    ));
    let peaks = p["peaks"].as_array().unwrap();
    assert_eq!(peaks.len(), 2);
    assert_has(&peaks[0], &["bucket", "service", "total", "events"]);
    assert_eq!(peaks[0]["total"], "400"); // 3 days ago; the day before yesterday and yesterday have 300 each

    let period = format!(
        "{}",
        (today - tally::chrono::Duration::days(1)).format("%Y-%m")
    );
    let i = json(&tally(
        &db,
        &[
            "invoice",
            "--customer",
            "acme",
            "--period",
            &period,
            "--format",
            "json",
        ],
    ));
    assert_has(
        &i,
        &[
            "customer_id",
            "period_start",
            "period_end",
            "lines",
            "total",
        ],
    );
    assert_has(
        &i["lines"][0],
        &["service", "quantity", "billable_quantity", "amount"],
    );

    let csv = tally(
        &db,
        &[
            "report",
            "--customer",
            "acme",
            "--from",
            &from,
            "--to",
            &to,
            "--format",
            "csv",
        ],
    );
    let text = String::from_utf8(csv.stdout).unwrap();
    assert!(
        text.starts_with("service,unit,quantity,events,unit_price,amount\n"),
        "{text}"
    );
    assert_eq!(text.matches("service,unit").count(), 1, "one header row");
}

#[tokio::test]
async fn a_price_book_file_is_validated_at_the_edge() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prices.json");
    std::fs::write(&path, r#"{"services":{"api":[{"effective_from":"2020-01-01T00:00:00Z","model":"graduated","tiers":[{"up_to":"100","unit_price":"1"},{"up_to":"50","unit_price":"1"},{"unit_price":"1"}]}]}}"#).unwrap();
    let out = tally(
        &db,
        &[
            "invoice",
            "--customer",
            "acme",
            "--period",
            "2026-11",
            "--prices",
            path.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("up_to"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tally(
        &db,
        &["invoice", "--customer", "acme", "--period", "2026-13"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("period \"2026-13\""));
}

#[tokio::test]
async fn invoice_shows_zero_usage_true_up_cap_and_minimum_lines() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.json");
    std::fs::write(
        &prices,
        r#"{"currency": "USD", "minimum": "100", "services": {
            "api": [{"effective_from": "2020-01-01T00:00:00Z", "model": "graduated",
                     "tiers": [{"up_to": "1000", "unit_price": "0", "flat_fee": "5"}, {"up_to": null, "unit_price": "0.01"}]}],
            "storage": [{"effective_from": "2020-01-01T00:00:00Z", "model": "per_unit", "unit_price": "1", "minimum": "10"}],
            "bandwidth": [{"effective_from": "2020-01-01T00:00:00Z", "model": "per_unit", "unit_price": "2", "maximum": "5"}]
        }}"#,
    )
    .unwrap();
    for (service, quantity) in [("storage", "3"), ("bandwidth", "4")] {
        let out = tally(
            &db,
            &[
                "record",
                "--customer",
                "acme",
                "--service",
                service,
                "--quantity",
                quantity,
                "--at",
                "2026-10-05T00:00:00Z",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let p = prices.to_str().unwrap();
    let args = [
        "invoice",
        "--customer",
        "acme",
        "--period",
        "2026-10",
        "--prices",
        p,
    ];
    let inv = json(&tally(&db, &[&args[..], &["--format", "json"]].concat()));
    let lines: Vec<(String, String, String)> = inv["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["service"].as_str().unwrap_or("-").to_owned(),
                l["kind"].as_str().unwrap().to_owned(),
                l["amount"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = [
        // No api usage, but its first tier's flat fee is charged.
        ("api", "usage", "5.00"),
        // 2 × 4 = 8, capped at 5.
        ("bandwidth", "usage", "8.00"),
        ("bandwidth", "cap", "-3.00"),
        // 1 × 3 = 3, made up to the minimum of 10.
        ("storage", "usage", "3.00"),
        ("storage", "true_up", "7.00"),
        // 5 + 5 + 10 = 20, made up to the invoice minimum of 100.
        ("-", "minimum", "80.00"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(lines, want);
    assert_eq!(inv["total"], "100.00");
    let csv =
        String::from_utf8(tally(&db, &[&args[..], &["--format", "csv"]].concat()).stdout).unwrap();
    assert!(
        csv.starts_with("service,kind,quantity,billable_quantity,amount\n"),
        "{csv}"
    );
    assert!(
        csv.contains("storage,true_up,0,0,7.00\n") && csv.contains(",minimum,0,0,80.00\n"),
        "{csv}"
    );
    let table = String::from_utf8(tally(&db, &args).stdout).unwrap();
    for needle in ["true_up", "cap", "minimum", "-3.00", "100.00"] {
        assert!(table.contains(needle), "{needle} in:\n{table}");
    }
    // A currency without a minor unit keeps none.
    std::fs::write(
        &prices,
        r#"{"currency": "JPY", "services": {"storage": [{"effective_from": "2020-01-01T00:00:00Z", "model": "per_unit", "unit_price": "333.4"}]}}"#,
    )
    .unwrap();
    let inv = json(&tally(&db, &[&args[..], &["--format", "json"]].concat()));
    let storage = inv["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["service"] == "storage")
        .unwrap();
    // 3 × 333.4 = 1000.2 yen, rounded to whole yen.
    assert_eq!(
        (storage["amount"].as_str(), inv["total"].as_str()),
        (Some("1000"), Some("1000"))
    );
}

/// A server that is not there fails the command at once, naming where it tried (host,
/// port, user, database; never a password), with exit 1.
#[test]
fn a_connection_failure_names_the_host_and_port_it_tried() {
    for args in [
        &["verify"][..],
        &[
            "record",
            "--customer",
            "acme",
            "--service",
            "api",
            "--quantity",
            "1",
        ],
    ] {
        let out = common::tally_with(
            args,
            &[(
                "DATABASE_URL",
                "postgres://alice:s3cret@127.0.0.1:1/billing",
            )],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("127.0.0.1 port 1 as user alice (database billing)"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
    }
}

/// Logs to a pipe or file carry no colour codes (they are for a terminal only).
#[tokio::test]
async fn logs_into_a_pipe_have_no_colour_codes() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let old = &[
        "record",
        "--customer",
        "acme",
        "--service",
        "api",
        "--quantity",
        "1",
    ];
    assert!(
        tally(&db, &[&old[..], &["--at", "2020-01-01T00:00:00Z"]].concat())
            .status
            .success()
    );
    // An archive run logs each file it writes at level info.
    let out = common::tally_with(
        &[
            "archive",
            "--older-than",
            "1",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
        &[("DATABASE_URL", db.url()), ("TALLY_LOG", "info")],
    );
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("INFO") && err.contains("archived"),
        "no log line to check: {err}"
    );
    assert!(!err.contains('\u{1b}'), "{err}");
}

/// Shell completions and the manual pages are generated and parse: bash's with `bash -n`,
/// the pages with groff (warnings as errors) where groff is installed; every shell's
/// script names the commands.
#[test]
fn completions_and_man_pages_are_generated_and_parse() {
    let run = |args: &[&str]| {
        let out = common::tally_with(args, &[]);
        assert!(out.status.success(), "{args:?}: {out:?}");
        out.stdout
    };
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = String::from_utf8(run(&["completions", shell])).unwrap();
        for command in ["aggregate", "invoice", "quota", "completions"] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
    }
    let parses = |program: &str, args: &[&str], input: &[u8]| -> Option<std::process::Output> {
        let mut child = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .ok()?; // not installed here
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input).unwrap();
        Some(child.wait_with_output().unwrap())
    };
    let bash =
        parses("bash", &["-n"], &run(&["completions", "bash"])).expect("bash runs the tests");
    assert!(bash.status.success(), "{bash:?}");

    let page = run(&["man"]);
    assert!(String::from_utf8_lossy(&page).contains(".TH tally 1"));
    let dir = tempfile::tempdir().unwrap();
    run(&["man", "--dir", dir.path().to_str().unwrap()]);
    let mut pages: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    assert!(
        pages.iter().any(|p| p.ends_with("tally-quota-set.1")),
        "{pages:?}"
    );
    let mut texts = vec![("tally man".to_owned(), page)];
    for p in &pages {
        texts.push((p.display().to_string(), std::fs::read(p).unwrap()));
    }
    for (name, text) in &texts {
        if let Some(groff) = parses("groff", &["-k", "-man", "-Tutf8", "-ww", "-z"], text) {
            assert!(
                groff.status.success() && groff.stderr.is_empty(),
                "{name}: {}",
                String::from_utf8_lossy(&groff.stderr)
            );
        }
    }
}

/// An invoice follows the customer's billing cycle: with periods from the 15th at New
/// York midnight, `--period 2026-11` is 15 November 05:00 UTC to 15 December 05:00 UTC
/// (EST), and a day names the period holding it. Usage a second either side of an edge
/// is counted on its side (hand-computed: 10 + 100).
#[tokio::test]
async fn an_invoice_is_for_the_customers_own_period() {
    let db = TestDb::new().await.unwrap();
    assert!(
        tally(&db, &["plan", "set", "pro", "--limit", "api=100000"])
            .status
            .success()
    );
    let cycle = tally(
        &db,
        &[
            "quota",
            "set",
            "--customer",
            "nyc",
            "--plan",
            "pro",
            "--anchor-day",
            "15",
            "--tz",
            "America/New_York",
        ],
    );
    assert!(cycle.status.success(), "{cycle:?}");
    for (q, at) in [
        ("1", "2026-11-15T04:59:59Z"),
        ("10", "2026-11-15T05:00:00Z"),
        ("100", "2026-12-15T04:59:59Z"),
        ("1000", "2026-12-15T05:00:00Z"),
    ] {
        let r = tally(
            &db,
            &[
                "record",
                "--customer",
                "nyc",
                "--service",
                "api",
                "--quantity",
                q,
                "--at",
                at,
            ],
        );
        assert!(r.status.success(), "{r:?}");
    }
    for period in ["2026-11", "2026-11-15", "2026-12-14"] {
        let inv = json(&tally(
            &db,
            &[
                "invoice",
                "--customer",
                "nyc",
                "--period",
                period,
                "--format",
                "json",
            ],
        ));
        assert_eq!(
            inv["period_start"], "2026-11-15T05:00:00Z",
            "{period}: {inv}"
        );
        assert_eq!(inv["period_end"], "2026-12-15T05:00:00Z", "{period}: {inv}");
        assert_eq!(inv["lines"][0]["quantity"], "110", "{period}: {inv}");
    }
    // A customer without a cycle: the calendar month, UTC, as before.
    let plain = json(&tally(
        &db,
        &[
            "invoice",
            "--customer",
            "other",
            "--period",
            "2026-11",
            "--format",
            "json",
        ],
    ));
    assert_eq!(
        (&plain["period_start"], &plain["period_end"]),
        (
            &"2026-11-01T00:00:00Z".into(),
            &"2026-12-01T00:00:00Z".into()
        )
    );
}

#[tokio::test]
async fn an_invoice_has_a_line_per_priced_meter_combination() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ok = |args: &[&str]| {
        let out = tally(&db, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&[
        "meter",
        "create",
        "tokens",
        "--type",
        "api",
        "--aggregation",
        "sum",
        "--value",
        "$.tokens",
        "--group-by",
        "model=$.model",
    ]);
    // A new name and description, the rest of the meter as it was.
    let shown = ok(&[
        "meter",
        "update",
        "tokens",
        "--name",
        "LLM tokens",
        "--description",
        "tokens by model",
        "--format",
        "json",
    ]);
    let m: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(
        (&m["name"], &m["description"], &m["groupBy"]),
        (
            &serde_json::json!("LLM tokens"),
            &serde_json::json!("tokens by model"),
            &serde_json::json!({"model": "$.model"})
        ),
        "{m}"
    );
    let kept = ok(&[
        "meter",
        "update",
        "tokens",
        "--description",
        "by model",
        "--format",
        "json",
    ]);
    let m: serde_json::Value = serde_json::from_str(&kept).unwrap();
    assert_eq!(
        (&m["name"], &m["description"]),
        (
            &serde_json::json!("LLM tokens"),
            &serde_json::json!("by model")
        )
    );
    let nothing = tally(&db, &["meter", "update", "tokens"]);
    assert_eq!(nothing.status.code(), Some(2));
    let events = dir.path().join("events.ndjson");
    std::fs::write(
        &events,
        [("gpt-4o", 200_000), ("mini", 1_000_000), ("gpt-4o", 100_000)]
            .iter()
            .enumerate()
            .map(|(i, (model, tokens))| {
                format!(
                    r#"{{"customer_id":"acme","service":"api","quantity":"1","recorded_at":"2026-03-30T1{i}:00:00Z","metadata":{{"model":"{model}","tokens":{tokens}}}}}"#
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    ok(&["import", events.to_str().unwrap()]);
    // The service is a built-in SUM meter of the one query: its quantities by day.
    let api = ok(&[
        "meter",
        "query",
        "api",
        "--from",
        "2026-03-30",
        "--to",
        "2026-04-01",
        "--window",
        "day",
        "--group-by",
        "subject",
        "--format",
        "json",
    ]);
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(
        (
            &api["data"][0]["value"],
            &api["data"][0]["subject"],
            api["data"].as_array().map(Vec::len)
        ),
        (&serde_json::json!("3"), &serde_json::json!("acme"), Some(1)),
        "{api}"
    );
    let prices = dir.path().join("prices.json");
    std::fs::write(
        &prices,
        r#"{"currency": "USD", "services": {}, "meters": [
            {"meter": "tokens", "where": {"model": "gpt-4o"}, "model": "per_unit", "unit_price": "0.000005"},
            {"meter": "tokens", "model": "per_unit", "unit_price": "0.000001"}]}"#,
    )
    .unwrap();
    let csv = ok(&[
        "invoice",
        "--customer",
        "acme",
        "--period",
        "2026-03",
        "--prices",
        prices.to_str().unwrap(),
        "--format",
        "csv",
    ]);
    // 300k × 0.000005 = 1.50 and 1M × 0.000001 = 1.00; the api line is the built-in
    // service's, unpriced by this book.
    assert_eq!(
        csv,
        "service,kind,quantity,billable_quantity,amount\n\
         api,usage,3,3,0.00\n\
         tokens[model=gpt-4o],usage,300000,300000,1.50\n\
         tokens[rest],usage,1000000,1000000,1.00\n"
    );
    // A meter price with per-event fees is refused at the edge, naming the meter.
    std::fs::write(
        &prices,
        r#"{"currency": "USD", "services": {}, "meters": [
            {"meter": "tokens", "model": "percentage", "rate": "1", "fixed_fee": "0.1"}]}"#,
    )
    .unwrap();
    let out = tally(
        &db,
        &[
            "invoice",
            "--customer",
            "acme",
            "--period",
            "2026-03",
            "--prices",
            prices.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"tokens\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
