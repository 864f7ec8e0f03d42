//! The one write path: binary COPY into the tables (or a staging table), then one
//! statement that claims the dedupe keys, inserts the new events and upserts the
//! rollups from exactly the rows it inserted. `Store::write`, the recorder and import
//! all use it.
//!
//! - this file: the entry ([`Ingest`]), lanes and what a write returns;
//! - `tx.rs`: the transaction and its [`Path`] (direct, staged, distributed);
//! - `batch.rs`: a batch in memory, no I/O — each key once, the deltas in lock order;
//! - `params.rs`: deltas as the generated statements' parameters;
//! - `copy.rs`: the binary COPY encoders; `hints.rs`: the direct path's hints;
//! - `citus.rs`: the distributed step; `sql.rs`: the statement text, the rollup
//!   upserts generated from `crate::rollup`.

mod batch;
mod citus;
mod copy;
mod hints;
mod local;
mod params;
mod sql;
mod tx;

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use rust_decimal::Decimal;
use tally_core::{CustomerId, Measure, TimeRange, UsageEvent};
use uuid::Uuid;

pub(crate) use batch::Dedupe;
use hints::{NewestHours, RecentKeys};
use tx::Applied;
pub(crate) use tx::{IngestTx, Path};

use crate::{Error, Result, partitions::Partitions};
pub(crate) use local::Local;
pub use local::{CommitHook, LocalMark};

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

    /// This process's ledger of what it is writing, for its hooks and marks (the
    /// ledger's entries change only here, through the calls below).
    pub(crate) fn local(&self) -> &Arc<Local> {
        &self.local
    }

    // ----- the in-flight ledger: what this process is writing, read by quota checks
    // ----- (a hard quota must count what it has accepted but not yet committed)

    /// `events` entered the write path ahead of their write (a recorder's queue, an
    /// import batch that may be retried): they count as in flight until written
    /// ([`Ingest::write_entered`]) or given up ([`Ingest::left_unwritten`]).
    pub(crate) fn entered(&self, events: &[UsageEvent]) {
        self.local.recorded(events);
    }

    /// `events`, entered before, left the write path without being written (a closed
    /// queue, a dead letter, a retry given up).
    pub(crate) fn left_unwritten(&self, events: &[UsageEvent]) {
        self.local.settled(events);
    }

    /// Writes `events` that entered the write path: once committed they are settled
    /// and the commit hooks told; a failure leaves them in flight, for the caller to
    /// retry or give up.
    pub(crate) async fn write_entered(
        &self,
        events: &[UsageEvent],
        lane: Lane,
    ) -> Result<WriteOutcome> {
        let outcome = self.write(events, lane).await?;
        self.local.committed(events);
        Ok(outcome)
    }

    /// Writes `events` now, in flight for the length of the call.
    pub(crate) async fn write_counted(
        &self,
        events: &[UsageEvent],
        lane: Lane,
    ) -> Result<WriteOutcome> {
        self.entered(events);
        let result = self.write_entered(events, lane).await;
        if result.is_err() {
            self.left_unwritten(events);
        }
        result
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
    /// rollups commit together. The ledger is the callers' above.
    async fn write(&self, events: &[UsageEvent], lane: Lane) -> Result<WriteOutcome> {
        if events.is_empty() {
            return Ok(WriteOutcome::default());
        }
        // Before the transaction: it must hold no lock that creating one waits for.
        self.ensure_partitions(events).await;
        let batch = Dedupe::of(events);
        let tx = self.begin(lane, Path::Direct).await?;
        tx.write_batch(events.len(), &batch).await
    }

    /// As [`Ingest::write`], admitted: in the same transaction, a lock of each key
    /// (customer and service or meter) is taken, each key's committed usage over its
    /// period read, the events applied and the usage read again; `admit` is given the
    /// (before, after) of each key (`None`: a meter not ready to read) and, if it says
    /// no, the transaction rolls back and nothing is written (`None`). Writers through
    /// this call are serialised per key, and each reads every earlier one's commit:
    /// what makes a hard quota exact across processes, for a meter's unique count as
    /// for a service's sum.
    pub(crate) async fn write_admitted(
        &self,
        events: &[UsageEvent],
        lane: Lane,
        keys: &[(CustomerId, Measure, TimeRange)],
        admit: impl FnOnce(&[Option<(Decimal, Decimal)>]) -> bool,
    ) -> Result<Option<WriteOutcome>> {
        const CTX: &str = "admitting events";
        self.ensure_partitions(events).await;
        let batch = Dedupe::of(events);
        let mut tx = self.begin(lane, Path::Direct).await?;
        let client = tx.client()?;
        // One 64-bit key per customer and service or meter, taken in one order (no two
        // admissions wait for each other crosswise); a collision only makes two keys
        // wait for each other. The seed keeps Tally's keys apart from the application's.
        let mut locks: Vec<(&str, std::borrow::Cow<'_, str>)> = keys
            .iter()
            .map(|(c, m, _)| (c.as_str(), crate::quotas::measure_key(m)))
            .collect();
        locks.sort();
        locks.dedup();
        for (customer, key) in &locks {
            client
                .execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1 || E'\\x1f' || $2, $3))",
                    &[customer, &key.as_ref(), &ADMISSION_LOCK_SEED],
                )
                .await
                .map_err(Error::db(CTX))?;
        }
        let distributed = self.is_distributed(client).await?;
        let now = Utc::now();
        let before = crate::quotas::usage_on(client, keys, now, distributed).await?;
        let outcome = tx.apply_batch(events.len(), &batch).await?;
        let after = crate::quotas::usage_on(tx.client()?, keys, now, distributed).await?;
        let both: Vec<Option<(Decimal, Decimal)>> = before
            .into_iter()
            .zip(after)
            .map(|(b, a)| b.zip(a))
            .collect();
        if !admit(&both) {
            tx.rollback().await?;
            return Ok(None);
        }
        tx.commit().await?;
        // Into the ledger only once committed: an admitted write waiting for the lock
        // must not count against the one holding it (the database read under the lock
        // is exact for these writes).
        self.local.recorded(events);
        self.local.committed(events);
        Ok(Some(outcome))
    }

    /// Whether the database is a Citus cluster (read once per handle).
    pub(crate) async fn is_distributed(&self, client: &tokio_postgres::Client) -> Result<bool> {
        Ok(*self
            .distributed
            .get_or_try_init(|| crate::migrate::is_citus(client))
            .await?)
    }

    /// Starts a transaction on the write path. Nothing it stages is visible until
    /// [`IngestTx::commit`]; dropping it rolls everything back.
    /// `path` is [`Path::Direct`] or [`Path::Staged`]; on Citus it is
    /// [`Path::Distributed`] whichever was asked.
    pub(crate) async fn begin(&self, lane: Lane, path: Path) -> Result<IngestTx> {
        let client = self
            .pool
            .get()
            .await
            .map_err(Error::pool("writing events"))?;
        let distributed = self.is_distributed(&client).await?;
        let tx = IngestTx {
            client: Some(client),
            ingest: self.clone(),
            lane,
            staged: 0,
            path: if distributed { Path::Distributed } else { path },
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
                sql::DEAD_LETTER_SQL,
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

/// The seed of the admission lock's key ("tallyq" in ASCII).
const ADMISSION_LOCK_SEED: i64 = 0x7461_6c6c_7971;
