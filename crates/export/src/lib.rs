//! Tally's exports: raw usage for one customer or all, a half-open range and a service
//! filter, as CSV (RFC 4180, one header row), JSON (the seed's document: records, then
//! a summary) or XLSX (typed cells, usage sheets rolling over past Excel's row limit, a
//! summary sheet and a chart of daily usage per service). Rows stream from the
//! database in bounded chunks and are written as they come, so memory stays flat;
//! rows carry the per-unit price of the price book invoices use, and totals are priced
//! the way invoices are. Logic only: the SQL is the store's
//! ([`tally_store::Store::events`]).
//!
//! ```no_run
//! use tally_analytics::Analytics;
//! use tally_core::{TimeRange, Zone, parse_instant};
//! use tally_export::{ExportFormat, Exporter, default_file_name};
//! use tally_store::EventFilter;
//!
//! # async fn run(store: tally_store::Store) -> tally_store::Result<()> {
//! let exporter = Exporter::new(store.clone(), Analytics::new(store));
//! let range = TimeRange::new(
//!     parse_instant("from", "2026-11-01", Zone::UTC)?,
//!     parse_instant("to", "2026-12-01", Zone::UTC)?,
//! )?;
//! let path = default_file_name(ExportFormat::Xlsx, tally_core::chrono::Utc::now());
//! let filter = EventFilter { range, customer: Some("acme".parse()?), service: None };
//! // Whole or not at all, and never over an existing file (force: false).
//! let report = exporter.export_to(ExportFormat::Xlsx, filter, &path, false, None).await?;
//! println!("{} rows, {} due", report.rows, report.total_cost);
//! # Ok(()) }
//! ```

#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod export;

pub use export::{
    COLUMNS, ExportFormat, ExportReport, Exporter, ServiceTotal, XLSX_MAX_ROWS, default_file_name,
};
