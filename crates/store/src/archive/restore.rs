//! Restoring an archive: the file checked whole (regular file, SHA-256, ledger), then its
//! lines decompressed and inserted in bounded chunks.

use std::{io::Read, path::Path};

use chrono::{DateTime, Utc};
use flate2::read::GzDecoder;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{Line, RestoreReport, io, lock, month_start, plus, unlock};
use crate::{Error, Numeric, Result, Store};

impl Store {
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
