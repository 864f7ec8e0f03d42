//! The write path's meter step, in the ingest transaction after the events and the
//! service rollups: take the event types' locks (shared: creating a meter takes its
//! type's lock exclusively, which is what makes a backfill exact), read the meters of
//! the batch's types, refuse what they cannot read or what would pass a cardinality
//! limit, and merge the deltas into the meter rollups.

use std::{collections::BTreeSet, sync::LazyLock};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::{MeterSpec, UsageEvent};
use uuid::Uuid;

use super::deltas::{LiveMeter, MeterDeltas, RowKey};
use crate::{Error, Result};

/// The seed of an event type's lock key ("tallym" in ASCII).
pub(crate) const TYPE_LOCK_SEED: i64 = 0x7461_6c6c_796d;

/// The meters of `types`, read under each type's shared lock (held to the end of the
/// transaction). Two statements, sent together: the read runs after the locks are
/// granted, so it sees a meter whose creation they waited for.
pub(crate) async fn meters_of_types(
    client: &deadpool_postgres::Client,
    types: &BTreeSet<&str>,
) -> Result<Vec<LiveMeter>> {
    let types: Vec<&str> = types.iter().copied().collect();
    let lock_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&types, &TYPE_LOCK_SEED];
    let read_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&types];
    let lock = client.execute(
        "SELECT count(pg_advisory_xact_lock_shared(hashtextextended(t, $2))) FROM unnest($1::text[]) t",
        &lock_params,
    );
    let read = client.query(
        "SELECT meter, spec::text FROM tally_meter_defs
         WHERE event_type = ANY($1) AND deleted_at IS NULL AND state <> 'failed' ORDER BY meter",
        &read_params,
    );
    let (locked, rows) = futures_util::future::join(lock, read).await;
    locked.map_err(Error::db("locking event types"))?;
    rows.map_err(Error::db("reading meters"))?
        .iter()
        .map(live_meter)
        .collect()
}

pub(crate) fn live_meter(row: &tokio_postgres::Row) -> Result<LiveMeter> {
    let number: i64 = row.try_get(0).map_err(Error::db("reading meters"))?;
    let text: String = row.try_get(1).map_err(Error::db("reading meters"))?;
    let spec: MeterSpec = serde_json::from_str(&text)
        .map_err(|e| Error::corrupt("reading meters", format!("meter {number}: {e}")))?;
    Ok(LiveMeter { number, spec })
}

/// The meter step for `events`, new in this transaction (see the module docs).
pub(crate) async fn apply_meters(
    client: &deadpool_postgres::Client,
    events: &[&UsageEvent],
) -> Result<()> {
    let types: BTreeSet<&str> = events.iter().map(|e| e.service.as_str()).collect();
    if types.is_empty() {
        return Ok(());
    }
    let meters = meters_of_types(client, &types).await?;
    apply_with(client, &meters, events).await
}

/// The meter step with `meters` read already (under their types' locks).
pub(crate) async fn apply_with(
    client: &deadpool_postgres::Client,
    meters: &[LiveMeter],
    events: &[&UsageEvent],
) -> Result<()> {
    if meters.is_empty() || events.is_empty() {
        return Ok(());
    }
    let meters = meters.to_vec();
    let mut deltas = MeterDeltas::default();
    deltas.add(&meters, events.iter().copied(), true)?;
    if deltas.is_empty() {
        return Ok(());
    }
    check_cardinality(client, &meters, &deltas).await?;
    write_deltas(client, &deltas).await
}

/// Claims the batch's dimension combinations; if that takes a meter past its limit,
/// refuses (the transaction is rolled back by the caller).
pub(crate) async fn check_cardinality(
    client: &deadpool_postgres::Client,
    meters: &[LiveMeter],
    deltas: &MeterDeltas,
) -> Result<()> {
    let (ms, ds): (Vec<i64>, Vec<&str>) = deltas
        .combinations
        .iter()
        .map(|(m, d)| (*m, d.as_str()))
        .unzip();
    let rows = client
        .query(
            // Known combinations (committed) are filtered out first: ON CONFLICT alone
            // would make this writer wait for any other transaction that claimed the
            // same combination (the unique index's wait), serializing the writers.
            "INSERT INTO tally_meter_dimensions (meter, dims)
             SELECT m, d::jsonb FROM unnest($1::int8[], $2::text[]) AS u(m, d)
             WHERE NOT EXISTS (SELECT 1 FROM tally_meter_dimensions x WHERE x.meter = u.m AND x.dims = u.d::jsonb)
             ON CONFLICT DO NOTHING RETURNING meter, dims::text",
            &[&ms, &ds],
        )
        .await
        .map_err(Error::db("claiming dimension combinations"))?;
    if rows.is_empty() {
        return Ok(());
    }
    let mut new: std::collections::BTreeMap<i64, Vec<String>> = Default::default();
    for r in &rows {
        let m: i64 = r
            .try_get(0)
            .map_err(Error::db("claiming dimension combinations"))?;
        let d: String = r
            .try_get(1)
            .map_err(Error::db("claiming dimension combinations"))?;
        new.entry(m).or_default().push(d);
    }
    let (ms, ns): (Vec<i64>, Vec<i32>) = new
        .iter()
        .map(|(m, d)| (*m, i32::try_from(d.len()).unwrap_or(i32::MAX)))
        .unzip();
    let counts = client
        .query(
            "INSERT INTO tally_meter_cardinality AS c (meter, combinations)
             SELECT * FROM unnest($1::int8[], $2::int4[])
             ON CONFLICT (meter) DO UPDATE SET combinations = c.combinations + excluded.combinations
             RETURNING meter, combinations",
            &[&ms, &ns],
        )
        .await
        .map_err(Error::db("counting dimension combinations"))?;
    for r in &counts {
        let m: i64 = r
            .try_get(0)
            .map_err(Error::db("counting dimension combinations"))?;
        let n: i32 = r
            .try_get(1)
            .map_err(Error::db("counting dimension combinations"))?;
        let Some(meter) = meters.iter().find(|x| x.number == m) else {
            continue;
        };
        if i64::from(n) > i64::from(meter.spec.cardinality_limit) {
            let combo = new
                .get(&m)
                .and_then(|d| d.first())
                .cloned()
                .unwrap_or_default();
            return Err(Error::invalid(
                "data",
                combo,
                format!(
                    "meter {} is at its cardinality limit of {} dimension combinations; this event would add another",
                    meter.spec.slug, meter.spec.cardinality_limit
                ),
            ));
        }
    }
    Ok(())
}

/// The upsert of one accumulator rollup, its 11 arrays from `$first`.
fn acc_upsert(table: &str, first: usize) -> String {
    let p: Vec<String> = (first..first + 11).map(|i| format!("${i}")).collect();
    let [m, c, b, d, n, t, lo, hi, la, li, lv] = p.as_slice() else {
        return String::new();
    };
    format!(
        "INSERT INTO {table} AS r (meter, customer_id, bucket, dims, events, total, lo, hi, latest_at, latest_id, latest_value)
    SELECT m, c, b, d::jsonb, n, t, lo, hi, la, li, lv
    FROM unnest({m}::int8[], {c}::text[], {b}::timestamptz[], {d}::text[], {n}::int8[], {t}::numeric[],
                {lo}::numeric[], {hi}::numeric[], {la}::timestamptz[], {li}::uuid[], {lv}::numeric[])
         AS u(m, c, b, d, n, t, lo, hi, la, li, lv)
    ON CONFLICT (meter, customer_id, bucket, dims) DO UPDATE SET
        events = r.events + excluded.events,
        total = r.total + excluded.total,
        lo = least(r.lo, excluded.lo),
        hi = greatest(r.hi, excluded.hi),
        latest_at = CASE WHEN {newer} THEN excluded.latest_at ELSE r.latest_at END,
        latest_id = CASE WHEN {newer} THEN excluded.latest_id ELSE r.latest_id END,
        latest_value = CASE WHEN {newer} THEN excluded.latest_value ELSE r.latest_value END
    RETURNING 1",
        newer = "excluded.latest_at IS NOT NULL AND (r.latest_at IS NULL OR (excluded.latest_at, excluded.latest_id) > (r.latest_at, r.latest_id))"
    )
}

fn distinct_insert(table: &str, first: usize) -> String {
    let p: Vec<String> = (first..first + 5).map(|i| format!("${i}")).collect();
    let [m, c, b, d, v] = p.as_slice() else {
        return String::new();
    };
    format!(
        "INSERT INTO {table} (meter, customer_id, bucket, dims, value)
    SELECT m, c, b, d::jsonb, v FROM unnest({m}::int8[], {c}::text[], {b}::timestamptz[], {d}::text[], {v}::text[]) AS u(m, c, b, d, v)
    ON CONFLICT DO NOTHING RETURNING 1"
    )
}

/// Every meter rollup's merge in one statement (rows in key order: the lock order).
static WRITE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH q AS ({}), d AS ({}), uq AS ({}), ud AS ({}), um AS ({}), s AS (
    INSERT INTO tally_meter_samples (meter, customer_id, dims, at, event_id, value)
    SELECT m, c, d::jsonb, a, i, v FROM unnest($38::int8[], $39::text[], $40::text[], $41::timestamptz[], $42::uuid[], $43::numeric[]) AS u(m, c, d, a, i, v)
    ON CONFLICT DO NOTHING RETURNING 1
)
SELECT (SELECT count(*) FROM q), (SELECT count(*) FROM d), (SELECT count(*) FROM uq),
       (SELECT count(*) FROM ud), (SELECT count(*) FROM um), (SELECT count(*) FROM s)",
        acc_upsert("tally_meter_quarters", 1),
        acc_upsert("tally_meter_days", 12),
        distinct_insert("tally_meter_distinct_quarters", 23),
        distinct_insert("tally_meter_distinct_days", 28),
        distinct_insert("tally_meter_distinct_months", 33),
    )
});

#[derive(Default)]
struct AccArrays<'a> {
    m: Vec<i64>,
    c: Vec<&'a str>,
    b: Vec<DateTime<Utc>>,
    d: Vec<&'a str>,
    n: Vec<i64>,
    t: Vec<Decimal>,
    lo: Vec<Option<Decimal>>,
    hi: Vec<Option<Decimal>>,
    la: Vec<Option<DateTime<Utc>>>,
    li: Vec<Option<Uuid>>,
    lv: Vec<Option<Decimal>>,
}

impl<'a> AccArrays<'a> {
    fn of(rows: &'a std::collections::BTreeMap<RowKey, tally_core::Acc>) -> AccArrays<'a> {
        let mut a = AccArrays::default();
        for ((m, c, b, d), acc) in rows {
            a.m.push(*m);
            a.c.push(c);
            a.b.push(*b);
            a.d.push(d);
            a.n.push(acc.events);
            a.t.push(acc.sum);
            a.lo.push(acc.min);
            a.hi.push(acc.max);
            a.la.push(acc.latest.map(|l| l.at));
            a.li.push(acc.latest.map(|l| l.id));
            a.lv.push(acc.latest.map(|l| l.value));
        }
        a
    }

    fn push_params<'s>(&'s self, out: &mut Vec<&'s (dyn tokio_postgres::types::ToSql + Sync)>) {
        out.extend_from_slice(&[
            &self.m, &self.c, &self.b, &self.d, &self.n, &self.t, &self.lo, &self.hi, &self.la,
            &self.li, &self.lv,
        ]);
    }
}

#[derive(Default)]
struct DistinctArrays<'a> {
    m: Vec<i64>,
    c: Vec<&'a str>,
    b: Vec<DateTime<Utc>>,
    d: Vec<&'a str>,
    v: Vec<&'a str>,
}

/// Writes `deltas` into the meter rollups (in the caller's transaction).
pub(crate) async fn write_deltas(
    client: &deadpool_postgres::Client,
    deltas: &MeterDeltas,
) -> Result<()> {
    let quarters = AccArrays::of(&deltas.quarters);
    let days = AccArrays::of(&deltas.days);
    let distinct: Vec<DistinctArrays<'_>> = deltas
        .distinct
        .iter()
        .map(|set| {
            let mut a = DistinctArrays::default();
            for ((m, c, b, d), v) in set {
                a.m.push(*m);
                a.c.push(c);
                a.b.push(*b);
                a.d.push(d);
                a.v.push(v);
            }
            a
        })
        .collect();
    let mut sm = Vec::new();
    let mut sc = Vec::new();
    let mut sd = Vec::new();
    let mut sa = Vec::new();
    let mut si = Vec::new();
    let mut sv = Vec::new();
    for ((m, c, d, a, i), v) in &deltas.samples {
        sm.push(*m);
        sc.push(c.as_str());
        sd.push(d.as_str());
        sa.push(*a);
        si.push(*i);
        sv.push(*v);
    }
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::with_capacity(43);
    quarters.push_params(&mut params);
    days.push_params(&mut params);
    for a in &distinct {
        params.extend_from_slice(&[&a.m, &a.c, &a.b, &a.d, &a.v]);
    }
    params.extend_from_slice(&[&sm, &sc, &sd, &sa, &si, &sv]);
    let stmt = client
        .prepare_cached(&WRITE_SQL)
        .await
        .map_err(Error::db("preparing the meter rollups"))?;
    client
        .query_one(&stmt, &params)
        .await
        .map_err(Error::db("updating the meter rollups"))?;
    Ok(())
}
