//! The one write path: binary COPY into a staging table, then one statement that
//! claims the dedupe keys, inserts the new events and upserts the rollups from exactly
//! the rows it inserted. The recorder and import both use it.

use std::{
    collections::{BTreeMap, HashSet},
    error::Error as StdError,
    sync::atomic::{AtomicU64, Ordering},
};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use bytes::{BufMut, BytesMut};
use deadpool_postgres::Transaction;
use rust_decimal::Decimal;
use tally_core::UsageEvent;
use tokio_postgres::{
    binary_copy::BinaryCopyInWriter,
    error::SqlState,
    types::{IsNull, ToSql, Type, WrongType},
};

use crate::{Error, Result};

/// What writing a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Events newly stored (and added to the rollups).
    pub inserted: u64,
    /// Events already stored before, or repeated within the batch: counted once.
    pub duplicates: u64,
    /// Sum of the inserted events' quantities.
    pub quantity: Decimal,
}

impl WriteOutcome {
    pub(crate) fn add(&mut self, o: WriteOutcome) {
        self.inserted += o.inserted;
        self.duplicates += o.duplicates;
        self.quantity += o.quantity;
    }
}

const STAGE_DDL: &str = "CREATE TEMP TABLE tally_stage (
    event_id uuid, customer_id text COLLATE \"C\", service text COLLATE \"C\", quantity numeric, recorded_at timestamptz, metadata jsonb
) ON COMMIT DELETE ROWS";

const STAGE_TYPES: [Type; 6] = [
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::NUMERIC,
    Type::TIMESTAMPTZ,
    Type::JSONB,
];

// How a rollup row absorbs a delta, the same for every rollup: counts and sums add,
// min and max widen.
macro_rules! merge {
    ($key:literal) => {
        concat!(
            "    ON CONFLICT (",
            $key,
            ") DO UPDATE SET
        events = r.events + excluded.events,
        quantity = r.quantity + excluded.quantity,
        min_quantity = least(r.min_quantity, excluded.min_quantity),
        max_quantity = greatest(r.max_quantity, excluded.max_quantity)
"
        )
    };
}

// Bucket expressions: date_bin on a UTC origin is plain arithmetic, unlike
// date_trunc(…, 'UTC'), which converts time zones row by row.
macro_rules! rollup_upserts {
    () => {
        concat!(
        "hourly AS (
    INSERT INTO usage_hourly AS r (customer_id, service, bucket, events, quantity, min_quantity, max_quantity)
    SELECT customer_id, service, date_bin('1 hour', recorded_at, timestamptz '2000-01-01 00:00:00+00'),
           count(*), sum(quantity), min(quantity), max(quantity)
    FROM ins GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ",
        merge!("customer_id, service, bucket"),
        "
    RETURNING 1
), daily AS (
    INSERT INTO usage_daily AS r (customer_id, service, bucket, events, quantity, min_quantity, max_quantity)
    SELECT customer_id, service, date_bin('1 day', recorded_at, timestamptz '2000-01-01 00:00:00+00'),
           count(*), sum(quantity), min(quantity), max(quantity)
    FROM ins GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ",
        merge!("customer_id, service, bucket"),
        "
    RETURNING 1
), totals AS (
    INSERT INTO usage_hourly_total AS r (service, bucket, lane, events, quantity, min_quantity, max_quantity)
    SELECT service, date_bin('1 hour', recorded_at, timestamptz '2000-01-01 00:00:00+00'), $1::int2,
           count(*), sum(quantity), min(quantity), max(quantity)
    FROM ins GROUP BY 1, 2 ORDER BY 1, 2
    ",
        merge!("service, bucket, lane"),
        "
    RETURNING 1
)
-- Scalar subqueries run left to right: events, keys, hourly, daily, totals (the lock order).
SELECT (SELECT count(*) FROM ins), (SELECT coalesce(sum(quantity), 0) FROM ins),
       (SELECT count(*) FROM keys), (SELECT count(*) FROM hourly), (SELECT count(*) FROM daily),
       (SELECT count(*) FROM totals)"
        )
    };
}

// Lock order: keys in (event_id, customer_id) order, then hourly rows, then daily rows,
// then all-customer hourly rows, each in key order. Every writer takes row locks in
// this one global order, so concurrent flushes wait for each other but cannot deadlock.

// Fast path, step 1: drop staged events whose key is already stored (a replay), and
// say which. A LIMIT-ed scalar subquery stays one index probe per staged row; EXISTS
// would let the planner pick a join that reads the whole key table.
const DROP_STORED_SQL: &str = "DELETE FROM tally_stage s
    WHERE (SELECT true FROM usage_event_keys k WHERE k.event_id = s.event_id AND k.customer_id = s.customer_id LIMIT 1)
    RETURNING s.event_id, s.customer_id";

// Fast path, step 2: everything left is new. Keys go in by plain INSERT, which costs
// half of ON CONFLICT's speculative insertion (measured); if a concurrent writer
// claimed one of them since step 1, it fails with a unique violation and the batch is
// redone on the slow path. The rollup deltas were aggregated in Rust from exactly
// these events and arrive sorted by key (the lock order). Scalar subqueries in the
// final SELECT run left to right: keys, events, hourly, daily, all-customer.
const INSERT_NEW_SQL: &str = concat!(
    "WITH keys AS (
    INSERT INTO usage_event_keys (event_id, customer_id)
    SELECT event_id, customer_id FROM tally_stage ORDER BY event_id, customer_id
    RETURNING 1
), ins AS (
    INSERT INTO usage_events (event_id, customer_id, service, quantity, recorded_at, metadata)
    SELECT event_id, customer_id, service, quantity, recorded_at, metadata FROM tally_stage
    RETURNING 1
), hourly AS (
    INSERT INTO usage_hourly AS r (customer_id, service, bucket, events, quantity, min_quantity, max_quantity)
    SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::int8[], $5::numeric[], $6::numeric[], $7::numeric[])
    ",
        merge!("customer_id, service, bucket"),
        "
    RETURNING 1
), daily AS (
    INSERT INTO usage_daily AS r (customer_id, service, bucket, events, quantity, min_quantity, max_quantity)
    SELECT * FROM unnest($8::text[], $9::text[], $10::timestamptz[], $11::int8[], $12::numeric[], $13::numeric[], $14::numeric[])
    ",
        merge!("customer_id, service, bucket"),
        "
    RETURNING 1
), totals AS (
    INSERT INTO usage_hourly_total AS r (service, bucket, lane, events, quantity, min_quantity, max_quantity)
    SELECT u.service, u.bucket, $21::int2, u.events, u.quantity, u.lo, u.hi
    FROM unnest($15::text[], $16::timestamptz[], $17::int8[], $18::numeric[], $19::numeric[], $20::numeric[])
        AS u(service, bucket, events, quantity, lo, hi)
    ",
        merge!("service, bucket, lane"),
        "
    RETURNING 1
)
SELECT (SELECT count(*) FROM keys), (SELECT count(*) FROM ins), (SELECT count(*) FROM hourly), (SELECT count(*) FROM daily),
       (SELECT count(*) FROM totals)"
);

// Slow path: claims keys with ON CONFLICT DO NOTHING, waiting for concurrent writers
// of the same keys to commit, and inserts only the events whose keys it claimed.
const SAFE_SQL: &str = concat!(
    "WITH new_keys AS (
    INSERT INTO usage_event_keys (event_id, customer_id)
    SELECT event_id, customer_id FROM tally_stage ORDER BY event_id, customer_id
    ON CONFLICT DO NOTHING
    RETURNING event_id, customer_id
), keys AS (
    SELECT 1 FROM new_keys
), ins AS (
    INSERT INTO usage_events (event_id, customer_id, service, quantity, recorded_at, metadata)
    SELECT s.event_id, s.customer_id, s.service, s.quantity, s.recorded_at, s.metadata
    FROM tally_stage s JOIN new_keys k ON k.event_id = s.event_id AND k.customer_id = s.customer_id
    RETURNING customer_id, service, quantity, recorded_at
), ",
    rollup_upserts!()
);

/// Lanes of the all-customer rollup (`usage_hourly_total.lane`).
pub(crate) const LANES: i16 = 8;

/// A lane for a one-off write: round robin, so concurrent writers rarely share one.
pub(crate) fn next_lane() -> i16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    (NEXT.fetch_add(1, Ordering::Relaxed) % LANES as u64) as i16
}

/// Writes `events` exactly once inside `tx`: events already stored (same customer and
/// id) are skipped, the rest are inserted and added to the rollups. Nothing is
/// visible until `tx` commits. With `clear_stage`, the staging table is emptied
/// afterwards so the same transaction can write another batch. `lane` picks the
/// writer's rows of the all-customer rollup (see [`next_lane`]).
pub(crate) async fn write_batch(
    tx: &Transaction<'_>,
    events: &[UsageEvent],
    clear_stage: bool,
    lane: i16,
) -> Result<WriteOutcome> {
    if events.is_empty() {
        return Ok(WriteOutcome::default());
    }
    let exists: bool = tx
        .query_one("SELECT to_regclass('pg_temp.tally_stage') IS NOT NULL", &[])
        .await
        .map_err(Error::db("looking for the staging table"))?
        .get(0);
    if !exists {
        tx.batch_execute(STAGE_DDL)
            .await
            .map_err(Error::db("creating the staging table"))?;
    }

    // A key repeated inside the batch is the same event: keep its first occurrence.
    let mut seen = HashSet::with_capacity(events.len());
    let mut unique = Vec::with_capacity(events.len());
    {
        let sink = tx
            .copy_in("COPY tally_stage (event_id, customer_id, service, quantity, recorded_at, metadata) FROM STDIN BINARY")
            .await
            .map_err(Error::db("starting COPY into the staging table"))?;
        let writer = BinaryCopyInWriter::new(sink, &STAGE_TYPES);
        let mut writer = std::pin::pin!(writer);
        for e in events {
            if !seen.insert((e.id, e.customer.as_str())) {
                continue;
            }
            unique.push(e);
            let id = e.id.uuid();
            let quantity = e.quantity.value();
            let metadata = Jsonb(e.metadata.as_str());
            writer
                .as_mut()
                .write(&[
                    &id,
                    &e.customer.as_str(),
                    &e.service.as_str(),
                    &quantity,
                    &e.recorded_at,
                    &metadata,
                ])
                .await
                .map_err(Error::db("copying events"))?;
        }
        writer
            .as_mut()
            .finish()
            .await
            .map_err(Error::db("finishing COPY"))?;
    }

    // Sorts of a 100 000-event batch spill to disk at the default 4 MB.
    tx.batch_execute("SET LOCAL work_mem = '64MB'; SAVEPOINT tally_fast")
        .await
        .map_err(Error::db("preparing a batch"))?;
    let (inserted, quantity) = match insert_new(tx, &unique, lane).await {
        Ok(r) => {
            tx.batch_execute("RELEASE SAVEPOINT tally_fast")
                .await
                .map_err(Error::db("releasing the savepoint"))?;
            r
        }
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tracing::debug!(
                "a concurrent writer stored some of the same events; taking the slow path"
            );
            tx.batch_execute("ROLLBACK TO SAVEPOINT tally_fast")
                .await
                .map_err(Error::db("rolling back to the savepoint"))?;
            let safe = tx
                .prepare_cached(SAFE_SQL)
                .await
                .map_err(Error::db("preparing the ingest statement"))?;
            let row = tx
                .query_one(&safe, &[&lane])
                .await
                .map_err(Error::db("applying a batch"))?;
            (row.get::<_, i64>(0) as u64, row.get(1))
        }
        Err(e) => return Err(Error::db("applying a batch")(e)),
    };
    if clear_stage {
        tx.batch_execute("TRUNCATE tally_stage")
            .await
            .map_err(Error::db("clearing the staging table"))?;
    }
    Ok(WriteOutcome {
        inserted,
        duplicates: events.len() as u64 - inserted,
        quantity,
    })
}

/// Running sum, count, min and max of one rollup row.
struct Agg {
    events: i64,
    quantity: Decimal,
    min: Decimal,
    max: Decimal,
}

type Deltas<'a> = BTreeMap<(&'a str, &'a str, DateTime<Utc>), Agg>;

fn add<'a>(deltas: &mut Deltas<'a>, key: (&'a str, &'a str, DateTime<Utc>), q: Decimal) {
    let a = deltas.entry(key).or_insert(Agg {
        events: 0,
        quantity: Decimal::ZERO,
        min: q,
        max: q,
    });
    a.events += 1;
    a.quantity += q;
    a.min = a.min.min(q);
    a.max = a.max.max(q);
}

/// Start of the UTC hour / day holding `t` (what `date_trunc(…, 'UTC')` gives).
fn utc_floor(t: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
    let s = t.timestamp().div_euclid(seconds) * seconds;
    DateTime::from_timestamp(s, 0).expect("in range")
}

/// The fast path (see `DROP_STORED_SQL` and `INSERT_NEW_SQL`). Returns the events
/// inserted and their total quantity; a unique violation means "take the slow path".
async fn insert_new(
    tx: &Transaction<'_>,
    events: &[&UsageEvent],
    lane: i16,
) -> Result<(u64, Decimal), tokio_postgres::Error> {
    let drop_stored = tx.prepare_cached(DROP_STORED_SQL).await?;
    let rows = tx.query(&drop_stored, &[]).await?;
    // Usually about 1 % of a batch; the id set avoids building a key per event.
    let stored_ids: HashSet<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    let stored: HashSet<(Uuid, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut hourly = Deltas::new();
    let mut daily = Deltas::new();
    let mut totals = Deltas::new();
    let mut total = Decimal::ZERO;
    let mut new = 0u64;
    for e in events {
        if stored_ids.contains(&e.id.uuid())
            && stored.contains(&(e.id.uuid(), e.customer.as_str().to_owned()))
        {
            continue;
        }
        let q = e.quantity.value();
        let (c, s) = (e.customer.as_str(), e.service.as_str());
        add(&mut hourly, (c, s, utc_floor(e.recorded_at, 3600)), q);
        add(&mut daily, (c, s, utc_floor(e.recorded_at, 86_400)), q);
        // All customers added up: the customer part of the key is empty.
        add(&mut totals, ("", s, utc_floor(e.recorded_at, 3600)), q);
        total += q;
        new += 1;
    }
    let h = Columns::from(&hourly);
    let d = Columns::from(&daily);
    let t = Columns::from(&totals);
    let insert = tx.prepare_cached(INSERT_NEW_SQL).await?;
    let row = tx
        .query_one(
            &insert,
            &[
                &h.customer,
                &h.service,
                &h.bucket,
                &h.events,
                &h.quantity,
                &h.min,
                &h.max,
                &d.customer,
                &d.service,
                &d.bucket,
                &d.events,
                &d.quantity,
                &d.min,
                &d.max,
                &t.service,
                &t.bucket,
                &t.events,
                &t.quantity,
                &t.min,
                &t.max,
                &lane,
            ],
        )
        .await?;
    debug_assert_eq!(
        row.get::<_, i64>(1) as u64,
        new,
        "every staged event left is new"
    );
    Ok((row.get::<_, i64>(1) as u64, total))
}

/// Rollup deltas as one array per column, in key order.
struct Columns<'a> {
    customer: Vec<&'a str>,
    service: Vec<&'a str>,
    bucket: Vec<DateTime<Utc>>,
    events: Vec<i64>,
    quantity: Vec<Decimal>,
    min: Vec<Decimal>,
    max: Vec<Decimal>,
}

impl<'a> Columns<'a> {
    fn from(deltas: &Deltas<'a>) -> Columns<'a> {
        let n = deltas.len();
        let mut c = Columns {
            customer: Vec::with_capacity(n),
            service: Vec::with_capacity(n),
            bucket: Vec::with_capacity(n),
            events: Vec::with_capacity(n),
            quantity: Vec::with_capacity(n),
            min: Vec::with_capacity(n),
            max: Vec::with_capacity(n),
        };
        // BTreeMap order is byte order of the strings, the order of the "C" collation.
        for ((customer, service, bucket), a) in deltas {
            c.customer.push(customer);
            c.service.push(service);
            c.bucket.push(*bucket);
            c.events.push(a.events);
            c.quantity.push(a.quantity);
            c.min.push(a.min);
            c.max.push(a.max);
        }
        c
    }
}

/// Metadata text sent as `jsonb` without parsing it again (binary jsonb is a version
/// byte followed by the text).
#[derive(Debug)]
struct Jsonb<'a>(&'a str);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        if !Self::accepts(ty) {
            return Err(Box::new(WrongType::new::<Self>(ty.clone())));
        }
        self.to_sql(ty, out)
    }
}
