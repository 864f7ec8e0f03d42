//! The three writers and what they share: rows priced as they stream, totals per
//! service and per day, and a summary priced by the analytics crate at the end.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    io::Write,
    path::Path,
    str::FromStr,
};

use chrono::Utc;
use rust_decimal::Decimal;
use rust_xlsxwriter::{Workbook, XlsxError};
use serde::Serialize;
use tally_analytics::Analytics;
use tally_core::{Progress, add_exact, serde_fmt};
use tally_store::{EventFilter, Result};

mod file;
mod totals;
mod write;

use file::Pending;
pub use file::default_file_name;
use totals::{COST, Pricer};
use write::{Head, finish, write_rows};

/// Rows per Excel sheet: the format's 1 048 576 less the header row.
pub const XLSX_MAX_ROWS: u32 = 1_048_575;

/// The columns of the CSV and of the XLSX "Usage" sheets, in order.
pub const COLUMNS: [&str; 9] = [
    "recorded_at",
    "customer_id",
    "service",
    "quantity",
    "unit",
    "unit_price",
    "cost",
    "metadata",
    "event_id",
];

/// An export's file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExportFormat {
    /// RFC 4180 CSV with one header row.
    Csv,
    /// One JSON document: records, then a summary.
    Json,
    /// An Excel workbook: usage sheets, a summary sheet with a daily chart.
    Xlsx,
}

impl ExportFormat {
    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Json => "json",
            ExportFormat::Xlsx => "xlsx",
        }
    }
}

impl FromStr for ExportFormat {
    type Err = tally_core::Error;
    fn from_str(s: &str) -> std::result::Result<ExportFormat, tally_core::Error> {
        match s {
            "csv" => Ok(ExportFormat::Csv),
            "json" => Ok(ExportFormat::Json),
            "xlsx" => Ok(ExportFormat::Xlsx),
            _ => Err(tally_core::Error::Invalid {
                field: "format",
                value: s.chars().take(300).collect(),
                reason: "expected csv, json or xlsx".into(),
            }),
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

/// Totals of one service in an export.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceTotal {
    /// Events exported.
    pub events: u64,
    /// Their total quantity, exact.
    #[serde(serialize_with = "serde_fmt::decimal")]
    pub quantity: Decimal,
    /// The service's unit.
    pub unit: String,
    /// What it costs for the range, priced as each customer's invoice for the range
    /// prices it (tiers, allowances, true-up and cap; each part of the range at the
    /// price in force then) from the rows exported, and added up: each customer's
    /// charges are rounded to the minor unit, then added.
    #[serde(serialize_with = "serde_fmt::money")]
    pub cost: Decimal,
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    /// Rows (events) written.
    pub rows: u64,
    /// Per service.
    pub services: BTreeMap<String, ServiceTotal>,
    /// What customers whose charges are below the price book's minimum pay on top
    /// (their invoices' minimum lines), added up.
    #[serde(serialize_with = "serde_fmt::money")]
    pub minimum: Decimal,
    /// The service costs and the minimum: the sum of the exported customers'
    /// invoice totals for the range (each rounded to the minor unit, then added).
    #[serde(serialize_with = "serde_fmt::money")]
    pub total_cost: Decimal,
    /// Usage sheets (XLSX only).
    pub sheets: u32,
}

/// Running totals while rows stream: per service, per day (for the XLSX chart), and
/// the customer being read. Rows come in customer order, so each customer's cost is
/// priced once their last row has passed, and memory holds one customer at a time
/// (plus, for a price that needs each event's quantity, that customer's quantities of
/// that service), however many customers there are.
pub(super) fn text(d: Option<Decimal>) -> String {
    d.map(|d| d.normalize().to_string()).unwrap_or_default()
}

pub(super) fn io(what: &str) -> impl Fn(std::io::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

pub(super) fn xlsx_error(e: XlsxError) -> std::io::Error {
    std::io::Error::other(format!("writing XLSX: {e}"))
}

pub(super) fn json_error(e: serde_json::Error) -> std::io::Error {
    std::io::Error::other(format!("writing JSON: {e}"))
}

/// Exports raw usage as CSV, JSON or XLSX, streaming from the database in bounded
/// chunks (memory stays flat however many rows), priced with the same price book as
/// invoices. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Exporter {
    analytics: Analytics,
    store: tally_store::Store,
    rows_per_sheet: u32,
}

/// Where an export is going and the writers' state between the row phase and the
/// summary phase.
enum Writer {
    Csv(Box<csv::Writer<Box<dyn Write + Send>>>),
    Json(Box<dyn Write + Send>),
    Xlsx {
        workbook: Box<Workbook>,
        out: Box<dyn Write + Send>,
        sheet: usize,
        row: u32,
        sheets: Vec<(usize, u32)>,
    },
}

impl Exporter {
    /// An exporter over `store`, pricing with `analytics`' price book.
    pub fn new(store: tally_store::Store, analytics: Analytics) -> Exporter {
        Exporter {
            analytics,
            store,
            rows_per_sheet: XLSX_MAX_ROWS,
        }
    }

    /// Data rows per XLSX usage sheet before the next ("Usage (2)", …) starts; at most
    /// (and by default) Excel's [`XLSX_MAX_ROWS`].
    pub fn rows_per_sheet(mut self, n: u32) -> Exporter {
        self.rows_per_sheet = n.clamp(1, XLSX_MAX_ROWS);
        self
    }

    /// Writes the events matching `filter` to the file `path` in `format`, whole or
    /// not at all: the rows go to a temporary file beside it, which is synced and then
    /// renamed to `path`, so a full disk or a crash never leaves a truncated file under
    /// that name (the temporary one is removed on failure). An existing `path` is
    /// refused, naming it (field `output`), unless `force`: then it is replaced only
    /// once the new file is complete. A character device or a FIFO (`/dev/null`, a
    /// named pipe) is not a file to replace: the rows are streamed into it.
    pub async fn export_to(
        &self,
        format: ExportFormat,
        filter: EventFilter,
        path: &Path,
        force: bool,
        progress: Option<Progress>,
    ) -> Result<ExportReport> {
        // A device or a pipe (`-o /dev/null`, `-o /dev/stdout`, a FIFO) is a stream, not
        // a file to replace: written straight through, no temporary file, no rename.
        if file::is_stream(path) {
            let out = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io(&format!("opening {}", path.display())))?;
            let out = Box::new(std::io::BufWriter::with_capacity(1 << 20, out));
            return self.export(format, filter, out, progress).await;
        }
        let pending = Pending::create(path, force)?;
        let file = pending
            .file
            .try_clone()
            .map_err(io(&format!("writing {}", path.display())))?;
        let out = Box::new(std::io::BufWriter::with_capacity(1 << 20, file));
        let report = self.export(format, filter, out, progress).await?;
        tokio::task::spawn_blocking(move || pending.commit())
            .await
            .map_err(|e| std::io::Error::other(format!("export writer: {e}")))??;
        Ok(report)
    }

    /// Writes the events matching `filter` to `out` in `format` (a stream: standard
    /// output, a socket; for a file, [`Exporter::export_to`]). `progress`, if given,
    /// hears the rows written so far now and then.
    pub async fn export(
        &self,
        format: ExportFormat,
        filter: EventFilter,
        out: Box<dyn Write + Send>,
        progress: Option<Progress>,
    ) -> Result<ExportReport> {
        let catalog = self.store.catalog().await?;
        let pricer = Pricer {
            catalog,
            prices: self.analytics.prices().clone(),
            range: filter.range,
            services: HashMap::new(),
            unused: None,
        };
        let writer = match format {
            ExportFormat::Csv => Writer::Csv(Box::new(
                csv::WriterBuilder::new()
                    .buffer_capacity(256 * 1024)
                    .from_writer(out),
            )),
            ExportFormat::Json => Writer::Json(out),
            ExportFormat::Xlsx => {
                let mut workbook = Box::new(Workbook::new());
                workbook
                    .set_tempdir(std::env::temp_dir())
                    .map_err(xlsx_error)?;
                Writer::Xlsx {
                    workbook,
                    out,
                    sheet: 0,
                    row: 0,
                    sheets: Vec::new(),
                }
            }
        };
        let rows = self.store.events(filter.clone(), 5_000);
        let rows_per_sheet = self.rows_per_sheet;
        let head = Head {
            customer: filter.customer.clone(),
            range: filter.range,
            exported_at: Utc::now(),
        };
        // Phase 1, blocking: stream the rows (one snapshot, in customer order), pricing
        // each customer as its last row passes: rows and totals from the same rows.
        let (writer, running, head) = tokio::task::spawn_blocking(move || {
            let (writer, running) =
                write_rows(writer, rows, pricer, &head, rows_per_sheet, progress)?;
            Ok::<_, tally_store::Error>((writer, running, head))
        })
        .await
        .map_err(|e| std::io::Error::other(format!("export writer: {e}")))??;
        let mut report = ExportReport {
            rows: running.rows,
            services: running.services,
            minimum: running.minimum,
            total_cost: Decimal::ZERO,
            sheets: 0,
        };
        report.total_cost = report
            .services
            .values()
            .try_fold(running.minimum, |a, t| add_exact(a, t.cost, COST))?;
        // Phase 3, blocking: the summary and the chart, then close.
        let daily = running.daily;
        let report = tokio::task::spawn_blocking(move || finish(writer, &head, report, &daily))
            .await
            .map_err(|e| std::io::Error::other(format!("export writer: {e}")))??;
        Ok(report)
    }
}
