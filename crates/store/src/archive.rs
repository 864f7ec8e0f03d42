//! Archive and restore: raw events older than a cutoff move to compressed files (one
//! per UTC month), written and synced before the transaction that removes their rows
//! commits; rollups and dedupe keys stay. See docs/archive.md.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    path::{Path, PathBuf},
};

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use flate2::{Compression, read::GzDecoder, write::GzEncoder};
use futures_util::{StreamExt, pin_mut};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tally_core::{TimeRange, serde_fmt};
use tokio::io::AsyncWriteExt;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::{Error, Numeric, Result, Store};

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

/// Bytes of archive lines handed to the compressing thread at a time.
const CHUNK: usize = 256 * 1024;

/// A thread that gzips the chunks it receives into `file`, then finishes the stream
/// and syncs the file (durable before the rows' delete commits): the SHA-256 of the
/// bytes written, hex.
fn spawn_writer(
    file: std::fs::File,
) -> (
    tokio::sync::mpsc::Sender<Vec<u8>>,
    tokio::task::JoinHandle<std::io::Result<String>>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let writer = tokio::task::spawn_blocking(move || {
        let mut gz = GzEncoder::new(Hashing::new(file), Compression::fast());
        while let Some(chunk) = rx.blocking_recv() {
            gz.write_all(&chunk)?;
        }
        let hashing = gz.finish()?;
        let file = hashing.file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(hashing
            .sha
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    });
    (tx, writer)
}

/// A file that hashes what is written to it.
struct Hashing {
    file: std::io::BufWriter<std::fs::File>,
    sha: Sha256,
}

impl Hashing {
    fn new(file: std::fs::File) -> Hashing {
        Hashing {
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            sha: Sha256::new(),
        }
    }
}

impl Write for Hashing {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(bytes)?;
        self.sha.update(bytes.get(..n).unwrap_or_default());
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The archive's totals per customer and service, in the hourly rollup's terms (each
/// quarter hour's totals over all the archived hours: `verify` compares them with the
/// rollups over the archived span), aggregated by the server from `source` (rows with
/// `customer_id`, `service`, `quantity`, `recorded_at`) into `usage_archived_totals`
/// for archive `$1`. In SQL, not in memory: an archive of 500 000 customers holds no
/// per-customer state in the process (docs/performance.md, issue 22).
fn insert_totals_sql(source: &str) -> String {
    // The hourly rollup's value columns, each from the events by its own rule, with `m`
    // the minute of the event's UTC hour.
    let hourly = &crate::rollup::HOURLY;
    let within = |lo: u32, hi: u32| match (lo, hi) {
        (0, hi) => format!("m < {hi}"),
        (lo, hi) => format!("m >= {lo} AND m < {hi}"),
    };
    let names = crate::rollup::list(hourly.values().map(|v| v.name));
    let values: Vec<String> = hourly.values().map(|v| v.of_events(&within)).collect();
    format!(
        "INSERT INTO usage_archived_totals (archive_id, customer_id, service, {names})
         SELECT $1::int8, customer_id, service, {values}
         FROM (SELECT customer_id, service, quantity,
                      extract(minute FROM recorded_at AT TIME ZONE 'UTC') AS m FROM {source}) s
         GROUP BY customer_id, service",
        values = values.join(", "),
    )
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

impl Store {
    /// Archives the raw events recorded before `options.cutoff`, one file per UTC
    /// month (see docs/archive.md). Only one archive or restore runs at a time.
    pub async fn archive(&self, options: &ArchiveOptions) -> Result<ArchiveReport> {
        tokio::fs::create_dir_all(&options.dir)
            .await
            .map_err(io("creating the archive directory"))?;
        let mut client = self.ingest().connect_unpooled("archiving").await?;
        lock(&client).await?;
        let result = self.archive_locked(&mut client, options).await;
        unlock(&client).await;
        result
    }

    async fn archive_locked(
        &self,
        client: &mut tokio_postgres::Client,
        options: &ArchiveOptions,
    ) -> Result<ArchiveReport> {
        let abandoned = client
            .execute(
                "UPDATE usage_archives SET state = 'abandoned', finished_at = now() WHERE state = 'writing'",
                &[],
            )
            .await
            .map_err(Error::db("resolving earlier archive runs"))?;
        let oldest: Option<DateTime<Utc>> = client
            .query_one(
                "SELECT min(recorded_at) FROM usage_events WHERE recorded_at < $1",
                &[&options.cutoff],
            )
            .await
            .map_err(Error::db("finding what to archive"))?
            .try_get(0)
            .map_err(Error::db("finding what to archive"))?;
        let mut report = ArchiveReport {
            archives: Vec::new(),
            abandoned,
        };
        let Some(oldest) = oldest else {
            return Ok(report);
        };
        let mut month = month_start(oldest);
        while at_midnight(month) < options.cutoff {
            let next = month.checked_add_months(Months::new(1)).ok_or_else(|| {
                Error::invalid("cutoff", options.cutoff.to_rfc3339(), "out of range")
            })?;
            let range = TimeRange::new(at_midnight(month), at_midnight(next).min(options.cutoff))?;
            if let Some(m) = self.archive_range(client, range, month, options).await? {
                report.archives.push(m);
            }
            month = next;
        }
        Ok(report)
    }

    async fn archive_range(
        &self,
        client: &mut tokio_postgres::Client,
        range: TimeRange,
        month: NaiveDate,
        options: &ArchiveOptions,
    ) -> Result<Option<Manifest>> {
        const CTX: &str = "archiving";
        let partition = format!("usage_events_{:04}_{:02}", month.year(), month.month());
        let whole_month = range.to() == at_midnight(month.checked_add_months(Months::new(1)).unwrap_or(month))
            && client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                     WHERE i.inhparent = 'usage_events'::regclass AND c.relname = $1)",
                    &[&partition],
                )
                .await
                .map_err(Error::db(CTX))?
                .try_get::<_, bool>(0)
                .map_err(Error::db(CTX))?;
        // The ledger row first, committed: a crash from here on leaves `writing`.
        let id: i64 = client
            .query_one(
                "INSERT INTO usage_archives (range_from, range_to, file_name, state)
                 VALUES ($1, $2, 'pending-' || gen_random_uuid(), 'writing') RETURNING archive_id",
                &[&range.from(), &range.to()],
            )
            .await
            .map_err(Error::db(CTX))?
            .try_get(0)
            .map_err(Error::db(CTX))?;
        let name = format!(
            "usage_{:04}_{:02}_{id}.ndjson.gz",
            month.year(),
            month.month()
        );
        client
            .execute(
                "UPDATE usage_archives SET file_name = $2 WHERE archive_id = $1",
                &[&id, &name],
            )
            .await
            .map_err(Error::db(CTX))?;
        let path = options.dir.join(&name);
        let partial = options.dir.join(format!("{name}.partial"));

        let tx = client.transaction().await.map_err(Error::db(CTX))?;
        let rows = if whole_month {
            // Whole month: block writers of the partition, read it, drop it (below).
            tx.batch_execute(&format!("LOCK TABLE {partition} IN SHARE MODE"))
                .await
                .map_err(Error::db(CTX))?;
            let sql = format!(
                "SELECT event_id, customer_id, service, quantity, recorded_at, metadata::text FROM {partition}"
            );
            tx.query_raw(&sql, std::iter::empty::<&(dyn ToSql + Sync)>())
                .await
                .map_err(Error::db(CTX))?
        } else {
            // Part of a month: delete exactly what is written, by the same predicate, and
            // in the same statement (one snapshot) total it and forget its keys.
            let forget = if options.forget_keys {
                ", k AS (DELETE FROM usage_event_keys k USING d
                         WHERE k.event_id = d.event_id AND k.customer_id = d.customer_id)"
            } else {
                ""
            };
            let sql = format!(
                "WITH d AS (DELETE FROM usage_events WHERE recorded_at >= $2 AND recorded_at < $3
                            RETURNING event_id, customer_id, service, quantity, recorded_at, metadata)
                 , t AS ({totals}){forget}
                 SELECT event_id, customer_id, service, quantity, recorded_at, metadata::text FROM d",
                totals = insert_totals_sql("d"),
            );
            let params: [&(dyn ToSql + Sync); 3] = [&id, &range.from(), &range.to()];
            tx.query_raw(&sql, params).await.map_err(Error::db(CTX))?
        };
        pin_mut!(rows);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .await
            .map_err(io("creating an archive file"))?
            .into_std()
            .await;
        // Rows are decoded and written as lines here; gzip, the checksum and the file
        // run on a thread of their own, so the two halves overlap (docs/performance.md).
        let (chunks, writer) = spawn_writer(file);
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + 4096);
        // The manifest's totals, per service (a handful) and overall.
        let mut services: BTreeMap<String, ServiceCount> = BTreeMap::new();
        let (mut events, mut quantity) = (0i64, Decimal::ZERO);
        let streamed: Result<()> = async {
            while let Some(row) = rows.next().await {
                let row = row.map_err(Error::db(CTX))?;
                let metadata: String = row.try_get(5).map_err(Error::db(CTX))?;
                let line = Line {
                    event_id: row.try_get(0).map_err(Error::db(CTX))?,
                    customer_id: row.try_get(1).map_err(Error::db(CTX))?,
                    service: row.try_get(2).map_err(Error::db(CTX))?,
                    quantity: row.try_get::<_, Numeric>(3).map_err(Error::db(CTX))?.0,
                    recorded_at: row.try_get(4).map_err(Error::db(CTX))?,
                    metadata: serde_json::value::RawValue::from_string(metadata)
                        .map_err(|e| io("archiving")(std::io::Error::other(e)))?,
                };
                serde_json::to_writer(&mut buf, &line).map_err(|e| io("archiving")(e.into()))?;
                buf.push(b'\n');
                let per = match services.get_mut(&line.service) {
                    Some(c) => c,
                    None => services.entry(line.service.clone()).or_default(),
                };
                per.events += 1;
                per.quantity = plus(per.quantity, line.quantity)?;
                events += 1;
                quantity = plus(quantity, line.quantity)?;
                if buf.len() >= CHUNK {
                    let full = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK + 4096));
                    if chunks.send(full).await.is_err() {
                        break; // the writer failed: its error is returned below
                    }
                }
            }
            if !buf.is_empty() {
                let _ = chunks.send(buf).await;
            }
            Ok(())
        }
        .await;
        drop(chunks);
        let written = writer.await;
        streamed?;
        let sha = match written {
            Ok(Ok(sha)) => sha,
            Ok(Err(e)) => return Err(io("writing an archive")(e)),
            Err(e) => return Err(io("writing an archive")(std::io::Error::other(e))),
        };
        if events == 0 {
            let _ = tokio::fs::remove_file(&partial).await;
            tx.rollback().await.map_err(Error::db(CTX))?;
            client
                .execute("DELETE FROM usage_archives WHERE archive_id = $1", &[&id])
                .await
                .map_err(Error::db(CTX))?;
            return Ok(None);
        }
        if whole_month {
            // The partition is still here, and locked: the rows just written, exactly.
            tx.execute(&insert_totals_sql(&partition), &[&id])
                .await
                .map_err(Error::db("recording an archive's totals"))?;
            if options.forget_keys {
                tx.batch_execute(&format!(
                    "DELETE FROM usage_event_keys k USING {partition} e
                     WHERE k.event_id = e.event_id AND k.customer_id = e.customer_id"
                ))
                .await
                .map_err(Error::db("forgetting archived keys"))?;
            }
        }
        // Durable before the delete commits: the data (synced by its writer), then the
        // name and the directory entry.
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(io("naming an archive"))?;
        let manifest = Manifest {
            archive_id: id,
            file: name.clone(),
            range_from: range.from(),
            range_to: range.to(),
            events,
            quantity,
            services,
            sha256: sha,
        };
        let manifest_json =
            serde_json::to_vec_pretty(&manifest).map_err(|e| io("archiving")(e.into()))?;
        let side = options.dir.join(format!("{name}.manifest.json"));
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&side)
            .await
            .map_err(io("writing a manifest"))?;
        f.write_all(&manifest_json)
            .await
            .map_err(io("writing a manifest"))?;
        f.sync_all().await.map_err(io("syncing a manifest"))?;
        tokio::fs::File::open(&options.dir)
            .await
            .map_err(io("syncing the archive directory"))?
            .sync_all()
            .await
            .map_err(io("syncing the archive directory"))?;
        failpoint("archive-before-commit");

        if whole_month {
            // Two statements, not one string: Citus propagates each DDL command to its
            // workers on its own.
            tx.batch_execute(&format!(
                "ALTER TABLE usage_events DETACH PARTITION {partition}"
            ))
            .await
            .map_err(Error::db("detaching an archived partition"))?;
            tx.batch_execute(&format!("DROP TABLE {partition}"))
                .await
                .map_err(Error::db("dropping an archived partition"))?;
        }
        let manifest_value =
            serde_json::to_value(&manifest).map_err(|e| io("archiving")(e.into()))?;
        tx.execute(
            "UPDATE usage_archives SET state = 'complete', events = $2, quantity = $3, sha256 = $4,
                 manifest = $5, keys_kept = $6, finished_at = now()
             WHERE archive_id = $1",
            &[
                &id,
                &events,
                &quantity,
                &manifest.sha256,
                &manifest_value,
                &!options.forget_keys,
            ],
        )
        .await
        .map_err(Error::db(CTX))?;
        tx.commit()
            .await
            .map_err(Error::db("committing an archive"))?;
        if whole_month {
            self.ingest().forget_partition(month);
        }
        tracing::info!(file = %path.display(), events, "archived");
        Ok(Some(manifest))
    }

    /// Puts the raw events of the archive `file` back, exactly as they were, without
    /// adding them to the rollups again (they never left them). The file must be a
    /// complete archive of this database, unchanged (its SHA-256 is checked); restoring
    /// one that was restored before does nothing.
    ///
    /// Memory stays bounded whatever the file holds: it must be a regular file (a FIFO
    /// or device is refused before anything waits on it); its checksum is computed by
    /// streaming, before the archive lock is taken; its events are then decompressed
    /// and inserted in chunks, each line at most 64 KiB and never more
    /// lines than the manifest counts (a gzip bomb stops at its first long line).
    pub async fn restore(&self, file: &Path) -> Result<RestoreReport> {
        const CTX: &str = "restoring an archive";
        let shown = file.display().to_string();
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match tokio::fs::metadata(file).await {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(Error::invalid("file", shown, "not a regular file")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::invalid("file", shown, "no such file"));
            }
            Err(e) => return Err(Error::io("reading an archive", e)),
        }
        let mut client = self.ingest().connect_unpooled(CTX).await?;
        let entry = ledger_entry(&client, file, &name).await?;
        if let Some(done) = entry.settled(&shown)? {
            return Ok(done);
        }
        // Streaming, and outside the lock: a huge or slow file holds nothing up.
        let path = file.to_owned();
        let actual = tokio::task::spawn_blocking(move || hash_file(&path))
            .await
            .map_err(|e| Error::io("reading an archive", std::io::Error::other(e)))??;
        if Some(&actual) != entry.sha.as_ref() {
            let ours: Option<String> = client
                .query_opt(
                    "SELECT file_name FROM usage_archives WHERE sha256 = $1 LIMIT 1",
                    &[&actual],
                )
                .await
                .map_err(Error::db(CTX))?
                .map(|r| r.try_get(0))
                .transpose()
                .map_err(Error::db(CTX))?;
            let reason = match ours {
                Some(other) => format!("its content is this database's archive {other:?}, renamed"),
                None => format!(
                    "its checksum {actual} matches no archive of this database (this database's \
                     {name:?} has {}): the file changed, or it is another database's archive",
                    entry.sha.as_deref().unwrap_or("none")
                ),
            };
            return Err(Error::invalid("file", shown, reason));
        }
        lock(&client).await?;
        let result = self.restore_locked(&mut client, file, &name).await;
        unlock(&client).await;
        result
    }

    async fn restore_locked(
        &self,
        client: &mut tokio_postgres::Client,
        file: &Path,
        name: &str,
    ) -> Result<RestoreReport> {
        const CTX: &str = "restoring an archive";
        let shown = file.display().to_string();
        // Again under the lock: another restore may have finished meanwhile.
        let entry = ledger_entry(client, file, name).await?;
        let id = entry.id;
        if let Some(done) = entry.settled(&shown)? {
            return Ok(done);
        }
        let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel::<Vec<Line>>(2);
        let path = file.to_owned();
        let limit = u64::try_from(entry.events).unwrap_or_default();
        let reader = tokio::task::spawn_blocking(move || read_lines(&path, limit, &chunks_tx));
        let tx = client.transaction().await.map_err(Error::db(CTX))?;
        tx.execute(
            "SELECT tally_ensure_month_partition($1)",
            &[&month_start(entry.from)],
        )
        .await
        .map_err(Error::db("creating the partition to restore into"))?;
        while let Some(chunk) = chunks.recv().await {
            let a: Vec<Uuid> = chunk.iter().map(|l| l.event_id).collect();
            let b: Vec<&str> = chunk.iter().map(|l| l.customer_id.as_str()).collect();
            let c: Vec<&str> = chunk.iter().map(|l| l.service.as_str()).collect();
            let d: Vec<Decimal> = chunk.iter().map(|l| l.quantity).collect();
            let e: Vec<DateTime<Utc>> = chunk.iter().map(|l| l.recorded_at).collect();
            let f: Vec<&str> = chunk.iter().map(|l| l.metadata.get()).collect();
            tx.execute(
                "INSERT INTO usage_events (event_id, customer_id, service, quantity, recorded_at, metadata)
                 SELECT u.a, u.b, u.c, u.d, u.e, u.f::jsonb
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::numeric[], $5::timestamptz[], $6::text[])
                     AS u(a, b, c, d, e, f)",
                &[&a, &b, &c, &d, &e, &f],
            )
            .await
            .map_err(Error::db(CTX))?;
            if !entry.keys_kept {
                tx.execute(
                    "INSERT INTO usage_event_keys (event_id, customer_id)
                     SELECT * FROM unnest($1::uuid[], $2::text[]) ON CONFLICT DO NOTHING",
                    &[&a, &b],
                )
                .await
                .map_err(Error::db(CTX))?;
            }
        }
        let read = reader
            .await
            .map_err(|e| Error::io("reading an archive", std::io::Error::other(e)))??;
        // The bytes inserted are the bytes checked: refused (and rolled back) otherwise.
        if Some(&read.sha) != entry.sha.as_ref() {
            return Err(Error::invalid(
                "file",
                shown,
                "the file changed while it was being restored",
            ));
        }
        if i64::try_from(read.lines).ok() != Some(entry.events) || read.total != entry.quantity {
            return Err(Error::invalid(
                "file",
                shown,
                format!(
                    "holds {} events totalling {}; the manifest says {} totalling {}",
                    read.lines, read.total, entry.events, entry.quantity
                ),
            ));
        }
        tx.execute(
            "DELETE FROM usage_archived_totals WHERE archive_id = $1",
            &[&id],
        )
        .await
        .map_err(Error::db(CTX))?;
        tx.execute(
            "UPDATE usage_archives SET state = 'restored', finished_at = now() WHERE archive_id = $1",
            &[&id],
        )
        .await
        .map_err(Error::db(CTX))?;
        tx.commit().await.map_err(Error::db(CTX))?;
        Ok(RestoreReport {
            archive_id: id,
            restored: read.lines,
            already_restored: false,
        })
    }

    /// The archive ledger's complete archives: how many events and how much they hold
    /// (what `verify` adds to the raw events).
    pub(crate) async fn archived_totals(&self) -> Result<(i64, Decimal)> {
        let client = self.client("reading the archive ledger").await?;
        let row = client
            .query_one(
                "SELECT coalesce(sum(events), 0)::int8, coalesce(sum(quantity), 0) FROM usage_archives WHERE state = 'complete'",
                &[],
            )
            .await
            .map_err(Error::db("reading the archive ledger"))?;
        Ok((
            row.try_get(0)
                .map_err(Error::db("reading the archive ledger"))?,
            row.try_get::<_, Numeric>(1)
                .map_err(Error::db("reading the archive ledger"))?
                .0,
        ))
    }
}

/// The longest archive line read back: an event's columns with the largest metadata
/// ([`tally_core::Metadata::MAX_BYTES`]) fit several times over.
const MAX_LINE: usize = 64 * 1024;

/// Lines handed to the inserting side at a time.
const RESTORE_CHUNK: usize = 10_000;

/// An archive's row in the ledger.
struct LedgerEntry {
    id: i64,
    state: String,
    // None for an archive that never completed.
    sha: Option<String>,
    events: i64,
    quantity: Decimal,
    keys_kept: bool,
    from: DateTime<Utc>,
}

impl LedgerEntry {
    /// What a restore of this archive comes to without reading it: nothing to do when
    /// it was restored before, an error when it never completed, else `None`.
    fn settled(&self, shown: &str) -> Result<Option<RestoreReport>> {
        match self.state.as_str() {
            "restored" => Ok(Some(RestoreReport {
                archive_id: self.id,
                restored: 0,
                already_restored: true,
            })),
            "complete" => Ok(None),
            other => Err(Error::invalid(
                "file",
                shown,
                format!(
                    "archive {} is {other}, not complete: its rows never left the database",
                    self.id
                ),
            )),
        }
    }
}

async fn ledger_entry(
    client: &tokio_postgres::Client,
    file: &Path,
    name: &str,
) -> Result<LedgerEntry> {
    const CTX: &str = "reading the archive ledger";
    let row = client
        .query_opt(
            // An archive that never completed has no counts yet.
            "SELECT archive_id, state, sha256, coalesce(events, 0)::int8,
                    coalesce(quantity, 0), keys_kept, range_from
             FROM usage_archives WHERE file_name = $1",
            &[&name],
        )
        .await
        .map_err(Error::db(CTX))?
        .ok_or_else(|| {
            Error::invalid(
                "file",
                file.display().to_string(),
                "not an archive of this database",
            )
        })?;
    Ok(LedgerEntry {
        id: row.try_get(0).map_err(Error::db(CTX))?,
        state: row.try_get(1).map_err(Error::db(CTX))?,
        sha: row.try_get(2).map_err(Error::db(CTX))?,
        events: row.try_get(3).map_err(Error::db(CTX))?,
        quantity: row.try_get::<_, Numeric>(4).map_err(Error::db(CTX))?.0,
        keys_kept: row.try_get(5).map_err(Error::db(CTX))?,
        from: row.try_get(6).map_err(Error::db(CTX))?,
    })
}

fn hex(sha: Sha256) -> String {
    sha.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens `path` for reading, refusing anything but a regular file (checked on the
/// open file, so a swap after the first check is caught too).
fn open_regular(path: &Path) -> Result<std::fs::File> {
    let f = std::fs::File::open(path).map_err(io("reading an archive"))?;
    let meta = f.metadata().map_err(io("reading an archive"))?;
    if !meta.is_file() {
        return Err(Error::invalid(
            "file",
            path.display().to_string(),
            "not a regular file",
        ));
    }
    Ok(f)
}

/// The SHA-256 of a file, read 1 MiB at a time.
fn hash_file(path: &Path) -> Result<String> {
    let mut r = Hashed::new(open_regular(path)?);
    std::io::copy(&mut r, &mut std::io::sink()).map_err(io("reading an archive"))?;
    Ok(hex(r.sha))
}

/// A reader hashing every byte it reads.
struct Hashed<R> {
    inner: R,
    sha: Sha256,
}

impl<R: Read> Hashed<R> {
    fn new(inner: R) -> Hashed<std::io::BufReader<R>> {
        Hashed {
            inner: std::io::BufReader::with_capacity(1 << 20, inner),
            sha: Sha256::new(),
        }
    }
}

impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}

/// What reading an archive's lines found.
struct LinesRead {
    lines: u64,
    total: Decimal,
    sha: String,
}

/// Decompresses `path` and sends its lines in chunks; refuses a line over
/// `MAX_LINE` bytes or more than `limit` lines. Returns what it read and the
/// SHA-256 of every byte of the file.
fn read_lines(
    path: &Path,
    limit: u64,
    out: &tokio::sync::mpsc::Sender<Vec<Line>>,
) -> Result<LinesRead> {
    use std::io::BufRead;
    let shown = || path.display().to_string();
    let mut gz = std::io::BufReader::new(GzDecoder::new(Hashed::new(open_regular(path)?)));
    let mut read = LinesRead {
        lines: 0,
        total: Decimal::ZERO,
        sha: String::new(),
    };
    let mut chunk = Vec::with_capacity(RESTORE_CHUNK);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let cap = u64::try_from(MAX_LINE).unwrap_or(u64::MAX) + 1;
        let n = (&mut gz)
            .take(cap)
            .read_until(b'\n', &mut buf)
            .map_err(io("reading an archive"))?;
        if n == 0 {
            break;
        }
        let number = read.lines + 1;
        if buf.last() != Some(&b'\n') && n > MAX_LINE {
            return Err(Error::invalid(
                "file",
                shown(),
                format!("line {number} is longer than {MAX_LINE} bytes"),
            ));
        }
        if number > limit {
            return Err(Error::invalid(
                "file",
                shown(),
                format!("holds more than the {limit} events its manifest counts"),
            ));
        }
        let line: Line = serde_json::from_slice(buf.trim_ascii_end())
            .map_err(|e| Error::invalid("file", shown(), format!("line {number}: {e}")))?;
        read.total = plus(read.total, line.quantity)?;
        read.lines = number;
        chunk.push(line);
        if chunk.len() == RESTORE_CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(RESTORE_CHUNK));
            if out.blocking_send(full).is_err() {
                return Ok(read); // the inserting side failed; its error is the one
            }
        }
    }
    if !chunk.is_empty() && out.blocking_send(chunk).is_err() {
        return Ok(read);
    }
    // What the decoder buffered was hashed as it was read; hash what follows the
    // gzip stream too, so the checksum covers every byte.
    let mut rest = gz.into_inner().into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(io("reading an archive"))?;
    read.sha = hex(rest.sha);
    Ok(read)
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
