//! Tally's read side: usage summaries with cost, aggregation in any time zone,
//! statistics, trends, peaks and invoice previews. Logic only: the SQL is the
//! store's ([`tally_store::Store::rollup_rows`] and friends).
//!
//! Everything is exact and always current: totals come from the rollups that the write
//! path keeps equal to the raw events — whole UTC days from the daily rollup, whole UTC
//! hours from the hourly rollup — and only sub-hour edges of a range (and buckets of
//! zones with half- or quarter-hour offsets) from raw events. Amounts are priced with a
//! [`tally_core::PriceBook`] and rounded once per line. Results serialize to the JSON
//! shapes of the CLI contract (decimals as strings, instants as RFC 3339 UTC).
//!
//! ```no_run
//! use tally_analytics::Analytics;
//! use tally_core::{CustomerId, Granularity, TimeRange, Zone, parse_instant};
//!
//! # async fn run(store: tally_store::Store) -> tally_store::Result<()> {
//! let analytics = Analytics::new(store);
//! let customer: CustomerId = "acme".parse()?;
//! let range = TimeRange::new(
//!     parse_instant("from", "2026-11-01", Zone::UTC)?,
//!     parse_instant("to", "2026-12-01", Zone::UTC)?,
//! )?;
//! let summary = analytics.summary(&customer, range, None, None).await?;
//! println!("{} total", summary.total_amount);
//! let berlin: Zone = "Europe/Berlin".parse()?;
//! let days = analytics.aggregate(Some(&customer), range, None, Granularity::Day, berlin).await?;
//! # let _ = days; Ok(()) }
//! ```

#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod analytics;
mod totals;

pub use analytics::{
    Aggregation, Analytics, Bucket, DayLine, Invoice, InvoiceLine, LineKind, Over, Peak,
    ServiceLine, Stats, Summary, TrendDay, percentile_cont,
};
