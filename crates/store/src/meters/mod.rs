//! Meters (issue 24; docs/meters.md): their definitions, the write path's meter step,
//! backfill and the one query.
//!
//! - this file: [`DefinedMeter`], create (with its backfill), list, show, delete;
//! - `deltas.rs`: what events add to the meter rollups (pure);
//! - `write.rs`: the meter step of the ingest transaction;
//! - `query.rs`: [`MeterQuery`], read from the rollups (and raw events at the edges);
//! - `builtin.rs`: the built-in meters (services) and their read, [`Store::totals`];
//! - `verify.rs`: the rollups recomputed from the raw events and compared.

mod builtin;
mod deltas;
mod query;
mod verify;
mod write;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tally_core::{CustomerId, EventId, Metadata, MeterSpec, Progress, Quantity, UsageEvent};

pub use builtin::TotalsKey;
pub(crate) use deltas::LiveMeter;
pub(crate) use query::query_defined;
pub use query::{MeterQuery, MeterQueryResult, MeterRow};
use write::TYPE_LOCK_SEED;
pub(crate) use write::{apply_meters, apply_with, meters_of_types};

use crate::{Error, Result, Store, pool::HandTx};

/// Where a meter is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MeterState {
    /// Counting the events stored before it was created.
    Backfilling,
    /// Current: queries answer from it.
    Ready,
    /// Its backfill failed ([`DefinedMeter::state_detail`] says why); it is not
    /// maintained. Delete it and create it again.
    Failed,
}

/// A meter as stored: its spec, OpenMeter's id, its state and times.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DefinedMeter {
    /// OpenMeter's id (a ULID).
    pub id: String,
    /// What it meters.
    #[serde(flatten)]
    pub spec: MeterSpec,
    /// Its state.
    pub state: MeterState,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_detail: Option<String>,
    /// Stored events its backfill metered.
    pub backfilled: u64,
    /// Stored events its backfill could not meter (a value missing or not a number).
    pub skipped: u64,
    /// Events of its type in complete archives when its backfill ran: their raw events
    /// are in the archive files, so it did not count them (restore the archives, then
    /// restart it).
    pub archived: u64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it was deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub(crate) number: i64,
}

const COLUMNS: &str = "meter, spec::text, id, state, state_detail, backfilled, skipped, created_at, updated_at, deleted_at, archived";

fn defined(row: &tokio_postgres::Row) -> Result<DefinedMeter> {
    let db = Error::db("reading meters");
    let live = write::live_meter(row)?;
    let state: String = row.try_get(3).map_err(db)?;
    let get = |i| {
        row.try_get::<_, i64>(i)
            .map_err(Error::db("reading meters"))
    };
    Ok(DefinedMeter {
        number: live.number,
        spec: live.spec,
        id: row.try_get(2).map_err(Error::db("reading meters"))?,
        state: match state.as_str() {
            "backfilling" => MeterState::Backfilling,
            "ready" => MeterState::Ready,
            "failed" => MeterState::Failed,
            other => {
                return Err(Error::corrupt(
                    "reading meters",
                    format!("unknown meter state {other:?}"),
                ));
            }
        },
        state_detail: row.try_get(4).map_err(Error::db("reading meters"))?,
        backfilled: u64::try_from(get(5)?).unwrap_or_default(),
        skipped: u64::try_from(get(6)?).unwrap_or_default(),
        created_at: row.try_get(7).map_err(Error::db("reading meters"))?,
        updated_at: row.try_get(8).map_err(Error::db("reading meters"))?,
        deleted_at: row.try_get(9).map_err(Error::db("reading meters"))?,
        archived: u64::try_from(get(10)?).unwrap_or_default(),
    })
}

/// A UUID (v7: time-ordered) in Crockford's base 32: a ULID, OpenMeter's id format.
fn ulid(u: uuid::Uuid) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let n = u.as_u128();
    (0..26)
        .map(|i| {
            let shift = 5 * (25 - i);
            let idx = ((n >> shift) & 0x1f) as usize;
            ALPHABET.get(idx).map_or('0', |b| char::from(*b))
        })
        .collect()
}

/// An event of a meter's type as read back from the database (its quantity is not
/// read: meters do not use it). The backfill and the slow write path build them here.
pub(crate) fn stored_event(
    id: uuid::Uuid,
    customer: String,
    service: tally_core::Service,
    at: DateTime<Utc>,
    metadata: &str,
) -> Result<UsageEvent> {
    Ok(UsageEvent {
        id: id.into(),
        customer: CustomerId::new(customer)?,
        service,
        quantity: Quantity::ZERO,
        recorded_at: at,
        metadata: metadata.parse::<Metadata>()?,
    })
}

/// Declares the cursor `tally_events` over the stored events of the meter's type
/// (read by [`cursor_events`]).
async fn declare_events(
    tx: &deadpool_postgres::Transaction<'_>,
    spec: &MeterSpec,
    doing: &'static str,
) -> Result<()> {
    tx.execute(
        "DECLARE tally_events NO SCROLL CURSOR FOR
         SELECT event_id, customer_id, recorded_at, metadata::text FROM usage_events WHERE service = $1",
        &[&spec.event_type.as_str()],
    )
    .await
    .map(drop)
    .map_err(Error::db(doing))
}

/// The events of rows fetched from `tally_events`.
fn cursor_events(
    rows: &[tokio_postgres::Row],
    service: &tally_core::Service,
    doing: &'static str,
) -> Result<Vec<UsageEvent>> {
    rows.iter()
        .map(|r| {
            let db = || Error::db(doing);
            stored_event(
                r.try_get(0).map_err(db())?,
                r.try_get(1).map_err(db())?,
                service.clone(),
                r.try_get(2).map_err(db())?,
                &r.try_get::<_, String>(3).map_err(db())?,
            )
        })
        .collect()
}

/// [`Store::meter`] on a given connection.
pub(crate) async fn meter_on(
    client: &tokio_postgres::Client,
    slug_or_id: &str,
) -> Result<DefinedMeter> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM tally_meter_defs WHERE (slug = $1 OR id = $1) AND deleted_at IS NULL"
            ),
            &[&slug_or_id],
        )
        .await
        .map_err(Error::db("reading meters"))?;
    match row {
        Some(r) => defined(&r),
        None => Err(Error::not_found("meter", slug_or_id)),
    }
}

/// The events of the meter's type (from its `eventFrom`) in complete archives, as the
/// backfill's snapshot sees them: what it cannot count.
async fn archived_events(
    snapshot: &deadpool_postgres::Transaction<'_>,
    spec: &MeterSpec,
) -> Result<i64> {
    snapshot
        .query_one(
            "SELECT coalesce(sum(t.events), 0)::int8 FROM usage_archived_totals t
             JOIN usage_archives a ON a.archive_id = t.archive_id
             WHERE a.state = 'complete' AND t.service = $1 AND ($2::timestamptz IS NULL OR a.range_to > $2)",
            &[&spec.event_type.as_str(), &spec.event_from],
        )
        .await
        .map_err(Error::db("backfilling a meter"))?
        .try_get(0)
        .map_err(Error::db("backfilling a meter"))
}

/// Takes the event type's lock exclusively until `tx` ends: every write of the type
/// (which takes it shared for its meter step) waits, and is waited for.
async fn lock_type(tx: &deadpool_postgres::Transaction<'_>, kind: &str) -> Result<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))",
        &[&kind, &TYPE_LOCK_SEED],
    )
    .await
    .map_err(Error::db("locking the event type"))?;
    Ok(())
}

/// What a backfill starts from: a new meter (its spec, and the spec as JSON), or an
/// existing one (slug or id) whose backfill is restarted.
enum Start<'a> {
    Create(&'a MeterSpec, &'a str),
    Restart(&'a str),
}

/// How many stored events a backfill reads at a time.
const BACKFILL_CHUNK: i64 = 20_000;

impl Store {
    /// Creates a meter and backfills it from the stored events of its type; returns
    /// once it is ready (or failed: see [`DefinedMeter::state`]). From the moment it is
    /// created every new event of its type is metered by the write path; the backfill
    /// meters exactly the events stored before that moment (the type's lock makes the
    /// moment one instant for both). `progress` is told how many stored events were
    /// read. A slug in use is refused (`Invalid`, field `slug`).
    pub async fn create_meter(
        &self,
        spec: &MeterSpec,
        progress: Option<Progress>,
    ) -> Result<DefinedMeter> {
        spec.check()?;
        // A service is a built-in meter that queries reach by its name: a defined
        // meter of that slug would hide it.
        if self.catalog().await?.service(spec.slug.as_str()).is_ok() {
            return Err(Error::invalid(
                "slug",
                spec.slug.as_str(),
                "is the name of a service, which is a built-in meter (query it by that name); choose another slug",
            ));
        }
        let text = serde_json::to_string(spec)
            .map_err(|e| Error::internal("encoding a meter", e.to_string()))?;
        self.backfilled(
            spec.event_type.as_str(),
            Start::Create(spec, &text),
            progress,
        )
        .await
    }

    /// Counts a meter again from scratch: for a backfill that was interrupted (its
    /// process killed: the meter stayed `backfilling`) or failed, or for a ready meter
    /// after archives of its type were restored. Under the type's lock the meter gets a
    /// new internal number — its id, slug, spec and quotas stay — and is backfilled from
    /// the stored events, as [`Store::create_meter`] does. What was counted under the
    /// old number is removed (a backfill still running elsewhere for it may add a
    /// chunk back before its call fails; nothing reads those rows).
    pub async fn restart_meter(
        &self,
        slug_or_id: &str,
        progress: Option<Progress>,
    ) -> Result<DefinedMeter> {
        let meter = self.meter(slug_or_id).await?;
        let kind = meter.spec.event_type.as_str().to_owned();
        self.backfilled(&kind, Start::Restart(slug_or_id), progress)
            .await
    }

    /// A meter created or restarted (`start`, under the type's lock), then backfilled.
    async fn backfilled(
        &self,
        kind: &str,
        start: Start<'_>,
        progress: Option<Progress>,
    ) -> Result<DefinedMeter> {
        // 1. Under the type's exclusive lock (every write of the type waits, and is
        //    waited for), the meter row; 2. the backfill's snapshot, taken while the
        //    lock is held: it holds every event written without the meter, and none
        //    written with it; 3. commit, and writers of the type meter from now on.
        // Both connections first: once the lock is held, writers of the type wait for
        // it holding theirs, and a full pool would never hand the reader one.
        let mut creator = self.client("creating a meter").await?;
        let mut reader = self.client("backfilling a meter").await?;
        let tx = creator
            .transaction()
            .await
            .map_err(Error::db("creating a meter"))?;
        lock_type(&tx, kind).await?;
        // A restart's old number, whose rows go once the new one is committed.
        let mut retired = None;
        let row = match start {
            Start::Create(spec, text) => tx
                .query_one(
                    &format!(
                        "INSERT INTO tally_meter_defs (id, slug, event_type, spec) VALUES ($1, $2, $3, $4::text::jsonb)
                         RETURNING {COLUMNS}"
                    ),
                    &[&ulid(EventId::new().uuid()), &spec.slug.as_str(), &kind, &text],
                )
                .await
                .map_err(|e| {
                    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                        Error::invalid("slug", spec.slug.as_str(), "a meter with this slug exists")
                    } else {
                        Error::db("creating a meter")(e)
                    }
                })?,
            Start::Restart(slug_or_id) => {
                // Read again under the lock: it may have been deleted or finished since.
                let now = tx
                    .query_opt(
                        &format!(
                            "SELECT {COLUMNS} FROM tally_meter_defs
                             WHERE (slug = $1 OR id = $1) AND deleted_at IS NULL FOR UPDATE"
                        ),
                        &[&slug_or_id],
                    )
                    .await
                    .map_err(Error::db("restarting a meter"))?
                    .ok_or_else(|| Error::not_found("meter", slug_or_id))?;
                let now = defined(&now)?;
                retired = Some(now.number);
                // A new number: the old row is retired (its id freed), a copy inserted.
                // (An identity cannot be set in an UPDATE on Citus: `nextval` is
                // volatile there.)
                tx.execute(
                    "UPDATE tally_meter_defs SET deleted_at = now(), updated_at = now(), id = id || '~' || meter::text
                     WHERE meter = $1",
                    &[&now.number],
                )
                .await
                .map_err(Error::db("restarting a meter"))?;
                tx.query_one(
                    &format!(
                        "INSERT INTO tally_meter_defs (id, slug, event_type, spec, created_at)
                         SELECT $2, slug, event_type, spec, created_at FROM tally_meter_defs WHERE meter = $1
                         RETURNING {COLUMNS}"
                    ),
                    &[&now.number, &now.id],
                )
                .await
                .map_err(Error::db("restarting a meter"))?
            }
        };
        let meter = defined(&row)?;
        let snapshot = reader
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(Error::db("backfilling a meter"))?;
        snapshot
            .execute("SELECT 1", &[])
            .await
            .map_err(Error::db("backfilling a meter"))?;
        tx.commit().await.map_err(Error::db("creating a meter"))?;
        if let Some(old) = retired {
            purge(&creator, old).await?;
        }
        drop(creator);
        let outcome = match archived_events(&snapshot, &meter.spec).await {
            Ok(archived) => self
                .backfill(&snapshot, &meter, progress)
                .await
                .map(|(read, skipped)| (read, skipped, archived)),
            Err(e) => Err(e),
        };
        drop(snapshot);
        let client = self.client("finishing a meter").await?;
        let row = match outcome {
            Ok((read, skipped, archived)) => client
                .query_opt(
                    &format!(
                        "UPDATE tally_meter_defs SET state = 'ready', backfilled = $2, skipped = $3, archived = $4,
                             updated_at = now()
                         WHERE meter = $1 AND deleted_at IS NULL RETURNING {COLUMNS}"
                    ),
                    &[&meter.number, &(read as i64), &(skipped as i64), &archived],
                )
                .await
                .map_err(Error::db("finishing a meter"))?
                .ok_or_else(|| {
                    Error::invalid(
                        "meter",
                        meter.spec.slug.as_str(),
                        "was restarted (or deleted) during this backfill: the restart counts it",
                    )
                })?,
            Err(e) => {
                client
                    .execute(
                        "UPDATE tally_meter_defs SET state = 'failed', state_detail = $2, updated_at = now()
                         WHERE meter = $1 AND deleted_at IS NULL",
                        &[&meter.number, &e.to_string()],
                    )
                    .await
                    .map_err(Error::db("finishing a meter"))?;
                return Err(e);
            }
        };
        defined(&row)
    }

    /// Reads the stored events of the meter's type in `snapshot` and merges what they
    /// add into its rollups, a chunk per transaction (additive merges commute with the
    /// write path's). Returns the events metered and skipped.
    async fn backfill(
        &self,
        snapshot: &deadpool_postgres::Transaction<'_>,
        meter: &DefinedMeter,
        progress: Option<Progress>,
    ) -> Result<(u64, u64)> {
        let live = [LiveMeter {
            number: meter.number,
            spec: meter.spec.clone(),
        }];
        let service = meter.spec.event_type.service();
        declare_events(snapshot, &meter.spec, "backfilling a meter").await?;
        let mut writer = HandTx::new(self.client("backfilling a meter").await?);
        let fetch = || async {
            snapshot
                .query(&format!("FETCH {BACKFILL_CHUNK} FROM tally_events"), &[])
                .await
                .map_err(Error::db("backfilling a meter"))
        };
        let (mut read, mut skipped) = (0u64, 0u64);
        let mut rows = fetch().await?;
        while !rows.is_empty() {
            let events = cursor_events(&rows, &service, "backfilling a meter")?;
            let mut deltas = deltas::MeterDeltas::default();
            skipped += deltas.add(&live, &events, false)?;
            // The next chunk is read (one connection) while this one is written (the
            // other): the two round trips overlap.
            let write = async {
                if deltas.is_empty() {
                    return Ok(());
                }
                writer.begin("backfilling a meter").await?;
                let written = async {
                    let c = writer.client()?;
                    write::check_cardinality(c, &live, &deltas).await?;
                    write::write_deltas(c, &deltas).await
                }
                .await;
                writer.end(written.is_ok(), "backfilling a meter").await?;
                written
            };
            let (written, next) = futures_util::future::join(write, fetch()).await;
            written?;
            read += rows.len() as u64;
            if let Some(p) = &progress {
                p(read);
            }
            rows = next?;
        }
        Ok((read - skipped, skipped))
    }

    /// Every meter not deleted, by slug.
    pub async fn meters(&self) -> Result<Vec<DefinedMeter>> {
        let client = self.client("reading meters").await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM tally_meter_defs WHERE deleted_at IS NULL ORDER BY slug"
                ),
                &[],
            )
            .await
            .map_err(Error::db("reading meters"))?;
        rows.iter().map(defined).collect()
    }

    /// The meter with this slug or id (not deleted); `Invalid` (field `meter`) if none.
    pub async fn meter(&self, slug_or_id: &str) -> Result<DefinedMeter> {
        let client = self.client("reading meters").await?;
        meter_on(&client, slug_or_id).await
    }

    /// Deletes (retires) a meter: it is no longer maintained, listed or queried, and
    /// its slug is free again; then its rollups are removed. Taken under its type's
    /// exclusive lock, so no write still metering it adds rows afterwards. Returns it
    /// as deleted.
    pub async fn delete_meter(&self, slug_or_id: &str) -> Result<DefinedMeter> {
        let meter = self.meter(slug_or_id).await?;
        let mut client = self.client("deleting a meter").await?;
        let tx = client
            .transaction()
            .await
            .map_err(Error::db("deleting a meter"))?;
        lock_type(&tx, meter.spec.event_type.as_str()).await?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE tally_meter_defs SET deleted_at = now(), updated_at = now()
                     WHERE (slug = $1 OR id = $1) AND event_type = $2 AND deleted_at IS NULL RETURNING {COLUMNS}"
                ),
                &[&slug_or_id, &meter.spec.event_type.as_str()],
            )
            .await
            .map_err(Error::db("deleting a meter"))?;
        let deleted = match row {
            Some(r) => defined(&r)?,
            None => return Err(Error::not_found("meter", slug_or_id)),
        };
        tx.commit().await.map_err(Error::db("deleting a meter"))?;
        purge(&client, deleted.number).await?;
        Ok(deleted)
    }
}

/// The tables holding a meter's rows by its number (beside its definition).
const METER_TABLES: [&str; 8] = [
    "tally_meter_quarters",
    "tally_meter_days",
    "tally_meter_distinct_quarters",
    "tally_meter_distinct_days",
    "tally_meter_distinct_months",
    "tally_meter_samples",
    "tally_meter_dimensions",
    "tally_meter_cardinality",
];

/// Removes the rows of a retired meter number (deleted, or replaced by a restart):
/// nothing reads them, and after the retirement's commit under the type's lock no
/// write adds to them (a backfill still running elsewhere for it could; it then fails).
async fn purge(client: &tokio_postgres::Client, number: i64) -> Result<()> {
    for table in METER_TABLES {
        client
            .execute(&format!("DELETE FROM {table} WHERE meter = $1"), &[&number])
            .await
            .map_err(Error::db("removing a retired meter's rollups"))?;
    }
    Ok(())
}

impl Store {
    /// Renames or redescribes a meter (OpenMeter's `updateMeter`): what it meters is
    /// unchanged, so its rollups stay as they are. `None` clears the field.
    pub async fn update_meter(
        &self,
        slug_or_id: &str,
        name: Option<String>,
        description: Option<String>,
    ) -> Result<DefinedMeter> {
        const CTX: &str = "updating a meter";
        let mut spec = self.meter(slug_or_id).await?.spec;
        spec.name = name;
        spec.description = description;
        spec.check()?;
        let text = serde_json::to_string(&spec)
            .map_err(|e| Error::internal(CTX, format!("a meter spec did not serialize: {e}")))?;
        let client = self.client(CTX).await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE tally_meter_defs SET spec = $2::text::jsonb, updated_at = now()
                     WHERE (slug = $1 OR id = $1) AND deleted_at IS NULL RETURNING {COLUMNS}"
                ),
                &[&slug_or_id, &text],
            )
            .await
            .map_err(Error::db(CTX))?;
        match row {
            Some(r) => defined(&r),
            None => Err(Error::not_found("meter", slug_or_id)),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_ulid_is_26_crockford_characters_in_time_order() {
        let a = super::ulid(uuid::Uuid::now_v7());
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::ulid(uuid::Uuid::now_v7());
        assert_eq!(a.len(), 26);
        assert!(a < b);
        assert!(a.chars().next().is_some_and(|c| ('0'..='7').contains(&c)));
    }
}
