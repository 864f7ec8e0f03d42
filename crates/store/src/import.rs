//! Bulk import of CSV and NDJSON files through the exactly-once write path.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read},
    path::Path,
    str::FromStr,
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tally_core::{
    Catalog, CustomerId, EventId, Metadata, Quantity, UsageEvent, Zone, parse_instant,
};
use tokio::sync::mpsc;

use crate::{
    Error, Result, Store,
    ingest::{Lane, WriteOutcome},
};

/// The format of an import file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImportFormat {
    /// CSV with a header row (RFC 4180).
    Csv,
    /// One JSON object per line.
    Ndjson,
}

impl ImportFormat {
    /// The format a file name's extension implies (`.csv`, `.ndjson`, `.jsonl`).
    pub fn from_path(path: &Path) -> Option<ImportFormat> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(ImportFormat::Csv),
            "ndjson" | "jsonl" => Some(ImportFormat::Ndjson),
            _ => None,
        }
    }
}

impl FromStr for ImportFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<ImportFormat> {
        match s {
            "csv" => Ok(ImportFormat::Csv),
            "ndjson" | "jsonl" => Ok(ImportFormat::Ndjson),
            _ => Err(Error::invalid("format", s, "expected csv or ndjson")),
        }
    }
}

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The file's format.
    pub format: ImportFormat,
    /// Reject the whole file if any line is bad (one transaction); otherwise import
    /// the good lines and report the bad ones.
    pub strict: bool,
    /// Events per write.
    pub batch_size: usize,
}

impl ImportOptions {
    /// Lenient import of `format` in batches of 10 000.
    pub fn new(format: ImportFormat) -> ImportOptions {
        ImportOptions {
            format,
            strict: false,
            batch_size: 10_000,
        }
    }
}

/// A rejected line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineError {
    /// 1-based line number in the file (for CSV, where the record starts).
    pub line: u64,
    /// What was wrong, naming the field and value.
    pub message: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Events newly stored.
    pub inserted: u64,
    /// Events already stored (a replayed file), counted once.
    pub duplicates: u64,
    /// Lines rejected.
    pub rejected: u64,
    /// Why, line by line (the first 1 000).
    pub errors: Vec<LineError>,
}

const MAX_ERRORS_KEPT: usize = 1_000;

/// Called from the parsing thread with the number of bytes read so far.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

enum Parsed {
    Batch(Vec<UsageEvent>),
    Bad(LineError),
    Fatal(Error),
}

impl Store {
    /// Imports events from `reader`. Rows without an `event_id` get one derived from
    /// their content and how many identical rows came before them in the file, so a
    /// replayed file dedupes exactly; prefer explicit ids for files larger than memory
    /// allows (8 bytes per distinct row are kept while importing).
    pub async fn import<R: Read + Send + 'static>(
        &self,
        reader: R,
        options: ImportOptions,
        progress: Option<Progress>,
    ) -> Result<ImportReport> {
        let catalog = self.catalog().await?;
        let (tx, mut rx) = mpsc::channel::<Parsed>(4);
        let opts = options.clone();
        let parser =
            tokio::task::spawn_blocking(move || parse(reader, &opts, &catalog, progress, &tx));

        let mut report = ImportReport::default();
        let mut total = WriteOutcome::default();
        // Strict: one transaction that stages every batch and applies them all in one
        // statement at the end, so it holds no row lock while the file is read (and
        // cannot deadlock with other writers). Lenient: each batch commits on its own.
        let mut load = match options.strict {
            true => Some(self.ingest().begin(Lane::next()).await?),
            false => None,
        };
        let mut fatal = None;
        let mut staged = 0u64;
        while let Some(item) = rx.recv().await {
            match item {
                Parsed::Batch(batch) => {
                    // In strict mode, stop writing once a line is bad: all will roll back.
                    if options.strict && report.rejected > 0 {
                        continue;
                    }
                    match load.as_mut() {
                        Some(load) => {
                            load.stage(&batch).await?;
                            staged += batch.len() as u64;
                        }
                        None => total.add(self.ingest().write(&batch, Lane::next()).await?),
                    }
                }
                Parsed::Bad(e) => {
                    report.rejected += 1;
                    if report.errors.len() < MAX_ERRORS_KEPT {
                        report.errors.push(e);
                    }
                }
                Parsed::Fatal(e) => fatal = Some(e),
            }
        }
        parser
            .await
            .map_err(|e| Error::io("import parser", std::io::Error::other(e)))?;
        if let Some(e) = fatal {
            return Err(e);
        }
        if options.strict && report.rejected > 0 {
            // Dropping the transaction rolls it back: nothing of the file stays.
            drop(load);
            return Err(Error::import_rejected(report.errors));
        }
        if let Some(mut load) = load {
            let (inserted, quantity) = load.apply_staged().await?;
            load.commit().await?;
            total.add(WriteOutcome {
                inserted,
                duplicates: staged - inserted,
                quantity,
            });
        }
        report.inserted = total.inserted;
        report.duplicates = total.duplicates;
        Ok(report)
    }
}

/// Counts bytes read, for the progress callback.
struct Counting<R> {
    inner: R,
    read: u64,
    progress: Option<Progress>,
    reported: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if let Some(p) = &self.progress
            && (self.read - self.reported >= 256 * 1024 || n == 0)
        {
            self.reported = self.read;
            p(self.read);
        }
        Ok(n)
    }
}

/// Gives rows without an id a deterministic one.
#[derive(Default)]
struct IdDeriver {
    seen: HashMap<u64, u32>,
}

impl IdDeriver {
    fn id_for(&mut self, e: &UsageEvent) -> EventId {
        let canonical = format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
            e.customer,
            e.service,
            e.quantity,
            e.recorded_at
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            e.metadata.as_str()
        );
        let digest = Sha256::digest(canonical.as_bytes());
        let key = digest
            .first_chunk::<8>()
            .map_or(0, |b| u64::from_le_bytes(*b));
        let n = self.seen.entry(key).or_insert(0);
        *n += 1;
        EventId::derived(format!("{canonical}\u{1f}{n}").as_bytes())
    }
}

struct Fields<'a> {
    event_id: Option<&'a str>,
    customer_id: &'a str,
    service: &'a str,
    quantity: &'a str,
    recorded_at: &'a str,
    metadata: Option<&'a str>,
}

fn build(
    f: Fields<'_>,
    catalog: &Catalog,
    ids: &mut IdDeriver,
) -> Result<UsageEvent, tally_core::Error> {
    let customer = CustomerId::new(f.customer_id)?;
    let service = catalog.service(f.service)?;
    let quantity: Quantity = f.quantity.parse()?;
    let recorded_at = parse_instant("recorded_at", f.recorded_at, Zone::UTC)?;
    let metadata = match f.metadata.map(str::trim) {
        None | Some("") | Some("null") => Metadata::empty(),
        Some(m) => m.parse()?,
    };
    let mut e = UsageEvent::new(customer, service, quantity)
        .at(recorded_at)
        .with_metadata(metadata);
    e.id = match f.event_id.map(str::trim) {
        Some(id) if !id.is_empty() => id.parse()?,
        _ => ids.id_for(&e),
    };
    Ok(e)
}

#[derive(Deserialize)]
struct JsonRow<'a> {
    #[serde(default, borrow)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow)]
    customer_id: &'a RawValue,
    #[serde(borrow)]
    service: &'a RawValue,
    #[serde(borrow)]
    quantity: &'a RawValue,
    #[serde(borrow)]
    recorded_at: &'a RawValue,
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
}

/// A JSON string's content, or a number's exact text (so `0.000000000093` stays exact).
fn scalar(field: &'static str, raw: &RawValue) -> Result<String, String> {
    let text = raw.get();
    if text.starts_with('"') {
        return serde_json::from_str::<String>(text)
            .map_err(|e| format!("invalid {field} {text}: {e}"));
    }
    if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return Ok(text.to_owned());
    }
    Err(format!(
        "invalid {field} {text}: must be a string or a number"
    ))
}

fn parse<R: Read>(
    reader: R,
    opts: &ImportOptions,
    catalog: &Catalog,
    progress: Option<Progress>,
    tx: &mpsc::Sender<Parsed>,
) {
    let reader = Counting {
        inner: reader,
        read: 0,
        progress,
        reported: 0,
    };
    let mut ids = IdDeriver::default();
    let mut batch = Vec::with_capacity(opts.batch_size);
    let mut emit = |item: Parsed, batch: &mut Vec<UsageEvent>| -> bool {
        if let Parsed::Batch(_) = item {
            return tx.blocking_send(item).is_ok();
        }
        // Send the batch so far first, keeping line order in the report.
        if !batch.is_empty()
            && tx
                .blocking_send(Parsed::Batch(std::mem::take(batch)))
                .is_err()
        {
            return false;
        }
        tx.blocking_send(item).is_ok()
    };
    let push = |e: UsageEvent,
                batch: &mut Vec<UsageEvent>,
                emit: &mut dyn FnMut(Parsed, &mut Vec<UsageEvent>) -> bool| {
        batch.push(e);
        if batch.len() >= opts.batch_size {
            let full = std::mem::replace(batch, Vec::with_capacity(opts.batch_size));
            return emit(Parsed::Batch(full), batch);
        }
        true
    };
    match opts.format {
        ImportFormat::Csv => {
            let mut rdr = csv::ReaderBuilder::new()
                .has_headers(true)
                .from_reader(reader);
            let headers = match rdr.headers() {
                Ok(h) => h.clone(),
                Err(e) => {
                    emit(
                        Parsed::Bad(LineError {
                            line: 1,
                            message: format!("unreadable header: {e}"),
                        }),
                        &mut batch,
                    );
                    return;
                }
            };
            let col = |name: &str| headers.iter().position(|h| h.trim() == name);
            let (ci, si, qi, ti) = (
                col("customer_id"),
                col("service"),
                col("quantity"),
                col("recorded_at"),
            );
            let (ei, mi) = (col("event_id"), col("metadata"));
            let (Some(ci), Some(si), Some(qi), Some(ti)) = (ci, si, qi, ti) else {
                let missing: Vec<&str> = ["customer_id", "service", "quantity", "recorded_at"]
                    .into_iter()
                    .filter(|c| col(c).is_none())
                    .collect();
                emit(
                    Parsed::Fatal(Error::invalid(
                        "import header",
                        headers.iter().collect::<Vec<_>>().join(","),
                        format!("missing column(s): {}", missing.join(", ")),
                    )),
                    &mut batch,
                );
                return;
            };
            let mut record = csv::StringRecord::new();
            loop {
                let line_hint = rdr.position().line() + 1;
                match rdr.read_record(&mut record) {
                    Ok(false) => break,
                    Ok(true) => {
                        let line = record.position().map_or(line_hint, |p| p.line());
                        let fields = Fields {
                            event_id: ei.and_then(|i| record.get(i)),
                            customer_id: record.get(ci).unwrap_or(""),
                            service: record.get(si).unwrap_or(""),
                            quantity: record.get(qi).unwrap_or(""),
                            recorded_at: record.get(ti).unwrap_or(""),
                            metadata: mi.and_then(|i| record.get(i)),
                        };
                        let ok = match build(fields, catalog, &mut ids) {
                            Ok(e) => push(e, &mut batch, &mut emit),
                            Err(e) => emit(
                                Parsed::Bad(LineError {
                                    line,
                                    message: e.to_string(),
                                }),
                                &mut batch,
                            ),
                        };
                        if !ok {
                            return;
                        }
                    }
                    Err(e) => {
                        let line = e.position().map_or(line_hint, |p| p.line());
                        if let csv::ErrorKind::Io(_) = e.kind() {
                            emit(
                                Parsed::Fatal(Error::io(
                                    "reading the import file",
                                    std::io::Error::other(e.to_string()),
                                )),
                                &mut batch,
                            );
                            return;
                        }
                        if !emit(
                            Parsed::Bad(LineError {
                                line,
                                message: e.to_string(),
                            }),
                            &mut batch,
                        ) {
                            return;
                        }
                    }
                }
            }
        }
        ImportFormat::Ndjson => {
            let mut lines = BufReader::with_capacity(256 * 1024, reader);
            let mut buf = String::new();
            let mut line = 0u64;
            loop {
                buf.clear();
                match lines.read_line(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        emit(
                            Parsed::Fatal(Error::io(format!("reading line {}", line + 1), e)),
                            &mut batch,
                        );
                        return;
                    }
                }
                line += 1;
                let text = buf.trim();
                if text.is_empty() {
                    continue;
                }
                let result = serde_json::from_str::<JsonRow<'_>>(text)
                    .map_err(|e| format!("not a usage event object: {e}"))
                    .and_then(|row| {
                        let ev = |f, r: Option<&RawValue>| r.map(|r| scalar(f, r)).transpose();
                        let event_id = ev("event_id", row.event_id)?;
                        let customer_id = scalar("customer_id", row.customer_id)?;
                        let service = scalar("service", row.service)?;
                        let quantity = scalar("quantity", row.quantity)?;
                        let recorded_at = scalar("recorded_at", row.recorded_at)?;
                        let fields = Fields {
                            event_id: event_id.as_deref(),
                            customer_id: &customer_id,
                            service: &service,
                            quantity: &quantity,
                            recorded_at: &recorded_at,
                            metadata: row.metadata.map(RawValue::get),
                        };
                        build(fields, catalog, &mut ids).map_err(|e| e.to_string())
                    });
                let ok = match result {
                    Ok(e) => push(e, &mut batch, &mut emit),
                    Err(message) => emit(Parsed::Bad(LineError { line, message }), &mut batch),
                };
                if !ok {
                    return;
                }
            }
        }
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(Parsed::Batch(batch));
    }
}
