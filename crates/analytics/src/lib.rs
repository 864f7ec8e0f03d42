//! Tally's read side: usage summaries with cost, aggregation in any time zone,
//! statistics, trends, peaks and invoice previews. Logic only: every service is read
//! through the built-in meters' one read, [`tally_store::Store::totals`] (what the meter
//! query answers a service's name with), and every defined meter through
//! [`tally_store::Store::query_meter`].
//!
//! Everything is exact and always current: totals come from the rollups that the write
//! path keeps equal to the raw events — whole UTC days from the daily rollup, whole UTC
//! hours from the hourly rollup, quarter hours from the hourly rollup's detail — and
//! only other sub-hour edges of a range from raw events. Amounts are priced with a
//! [`tally_core::PriceBook`] and rounded once per line. Results serialize to the JSON
//! shapes of the CLI contract (decimals as strings, instants as RFC 3339 UTC).
//!
//! Each read is a query builder: the required parts in the call, the optional ones as
//! methods, `.await` to run it. Every read honours a zone, the handle's by default.
//!
//! ```no_run
//! use tally_analytics::Analytics;
//! use tally_core::{CustomerId, Granularity, TimeRange, Zone, parse_instant};
//!
//! # async fn run(store: tally_store::Store) -> tally_store::Result<()> {
//! let berlin: Zone = "Europe/Berlin".parse()?;
//! let analytics = Analytics::new(store).with_zone(berlin);
//! let customer: CustomerId = "acme".parse()?;
//! let range = TimeRange::new(
//!     parse_instant("from", "2026-11-01", berlin)?,
//!     parse_instant("to", "2026-12-01", berlin)?,
//! )?;
//! let summary = analytics.summary(&customer, range).daily().await?;
//! println!("{} total", summary.total_amount);
//! let hours = analytics
//!     .usage(range)
//!     .customer(&customer)
//!     .by(Granularity::Hour)
//!     .in_zone(Zone::UTC)
//!     .await?;
//! # let _ = hours; Ok(()) }
//! ```

#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod analytics;
mod query;
mod report;

pub use analytics::Analytics;
pub use query::{Answer, PeaksQuery, StatsQuery, SummaryQuery, TrendsQuery, UsageQuery};
#[doc(hidden)]
pub use report::percentile_cont;
pub use report::{
    Aggregation, Bucket, DayLine, Invoice, InvoiceLine, LineKind, Over, Peak, ServiceLine, Stats,
    Summary, TrendDay,
};
