use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;
use tally_core::{Catalog, CustomerId, Granularity, PriceBook, Service, TimeRange, Zone};
use tally_store::Store;

use crate::{
    Error, Result,
    totals::{Agg, Who, by_service, totals},
};

/// One service's line of a usage summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceLine {
    /// The service.
    pub service: String,
    /// Its unit.
    pub unit: String,
    /// Quantity used in the range.
    pub quantity: Decimal,
    /// Events in the range.
    pub events: i64,
    /// Price per unit, when the service has a per-unit price.
    pub unit_price: Option<Decimal>,
    /// The amount, rounded to cents once.
    pub amount: Decimal,
}

/// One day and service of a detailed summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayLine {
    /// The calendar day (in the summary's zone).
    pub date: NaiveDate,
    /// The service.
    pub service: String,
    /// Quantity used that day.
    pub quantity: Decimal,
    /// Events that day.
    pub events: i64,
}

/// A customer's usage and its cost over a range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The customer.
    pub customer_id: String,
    /// Start of the range (inclusive).
    pub from: DateTime<Utc>,
    /// End of the range (exclusive).
    pub to: DateTime<Utc>,
    /// One line per service (every known service; zeros where unused).
    pub services: Vec<ServiceLine>,
    /// Sum of the line amounts.
    pub total_amount: Decimal,
    /// Per-day breakdown, when asked for.
    pub days: Option<Vec<DayLine>>,
}

/// One bucket of an aggregation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Bucket start (UTC instant of the zone's hour, day or month start).
    pub bucket: DateTime<Utc>,
    /// The customer, or `None` when all customers are added up.
    pub customer_id: Option<String>,
    /// The service.
    pub service: String,
    /// Events.
    pub events: i64,
    /// Total quantity.
    pub quantity: Decimal,
    /// Smallest event quantity.
    pub min: Decimal,
    /// Largest event quantity.
    pub max: Decimal,
}

impl Bucket {
    /// Mean event quantity. Computed on demand: a 28-digit decimal division per bucket
    /// was the largest cost of building a long series (profiled).
    pub fn avg(&self) -> Decimal {
        if self.events == 0 {
            Decimal::ZERO
        } else {
            self.quantity / Decimal::from(self.events)
        }
    }
}

/// What statistics are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Over {
    /// Individual event quantities.
    Events,
    /// Hourly totals, zero hours included.
    Hour,
    /// Daily totals, zero days included.
    Day,
}

impl std::str::FromStr for Over {
    type Err = tally_core::Error;
    fn from_str(s: &str) -> Result<Over, tally_core::Error> {
        match s {
            "events" => Ok(Over::Events),
            "hour" => Ok(Over::Hour),
            "day" => Ok(Over::Day),
            _ => Err(invalid("over", s, "expected events, hour or day")),
        }
    }
}

/// Statistics of a customer's use of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// The customer.
    pub customer_id: String,
    /// The service.
    pub service: String,
    /// What the values are.
    pub over: Over,
    /// Start of the window.
    pub from: DateTime<Utc>,
    /// End of the window (exclusive).
    pub to: DateTime<Utc>,
    /// Number of values (events, or buckets in the window).
    pub count: i64,
    /// Their sum.
    pub total: Decimal,
    /// Their mean.
    pub avg: Decimal,
    /// Smallest.
    pub min: Decimal,
    /// Largest.
    pub max: Decimal,
    /// 50th percentile (`percentile_cont` interpolation).
    pub median: Decimal,
    /// 95th percentile.
    pub p95: Decimal,
    /// 99th percentile.
    pub p99: Decimal,
}

/// One day of a trend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrendDay {
    /// The calendar day in the trend's zone.
    pub date: NaiveDate,
    /// The service.
    pub service: String,
    /// That day's total (0 without usage).
    pub total: Decimal,
    /// The previous calendar day's total, `None` before the window.
    pub previous: Option<Decimal>,
    /// Change against the previous day in percent, 2 places, half-up; `None` when the
    /// previous day is 0 or before the window.
    pub change_pct: Option<Decimal>,
}

/// One peak bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peak {
    /// Bucket start (UTC).
    pub bucket: DateTime<Utc>,
    /// The service.
    pub service: String,
    /// The bucket's total.
    pub total: Decimal,
    /// Its events.
    pub events: i64,
}

/// One line of an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvoiceLine {
    /// The service.
    pub service: String,
    /// Units used in the period.
    pub quantity: Decimal,
    /// Units billed after the included allowance.
    pub billable_quantity: Decimal,
    /// The amount, rounded half-up to cents once.
    pub amount: Decimal,
}

/// An invoice preview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invoice {
    /// The customer.
    pub customer_id: String,
    /// First instant of the period.
    pub period_start: DateTime<Utc>,
    /// First instant after it.
    pub period_end: DateTime<Utc>,
    /// Currency of the amounts.
    pub currency: String,
    /// One line per service used.
    pub lines: Vec<InvoiceLine>,
    /// Sum of the lines.
    pub total: Decimal,
}

fn invalid(field: &'static str, value: &str, reason: &str) -> tally_core::Error {
    tally_core::Error::Invalid {
        field,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// `percentile_cont(p)` of sorted values: linear interpolation between the values at
/// `floor(p·(n−1))` and `ceil(p·(n−1))`, exactly.
pub fn percentile_cont(sorted: &[Decimal], p: Decimal) -> Decimal {
    if sorted.is_empty() {
        return Decimal::ZERO;
    }
    let pos = p * Decimal::from(sorted.len() - 1);
    let lo = pos.floor();
    let i = usize::try_from(lo.mantissa() / 10i128.pow(lo.scale())).expect("index fits");
    let frac = pos - lo;
    match sorted.get(i + 1) {
        Some(next) if !frac.is_zero() => sorted[i] + frac * (*next - sorted[i]),
        _ => sorted[i],
    }
}

const P50: Decimal = Decimal::from_parts(5, 0, 0, false, 1);
const P95: Decimal = Decimal::from_parts(95, 0, 0, false, 2);
const P99: Decimal = Decimal::from_parts(99, 0, 0, false, 2);

fn stats_of(
    mut values: Vec<Decimal>,
    customer: &CustomerId,
    service: &Service,
    over: Over,
    window: TimeRange,
) -> Stats {
    values.sort();
    let total: Decimal = values.iter().sum();
    let count = values.len() as i64;
    Stats {
        customer_id: customer.to_string(),
        service: service.to_string(),
        over,
        from: window.from(),
        to: window.to(),
        count,
        total,
        avg: if count == 0 {
            Decimal::ZERO
        } else {
            total / Decimal::from(count)
        },
        min: values.first().copied().unwrap_or_default(),
        max: values.last().copied().unwrap_or_default(),
        median: percentile_cont(&values, P50),
        p95: percentile_cont(&values, P95),
        p99: percentile_cont(&values, P99),
    }
}

/// The read side of Tally: summaries, aggregation, statistics, trends, peaks and
/// invoices, exact and served from the rollups.
#[derive(Debug, Clone)]
pub struct Analytics {
    store: Store,
    prices: PriceBook,
}

impl Analytics {
    /// Analytics over `store`, pricing with the seed's per-unit defaults.
    pub fn new(store: Store) -> Analytics {
        Analytics {
            store,
            prices: PriceBook::default(),
        }
    }

    /// Prices with `prices` instead.
    pub fn with_prices(mut self, prices: PriceBook) -> Analytics {
        self.prices = prices;
        self
    }

    /// The price book in use.
    pub fn prices(&self) -> &PriceBook {
        &self.prices
    }

    async fn services(&self, filter: Option<&Service>) -> Result<(Vec<Service>, Catalog)> {
        let catalog = self.store.catalog().await?;
        let services = match filter {
            Some(s) => vec![catalog.service(s.as_str())?],
            None => catalog.meters().map(|m| m.service.clone()).collect(),
        };
        Ok((services, catalog))
    }

    /// A customer's usage and cost per service over `range`. With `detailed`, adds a
    /// per-day breakdown in that zone.
    pub async fn summary(
        &self,
        customer: &CustomerId,
        range: TimeRange,
        service: Option<&Service>,
        detailed: Option<Zone>,
    ) -> Result<Summary> {
        let (services, catalog) = self.services(service).await?;
        let sums = by_service(
            totals(
                &self.store,
                &[(range.from(), range)],
                Who::One(customer),
                &services,
            )
            .await?,
        );
        let mut lines = Vec::new();
        let mut total_amount = Decimal::ZERO;
        for (i, s) in services.iter().enumerate() {
            let agg = sums.get(&i);
            let quantity = agg.map_or(Decimal::ZERO, |a| a.quantity);
            let price = self.prices.price_at(s, range.from());
            let amount = match price {
                Some(p) => p.line(quantity)?.amount,
                None => Decimal::ZERO,
            };
            total_amount += amount;
            lines.push(ServiceLine {
                service: s.to_string(),
                unit: catalog.unit(s).unwrap_or_default().to_owned(),
                quantity,
                events: agg.map_or(0, |a| a.events),
                unit_price: price.and_then(|p| p.unit_price()),
                amount,
            });
        }
        let days = match detailed {
            None => None,
            Some(zone) => {
                let buckets = zone.buckets(range, Granularity::Day);
                let t = totals(&self.store, &buckets, Who::One(customer), &services).await?;
                let mut days: Vec<DayLine> = t
                    .into_iter()
                    .map(|((label, service), a)| DayLine {
                        date: zone.date_of(label),
                        service: services[service].to_string(),
                        quantity: a.quantity,
                        events: a.events,
                    })
                    .collect();
                days.sort_by(|a, b| (a.date, &a.service).cmp(&(b.date, &b.service)));
                Some(days)
            }
        };
        Ok(Summary {
            customer_id: customer.to_string(),
            from: range.from(),
            to: range.to(),
            services: lines,
            total_amount,
            days,
        })
    }

    /// Usage per bucket of `granularity` in `zone` over `range`, for one customer or
    /// (with `None`) all customers added up. Buckets without usage are omitted.
    pub async fn aggregate(
        &self,
        customer: Option<&CustomerId>,
        range: TimeRange,
        service: Option<&Service>,
        granularity: Granularity,
        zone: Zone,
    ) -> Result<Vec<Bucket>> {
        let (services, _) = self.services(service).await?;
        let buckets = zone.buckets(range, granularity);
        let who = customer.map_or(Who::All, Who::One);
        let mut t: Vec<((DateTime<Utc>, usize), Agg)> =
            totals(&self.store, &buckets, who, &services)
                .await?
                .into_iter()
                .collect();
        // Services are in catalog (name) order, so this is (bucket, service) order.
        t.sort_by_key(|(k, _)| *k);
        let customer_id = customer.map(|c| c.to_string());
        let rows: Vec<Bucket> = t
            .into_iter()
            .map(|((bucket, service), a)| Bucket {
                bucket,
                customer_id: customer_id.clone(),
                service: services[service].to_string(),
                events: a.events,
                quantity: a.quantity,
                min: a.min,
                max: a.max,
            })
            .collect();
        Ok(rows)
    }

    /// Statistics over the `days` complete UTC days before `as_of`'s day:
    /// `[midnight − days, midnight)`.
    pub async fn stats(
        &self,
        customer: &CustomerId,
        service: &Service,
        days: u32,
        over: Over,
        as_of: DateTime<Utc>,
    ) -> Result<Stats> {
        if !(1..=3660).contains(&days) {
            return Err(invalid("days", &days.to_string(), "must be from 1 to 3660").into());
        }
        let service = self.services(Some(service)).await?.0.remove(0);
        let end = Zone::UTC.bucket_start(as_of, Granularity::Day);
        let window = TimeRange::new(end - Duration::days(i64::from(days)), end)?;
        let values = match over {
            Over::Events => self.event_quantities(customer, &service, window).await?,
            Over::Hour | Over::Day => {
                let g = if over == Over::Hour {
                    Granularity::Hour
                } else {
                    Granularity::Day
                };
                let buckets = Zone::UTC.buckets(window, g);
                let t = totals(
                    &self.store,
                    &buckets,
                    Who::One(customer),
                    std::slice::from_ref(&service),
                )
                .await?;
                let by_label: HashMap<DateTime<Utc>, Decimal> = t
                    .into_iter()
                    .map(|((label, _), a)| (label, a.quantity))
                    .collect();
                buckets
                    .iter()
                    .map(|(label, _)| by_label.get(label).copied().unwrap_or_default())
                    .collect()
            }
        };
        Ok(stats_of(values, customer, &service, over, window))
    }

    async fn event_quantities(
        &self,
        customer: &CustomerId,
        service: &Service,
        window: TimeRange,
    ) -> Result<Vec<Decimal>> {
        let client = self
            .store
            .pool()
            .get()
            .await
            .map_err(Error::pool("reading events"))?;
        let rows = client
            .query(
                "SELECT quantity FROM usage_events
                 WHERE customer_id = $1 AND service = $2 AND recorded_at >= $3 AND recorded_at < $4",
                &[&customer.as_str(), &service.as_str(), &window.from(), &window.to()],
            )
            .await
            .map_err(Error::db("reading events"))?;
        Ok(rows
            .iter()
            .map(|r| r.get::<_, tally_store::Numeric>(0).0)
            .collect())
    }

    /// Daily totals over the last `days` calendar days in `zone`, today included, each
    /// with the previous day's total and the change in percent.
    pub async fn trends(
        &self,
        customer: &CustomerId,
        service: Option<&Service>,
        days: u32,
        zone: Zone,
        as_of: DateTime<Utc>,
    ) -> Result<Vec<TrendDay>> {
        if !(1..=3660).contains(&days) {
            return Err(invalid("days", &days.to_string(), "must be from 1 to 3660").into());
        }
        let (services, _) = self.services(service).await?;
        let today = zone.date_of(as_of);
        let dates: Vec<NaiveDate> = (0..days)
            .rev()
            .map(|i| today - Duration::days(i64::from(i)))
            .collect();
        let ranges: Vec<(DateTime<Utc>, TimeRange)> = dates
            .iter()
            .map(|d| {
                let lo = zone.start_of_day(*d);
                let hi = zone.start_of_day(*d + Duration::days(1));
                TimeRange::new(lo, hi).map(|r| (lo, r))
            })
            .collect::<Result<_, _>>()?;
        let t = totals(&self.store, &ranges, Who::One(customer), &services).await?;
        // With a filter, that service even without usage; otherwise the services used.
        let used: BTreeSet<usize> = match service {
            Some(_) => BTreeSet::from([0]),
            None => t.keys().map(|(_, s)| *s).collect(),
        };
        let mut out = Vec::new();
        for s in used {
            let mut previous: Option<Decimal> = None;
            for (label, _) in &ranges {
                let total = t.get(&(*label, s)).map_or(Decimal::ZERO, |a| a.quantity);
                let change_pct = previous.filter(|p| !p.is_zero()).map(|p| {
                    ((total - p) / p * Decimal::ONE_HUNDRED)
                        .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
                });
                out.push(TrendDay {
                    date: zone.date_of(*label),
                    service: services[s].to_string(),
                    total,
                    previous,
                    change_pct,
                });
                previous = Some(total);
            }
        }
        Ok(out)
    }

    /// The `limit` largest hours, days or months (UTC) of a customer's use of a service,
    /// ties broken by the earlier bucket. `limit` is 1 to 10 000.
    pub async fn peaks(
        &self,
        customer: &CustomerId,
        service: &Service,
        by: Granularity,
        limit: u32,
    ) -> Result<Vec<Peak>> {
        if !(1..=10_000).contains(&limit) {
            return Err(invalid("limit", &limit.to_string(), "must be from 1 to 10000").into());
        }
        let sql = match by {
            Granularity::Hour => {
                "SELECT bucket, service, quantity, events FROM usage_hourly
                 WHERE customer_id = $1 AND service = $2 ORDER BY quantity DESC, bucket LIMIT $3"
            }
            Granularity::Day => {
                "SELECT bucket, service, quantity, events FROM usage_daily
                 WHERE customer_id = $1 AND service = $2 ORDER BY quantity DESC, bucket LIMIT $3"
            }
            Granularity::Month => {
                "SELECT date_trunc('month', bucket, 'UTC'), service, sum(quantity), sum(events)::int8 FROM usage_daily
                 WHERE customer_id = $1 AND service = $2 GROUP BY 1, 2 ORDER BY 3 DESC, 1 LIMIT $3"
            }
        };
        let client = self
            .store
            .pool()
            .get()
            .await
            .map_err(Error::pool("reading peaks"))?;
        let rows = client
            .query(
                sql,
                &[&customer.as_str(), &service.as_str(), &i64::from(limit)],
            )
            .await
            .map_err(Error::db("reading peaks"))?;
        Ok(rows
            .iter()
            .map(|r| Peak {
                bucket: r.get(0),
                service: r.get(1),
                total: r.get(2),
                events: r.get(3),
            })
            .collect())
    }

    /// An invoice preview for `period` (normally a calendar month): a line per service
    /// used, priced with the price in force at the period's start.
    pub async fn invoice(&self, customer: &CustomerId, period: TimeRange) -> Result<Invoice> {
        let (services, _) = self.services(None).await?;
        let sums: BTreeMap<usize, Agg> = by_service(
            totals(
                &self.store,
                &[(period.from(), period)],
                Who::One(customer),
                &services,
            )
            .await?,
        );
        let mut lines = Vec::new();
        let mut total = Decimal::ZERO;
        for (i, s) in services.iter().enumerate() {
            let Some(agg) = sums.get(&i) else {
                continue;
            };
            let line = match self.prices.price_at(s, period.from()) {
                Some(p) => p.line(agg.quantity)?,
                None => tally_core::Line {
                    quantity: agg.quantity,
                    billable_quantity: agg.quantity,
                    amount: Decimal::ZERO,
                },
            };
            total += line.amount;
            lines.push(InvoiceLine {
                service: s.to_string(),
                quantity: line.quantity,
                billable_quantity: line.billable_quantity,
                amount: line.amount,
            });
        }
        Ok(Invoice {
            customer_id: customer.to_string(),
            period_start: period.from(),
            period_end: period.to(),
            currency: self.prices.currency.clone(),
            lines,
            total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_cont_matches_postgresql() {
        let v: Vec<Decimal> = (1..=10).map(Decimal::from).collect();
        assert_eq!(percentile_cont(&v, P50), Decimal::new(55, 1));
        assert_eq!(percentile_cont(&v, P95), Decimal::new(955, 2));
        assert_eq!(percentile_cont(&v, P99), Decimal::new(991, 2));
        assert_eq!(percentile_cont(&[Decimal::ONE], P99), Decimal::ONE);
        assert_eq!(percentile_cont(&[], P50), Decimal::ZERO);
    }
}
