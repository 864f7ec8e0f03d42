//! Bulk import of CSV and NDJSON files through the exactly-once write path.

use std::{io::Read, path::Path, str::FromStr};

use serde::Serialize;
use tally_core::{Progress, UsageEvent};
use tokio::sync::mpsc;

use crate::{
    Error, Result, Store,
    ingest::{Lane, WriteOutcome},
};

mod parse;

use parse::parse;
pub use parse::{MAX_LINE_BYTES, parse_file};

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
    /// Write transactions the import committed (bad lines never cut a batch short).
    #[serde(skip)]
    pub batches: u64,
}

const MAX_ERRORS_KEPT: usize = 1_000;

enum Parsed {
    // The events, and the line each came from.
    Batch(Vec<UsageEvent>, Vec<u64>),
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
        let parser = tokio::task::spawn_blocking(move || {
            parse(
                reader,
                opts.format,
                opts.batch_size.max(1),
                &catalog,
                progress,
                &mut |p| tx.blocking_send(p).is_ok(),
            )
        });

        let mut report = ImportReport::default();
        let mut total = WriteOutcome::default();
        // Strict: one transaction that stages every batch and applies them all in one
        // statement at the end, so it holds no row lock while the file is read (and
        // cannot deadlock with other writers). Lenient: each batch commits on its own.
        let mut load = match options.strict {
            true => Some(
                self.ingest()
                    .begin(Lane::next(), crate::ingest::Path::Staged)
                    .await?,
            ),
            false => None,
        };
        let mut fatal = None;
        let mut staged = 0u64;
        // Strict: the line of each staged event, by its place in the stage.
        let mut staged_lines: Vec<u64> = Vec::new();
        let mut touched = std::collections::BTreeSet::new();
        let reject = |report: &mut ImportReport, e: LineError| {
            report.rejected += 1;
            if report.errors.len() < MAX_ERRORS_KEPT {
                report.errors.push(e);
            }
        };
        let conflict = |batch: &[UsageEvent], lines: &[u64], i: usize| LineError {
            line: lines.get(i).copied().unwrap_or_default(),
            message: batch
                .get(i)
                .map(|e| Error::conflict(e).to_string())
                .unwrap_or_default(),
        };
        while let Some(item) = rx.recv().await {
            match item {
                Parsed::Batch(batch, lines) => {
                    // In strict mode, stop writing once a line is bad: all will roll back.
                    if options.strict && report.rejected > 0 {
                        continue;
                    }
                    match load.as_mut() {
                        Some(load) => {
                            self.ingest().ensure_partitions(&batch).await;
                            let dedupe = crate::ingest::Dedupe::of(&batch);
                            for i in dedupe.repeat_conflicts() {
                                reject(&mut report, conflict(&batch, &lines, i));
                            }
                            load.stage(&dedupe.unique).await?;
                            staged_lines.extend(
                                dedupe
                                    .index
                                    .iter()
                                    .map(|&i| lines.get(i).copied().unwrap_or_default()),
                            );
                            staged += batch.len() as u64;
                            touched.extend(
                                batch
                                    .iter()
                                    .map(|e| (e.customer.clone(), e.service.clone())),
                            );
                        }
                        None => {
                            let outcome = self.write_riding_out(&batch).await?;
                            for &i in &outcome.conflicts {
                                reject(&mut report, conflict(&batch, &lines, i));
                            }
                            total.add(&outcome);
                            report.batches += 1;
                        }
                    }
                }
                Parsed::Bad(e) => reject(&mut report, e),
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
            let applied = load.apply_staged().await?;
            let conflicts = load.staged_conflicts().await?;
            if !conflicts.is_empty() {
                drop(load);
                for ord in conflicts {
                    let line = usize::try_from(ord)
                        .ok()
                        .and_then(|o| staged_lines.get(o))
                        .copied()
                        .unwrap_or_default();
                    reject(
                        &mut report,
                        LineError {
                            line,
                            message: "conflict: its event_id is stored with a different payload \
                                      (service, quantity or metadata)"
                                .to_owned(),
                        },
                    );
                }
                report.errors.sort_by_key(|e| e.line);
                return Err(Error::import_rejected(report.errors));
            }
            load.commit().await?;
            self.ingest()
                .local()
                .notify(&touched.into_iter().collect::<Vec<_>>());
            report.batches = 1;
            total.add(&WriteOutcome {
                inserted: applied.inserted,
                duplicates: staged - applied.inserted,
                quantity: applied.quantity,
                conflicts: Vec::new(),
            });
        }
        report.inserted = total.inserted;
        report.duplicates = total.duplicates;
        Ok(report)
    }
}

/// How long a lenient import keeps retrying a batch that fails for a transient reason
/// (a PostgreSQL restart, a dropped connection) before it gives up.
const IMPORT_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(60);

impl Store {
    /// Writes one import batch, retrying transient failures with backoff for up to
    /// [`IMPORT_RETRY_FOR`]: dedupe makes a retried batch safe, even one that did
    /// commit before the connection dropped.
    async fn write_riding_out(&self, batch: &[UsageEvent]) -> Result<WriteOutcome> {
        let started = tokio::time::Instant::now();
        let mut backoff = std::time::Duration::from_millis(100);
        self.ingest().entered(batch);
        loop {
            match self.ingest().write_entered(batch, Lane::next()).await {
                Ok(outcome) => return Ok(outcome),
                Err(e) if e.is_transient() && started.elapsed() + backoff < IMPORT_RETRY_FOR => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "an import batch failed for a transient reason; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                }
                Err(e) => {
                    self.ingest().left_unwritten(batch);
                    return Err(e);
                }
            }
        }
    }
}
