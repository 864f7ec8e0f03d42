//! The one write path: binary COPY into a staging table, then one statement that
//! claims the dedupe keys, inserts the new events and upserts the rollups from exactly
//! the rows it inserted. `Store::write`, the recorder and import all use it.

use std::{
    collections::{HashMap, HashSet, hash_map},
    error::Error as StdError,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use bytes::{BufMut, BytesMut};
use deadpool_postgres::Pool;
use rust_decimal::Decimal;
use tally_core::{CustomerId, Quarters, Service, TimeRange, Totals, UsageEvent};
use tokio_postgres::{
    binary_copy::BinaryCopyInWriter,
    error::SqlState,
    types::{IsNull, ToSql, Type, WrongType},
};

use crate::{Error, Result, local::Local, partitions::Partitions};

/// What writing a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Events newly stored (and added to the rollups).
    pub inserted: u64,
    /// Events already stored before, or repeated within the batch, with the same
    /// payload: counted once.
    pub duplicates: u64,
    /// Sum of the inserted events' quantities.
    pub quantity: Decimal,
    /// Events that reuse the key (customer and id) of a stored event, or of an earlier
    /// event of the batch, with a different payload (service, quantity or
    /// metadata; [`UsageEvent::digest`]): not stored. Indexes into the events written.
    pub conflicts: Vec<usize>,
}

impl WriteOutcome {
    /// Adds `o`'s counts (not its conflicts, whose indexes are `o`'s own).
    pub(crate) fn add(&mut self, o: &WriteOutcome) {
        self.inserted += o.inserted;
        self.duplicates += o.duplicates;
        self.quantity += o.quantity;
    }
}

// The stage also holds each event's payload digest and its place among the
// transaction's staged events (`ord`: which line of an all-or-nothing import it is).
// A session made by an older build has a stage without them: `stage` recreates it.
const STAGE_DDL: &str = "CREATE TEMP TABLE tally_stage (
    event_id uuid, customer_id text COLLATE \"C\", service text COLLATE \"C\", quantity numeric, recorded_at timestamptz, metadata jsonb,
    digest int8, ord int8
) ON COMMIT DELETE ROWS";

const EVENT_TYPES: [Type; 6] = [
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::NUMERIC,
    Type::TIMESTAMPTZ,
    Type::JSONB,
];

const STAGE_TYPES: [Type; 8] = [
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::NUMERIC,
    Type::TIMESTAMPTZ,
    Type::JSONB,
    Type::INT8,
    Type::INT8,
];

// How a rollup row absorbs a delta, the same for every rollup: the rule of
// `tally_core::Totals::merge` (counts and sums add, min and max widen). The tables are
// listed in `rollup.rs`, where `verify` recomputes them by the same rule.
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

// The hourly rollups also keep each hour's quarter-hour detail (`tally_core::Quarters`,
// migrations 0005 and 0009): the count and sum of its first 15, 30 and 45 minutes add
// like the hour's, and each quarter's minimum and maximum widen like the hour's. A range
// cut on a quarter hour (every bucket edge in Asia/Kolkata) is then exact from rollups.
macro_rules! quarter_columns {
    () => {
        "quantity_by_15, quantity_by_30, quantity_by_45, events_by_15, events_by_30, events_by_45,
         min_00, min_15, min_30, min_45, max_00, max_15, max_30, max_45"
    };
}

macro_rules! merge_quarters {
    () => {
        "      , quantity_by_15 = r.quantity_by_15 + excluded.quantity_by_15,
        quantity_by_30 = r.quantity_by_30 + excluded.quantity_by_30,
        quantity_by_45 = r.quantity_by_45 + excluded.quantity_by_45,
        events_by_15 = r.events_by_15 + excluded.events_by_15,
        events_by_30 = r.events_by_30 + excluded.events_by_30,
        events_by_45 = r.events_by_45 + excluded.events_by_45,
        min_00 = least(r.min_00, excluded.min_00), min_15 = least(r.min_15, excluded.min_15),
        min_30 = least(r.min_30, excluded.min_30), min_45 = least(r.min_45, excluded.min_45),
        max_00 = greatest(r.max_00, excluded.max_00), max_15 = greatest(r.max_15, excluded.max_15),
        max_30 = greatest(r.max_30, excluded.max_30), max_45 = greatest(r.max_45, excluded.max_45)
"
    };
}

// The quarter detail of rows `i` with bucket `b` (a UTC hour), as SQL aggregates in
// the order of `quarter_columns!`.
macro_rules! quarter_aggregates {
    () => {
        "coalesce(sum(quantity) FILTER (WHERE recorded_at < b + interval '15 minutes'), 0),
           coalesce(sum(quantity) FILTER (WHERE recorded_at < b + interval '30 minutes'), 0),
           coalesce(sum(quantity) FILTER (WHERE recorded_at < b + interval '45 minutes'), 0),
           count(*) FILTER (WHERE recorded_at < b + interval '15 minutes'),
           count(*) FILTER (WHERE recorded_at < b + interval '30 minutes'),
           count(*) FILTER (WHERE recorded_at < b + interval '45 minutes'),
           min(quantity) FILTER (WHERE recorded_at < b + interval '15 minutes'),
           min(quantity) FILTER (WHERE recorded_at >= b + interval '15 minutes' AND recorded_at < b + interval '30 minutes'),
           min(quantity) FILTER (WHERE recorded_at >= b + interval '30 minutes' AND recorded_at < b + interval '45 minutes'),
           min(quantity) FILTER (WHERE recorded_at >= b + interval '45 minutes'),
           max(quantity) FILTER (WHERE recorded_at < b + interval '15 minutes'),
           max(quantity) FILTER (WHERE recorded_at >= b + interval '15 minutes' AND recorded_at < b + interval '30 minutes'),
           max(quantity) FILTER (WHERE recorded_at >= b + interval '30 minutes' AND recorded_at < b + interval '45 minutes'),
           max(quantity) FILTER (WHERE recorded_at >= b + interval '45 minutes')"
    };
}

// Bucket expressions: date_bin on a UTC origin is plain arithmetic, unlike
// date_trunc(…, 'UTC'), which converts time zones row by row.
macro_rules! rollup_upserts {
    () => {
        concat!(
        "hourly AS (
    INSERT INTO usage_hourly AS r (customer_id, service, bucket, events, quantity, min_quantity, max_quantity,
                                   ",
        quarter_columns!(),
        ")
    SELECT customer_id, service, b, count(*), sum(quantity), min(quantity), max(quantity),
           ",
        quarter_aggregates!(),
        "
    FROM (SELECT *, date_bin('1 hour', recorded_at, timestamptz '2000-01-01 00:00:00+00') AS b FROM ins) i
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ",
        merge!("customer_id, service, bucket"),
        merge_quarters!(),
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
    INSERT INTO usage_hourly_total AS r (service, bucket, lane, events, quantity, min_quantity, max_quantity,
                                         ",
        quarter_columns!(),
        ")
    SELECT service, b, $1::int2, count(*), sum(quantity), min(quantity), max(quantity),
           ",
        quarter_aggregates!(),
        "
    FROM (SELECT *, date_bin('1 hour', recorded_at, timestamptz '2000-01-01 00:00:00+00') AS b FROM ins) i
    GROUP BY 1, 2 ORDER BY 1, 2
    ",
        merge!("service, bucket, lane"),
        merge_quarters!(),
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
    RETURNING s.event_id, s.customer_id,
        (SELECT k.digest FROM usage_event_keys k WHERE k.event_id = s.event_id AND k.customer_id = s.customer_id LIMIT 1)";

// The rollup deltas of a batch, aggregated in Rust (`Rollups`) and sent as sorted
// arrays: $1–$7 hourly, $8–$14 daily, $15–$20 all-customer, $21 lane, $22–$35 hourly
// quarters, $36–$49 all-customer quarters. Rows are upserted in key order.
macro_rules! delta_upserts {
    () => {
        concat!(
            "hourly AS (
    INSERT INTO usage_hourly AS r (customer_id, service, bucket, events, quantity, min_quantity, max_quantity,
                                   ",
    quarter_columns!(),
    ")
    SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::int8[], $5::numeric[], $6::numeric[], $7::numeric[],
                         $22::numeric[], $23::numeric[], $24::numeric[], $25::int8[], $26::int8[], $27::int8[],
                         $28::numeric[], $29::numeric[], $30::numeric[], $31::numeric[],
                         $32::numeric[], $33::numeric[], $34::numeric[], $35::numeric[])
    ",
        merge!("customer_id, service, bucket"),
        merge_quarters!(),
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
    INSERT INTO usage_hourly_total AS r (service, bucket, lane, events, quantity, min_quantity, max_quantity,
                                         ",
    quarter_columns!(),
    ")
    SELECT u.service, u.bucket, $21::int2, u.events, u.quantity, u.lo, u.hi,
           u.q15, u.q30, u.q45, u.e15, u.e30, u.e45, u.n0, u.n1, u.n2, u.n3, u.x0, u.x1, u.x2, u.x3
    FROM unnest($15::text[], $16::timestamptz[], $17::int8[], $18::numeric[], $19::numeric[], $20::numeric[],
                $36::numeric[], $37::numeric[], $38::numeric[], $39::int8[], $40::int8[], $41::int8[],
                $42::numeric[], $43::numeric[], $44::numeric[], $45::numeric[],
                $46::numeric[], $47::numeric[], $48::numeric[], $49::numeric[])
        AS u(service, bucket, events, quantity, lo, hi, q15, q30, q45, e15, e30, e45, n0, n1, n2, n3, x0, x1, x2, x3)
    ",
        merge!("service, bucket, lane"),
        merge_quarters!(),
        "
    RETURNING 1
)"
        )
    };
}

// Fast path, step 2: everything left is new. Keys go in by plain INSERT, which costs
// half of ON CONFLICT's speculative insertion (measured); if a concurrent writer
// claimed one of them since step 1, it fails with a unique violation and the batch is
// redone on the slow path. The rollup deltas were aggregated in Rust from exactly
// these events and arrive sorted by key (the lock order). Scalar subqueries in the
// final SELECT run left to right: keys, events, hourly, daily, all-customer.
const INSERT_NEW_SQL: &str = concat!(
    "WITH keys AS (
    INSERT INTO usage_event_keys (event_id, customer_id, digest)
    SELECT event_id, customer_id, digest FROM tally_stage ORDER BY event_id, customer_id
    RETURNING 1
), ins AS (
    INSERT INTO usage_events (event_id, customer_id, service, quantity, recorded_at, metadata)
    SELECT event_id, customer_id, service, quantity, recorded_at, metadata FROM tally_stage
    RETURNING 1
), ",
    delta_upserts!(),
    "
SELECT (SELECT count(*) FROM keys), (SELECT count(*) FROM ins), (SELECT count(*) FROM hourly), (SELECT count(*) FROM daily),
       (SELECT count(*) FROM totals)"
);

// Direct path (see `IngestTx::write_direct`): keys and events went in by COPY; this
// upserts the rollups, in the same order and by the same rule.
const DIRECT_ROLLUPS_SQL: &str = concat!(
    "WITH ",
    delta_upserts!(),
    "
SELECT (SELECT count(*) FROM hourly), (SELECT count(*) FROM daily), (SELECT count(*) FROM totals)"
);

// Which of some keys are stored, with their payload digests: on the direct path the
// keys a batch's events may repeat (this process wrote the same key recently), on
// Citus the keys a writer could not claim. One index probe each.
const PROBE_KEYS_SQL: &str = "SELECT k.event_id, k.customer_id, k.digest
    FROM unnest($1::uuid[], $2::text[]) AS u(event_id, customer_id)
    JOIN usage_event_keys k ON k.event_id = u.event_id AND k.customer_id = u.customer_id";

// After the slow path: the digest now stored for each staged key (its own for a key
// the batch inserted, another writer's or an earlier one's for the rest).
const STAGED_DIGESTS_SQL: &str = "SELECT DISTINCT s.event_id, s.customer_id, k.digest
    FROM tally_stage s JOIN usage_event_keys k ON k.event_id = s.event_id AND k.customer_id = s.customer_id";

// After an all-or-nothing load: the staged events whose key is stored with another
// payload (by another writer, before, or by an earlier line of the load).
const STAGED_CONFLICTS_SQL: &str = "SELECT s.ord
    FROM tally_stage s JOIN usage_event_keys k ON k.event_id = s.event_id AND k.customer_id = s.customer_id
    WHERE k.digest IS NOT NULL AND k.digest IS DISTINCT FROM s.digest
    ORDER BY s.ord";

// Slow path: claims keys with ON CONFLICT DO NOTHING, waiting for concurrent writers
// of the same keys to commit, and inserts only the events whose keys it claimed. It
// reads the whole stage (a key staged twice keeps its first row: the stage is only
// appended to within a transaction, so ctid order is arrival order), so an
// all-or-nothing load can stage many batches and apply them in this one statement,
// taking its row locks in the global order like every other writer.
const APPLY_STAGED_SQL: &str = concat!(
    "WITH staged AS (
    SELECT DISTINCT ON (event_id, customer_id) event_id, customer_id, service, quantity, recorded_at, metadata, digest
    FROM tally_stage ORDER BY event_id, customer_id, ctid
), new_keys AS (
    INSERT INTO usage_event_keys (event_id, customer_id, digest)
    SELECT event_id, customer_id, digest FROM staged ORDER BY event_id, customer_id
    ON CONFLICT DO NOTHING
    RETURNING event_id, customer_id
), keys AS (
    SELECT 1 FROM new_keys
), ins AS (
    INSERT INTO usage_events (event_id, customer_id, service, quantity, recorded_at, metadata)
    SELECT s.event_id, s.customer_id, s.service, s.quantity, s.recorded_at, s.metadata
    FROM staged s JOIN new_keys k ON k.event_id = s.event_id AND k.customer_id = s.customer_id
    RETURNING customer_id, service, quantity, recorded_at
), ",
    rollup_upserts!()
);

const DEAD_LETTER_SQL: &str = "INSERT INTO usage_dead_letters
    (event_id, customer_id, service, quantity, recorded_at, metadata, error, sqlstate)
    SELECT u.*, $7::text, $8::text
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::numeric[], $5::timestamptz[], $6::text[]) AS u";

/// Lanes of the all-customer rollup. The one place the count is written: the
/// schema's `CHECK` on `usage_hourly_total.lane` is tested against it.
pub(crate) const LANES: i16 = 8;

/// A writer's lane of the all-customer rollup (`usage_hourly_total.lane`): writers on
/// different lanes never update the same rollup row, so they do not wait for each
/// other's commits there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lane(i16);

impl Lane {
    /// The next lane, round robin over the process.
    pub(crate) fn next() -> Lane {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Lane((NEXT.fetch_add(1, Ordering::Relaxed) % LANES as u64) as i16)
    }
}

/// The write path: the pool and the partition cache. Everything that stores events —
/// [`crate::Store::write`], the recorder's writers and import — goes through
/// [`Ingest::write`] or, for an all-or-nothing load, [`Ingest::begin`].
#[derive(Clone)]
pub(crate) struct Ingest {
    pool: Pool,
    // For connections outside the pool (partition creation).
    config: Arc<tokio_postgres::Config>,
    partitions: Arc<Partitions>,
    // What this process is writing, and the commit listeners.
    local: Arc<Local>,
    // Whether the database is a Citus cluster (asked once, on the first write).
    distributed: Arc<tokio::sync::OnceCell<bool>>,
    // Keys written recently (the direct path's hint).
    recent: Arc<std::sync::Mutex<RecentKeys>>,
    // The newest hourly rollup row written per customer and service (the direct
    // path's other hint).
    newest: Arc<std::sync::Mutex<NewestHours>>,
}

impl Ingest {
    pub(crate) fn new(pool: Pool, config: tokio_postgres::Config) -> Ingest {
        Ingest {
            pool,
            config: Arc::new(config),
            partitions: Arc::new(Partitions::default()),
            local: Arc::new(Local::default()),
            distributed: Arc::new(tokio::sync::OnceCell::new()),
            recent: Arc::new(std::sync::Mutex::new(RecentKeys::default())),
            newest: Arc::new(std::sync::Mutex::new(NewestHours::default())),
        }
    }

    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    // A writer that panicked mid-update leaves a hint with some hashes missing or
    // extra, which the hint tolerates by design.
    fn recent(&self) -> std::sync::MutexGuard<'_, RecentKeys> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn newest(&self) -> std::sync::MutexGuard<'_, NewestHours> {
        self.newest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn local(&self) -> &Arc<Local> {
        &self.local
    }

    /// A connection of its own, outside the pool: dropped, it closes, and the server
    /// rolls back and releases whatever it held (for archive runs).
    pub(crate) async fn connect_unpooled(
        &self,
        context: &'static str,
    ) -> Result<tokio_postgres::Client> {
        let (client, conn) = self
            .config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(Error::db(context))?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Forgets that `month` has a partition (after archiving dropped it).
    pub(crate) fn forget_partition(&self, month: chrono::NaiveDate) {
        self.partitions.forget(month);
    }

    /// Makes sure this month and `ahead` months after it have partitions (the
    /// default when `None`).
    pub(crate) async fn ensure_partitions_ahead(
        &self,
        ahead: Option<u32>,
    ) -> Result<Vec<chrono::NaiveDate>> {
        let ahead = ahead.unwrap_or(self.partitions.default_ahead());
        self.partitions.ensure_ahead(&self.config, ahead).await
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Makes sure the months of `events` have partitions (see [`Partitions::ensure_for`]:
    /// never fails the write).
    pub(crate) async fn ensure_partitions(&self, events: &[UsageEvent]) {
        self.partitions.ensure_for(&self.config, events).await;
    }

    /// Writes `events` exactly once, in one transaction: events already stored (same
    /// customer and id), or repeated within `events`, are skipped; the rest and their
    /// rollups commit together.
    pub(crate) async fn write(&self, events: &[UsageEvent], lane: Lane) -> Result<WriteOutcome> {
        if events.is_empty() {
            return Ok(WriteOutcome::default());
        }
        // Before the transaction: it must hold no lock that creating one waits for.
        self.ensure_partitions(events).await;
        let batch = Dedupe::of(events);
        let tx = self.begin(lane).await?;
        tx.write_batch(events.len(), &batch).await
    }

    /// As [`Ingest::write`], admitted first: in the same transaction, a lock of
    /// `customer` and `service` is taken and their committed usage over `period` read;
    /// `admit` is given it and, if it says no, nothing is written (`None`). Writers
    /// through this call are serialised per customer and service, and each reads every
    /// earlier one's commit: what makes a hard quota exact across processes.
    pub(crate) async fn write_admitted(
        &self,
        events: &[UsageEvent],
        lane: Lane,
        key: &(CustomerId, Service, TimeRange),
        admit: impl FnOnce(Decimal) -> bool,
    ) -> Result<Option<WriteOutcome>> {
        const CTX: &str = "admitting events";
        self.ensure_partitions(events).await;
        let batch = Dedupe::of(events);
        let tx = self.begin(lane).await?;
        let client = tx.client()?;
        // One 64-bit key per customer and service; a collision only makes two keys wait
        // for each other. The seed keeps Tally's keys apart from the application's.
        client
            .execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1 || E'\\x1f' || $2, $3))",
                &[&key.0.as_str(), &key.1.as_str(), &ADMISSION_LOCK_SEED],
            )
            .await
            .map_err(Error::db(CTX))?;
        let usage = crate::quotas::period_usage_on(client, std::slice::from_ref(key))
            .await?
            .first()
            .copied()
            .unwrap_or_default();
        if !admit(usage) {
            tx.rollback().await?;
            return Ok(None);
        }
        tx.write_batch(events.len(), &batch).await.map(Some)
    }

    /// Starts a transaction on the write path. Nothing it stages is visible until
    /// [`IngestTx::commit`]; dropping it rolls everything back.
    pub(crate) async fn begin(&self, lane: Lane) -> Result<IngestTx> {
        let client = self
            .pool
            .get()
            .await
            .map_err(Error::pool("writing events"))?;
        let distributed = *self
            .distributed
            .get_or_try_init(|| crate::migrate::is_citus(&client))
            .await?;
        let tx = IngestTx {
            client: Some(client),
            ingest: self.clone(),
            lane,
            staged: 0,
            distributed,
            applied: Applied::default(),
            conflicting: Vec::new(),
        };
        tx.client()?
            // Sorts of a 100 000-event batch spill to disk at the default 4 MB.
            .batch_execute("BEGIN; SET LOCAL work_mem = '64MB'")
            .await
            .map_err(Error::db("starting a write"))?;
        Ok(tx)
    }

    /// Stores events that cannot be written (a permanent error) in the dead-letter
    /// table with the reason, in one transaction of their own.
    pub(crate) async fn dead_letter(&self, events: &[UsageEvent], error: &Error) -> Result<()> {
        let client = self
            .pool
            .get()
            .await
            .map_err(Error::pool("storing dead letters"))?;
        let ids: Vec<Uuid> = events.iter().map(|e| e.id.uuid()).collect();
        let customers: Vec<&str> = events.iter().map(|e| e.customer.as_str()).collect();
        let services: Vec<&str> = events.iter().map(|e| e.service.as_str()).collect();
        let quantities: Vec<Decimal> = events.iter().map(|e| e.quantity.value()).collect();
        let times: Vec<DateTime<Utc>> = events.iter().map(|e| e.recorded_at).collect();
        let metadata: Vec<&str> = events.iter().map(|e| e.metadata.as_str()).collect();
        client
            .execute(
                DEAD_LETTER_SQL,
                &[
                    &ids,
                    &customers,
                    &services,
                    &quantities,
                    &times,
                    &metadata,
                    &error.to_string(),
                    &error.sqlstate(),
                ],
            )
            .await
            .map_err(Error::db("storing dead letters"))?;
        Ok(())
    }
}

/// A transaction on the write path, on a connection of its own. Batches are staged
/// with [`IngestTx::stage`], then applied: one batch by [`IngestTx::apply`] (the fast
/// path), or everything staged by [`IngestTx::apply_staged`].
pub(crate) struct IngestTx {
    // Taken by commit; still here on drop means "roll back".
    client: Option<deadpool_postgres::Client>,
    ingest: Ingest,
    lane: Lane,
    staged: u64,
    // On Citus every staged batch is written at once (see `write_distributed`); this
    // is what those writes did, reported by the next apply.
    distributed: bool,
    applied: Applied,
    // On Citus, the places of staged events found conflicting as they were written.
    conflicting: Vec<u64>,
}

/// What applying events did: how many were inserted, their total quantity, and the
/// keys among them found stored already, with their stored digests (what
/// [`Dedupe::conflicts`] compares).
#[derive(Default)]
pub(crate) struct Applied {
    pub(crate) inserted: u64,
    pub(crate) quantity: Decimal,
    stored: KeySet,
}

impl Applied {
    fn add(&mut self, o: Applied) -> Result<()> {
        self.inserted += o.inserted;
        self.quantity = tally_core::add_exact(self.quantity, o.quantity, "a batch's total")?;
        self.stored.extend(o.stored);
        Ok(())
    }
}

impl Drop for IngestTx {
    fn drop(&mut self) {
        // Not committed: close the connection instead of returning it to the pool in
        // the middle of a transaction. The server rolls the transaction back.
        if let Some(client) = self.client.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

impl IngestTx {
    fn client(&self) -> Result<&deadpool_postgres::Client> {
        self.client.as_ref().ok_or_else(Error::closed)
    }

    /// The direct path for one batch: keys and events go straight in by binary COPY
    /// (no stage), then the rollups. Events whose key this process wrote recently
    /// ([`RecentKeys`]) are checked against the key table first and dropped if stored.
    /// Returns `None`, with nothing of the batch written, when the batch cannot take
    /// this path (on Citus) or a key turned out to be stored already (the COPY fails
    /// on the unique key and is rolled back to a savepoint): the caller stages it.
    async fn write_direct(&mut self, unique: &[&UsageEvent]) -> Result<Option<Applied>> {
        if self.distributed {
            return Ok(None);
        }
        // Each event with its key's hash, computed once for the lookup and to remember.
        let (mut new, maybe): (Vec<Hashed>, Vec<Hashed>) = {
            let recent = self.ingest.recent();
            unique
                .iter()
                .copied()
                .map(|e| (e, recent.hash((e.id.uuid(), e.customer.as_str()))))
                .partition(|(_, h)| !recent.set.contains(h))
        };
        let client = self.client()?;
        let mut stored = KeySet::default();
        if !maybe.is_empty() {
            let ids: Vec<Uuid> = maybe.iter().map(|(e, _)| e.id.uuid()).collect();
            let customers: Vec<&str> = maybe.iter().map(|(e, _)| e.customer.as_str()).collect();
            let probe = client
                .prepare_cached(PROBE_KEYS_SQL)
                .await
                .map_err(Error::db("preparing the ingest statement"))?;
            let rows = client
                .query(&probe, &[&ids, &customers])
                .await
                .map_err(Error::db("looking up event keys"))?;
            stored = KeySet::of(&rows, "looking up event keys")?;
            new.extend(maybe.into_iter().filter(|(e, _)| !stored.contains(e)));
        }
        if new.is_empty() {
            return Ok(Some(Applied {
                stored,
                ..Applied::default()
            }));
        }
        // Keys in key order: the lock order every writer follows.
        new.sort_unstable_by(|(a, _), (b, _)| {
            (a.id.uuid(), a.customer.as_str()).cmp(&(b.id.uuid(), b.customer.as_str()))
        });
        let (new, hashes): (Vec<&UsageEvent>, Vec<u64>) = new.into_iter().unzip();
        client
            .batch_execute("SAVEPOINT tally_direct")
            .await
            .map_err(Error::db("preparing a batch"))?;
        let written = async {
            copy_keys(client, &new).await?;
            copy_events(client, &new).await?;
            let mut r = Rollups::of(new.iter().copied())?;
            let (fresh, newest) = self.ingest.newest().split(&r.hourly);
            copy_new_hourly(client, &mut r, &fresh).await?;
            let deltas = DeltaParams::of(&r, self.lane)?;
            let stmt = client
                .prepare_cached(DIRECT_ROLLUPS_SQL)
                .await
                .map_err(Error::db("preparing the ingest statement"))?;
            client
                .query_one(&stmt, &deltas.params())
                .await
                .map_err(Error::db("updating the rollups"))?;
            Ok::<_, Error>(((r.events, r.quantity), newest))
        }
        .await;
        match written {
            Ok(((inserted, quantity), newest)) => {
                client
                    .batch_execute("RELEASE SAVEPOINT tally_direct")
                    .await
                    .map_err(Error::db("releasing the savepoint"))?;
                self.ingest.recent().remember(hashes.into_iter());
                self.ingest.newest().remember(newest);
                Ok(Some(Applied {
                    inserted,
                    quantity,
                    stored,
                }))
            }
            Err(e) if e.sqlstate() == Some(SqlState::UNIQUE_VIOLATION.code()) => {
                tracing::debug!("some events of the batch were stored before; staging it");
                client
                    .batch_execute("ROLLBACK TO SAVEPOINT tally_direct")
                    .await
                    .map_err(Error::db("rolling back to the savepoint"))?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Copies `unique` (events with distinct keys: [`Dedupe`]) into the transaction's
    /// staging table by binary COPY (on Citus: writes them at once, see
    /// `write_distributed`); the caller has made sure their months have partitions
    /// ([`Ingest::ensure_partitions`]). Each is staged with its place among all the
    /// events this transaction staged (from 0), which
    /// [`IngestTx::staged_conflicts`] names.
    pub(crate) async fn stage(&mut self, unique: &[&UsageEvent]) -> Result<()> {
        let client = self.client()?;
        if self.distributed {
            let applied = write_distributed(client, unique, self.lane).await?;
            for (e, ord) in unique.iter().zip(self.staged..) {
                if applied
                    .stored
                    .digest_of(e)
                    .is_some_and(|d| d.is_some_and(|d| d != e.digest()))
                {
                    self.conflicting.push(ord);
                }
            }
            self.applied.add(applied)?;
            self.staged += unique.len() as u64;
            return Ok(());
        }
        if self.staged == 0 {
            // A stage made by an older build (without the digest) is made anew.
            let current: Option<bool> = client
                .query_one(
                    "SELECT (SELECT true FROM pg_attribute WHERE attrelid = c.oid AND attname = 'ord')
                     FROM (SELECT to_regclass('pg_temp.tally_stage') AS oid) c WHERE c.oid IS NOT NULL",
                    &[],
                )
                .await
                .map_or(None, |r| r.try_get::<_, Option<bool>>(0).ok().map(|v| v.unwrap_or(false)));
            match current {
                Some(true) => {}
                Some(false) => client
                    .batch_execute(&format!("DROP TABLE pg_temp.tally_stage; {STAGE_DDL}"))
                    .await
                    .map_err(Error::db("creating the staging table"))?,
                None => client
                    .batch_execute(STAGE_DDL)
                    .await
                    .map_err(Error::db("creating the staging table"))?,
            }
        }
        copy_stage(client, unique, self.staged).await?;
        self.staged += unique.len() as u64;
        Ok(())
    }

    /// Applies one staged batch (`unique`, as [`IngestTx::stage`] returned it): the
    /// fast path, falling back to [`IngestTx::apply_staged`] when a concurrent writer
    /// claimed some of the same keys meanwhile. Returns the events inserted and their
    /// total quantity.
    pub(crate) async fn apply(&mut self, unique: &[&UsageEvent]) -> Result<Applied> {
        if self.distributed {
            return Ok(std::mem::take(&mut self.applied));
        }
        let client = self.client()?;
        client
            .batch_execute("SAVEPOINT tally_fast")
            .await
            .map_err(Error::db("preparing a batch"))?;
        match insert_new(client, unique, self.lane).await {
            Ok(r) => {
                client
                    .batch_execute("RELEASE SAVEPOINT tally_fast")
                    .await
                    .map_err(Error::db("releasing the savepoint"))?;
                Ok(r)
            }
            Err(e) if e.sqlstate() == Some(SqlState::UNIQUE_VIOLATION.code()) => {
                tracing::debug!(
                    "a concurrent writer stored some of the same events; taking the slow path"
                );
                client
                    .batch_execute("ROLLBACK TO SAVEPOINT tally_fast")
                    .await
                    .map_err(Error::db("rolling back to the savepoint"))?;
                let mut applied = self.apply_staged().await?;
                applied.stored = self.staged_digests().await?;
                Ok(applied)
            }
            Err(e) => Err(e),
        }
    }

    /// The digest stored now for each staged key (after the slow path, whose
    /// statement says only how many keys it claimed).
    async fn staged_digests(&self) -> Result<KeySet> {
        let rows = self
            .client()?
            .query(STAGED_DIGESTS_SQL, &[])
            .await
            .map_err(Error::db("reading event digests"))?;
        KeySet::of(&rows, "reading event digests")
    }

    /// After [`IngestTx::apply_staged`] of an all-or-nothing load: the places (see
    /// [`IngestTx::stage`]) of the staged events whose key is stored with another
    /// payload, in order.
    pub(crate) async fn staged_conflicts(&self) -> Result<Vec<u64>> {
        if self.distributed {
            return Ok(self.conflicting.clone());
        }
        let rows = self
            .client()?
            .query(STAGED_CONFLICTS_SQL, &[])
            .await
            .map_err(Error::db("looking for conflicting events"))?;
        rows.iter()
            .map(|r| {
                r.try_get::<_, i64>(0)
                    .map(|o| u64::try_from(o).unwrap_or_default())
                    .map_err(Error::db("looking for conflicting events"))
            })
            .collect()
    }

    /// Applies everything staged in this transaction in one statement (the slow
    /// path's `ON CONFLICT` key claim). Returns the events inserted and their total
    /// quantity.
    pub(crate) async fn apply_staged(&mut self) -> Result<Applied> {
        if self.distributed {
            return Ok(std::mem::take(&mut self.applied));
        }
        let client = self.client()?;
        let stmt = client
            .prepare_cached(APPLY_STAGED_SQL)
            .await
            .map_err(Error::db("preparing the ingest statement"))?;
        let row = client
            .query_one(&stmt, &[&self.lane.0])
            .await
            .map_err(Error::db("applying a batch"))?;
        let inserted: i64 = row
            .try_get(0)
            .map_err(Error::db("reading the batch result"))?;
        let quantity: Decimal = row
            .try_get(1)
            .map_err(Error::db("reading the batch result"))?;
        Ok(Applied {
            inserted: u64::try_from(inserted).unwrap_or_default(),
            quantity,
            ..Applied::default()
        })
    }

    /// Writes one deduplicated batch of `len` events and commits.
    async fn write_batch(mut self, len: usize, batch: &Dedupe<'_>) -> Result<WriteOutcome> {
        let applied = match self.write_direct(&batch.unique).await? {
            Some(written) => written,
            None => {
                self.stage(&batch.unique).await?;
                self.apply(&batch.unique).await?
            }
        };
        self.commit().await?;
        let conflicts = batch.conflicts(&applied.stored);
        Ok(WriteOutcome {
            inserted: applied.inserted,
            duplicates: len as u64 - applied.inserted - conflicts.len() as u64,
            quantity: applied.quantity,
            conflicts,
        })
    }

    /// Rolls back, keeping the connection for the pool (a drop discards it).
    pub(crate) async fn rollback(self) -> Result<()> {
        self.end("ROLLBACK", "rolling a write back").await
    }

    /// Commits: everything applied becomes visible at once.
    pub(crate) async fn commit(self) -> Result<()> {
        self.end("COMMIT", "committing events").await
    }

    async fn end(mut self, statement: &str, context: &'static str) -> Result<()> {
        let client = self.client.take().ok_or_else(Error::closed)?;
        client
            .batch_execute(statement)
            .await
            .map_err(Error::db(context))
    }
}

/// The seed of the admission lock's key ("tallyq" in ASCII).
const ADMISSION_LOCK_SEED: i64 = 0x7461_6c6c_7971;

/// A rollup row's key as stored: customer (empty for the all-customer rollup),
/// service, bucket.
type RowKey<'a> = (&'a str, &'a str, DateTime<Utc>);

/// Rollup deltas in key order (customer, service, bucket: the lock order).
type Deltas<'a> = Vec<(RowKey<'a>, Totals)>;
type QuarterDeltas<'a> = Vec<(RowKey<'a>, Quarters)>;

/// A rollup key while a batch is aggregated: customer and service numbered per batch
/// ([`Names`]) and the bucket in seconds, so each event's map operations hash three
/// integers. (Profiled: with string keys in a `BTreeMap`, comparing customer ids was a
/// fifth of all CPU time of a load, client and server together.)
type Key = (u32, u32, i64);

/// Hashes the small integer keys this module builds itself ([`Key`], and
/// [`RecentKeys`]' values, which are already random 64-bit hashes) with one multiply
/// per word instead of SipHash, which was 6 % of a load's CPU. Never used for keys a
/// client chooses (those stay on SipHash with a random seed).
#[derive(Default, Clone, Copy)]
struct WordHasher(u64);

impl std::hash::Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        // FxHash's step: rotate, mix in, multiply by an odd constant.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

type WordMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<WordHasher>>;

/// The distinct strings of a batch, numbered in order of appearance.
#[derive(Default)]
struct Names<'a> {
    ids: HashMap<&'a str, u32>,
    names: Vec<&'a str>,
}

impl<'a> Names<'a> {
    fn id(&mut self, s: &'a str) -> u32 {
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        let i = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(s);
        self.ids.insert(s, i);
        i
    }

    fn name(&self, id: u32) -> &'a str {
        self.names.get(id as usize).copied().unwrap_or_default()
    }

    /// Each id's rank in byte order (the order of the "C" collation).
    fn ranks(&self) -> Vec<u32> {
        let mut order: Vec<u32> =
            (0..u32::try_from(self.names.len()).unwrap_or(u32::MAX)).collect();
        order.sort_unstable_by_key(|&i| self.name(i));
        let mut rank = vec![0; order.len()];
        for (r, i) in order.into_iter().enumerate() {
            if let Some(slot) = rank.get_mut(i as usize) {
                *slot = u32::try_from(r).unwrap_or(u32::MAX);
            }
        }
        rank
    }
}

/// `map` in key order, with names and instants for keys. `customers` is `None` for
/// the all-customer rollup (its key has no customer).
fn in_key_order<'a, V>(
    map: WordMap<Key, V>,
    customers: Option<&Names<'a>>,
    services: &Names<'a>,
) -> Vec<(RowKey<'a>, V)> {
    let (c_rank, s_rank) = (
        customers.map(Names::ranks).unwrap_or_default(),
        services.ranks(),
    );
    let rank = |r: &[u32], i: u32| r.get(i as usize).copied().unwrap_or(u32::MAX);
    let mut rows: Vec<(Key, V)> = map.into_iter().collect();
    rows.sort_unstable_by_key(|((c, s, t), _)| (rank(&c_rank, *c), rank(&s_rank, *s), *t));
    rows.into_iter()
        .filter_map(|((c, s, t), v)| {
            let customer = customers.map_or("", |n| n.name(c));
            Some((
                (customer, services.name(s), DateTime::from_timestamp(t, 0)?),
                v,
            ))
        })
        .collect()
}

/// Adds an event of quantity `q` at `t` (seconds since the epoch) to the quarter-hour
/// detail of its hour.
fn add_quarters(quarters: &mut WordMap<Key, Quarters>, key: Key, t: i64, q: Decimal) -> Result<()> {
    // 0..3600 seconds: the minute is 0..59.
    let minute = u32::try_from(t.rem_euclid(3600) / 60).unwrap_or(59);
    Ok(quarters
        .entry(key)
        .or_default()
        .add(Quarters::of_minute(minute), q)?)
}

/// The fast path (see `DROP_STORED_SQL` and `INSERT_NEW_SQL`). Returns the events
/// inserted and their total quantity; a unique violation means "take the slow path".
async fn insert_new(
    client: &deadpool_postgres::Client,
    events: &[&UsageEvent],
    lane: Lane,
) -> Result<Applied> {
    let db = Error::db;
    let drop_stored = client
        .prepare_cached(DROP_STORED_SQL)
        .await
        .map_err(db("preparing the ingest statement"))?;
    let rows = client
        .query(&drop_stored, &[])
        .await
        .map_err(db("dropping stored events"))?;
    // Usually about 1 % of a batch.
    let stored = KeySet::of(&rows, "dropping stored events")?;
    let r = Rollups::of(events.iter().copied().filter(|e| !stored.contains(e)))?;
    let deltas = DeltaParams::of(&r, lane)?;
    let (new, total) = (r.events, r.quantity);
    let insert = client
        .prepare_cached(INSERT_NEW_SQL)
        .await
        .map_err(db("preparing the ingest statement"))?;
    let params = deltas.params();
    let row = client
        .query_one(&insert, &params)
        .await
        .map_err(db("applying a batch"))?;
    let inserted: i64 = row.try_get(1).map_err(db("applying a batch"))?;
    debug_assert_eq!(inserted as u64, new, "every staged event left is new");
    Ok(Applied {
        inserted: u64::try_from(inserted).unwrap_or_default(),
        quantity: total,
        stored,
    })
}

/// Copies `events` into the events table by binary COPY.
async fn copy_events(client: &deadpool_postgres::Client, events: &[&UsageEvent]) -> Result<()> {
    let mut writer = copy_writer(
        client,
        "COPY usage_events (event_id, customer_id, service, quantity, recorded_at, metadata) FROM STDIN BINARY",
        &EVENT_TYPES,
    )
    .await?;
    for e in events {
        let (id, quantity) = (e.id.uuid(), e.quantity.value());
        writer
            .as_mut()
            .write(&[
                &id,
                &e.customer.as_str(),
                &e.service.as_str(),
                &quantity,
                &e.recorded_at,
                &Jsonb(e.metadata.as_str()),
            ])
            .await
            .map_err(Error::db("copying events"))?;
    }
    copy_finish(writer).await
}

/// Copies `events` into the stage by binary COPY, with their digests and their places
/// from `first` on.
async fn copy_stage(
    client: &deadpool_postgres::Client,
    events: &[&UsageEvent],
    first: u64,
) -> Result<()> {
    let mut writer = copy_writer(
        client,
        "COPY tally_stage (event_id, customer_id, service, quantity, recorded_at, metadata, digest, ord) FROM STDIN BINARY",
        &STAGE_TYPES,
    )
    .await?;
    for (e, ord) in events.iter().zip(first..) {
        let (id, quantity) = (e.id.uuid(), e.quantity.value());
        let ord = i64::try_from(ord).unwrap_or(i64::MAX);
        writer
            .as_mut()
            .write(&[
                &id,
                &e.customer.as_str(),
                &e.service.as_str(),
                &quantity,
                &e.recorded_at,
                &Jsonb(e.metadata.as_str()),
                &e.digest(),
                &ord,
            ])
            .await
            .map_err(Error::db("staging events"))?;
    }
    copy_finish(writer).await
}

/// Copies the keys of `events` (sorted by key: the lock order), with their payload
/// digests, into the key table by binary COPY. A key stored already fails it with a
/// unique violation.
async fn copy_keys(client: &deadpool_postgres::Client, events: &[&UsageEvent]) -> Result<()> {
    let mut writer = copy_writer(
        client,
        "COPY usage_event_keys (event_id, customer_id, digest) FROM STDIN BINARY",
        &[Type::UUID, Type::TEXT, Type::INT8],
    )
    .await?;
    for e in events {
        writer
            .as_mut()
            .write(&[&e.id.uuid(), &e.customer.as_str(), &e.digest()])
            .await
            .map_err(Error::db("copying event keys"))?;
    }
    copy_finish(writer).await
}

type CopyWriter = std::pin::Pin<Box<BinaryCopyInWriter>>;

/// Starts the binary `COPY … FROM STDIN BINARY` of `sql`, columns of `types`.
async fn copy_writer(
    client: &deadpool_postgres::Client,
    sql: &str,
    types: &[Type],
) -> Result<CopyWriter> {
    let sink = client
        .copy_in(sql)
        .await
        .map_err(Error::db("starting COPY"))?;
    Ok(Box::pin(BinaryCopyInWriter::new(sink, types)))
}

async fn copy_finish(mut writer: CopyWriter) -> Result<()> {
    writer
        .as_mut()
        .finish()
        .await
        .map_err(Error::db("finishing COPY"))?;
    Ok(())
}

/// Direct path: copies the hourly rollup rows of `r` that the hint ([`NewestHours`],
/// one flag per row in `fresh`) says are not stored into `usage_hourly`, and takes
/// them out of `r`, leaving the rows to merge into stored ones. In a backfill nearly
/// every hourly row of a batch is new, and `COPY` inserts them in bulk where `ON
/// CONFLICT` inserts each speculatively. If one is stored after all (another process
/// wrote it), the unique key fails the COPY, it is undone, and every row is merged as
/// before: the hint never decides alone. Lock order: new rows are taken before the
/// merged ones, each in key order, so two processes whose hints disagree about a row
/// can wait for each other; PostgreSQL then aborts one (deadlock, a transient error)
/// and its batch is retried. That needs a wrong hint in both at once, at an hour's
/// first batches.
async fn copy_new_hourly(
    client: &deadpool_postgres::Client,
    r: &mut Rollups<'_>,
    fresh: &[bool],
) -> Result<()> {
    let rows: Vec<&(RowKey<'_>, Quarters)> = r
        .hourly
        .iter()
        .zip(fresh)
        .filter(|(_, f)| **f)
        .map(|(d, _)| d)
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    client
        .batch_execute("SAVEPOINT tally_rows")
        .await
        .map_err(Error::db("preparing a batch"))?;
    let copied = copy_hourly(client, &rows).await;
    drop(rows);
    match copied {
        Ok(()) => {
            client
                .batch_execute("RELEASE SAVEPOINT tally_rows")
                .await
                .map_err(Error::db("releasing the savepoint"))?;
            let mut fresh = fresh.iter();
            r.hourly.retain(|_| !fresh.next().copied().unwrap_or(false));
            Ok(())
        }
        Err(e) if e.sqlstate() == Some(SqlState::UNIQUE_VIOLATION.code()) => {
            tracing::debug!("an hourly rollup row was stored before; merging them all");
            client
                .batch_execute("ROLLBACK TO SAVEPOINT tally_rows")
                .await
                .map_err(Error::db("rolling back to the savepoint"))
        }
        Err(e) => Err(e),
    }
}

// The columns of `copy_hourly`: key, totals, then `quarter_columns!`.
const HOURLY_TYPES: [Type; 21] = {
    const N: Type = Type::NUMERIC;
    const I: Type = Type::INT8;
    #[rustfmt::skip]
    let types = [
        Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ, I, N, N, N,
        N, N, N, I, I, I,
        N, N, N, N, N, N, N, N,
    ];
    types
};

/// Copies hourly rollup rows into `usage_hourly` by binary COPY, in key order; a row
/// stored already fails it with a unique violation.
async fn copy_hourly(
    client: &deadpool_postgres::Client,
    rows: &[&(RowKey<'_>, Quarters)],
) -> Result<()> {
    let mut writer = copy_writer(
        client,
        concat!(
            "COPY usage_hourly (customer_id, service, bucket, events, quantity, min_quantity, max_quantity, ",
            quarter_columns!(),
            ") FROM STDIN BINARY"
        ),
        &HOURLY_TYPES,
    )
    .await?;
    for ((customer, service, bucket), q) in rows.iter().copied() {
        let t = q.part(0, 4)?.unwrap_or(Totals::of(Decimal::ZERO));
        let c = q.columns()?;
        let [q15, q30, q45] = &c.quantity_by;
        let [e15, e30, e45] = &c.events_by;
        let [n0, n1, n2, n3] = &c.min;
        let [x0, x1, x2, x3] = &c.max;
        writer
            .as_mut()
            .write(&[
                customer,
                service,
                bucket,
                &t.events,
                &t.quantity,
                &t.min,
                &t.max,
                q15,
                q30,
                q45,
                e15,
                e30,
                e45,
                n0,
                n1,
                n2,
                n3,
                x0,
                x1,
                x2,
                x3,
            ])
            .await
            .map_err(Error::db("copying rollup rows"))?;
    }
    copy_finish(writer).await
}

/// Event keys a statement returned as `(event_id, customer_id[, digest])` rows: the
/// replays the fast path dropped, the stored keys the direct path found, the keys
/// Citus let a writer claim; with the payload digest stored for each when the
/// statement returned one (`None`: not known, a key stored before digests were).
#[derive(Default)]
struct KeySet(HashMap<Uuid, Vec<(String, Option<i64>)>>);

impl KeySet {
    fn of(rows: &[tokio_postgres::Row], context: &'static str) -> Result<KeySet> {
        let mut ids: HashMap<Uuid, Vec<(String, Option<i64>)>> = HashMap::with_capacity(rows.len());
        for r in rows {
            let id: Uuid = r.try_get(0).map_err(Error::db(context))?;
            let digest = match r.len() > 2 {
                true => r.try_get(2).map_err(Error::db(context))?,
                false => None,
            };
            ids.entry(id)
                .or_default()
                .push((r.try_get(1).map_err(Error::db(context))?, digest));
        }
        Ok(KeySet(ids))
    }

    /// Whether `e`'s key is in the set (by id first; no key is built per event).
    fn contains(&self, e: &UsageEvent) -> bool {
        self.digest_of(e).is_some()
    }

    /// The digest stored with `e`'s key, if the key is in the set.
    fn digest_of(&self, e: &UsageEvent) -> Option<Option<i64>> {
        self.0.get(&e.id.uuid()).and_then(|customers| {
            customers
                .iter()
                .find(|(c, _)| c == e.customer.as_str())
                .map(|(_, d)| *d)
        })
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn extend(&mut self, other: KeySet) {
        for (id, keys) in other.0 {
            self.0.entry(id).or_default().extend(keys);
        }
    }
}

/// A batch with each key once: a key repeated inside a batch is the same event (or a
/// conflict, if its payload differs), and its first occurrence is the one written.
pub(crate) struct Dedupe<'e> {
    events: &'e [UsageEvent],
    /// The first event of each key, in order.
    pub(crate) unique: Vec<&'e UsageEvent>,
    /// Where each of `unique` is in the batch.
    pub(crate) index: Vec<usize>,
    /// Whether a key came more than once.
    repeats: bool,
}

impl<'e> Dedupe<'e> {
    pub(crate) fn of(events: &'e [UsageEvent]) -> Dedupe<'e> {
        let mut seen = HashSet::with_capacity(events.len());
        let (mut unique, mut index) = (Vec::with_capacity(events.len()), Vec::new());
        for (i, e) in events.iter().enumerate() {
            if seen.insert((e.id, e.customer.as_str())) {
                unique.push(e);
                index.push(i);
            }
        }
        let repeats = unique.len() < events.len();
        Dedupe {
            events,
            unique,
            index,
            repeats,
        }
    }

    /// The events (indexes into the batch) that conflict: their key is stored with
    /// another payload digest (`stored`, what the write found), or came earlier in the
    /// batch with another payload. A key stored without a digest (before digests
    /// were kept) conflicts with nothing. Digests are computed only for the events
    /// whose key was found stored or repeated.
    /// The events that repeat an earlier key of the batch with another payload.
    pub(crate) fn repeat_conflicts(&self) -> Vec<usize> {
        self.conflicts(&KeySet::default())
    }

    fn conflicts(&self, stored: &KeySet) -> Vec<usize> {
        if stored.is_empty() && !self.repeats {
            return Vec::new();
        }
        let mut first: HashMap<(tally_core::EventId, &str), i64> = HashMap::new();
        let mut out = Vec::new();
        let mut next_unique = self.index.iter().peekable();
        for (i, e) in self.events.iter().enumerate() {
            let is_first = next_unique.next_if(|&&j| j == i).is_some();
            match stored.digest_of(e) {
                Some(Some(d)) if d != e.digest() => out.push(i),
                Some(_) => {}
                None if self.repeats => {
                    let d = e.digest();
                    let key = (e.id, e.customer.as_str());
                    if is_first {
                        first.insert(key, d);
                    } else if first.get(&key).is_some_and(|f| *f != d) {
                        out.push(i);
                    }
                }
                None => {}
            }
        }
        out
    }
}

/// Keys this process wrote recently, as 64-bit hashes, the oldest forgotten first:
/// what lets the direct path skip the stage. A retry usually follows its original
/// within seconds and reaches the same process; its key is found here and checked
/// against the database, while a batch of keys not found here goes straight in by
/// COPY. It never decides alone: a hash collision only sends an event to that check,
/// and a key this process did not see (another process wrote it, or it was forgotten)
/// makes the COPY fail on the unique key, and the batch takes the staged path.
pub(crate) struct RecentKeys {
    set: HashSet<u64, std::hash::BuildHasherDefault<WordHasher>>,
    order: std::collections::VecDeque<u64>,
    hasher: std::hash::RandomState,
}

/// An event with the hash of its key ([`RecentKeys::hash`]).
type Hashed<'e> = (&'e UsageEvent, u64);

/// How many keys [`RecentKeys`] holds: ~6 MB, several minutes of a busy writer.
const RECENT_KEYS: usize = 1 << 18;

impl Default for RecentKeys {
    fn default() -> RecentKeys {
        RecentKeys {
            set: HashSet::with_capacity_and_hasher(RECENT_KEYS, Default::default()),
            order: std::collections::VecDeque::with_capacity(RECENT_KEYS),
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl RecentKeys {
    fn hash(&self, key: impl std::hash::Hash) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    fn remember(&mut self, hashes: impl Iterator<Item = u64>) {
        for h in hashes {
            if self.set.insert(h) {
                self.order.push_back(h);
                if self.order.len() > RECENT_KEYS
                    && let Some(old) = self.order.pop_front()
                {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// Per customer and service, the newest hour whose hourly rollup row this process
/// wrote: a batch's row for a later hour is new unless another process wrote it,
/// which is what lets the direct path `COPY` new rows (a backfill's are nearly all
/// new; a live process makes one per customer and service each hour). A hint only:
/// wrong in one direction it sends a new row to the merge (correct, slower), in the
/// other the `COPY` fails on the unique key and the rows are merged
/// ([`copy_new_hourly`]). Bounded: one slot per hash, a pair evicting another that
/// shares its slot (the evicted pair's rows are merged until written again).
pub(crate) struct NewestHours {
    // (hash of customer and service, newest hour in seconds); hash 0 = empty.
    slots: Vec<(u64, i64)>,
    hasher: std::hash::RandomState,
}

/// Slots of [`NewestHours`]: 1 MB.
const NEWEST_SLOTS: usize = 1 << 16;

impl Default for NewestHours {
    fn default() -> NewestHours {
        NewestHours {
            slots: vec![(0, 0); NEWEST_SLOTS],
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl NewestHours {
    fn slot(&self, customer: &str, service: &str) -> (usize, u64) {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one((customer, service)).max(1);
        ((h % NEWEST_SLOTS as u64) as usize, h)
    }

    /// Which of `rows` (in key order) are new by the hint, and the newest hour of each
    /// customer and service among them, to [`NewestHours::remember`] once written.
    fn split(&self, rows: &QuarterDeltas<'_>) -> (Vec<bool>, Vec<(usize, u64, i64)>) {
        let mut fresh = Vec::with_capacity(rows.len());
        let mut newest: Vec<(usize, u64, i64)> = Vec::new();
        let mut pair: Option<(&str, &str)> = None;
        let mut seen: Option<i64> = None;
        for ((customer, service, bucket), _) in rows {
            let hour = bucket.timestamp();
            if pair != Some((customer, service)) {
                pair = Some((customer, service));
                let (i, h) = self.slot(customer, service);
                seen = self
                    .slots
                    .get(i)
                    .and_then(|&(tag, newest)| (tag == h).then_some(newest));
                newest.push((i, h, hour));
            } else if let Some(last) = newest.last_mut() {
                last.2 = hour; // key order: the pair's later hours come later
            }
            fresh.push(seen.is_some_and(|s| hour > s));
        }
        (fresh, newest)
    }

    fn remember(&mut self, newest: Vec<(usize, u64, i64)>) {
        for (i, h, hour) in newest {
            if let Some(slot) = self.slots.get_mut(i) {
                *slot = if slot.0 == h {
                    (h, slot.1.max(hour))
                } else {
                    (h, hour)
                };
            }
        }
    }
}

/// The rollup deltas of a set of new events, computed here so that each rollup gets
/// one row per key (the fast path and the distributed path send them as arrays).
struct Rollups<'a> {
    /// Per customer, service and UTC hour, by quarter hour (the hour's totals are the
    /// quarters merged).
    hourly: QuarterDeltas<'a>,
    daily: Deltas<'a>,
    /// All customers (empty customer), per service and UTC hour.
    totals: QuarterDeltas<'a>,
    events: u64,
    quantity: Decimal,
}

impl<'a> Rollups<'a> {
    fn of(events: impl Iterator<Item = &'a UsageEvent>) -> Result<Rollups<'a>> {
        let (mut customers, mut services) = (Names::default(), Names::default());
        let mut hourly: WordMap<Key, Quarters> = WordMap::default();
        let mut daily: WordMap<Key, Totals> = WordMap::default();
        let mut totals: WordMap<Key, Quarters> = WordMap::default();
        let (mut n, mut quantity) = (0u64, Decimal::ZERO);
        for e in events {
            let q = e.quantity.value();
            let c = customers.id(e.customer.as_str());
            let s = services.id(e.service.as_str());
            let t = e.recorded_at.timestamp();
            let (hour, day) = (t - t.rem_euclid(3600), t - t.rem_euclid(86_400));
            add_quarters(&mut hourly, (c, s, hour), t, q)?;
            match daily.entry((c, s, day)) {
                hash_map::Entry::Occupied(mut d) => d.get_mut().add(q)?,
                hash_map::Entry::Vacant(v) => {
                    v.insert(Totals::of(q));
                }
            }
            // All customers added up: no customer in the key.
            add_quarters(&mut totals, (0, s, hour), t, q)?;
            quantity = tally_core::add_exact(quantity, q, "a batch's total")?;
            n += 1;
        }
        Ok(Rollups {
            hourly: in_key_order(hourly, Some(&customers), &services),
            daily: in_key_order(daily, Some(&customers), &services),
            totals: in_key_order(totals, None, &services),
            events: n,
            quantity,
        })
    }
}

// The distributed path (Citus): no temporary stage, since a coordinator-local temp
// table cannot be joined to distributed tables. Keys are claimed from arrays with
// `ON CONFLICT DO NOTHING` (waiting for a concurrent writer of the same key, like the
// slow path) and `RETURNING` says which are ours — the command tag would not
// (citus#3377); then the claimed events go in by binary COPY and the rollups by the
// same merge rule, each statement on its own: Citus routes every row to its shard.
const CLAIM_KEYS_SQL: &str = "INSERT INTO usage_event_keys (event_id, customer_id, digest)
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::int8[]) ON CONFLICT DO NOTHING
    RETURNING event_id, customer_id";

const HOURLY_SQL: &str = concat!(
    "INSERT INTO usage_hourly AS r (customer_id, service, bucket, events, quantity, min_quantity, max_quantity,
                               ",
    quarter_columns!(),
    ")
    SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::int8[], $5::numeric[], $6::numeric[],
                         $7::numeric[], $8::numeric[], $9::numeric[], $10::numeric[], $11::int8[], $12::int8[],
                         $13::int8[], $14::numeric[], $15::numeric[], $16::numeric[], $17::numeric[],
                         $18::numeric[], $19::numeric[], $20::numeric[], $21::numeric[])
",
    merge!("customer_id, service, bucket"),
    merge_quarters!()
);

const DAILY_SQL: &str = concat!(
    "INSERT INTO usage_daily AS r (customer_id, service, bucket, events, quantity, min_quantity, max_quantity)
    SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::int8[], $5::numeric[], $6::numeric[],
                         $7::numeric[])
",
    merge!("customer_id, service, bucket")
);

const TOTALS_SQL: &str = concat!(
    "INSERT INTO usage_hourly_total AS r (service, bucket, lane, events, quantity, min_quantity, max_quantity,
                                     ",
    quarter_columns!(),
    ")
    SELECT u.service, u.bucket, $7::int2, u.events, u.quantity, u.lo, u.hi,
           u.q15, u.q30, u.q45, u.e15, u.e30, u.e45, u.n0, u.n1, u.n2, u.n3, u.x0, u.x1, u.x2, u.x3
    FROM unnest($1::text[], $2::timestamptz[], $3::int8[], $4::numeric[], $5::numeric[], $6::numeric[],
                $8::numeric[], $9::numeric[], $10::numeric[], $11::int8[], $12::int8[], $13::int8[],
                $14::numeric[], $15::numeric[], $16::numeric[], $17::numeric[],
                $18::numeric[], $19::numeric[], $20::numeric[], $21::numeric[])
        AS u(service, bucket, events, quantity, lo, hi, q15, q30, q45, e15, e30, e45, n0, n1, n2, n3, x0, x1, x2, x3)
",
    merge!("service, bucket, lane"),
    merge_quarters!()
);

/// Writes `events` (unique within themselves) exactly once on a Citus cluster, in the
/// caller's transaction. Returns the events inserted and their total quantity.
async fn write_distributed(
    client: &deadpool_postgres::Client,
    events: &[&UsageEvent],
    lane: Lane,
) -> Result<Applied> {
    let db = Error::db;
    // Claimed in key order, like every other writer.
    let mut keys: Vec<(Uuid, &str, i64)> = events
        .iter()
        .map(|e| (e.id.uuid(), e.customer.as_str(), e.digest()))
        .collect();
    keys.sort_unstable();
    let (mut ids, mut customers, mut digests) = (Vec::new(), Vec::new(), Vec::new());
    for (id, customer, digest) in keys {
        ids.push(id);
        customers.push(customer);
        digests.push(digest);
    }
    let rows = client
        .query(CLAIM_KEYS_SQL, &[&ids, &customers, &digests])
        .await
        .map_err(db("claiming event keys"))?;
    let claimed = KeySet::of(&rows, "claiming event keys")?;
    let (new, taken): (Vec<&UsageEvent>, Vec<&UsageEvent>) =
        events.iter().copied().partition(|e| claimed.contains(e));
    // The digests of the keys others hold (a new statement: it sees what the claim
    // waited for).
    let mut stored = KeySet::default();
    if !taken.is_empty() {
        let ids: Vec<Uuid> = taken.iter().map(|e| e.id.uuid()).collect();
        let customers: Vec<&str> = taken.iter().map(|e| e.customer.as_str()).collect();
        let rows = client
            .query(PROBE_KEYS_SQL, &[&ids, &customers])
            .await
            .map_err(db("looking up event keys"))?;
        stored = KeySet::of(&rows, "looking up event keys")?;
    }
    if new.is_empty() {
        return Ok(Applied {
            stored,
            ..Applied::default()
        });
    }
    copy_events(client, &new).await?;
    let r = Rollups::of(new.iter().copied())?;
    let ((h, hq), d, (t, tq)) = (
        Columns::with_quarters(&r.hourly)?,
        Columns::from(r.daily.iter().map(|(k, t)| (k, t))),
        Columns::with_quarters(&r.totals)?,
    );
    let mut hourly = h.params(true);
    hourly.extend(hq.params());
    client
        .execute(HOURLY_SQL, &hourly)
        .await
        .map_err(db("updating the hourly rollup"))?;
    client
        .execute(DAILY_SQL, &d.params(true))
        .await
        .map_err(db("updating the daily rollup"))?;
    let mut totals = t.params(false);
    totals.push(&lane.0);
    totals.extend(tq.params());
    client
        .execute(TOTALS_SQL, &totals)
        .await
        .map_err(db("updating the all-customer rollup"))?;
    Ok(Applied {
        inserted: r.events,
        quantity: r.quantity,
        stored,
    })
}

/// A batch's rollup deltas as the parameters of `delta_upserts!`.
struct DeltaParams<'a> {
    hourly: Columns<'a>,
    hourly_quarters: QuarterArrays,
    daily: Columns<'a>,
    totals: Columns<'a>,
    total_quarters: QuarterArrays,
    lane: i16,
}

impl<'a> DeltaParams<'a> {
    fn of(r: &Rollups<'a>, lane: Lane) -> Result<DeltaParams<'a>> {
        let (hourly, hourly_quarters) = Columns::with_quarters(&r.hourly)?;
        let (totals, total_quarters) = Columns::with_quarters(&r.totals)?;
        Ok(DeltaParams {
            hourly,
            hourly_quarters,
            daily: Columns::from(r.daily.iter().map(|(k, t)| (k, t))),
            totals,
            total_quarters,
            lane: lane.0,
        })
    }

    /// $1–$7 hourly, $8–$14 daily, $15–$20 all-customer, $21 lane, $22–$35 hourly
    /// quarters, $36–$49 all-customer quarters.
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut p = self.hourly.params(true);
        p.extend(self.daily.params(true));
        p.extend(self.totals.params(false));
        p.push(&self.lane);
        p.extend(self.hourly_quarters.params());
        p.extend(self.total_quarters.params());
        p
    }
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
    /// The columns as statement parameters, in the order the rollup statements take
    /// them; `with_customer` is false for the all-customer rollup, whose key has none.
    fn params(&self, with_customer: bool) -> Vec<&(dyn ToSql + Sync)> {
        let mut p: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(7);
        if with_customer {
            p.push(&self.customer);
        }
        p.extend([
            &self.service as &(dyn ToSql + Sync),
            &self.bucket,
            &self.events,
            &self.quantity,
            &self.min,
            &self.max,
        ]);
        p
    }

    /// The hourly deltas' totals (their quarters merged) and their quarter detail.
    fn with_quarters(deltas: &QuarterDeltas<'a>) -> Result<(Columns<'a>, QuarterArrays)> {
        let totals = deltas
            .iter()
            .map(|(k, q)| Ok((k, q.part(0, 4)?.unwrap_or(Totals::of(Decimal::ZERO)))))
            .collect::<Result<Vec<_>>>()?;
        Ok((
            Columns::from(totals.iter().map(|(k, t)| (*k, t))),
            QuarterArrays::from(deltas)?,
        ))
    }

    fn from<'b>(deltas: impl ExactSizeIterator<Item = (&'b RowKey<'a>, &'b Totals)>) -> Columns<'a>
    where
        'a: 'b,
    {
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
        for ((customer, service, bucket), t) in deltas {
            c.customer.push(customer);
            c.service.push(service);
            c.bucket.push(*bucket);
            c.events.push(t.events);
            c.quantity.push(t.quantity);
            c.min.push(t.min);
            c.max.push(t.max);
        }
        c
    }
}

/// Quarter-hour detail as one array per stored column (`quarter_columns!`), in key
/// order (the same as the hourly deltas': both maps hold the same keys).
struct QuarterArrays {
    quantity_by: [Vec<Decimal>; 3],
    events_by: [Vec<i64>; 3],
    min: [Vec<Option<Decimal>>; 4],
    max: [Vec<Option<Decimal>>; 4],
}

impl QuarterArrays {
    fn from(quarters: &QuarterDeltas<'_>) -> Result<QuarterArrays> {
        let n = quarters.len();
        let mut a = QuarterArrays {
            quantity_by: std::array::from_fn(|_| Vec::with_capacity(n)),
            events_by: std::array::from_fn(|_| Vec::with_capacity(n)),
            min: std::array::from_fn(|_| Vec::with_capacity(n)),
            max: std::array::from_fn(|_| Vec::with_capacity(n)),
        };
        for (_, q) in quarters {
            let c = q.columns()?;
            for (v, x) in a.quantity_by.iter_mut().zip(c.quantity_by) {
                v.push(x);
            }
            for (v, x) in a.events_by.iter_mut().zip(c.events_by) {
                v.push(x);
            }
            for (v, x) in a.min.iter_mut().zip(c.min) {
                v.push(x);
            }
            for (v, x) in a.max.iter_mut().zip(c.max) {
                v.push(x);
            }
        }
        Ok(a)
    }

    /// The 14 parameters, in the order of `quarter_columns!`.
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut p: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(14);
        p.extend(self.quantity_by.iter().map(|v| v as &(dyn ToSql + Sync)));
        p.extend(self.events_by.iter().map(|v| v as &(dyn ToSql + Sync)));
        p.extend(self.min.iter().map(|v| v as &(dyn ToSql + Sync)));
        p.extend(self.max.iter().map(|v| v as &(dyn ToSql + Sync)));
        p
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rows<'a>(keys: &[(&'a str, &'a str, i64)]) -> QuarterDeltas<'a> {
        keys.iter()
            .map(|&(c, s, hour)| {
                let t = DateTime::from_timestamp(hour * 3600, 0).unwrap_or_default();
                ((c, s, t), Quarters::default())
            })
            .collect()
    }

    #[test]
    fn only_hours_after_the_newest_written_are_new() {
        let mut hint = NewestHours::default();
        // A pair never written: nothing is new (its rows may be stored).
        let batch = rows(&[("a", "api", 10), ("a", "api", 11), ("b", "api", 10)]);
        let (fresh, newest) = hint.split(&batch);
        assert_eq!(fresh, [false, false, false]);
        hint.remember(newest);
        // After: later hours are new, the newest and earlier ones (late events) are not.
        let batch = rows(&[
            ("a", "api", 9),
            ("a", "api", 11),
            ("a", "api", 12),
            ("a", "storage", 12),
            ("b", "api", 11),
        ]);
        let (fresh, newest) = hint.split(&batch);
        assert_eq!(fresh, [false, false, true, false, true]);
        hint.remember(newest);
        let (fresh, _) = hint.split(&rows(&[
            ("a", "api", 12),
            ("a", "api", 13),
            ("b", "api", 11),
        ]));
        assert_eq!(fresh, [false, true, false]);
    }

    #[test]
    fn a_pair_evicted_from_its_slot_is_not_new_again() {
        let mut hint = NewestHours::default();
        let (_, newest) = hint.split(&rows(&[("a", "api", 10)]));
        hint.remember(newest);
        // Another pair takes a's slot.
        let (i, _) = hint.slot("a", "api");
        let other = (0..)
            .map(|n| format!("c{n}"))
            .find(|c| hint.slot(c, "api").0 == i)
            .unwrap_or_default();
        let (_, newest) = hint.split(&rows(&[(other.as_str(), "api", 10)]));
        hint.remember(newest);
        let (fresh, _) = hint.split(&rows(&[("a", "api", 11), (other.as_str(), "api", 11)]));
        assert_eq!(fresh, [false, true]);
    }
}
