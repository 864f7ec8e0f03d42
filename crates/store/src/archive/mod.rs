//! Archive and restore: raw events older than a cutoff move to compressed files (one
//! per UTC month), written and synced before the transaction that removes their rows
//! commits; rollups and dedupe keys stay. See docs/archive.md.

use std::{collections::BTreeMap, path::PathBuf};

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_core::serde_fmt;
use uuid::Uuid;

mod restore;
mod write;

use crate::{Error, Result};

// Arbitrary constant key for the archive lock: "archive" in ASCII.
const LOCK_KEY: i64 = 0x0061_7263_6869_7665;

/// What `archive` does.
#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    /// Raw events recorded before this instant are archived.
    pub cutoff: DateTime<Utc>,
    /// Where the archive files go (created if missing).
    pub dir: PathBuf,
    /// Also drop the dedupe keys of the archived events: saves about 126 bytes per
    /// event (measured, docs/archive.md), but a replay of one of them would then be
    /// counted again. Off by default.
    pub forget_keys: bool,
}

/// Totals of one service in an archive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceCount {
    /// Events.
    pub events: i64,
    /// Their total quantity.
    #[serde(serialize_with = "serde_fmt::decimal")]
    pub quantity: Decimal,
}

/// An archive's manifest: what its file holds. Written next to the file
/// (`<file>.manifest.json`) and kept in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// The ledger's id.
    pub archive_id: i64,
    /// The file's name (in the archive directory).
    pub file: String,
    /// First instant covered.
    #[serde(serialize_with = "serde_fmt::instant")]
    pub range_from: DateTime<Utc>,
    /// First instant after.
    #[serde(serialize_with = "serde_fmt::instant")]
    pub range_to: DateTime<Utc>,
    /// Events in the file.
    pub events: i64,
    /// Their total quantity.
    #[serde(serialize_with = "serde_fmt::decimal")]
    pub quantity: Decimal,
    /// Per service.
    pub services: BTreeMap<String, ServiceCount>,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
}

/// One archive run's result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ArchiveReport {
    /// The archives written (each complete: rows removed, file synced).
    pub archives: Vec<Manifest>,
    /// Archives of earlier runs that died before their delete committed: their rows
    /// were never removed (they are archived again now); their files are left as they
    /// were and marked `abandoned` in the ledger.
    pub abandoned: u64,
}

/// What `restore` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    /// The archive.
    pub archive_id: i64,
    /// Raw events put back (0 when it was restored before).
    pub restored: u64,
    /// Whether it had been restored before (then nothing was done).
    pub already_restored: bool,
}

/// One line of an archive file: the columns of a raw event (the import format).
#[derive(Serialize, Deserialize)]
struct Line {
    event_id: Uuid,
    customer_id: String,
    service: String,
    #[serde(
        serialize_with = "serde_fmt::decimal",
        deserialize_with = "decimal_text"
    )]
    quantity: Decimal,
    recorded_at: DateTime<Utc>,
    metadata: Box<serde_json::value::RawValue>,
}

fn decimal_text<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Decimal, D::Error> {
    let s = String::deserialize(d)?;
    Decimal::from_str_exact(&s).map_err(serde::de::Error::custom)
}

/// `a + b`, or the typed overflow error (28 significant digits are the limit).
fn plus(a: Decimal, b: Decimal) -> Result<Decimal> {
    Ok(tally_core::add_exact(a, b, "an archive's totals")?)
}

fn month_start(t: DateTime<Utc>) -> NaiveDate {
    let d = t.date_naive();
    d.with_day(1).unwrap_or(d)
}

fn at_midnight(d: NaiveDate) -> DateTime<Utc> {
    d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()
}

fn io(context: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(context.to_owned(), e)
}

/// Test hook: `TALLY_FAILPOINT=archive-before-commit` ends the process right after an
/// archive file is synced and before the transaction removing its rows commits — the
/// worst moment to crash, which the tests use to prove nothing is lost.
fn failpoint(name: &str) {
    if std::env::var("TALLY_FAILPOINT").is_ok_and(|v| v == name) {
        tracing::error!(failpoint = name, "failpoint reached: exiting");
        std::process::exit(86);
    }
}

/// Releases the lock now, so the next run need not wait for this connection to close
/// (if this fails, the lock goes with the connection).
async fn unlock(client: &tokio_postgres::Client) {
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
}

/// One archive or restore at a time (session lock on the run's own connection: it
/// goes when the connection does).
async fn lock(client: &tokio_postgres::Client) -> Result<()> {
    // A run that just ended (or died) may hold it for a moment longer, until the server
    // has seen its connection close: wait a little before refusing.
    for attempt in 0..30 {
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(Error::db("locking the archive"))?
            .try_get(0)
            .map_err(Error::db("locking the archive"))?;
        if got {
            return Ok(());
        }
        if attempt < 29 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    Err(Error::busy("archive", "another archive or restore"))
}

impl crate::Store {
    /// How many events matching `filter`'s customer and service are in complete
    /// archives whose span overlaps `filter`'s range: what an export of that range no
    /// longer finds in the database (an archive's events may lie partly outside the
    /// range, so this is an upper bound, for a hint).
    pub async fn archived_events(&self, filter: &crate::EventFilter) -> Result<i64> {
        const CTX: &str = "reading the archive ledger";
        let client = self.client(CTX).await?;
        let row = client
            .query_one(
                "SELECT coalesce(sum(t.events), 0)::int8
                 FROM usage_archived_totals t JOIN usage_archives a USING (archive_id)
                 WHERE a.state = 'complete' AND a.range_from < $2 AND a.range_to > $1
                   AND ($3::text IS NULL OR t.customer_id = $3)
                   AND ($4::text IS NULL OR t.service = $4)",
                &[
                    &filter.range.from(),
                    &filter.range.to(),
                    &filter.customer.as_ref().map(|c| c.as_str()),
                    &filter.service.as_ref().map(|s| s.as_str()),
                ],
            )
            .await
            .map_err(Error::db(CTX))?;
        row.try_get(0).map_err(Error::db(CTX))
    }
}
