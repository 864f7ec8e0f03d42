//! Writing an archive: each month's rows streamed from a cursor into a gzip file on its own
//! thread, synced, its totals put in the ledger, then the rows removed in the same
//! transaction.

use std::{collections::BTreeMap, io::Write};

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use flate2::{Compression, write::GzEncoder};
use futures_util::{StreamExt, pin_mut};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use tally_core::TimeRange;
use tokio::io::AsyncWriteExt;
use tokio_postgres::types::ToSql;

use super::{
    ArchiveOptions, ArchiveReport, Line, Manifest, ServiceCount, at_midnight, failpoint, io, lock,
    month_start, plus, unlock,
};
use crate::{Error, Numeric, Result, Store};

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
}
