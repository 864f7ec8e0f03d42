//! A transaction on the write path, and the three ways its batches go in, chosen once
//! in [`Ingest::begin`] ([`Path`]): direct (COPY straight into the tables, for a
//! batch of keys this process has not seen), staged (COPY into a temporary stage, then
//! one statement), distributed (Citus: claim keys from arrays, then COPY).

use rust_decimal::Decimal;
use tally_core::{Quarters, UsageEvent};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::{
    Ingest, Lane, WriteOutcome,
    batch::{BatchDeltas, Dedupe, KeySet, RowKey},
    citus,
    copy::{copy_events, copy_hourly, copy_keys, copy_stage},
    hints::Hashed,
    params::BatchParams,
    sql,
};
use crate::{Error, Result};

/// Which way a transaction's batches are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// Each batch by COPY straight into the key and event tables, falling back to the
    /// stage when a key turns out to be stored ([`Ingest::write`]).
    Direct,
    /// Batches staged, then applied: one by the fast path, or all at once
    /// (an all-or-nothing import).
    Staged,
    /// On Citus, whichever was asked: keys claimed from arrays as each batch is staged.
    Distributed,
}

/// A transaction on the write path, on a connection of its own. Batches are staged
/// with [`IngestTx::stage`], then applied: one batch by [`IngestTx::apply`] (the fast
/// path), or everything staged by [`IngestTx::apply_staged`].
pub(crate) struct IngestTx {
    // Taken by commit; still here on drop means "roll back".
    pub(super) client: Option<deadpool_postgres::Client>,
    pub(super) ingest: Ingest,
    pub(super) lane: Lane,
    pub(super) staged: u64,
    // Which path the transaction's batches take, chosen once in `Ingest::begin`.
    pub(super) path: Path,
    // On Citus every staged batch is written at once (see `write_distributed`); this
    // is what those writes did, reported by the next apply.
    pub(super) applied: Applied,
    // On Citus, the places of staged events found conflicting as they were written.
    pub(super) conflicting: Vec<u64>,
}

/// What applying events did: how many were inserted, their total quantity, and the
/// keys among them found stored already, with their stored digests (what
/// [`Dedupe::conflicts`] compares).
#[derive(Default)]
pub(crate) struct Applied {
    pub(crate) inserted: u64,
    pub(crate) quantity: Decimal,
    pub(super) stored: KeySet,
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
    pub(super) fn client(&self) -> Result<&deadpool_postgres::Client> {
        self.client.as_ref().ok_or_else(|| {
            Error::internal(
                "using a transaction",
                "its connection was already handed back",
            )
        })
    }

    /// The direct path for one batch: keys and events go straight in by binary COPY
    /// (no stage), then the rollups. Events whose key this process wrote recently
    /// ([`super::hints::RecentKeys`]) are checked against the key table first and dropped if stored.
    /// Returns `None`, with nothing of the batch written, when the batch cannot take
    /// this path (on Citus) or a key turned out to be stored already (the COPY fails
    /// on the unique key and is rolled back to a savepoint): the caller stages it.
    async fn write_direct(&mut self, unique: &[&UsageEvent]) -> Result<Option<Applied>> {
        if self.path != Path::Direct {
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
                .prepare_cached(sql::PROBE_KEYS_SQL)
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
            let mut r = BatchDeltas::of(new.iter().copied())?;
            let (fresh, newest) = self.ingest.newest().split(&r.hourly);
            copy_new_hourly(client, &mut r, &fresh).await?;
            let deltas = BatchParams::of(&r, self.lane.0)?;
            let stmt = client
                .prepare_cached(&sql::DIRECT_ROLLUPS_SQL)
                .await
                .map_err(Error::db("preparing the ingest statement"))?;
            client
                .query_one(&stmt, &deltas.params()?)
                .await
                .map_err(Error::db("updating the rollups"))?;
            crate::meters::apply_meters(client, &new).await?;
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
        if self.path == Path::Distributed {
            let applied = citus::write_distributed(client, unique, self.lane).await?;
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
                    .batch_execute(&format!(
                        "DROP TABLE pg_temp.tally_stage; {}",
                        sql::STAGE_DDL
                    ))
                    .await
                    .map_err(Error::db("creating the staging table"))?,
                None => client
                    .batch_execute(sql::STAGE_DDL)
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
        if self.path == Path::Distributed {
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
            .query(sql::STAGED_DIGESTS_SQL, &[])
            .await
            .map_err(Error::db("reading event digests"))?;
        KeySet::of(&rows, "reading event digests")
    }

    /// After [`IngestTx::apply_staged`] of an all-or-nothing load: the places (see
    /// [`IngestTx::stage`]) of the staged events whose key is stored with another
    /// payload, in order.
    pub(crate) async fn staged_conflicts(&self) -> Result<Vec<u64>> {
        if self.path == Path::Distributed {
            return Ok(self.conflicting.clone());
        }
        let rows = self
            .client()?
            .query(sql::STAGED_CONFLICTS_SQL, &[])
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
        if self.path == Path::Distributed {
            return Ok(std::mem::take(&mut self.applied));
        }
        let client = self.client()?;
        // The meter step's locks and meters first: the statement returns the inserted
        // events of the metered types.
        let types: Vec<String> = client
            .query(sql::STAGED_TYPES_SQL, &[])
            .await
            .map_err(Error::db("reading the staged event types"))?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::db("reading the staged event types"))?;
        let types: std::collections::BTreeSet<&str> = types.iter().map(String::as_str).collect();
        let meters = if types.is_empty() {
            Vec::new()
        } else {
            crate::meters::meters_of_types(client, &types).await?
        };
        let metered_types: Vec<&str> = meters.iter().map(|m| m.spec.event_type.as_str()).collect();
        let stmt = client
            .prepare_cached(&sql::APPLY_STAGED_SQL)
            .await
            .map_err(Error::db("preparing the ingest statement"))?;
        let row = client
            .query_one(&stmt, &[&self.lane.0, &metered_types])
            .await
            .map_err(Error::db("applying a batch"))?;
        if !meters.is_empty() {
            let events = inserted_events(&row)?;
            let refs: Vec<&UsageEvent> = events.iter().collect();
            crate::meters::apply_with(client, &meters, &refs).await?;
        }
        let inserted: i64 = row
            .try_get(0)
            .map_err(Error::db("reading the batch result"))?;
        let quantity: Decimal = row
            .try_get::<_, crate::numeric::Numeric>(1)
            .map_err(Error::db("reading the batch result"))?
            .0;
        Ok(Applied {
            inserted: u64::try_from(inserted).unwrap_or_default(),
            quantity,
            ..Applied::default()
        })
    }

    /// Writes one deduplicated batch of `len` events and commits.
    pub(super) async fn write_batch(
        mut self,
        len: usize,
        batch: &Dedupe<'_>,
    ) -> Result<WriteOutcome> {
        let outcome = self.apply_batch(len, batch).await?;
        self.commit().await?;
        Ok(outcome)
    }

    /// Writes one deduplicated batch of `len` events, not committed yet.
    pub(super) async fn apply_batch(
        &mut self,
        len: usize,
        batch: &Dedupe<'_>,
    ) -> Result<WriteOutcome> {
        let applied = match self.write_direct(&batch.unique).await? {
            Some(written) => written,
            None => {
                self.stage(&batch.unique).await?;
                self.apply(&batch.unique).await?
            }
        };
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
        let client = self.client.take().ok_or_else(|| {
            Error::internal(
                "using a transaction",
                "its connection was already handed back",
            )
        })?;
        client
            .batch_execute(statement)
            .await
            .map_err(Error::db(context))
    }
}

/// The fast path (see `sql::DROP_STORED_SQL` and `sql::INSERT_NEW_SQL`). Returns the events
/// inserted and their total quantity; a unique violation means "take the slow path".
async fn insert_new(
    client: &deadpool_postgres::Client,
    events: &[&UsageEvent],
    lane: Lane,
) -> Result<Applied> {
    let db = Error::db;
    let drop_stored = client
        .prepare_cached(sql::DROP_STORED_SQL)
        .await
        .map_err(db("preparing the ingest statement"))?;
    let rows = client
        .query(&drop_stored, &[])
        .await
        .map_err(db("dropping stored events"))?;
    // Usually about 1 % of a batch.
    let stored = KeySet::of(&rows, "dropping stored events")?;
    let r = BatchDeltas::of(events.iter().copied().filter(|e| !stored.contains(e)))?;
    let deltas = BatchParams::of(&r, lane.0)?;
    let (new, total) = (r.events, r.quantity);
    let insert = client
        .prepare_cached(&sql::INSERT_NEW_SQL)
        .await
        .map_err(db("preparing the ingest statement"))?;
    let params = deltas.params()?;
    let row = client
        .query_one(&insert, &params)
        .await
        .map_err(db("applying a batch"))?;
    let inserted: i64 = row.try_get(1).map_err(db("applying a batch"))?;
    debug_assert_eq!(inserted as u64, new, "every staged event left is new");
    let metered: Vec<&UsageEvent> = events
        .iter()
        .copied()
        .filter(|e| !stored.contains(e))
        .collect();
    crate::meters::apply_meters(client, &metered).await?;
    Ok(Applied {
        inserted: u64::try_from(inserted).unwrap_or_default(),
        quantity: total,
        stored,
    })
}

/// Direct path: copies the hourly rollup rows of `r` that the hint ([`super::hints::NewestHours`],
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
    r: &mut BatchDeltas<'_>,
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

/// The inserted events the slow path's statement returned (columns 6 to 10: ids,
/// customers, types, times, payloads), for the meter step.
fn inserted_events(row: &tokio_postgres::Row) -> Result<Vec<UsageEvent>> {
    let db = || Error::db("reading the inserted events");
    let ids: Vec<Uuid> = row.try_get(6).map_err(db())?;
    let customers: Vec<String> = row.try_get(7).map_err(db())?;
    let types: Vec<String> = row.try_get(8).map_err(db())?;
    let times: Vec<chrono::DateTime<chrono::Utc>> = row.try_get(9).map_err(db())?;
    let payloads: Vec<String> = row.try_get(10).map_err(db())?;
    let mut out = Vec::with_capacity(ids.len());
    for ((((id, customer), kind), at), payload) in ids
        .into_iter()
        .zip(customers)
        .zip(types)
        .zip(times)
        .zip(payloads)
    {
        let service = kind.parse::<tally_core::EventType>()?.service();
        out.push(crate::meters::stored_event(
            id, customer, service, at, &payload,
        )?);
    }
    Ok(out)
}
