//! The reads as query builders, sqlx-style: the required parts go in the constructor
//! ([`Analytics::usage`] and friends), the optional ones are methods, and `.await` runs
//! the query. Every read takes a zone (`in_zone`), by default the handle's
//! ([`Analytics::zone`]); a read with a moment "now" (`stats`, `trends`) takes it
//! from `as_of`, by default the clock when the query runs.

use std::future::{Future, IntoFuture};
use std::pin::Pin;

use chrono::{DateTime, Utc};
use tally_core::{CustomerId, Granularity, Limit, Service, TimeRange, Zone};
use tally_store::Result;

use crate::Analytics;
use crate::report::{Aggregation, Over, Peak, Stats, Summary, TrendDay};

/// What `.await` on a query returns.
pub type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// What every query has: `.await` runs it, and `in_zone` names its zone.
macro_rules! runs {
    ($query:ident, $out:ty, $run:ident) => {
        impl $query<'_> {
            /// Reads in `zone`'s calendar: its hours, days and months (default: the
            /// handle's zone).
            pub fn in_zone(mut self, zone: Zone) -> Self {
                self.zone = zone;
                self
            }
        }

        impl<'a> IntoFuture for $query<'a> {
            type Output = Result<$out>;
            type IntoFuture = Answer<'a, $out>;
            fn into_future(self) -> Self::IntoFuture {
                Box::pin(async move { self.analytics.$run(&self).await })
            }
        }
    };
}

/// `.service(s)` on the queries that read every service unless told.
macro_rules! one_service {
    ($query:ident, $default:literal) => {
        impl $query<'_> {
            #[doc = concat!("Only `service` (", $default, ").")]
            pub fn service(mut self, service: &Service) -> Self {
                self.service = Some(service.clone());
                self
            }
        }
    };
}

/// A customer's usage and cost per service over a range, priced with the handle's
/// price book. From [`Analytics::summary`].
#[derive(Debug, Clone)]
#[must_use = "a query does nothing until it is awaited"]
pub struct SummaryQuery<'a> {
    analytics: &'a Analytics,
    pub(crate) customer: CustomerId,
    pub(crate) range: TimeRange,
    pub(crate) service: Option<Service>,
    pub(crate) daily: bool,
    pub(crate) zone: Zone,
}

impl<'a> SummaryQuery<'a> {
    pub(crate) fn new(analytics: &'a Analytics, customer: CustomerId, range: TimeRange) -> Self {
        SummaryQuery {
            zone: analytics.zone(),
            analytics,
            customer,
            range,
            service: None,
            daily: false,
        }
    }

    /// Adds a per-day breakdown, in the query's zone.
    pub fn daily(mut self) -> Self {
        self.daily = true;
        self
    }
}

runs!(SummaryQuery, Summary, run_summary);
one_service!(SummaryQuery, "default: every service of the catalogue");

/// Usage per hour, day or month of a zone over a range, of one customer or of all
/// customers added up; buckets without usage are left out. From [`Analytics::usage`].
#[derive(Debug, Clone)]
#[must_use = "a query does nothing until it is awaited"]
pub struct UsageQuery<'a> {
    analytics: &'a Analytics,
    pub(crate) customer: Option<CustomerId>,
    pub(crate) range: TimeRange,
    pub(crate) service: Option<Service>,
    pub(crate) granularity: Granularity,
    pub(crate) zone: Zone,
}

impl<'a> UsageQuery<'a> {
    pub(crate) fn new(analytics: &'a Analytics, range: TimeRange) -> Self {
        UsageQuery {
            zone: analytics.zone(),
            analytics,
            customer: None,
            range,
            service: None,
            granularity: Granularity::Day,
        }
    }

    /// Only `customer` (default: all customers added up).
    pub fn customer(mut self, customer: &CustomerId) -> Self {
        self.customer = Some(customer.clone());
        self
    }

    /// Buckets of `granularity` (default [`Granularity::Day`]).
    pub fn by(mut self, granularity: Granularity) -> Self {
        self.granularity = granularity;
        self
    }
}

runs!(UsageQuery, Aggregation, run_usage);
one_service!(UsageQuery, "default: every service");

/// Statistics of a customer's use of a service over the whole days of the query's
/// zone before `as_of`'s day: `[midnight − days, midnight)`. From [`Analytics::stats`].
#[derive(Debug, Clone)]
#[must_use = "a query does nothing until it is awaited"]
pub struct StatsQuery<'a> {
    analytics: &'a Analytics,
    pub(crate) customer: CustomerId,
    pub(crate) service: Service,
    pub(crate) days: u32,
    pub(crate) over: Over,
    pub(crate) as_of: Option<DateTime<Utc>>,
    pub(crate) zone: Zone,
}

impl<'a> StatsQuery<'a> {
    pub(crate) fn new(analytics: &'a Analytics, customer: CustomerId, service: Service) -> Self {
        StatsQuery {
            zone: analytics.zone(),
            analytics,
            customer,
            service,
            days: 30,
            over: Over::Events,
            as_of: None,
        }
    }

    /// Days in the window (1 to 3660; default 30).
    pub fn days(mut self, days: u32) -> Self {
        self.days = days;
        self
    }

    /// What the values are: events, or hourly or daily totals (default events).
    pub fn over(mut self, over: Over) -> Self {
        self.over = over;
        self
    }

    /// The moment whose day ends the window (default: now).
    pub fn as_of(mut self, as_of: DateTime<Utc>) -> Self {
        self.as_of = Some(as_of);
        self
    }
}

runs!(StatsQuery, Stats, run_stats);

/// Daily totals over the last days of the query's zone, `as_of`'s day included, each
/// with the previous day's total and the change in percent. From [`Analytics::trends`].
#[derive(Debug, Clone)]
#[must_use = "a query does nothing until it is awaited"]
pub struct TrendsQuery<'a> {
    analytics: &'a Analytics,
    pub(crate) customer: CustomerId,
    pub(crate) service: Option<Service>,
    pub(crate) days: u32,
    pub(crate) as_of: Option<DateTime<Utc>>,
    pub(crate) zone: Zone,
}

impl<'a> TrendsQuery<'a> {
    pub(crate) fn new(analytics: &'a Analytics, customer: CustomerId) -> Self {
        TrendsQuery {
            zone: analytics.zone(),
            analytics,
            customer,
            service: None,
            days: 7,
            as_of: None,
        }
    }

    /// Calendar days, `as_of`'s included (1 to 3660; default 7).
    pub fn days(mut self, days: u32) -> Self {
        self.days = days;
        self
    }

    /// The moment whose day is the last (default: now).
    pub fn as_of(mut self, as_of: DateTime<Utc>) -> Self {
        self.as_of = Some(as_of);
        self
    }
}

runs!(TrendsQuery, Vec<TrendDay>, run_trends);
one_service!(
    TrendsQuery,
    "listed even without usage; default: the services used"
);

/// The largest hours, days or months of a customer's use of a service, ties broken by
/// the earlier bucket. From [`Analytics::peaks`].
#[derive(Debug, Clone)]
#[must_use = "a query does nothing until it is awaited"]
pub struct PeaksQuery<'a> {
    analytics: &'a Analytics,
    pub(crate) customer: CustomerId,
    pub(crate) service: Service,
    pub(crate) by: Granularity,
    pub(crate) limit: Limit,
    pub(crate) zone: Zone,
}

impl<'a> PeaksQuery<'a> {
    pub(crate) fn new(analytics: &'a Analytics, customer: CustomerId, service: Service) -> Self {
        PeaksQuery {
            zone: analytics.zone(),
            analytics,
            customer,
            service,
            by: Granularity::Hour,
            limit: Limit::DEFAULT,
        }
    }

    /// Buckets of `granularity` (default [`Granularity::Hour`]).
    pub fn by(mut self, granularity: Granularity) -> Self {
        self.by = granularity;
        self
    }

    /// How many (default 10).
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limit = limit;
        self
    }
}

runs!(PeaksQuery, Vec<Peak>, run_peaks);
