use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Serialize, Serializer, ser::SerializeStruct};
use tally_core::{
    Catalog, CustomerId, Granularity, Limit, Metered, PriceBook, Service, TimeRange, Totals, Zone,
    round_to, serde_fmt,
};
use tally_store::{Result, Store, Who};

use crate::totals::{by_service, totals};

/// One service's line of a usage summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceLine {
    /// The service.
    pub service: String,
    /// Its unit.
    pub unit: String,
    /// Quantity used in the range.
    #[serde(serialize_with = "serde_fmt::decimal")]
    pub quantity: Decimal,
    /// Events in the range.
    pub events: i64,
    /// Price per unit, when the service has a per-unit price.
    #[serde(serialize_with = "serde_fmt::opt_decimal")]
    pub unit_price: Option<Decimal>,
    /// The amount, rounded to cents once.
    #[serde(serialize_with = "serde_fmt::money")]
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
    #[serde(serialize_with = "serde_fmt::decimal")]
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
    #[serde(serialize_with = "serde_fmt::instant")]
    pub from: DateTime<Utc>,
    /// End of the range (exclusive).
    #[serde(serialize_with = "serde_fmt::instant")]
    pub to: DateTime<Utc>,
    /// One line per service (every known service; zeros where unused).
    pub services: Vec<ServiceLine>,
    /// Sum of the line amounts.
    #[serde(serialize_with = "serde_fmt::money")]
    pub total_amount: Decimal,
    /// Per-day breakdown, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days: Option<Vec<DayLine>>,
}

/// One bucket of an aggregation. In JSON it carries its `avg` too.
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl Serialize for Bucket {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Dec(Decimal);
        impl Serialize for Dec {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serde_fmt::decimal(&self.0, s)
            }
        }
        let mut st = s.serialize_struct("Bucket", 8)?;
        st.serialize_field("bucket", &serde_fmt::rfc3339(self.bucket))?;
        st.serialize_field("customer_id", &self.customer_id)?;
        st.serialize_field("service", &self.service)?;
        st.serialize_field("events", &self.events)?;
        st.serialize_field("quantity", &Dec(self.quantity))?;
        st.serialize_field("min", &Dec(self.min))?;
        st.serialize_field("max", &Dec(self.max))?;
        st.serialize_field("avg", &Dec(self.avg()))?;
        st.end()
    }
}

/// An aggregation: buckets of one size in one zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Aggregation {
    /// The bucket size (`hourly`, `daily`, `monthly` in JSON).
    #[serde(serialize_with = "serde_fmt::display")]
    pub period: Granularity,
    /// The zone of the buckets.
    #[serde(serialize_with = "serde_fmt::display")]
    pub tz: Zone,
    /// Buckets with usage, in (bucket, service) order.
    pub buckets: Vec<Bucket>,
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
    #[serde(serialize_with = "serde_fmt::instant")]
    pub from: DateTime<Utc>,
    /// End of the window (exclusive).
    #[serde(serialize_with = "serde_fmt::instant")]
    pub to: DateTime<Utc>,
    /// Number of values (events, or buckets in the window).
    pub count: i64,
    /// Their sum.
    #[serde(serialize_with = "serde_fmt::decimal")]
    pub total: Decimal,
    /// Their mean.
    #[serde(serialize_with = "serde_fmt::decimal")]
    pub avg: Decimal,
    /// Smallest.
    #[serde(serialize_with = "serde_fmt::decimal")]
    pub min: Decimal,
    /// Largest.
    #[serde(serialize_with = "serde_fmt::decimal")]
    pub max: Decimal,
    /// 50th percentile (`percentile_cont` interpolation).
    #[serde(serialize_with = "serde_fmt::decimal")]
    pub median: Decimal,
    /// 95th percentile.
    #[serde(serialize_with = "serde_fmt::decimal")]
    pub p95: Decimal,
    /// 99th percentile.
    #[serde(serialize_with = "serde_fmt::decimal")]
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
    #[serde(serialize_with = "serde_fmt::decimal")]
    pub total: Decimal,
    /// The previous calendar day's total, `None` before the window.
    #[serde(serialize_with = "serde_fmt::opt_decimal")]
    pub previous: Option<Decimal>,
    /// Change against the previous day in percent, 2 places, half-up; `None` when the
    /// previous day is 0 or before the window.
    #[serde(serialize_with = "serde_fmt::opt_fixed2")]
    pub change_pct: Option<Decimal>,
}

/// One peak bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peak {
    /// Bucket start (UTC).
    #[serde(serialize_with = "serde_fmt::instant")]
    pub bucket: DateTime<Utc>,
    /// The service.
    pub service: String,
    /// The bucket's total.
    #[serde(serialize_with = "serde_fmt::decimal")]
    pub total: Decimal,
    /// Its events.
    pub events: i64,
}

/// What an invoice line is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// A service's usage priced (also listed at zero usage when the price charges
    /// something then, e.g. a first-tier flat fee).
    Usage,
    /// Makes a service's line up to its price's minimum.
    TrueUp,
    /// Takes off what a service's line has above its price's maximum (negative).
    Cap,
    /// Makes the invoice up to the price book's minimum (no service).
    Minimum,
}

/// One line of an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvoiceLine {
    /// The service (`None` for an invoice-level minimum).
    pub service: Option<String>,
    /// What the line is for.
    pub kind: LineKind,
    /// Units used in the period.
    #[serde(serialize_with = "serde_fmt::decimal")]
    pub quantity: Decimal,
    /// Units billed after the included allowance.
    #[serde(serialize_with = "serde_fmt::decimal")]
    pub billable_quantity: Decimal,
    /// The amount, rounded half-up to the currency's minor unit once.
    #[serde(serialize_with = "serde_fmt::money")]
    pub amount: Decimal,
}

/// An invoice preview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invoice {
    /// The customer.
    pub customer_id: String,
    /// First instant of the period.
    #[serde(serialize_with = "serde_fmt::instant")]
    pub period_start: DateTime<Utc>,
    /// First instant after it.
    #[serde(serialize_with = "serde_fmt::instant")]
    pub period_end: DateTime<Utc>,
    /// Currency of the amounts.
    pub currency: String,
    /// One line per service used.
    pub lines: Vec<InvoiceLine>,
    /// Sum of the lines.
    #[serde(serialize_with = "serde_fmt::money")]
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
    let pos = p.clamp(Decimal::ZERO, Decimal::ONE) * Decimal::from(sorted.len() - 1);
    let lo = pos.floor();
    let i = usize::try_from(lo.mantissa() / 10i128.pow(lo.scale())).unwrap_or(0);
    let frac = pos - lo;
    let Some(&at) = sorted.get(i) else {
        return Decimal::ZERO;
    };
    match sorted.get(i + 1) {
        Some(next) if !frac.is_zero() => at + frac * (*next - at),
        _ => at,
    }
}

fn add_money(a: Decimal, b: Decimal) -> Result<Decimal> {
    Ok(tally_core::add_exact(a, b, "an invoice total")?)
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
) -> Result<Stats> {
    values.sort();
    let total = tally_core::exact_sum(values.iter().copied())?;
    let count = values.len() as i64;
    Ok(Stats {
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
    })
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

    /// What `price` is applied to: the totals, and each event's quantity when the
    /// price needs them (read from raw events only then).
    async fn metered(
        &self,
        price: &tally_core::Price,
        used: Option<&Totals>,
        customer: &CustomerId,
        service: &Service,
        range: TimeRange,
    ) -> Result<Metered> {
        let mut metered = Metered::new(
            used.map_or(Decimal::ZERO, |t| t.quantity),
            used.map_or(0, |t| t.events),
        );
        if price.needs_events() {
            metered.per_event = Some(match used {
                Some(_) => {
                    self.store
                        .event_quantities(customer, service, range)
                        .await?
                }
                None => Vec::new(),
            });
        }
        Ok(metered)
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
        )?;
        let mut lines = Vec::new();
        let exponent = self.prices.exponent();
        let mut total_amount = round_to(Decimal::ZERO, exponent);
        for (i, s) in services.iter().enumerate() {
            let agg = sums.get(&i);
            let quantity = agg.map_or(Decimal::ZERO, |a| a.quantity);
            let price = self.prices.price_at(s, range.from());
            let amount = match price {
                Some(p) => {
                    let metered = self.metered(p, agg, customer, s, range).await?;
                    p.priced(&metered, exponent)?.amount
                }
                None => round_to(Decimal::ZERO, exponent),
            };
            total_amount = add_money(total_amount, amount)?;
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
                    .filter_map(|((label, service), a)| {
                        Some(DayLine {
                            date: zone.date_of(label),
                            service: services.get(service)?.to_string(),
                            quantity: a.quantity,
                            events: a.events,
                        })
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
    ) -> Result<Aggregation> {
        let (services, _) = self.services(service).await?;
        let buckets = zone.buckets(range, granularity);
        let who = customer.map_or(Who::All, Who::One);
        let mut t: Vec<((DateTime<Utc>, usize), Totals)> =
            totals(&self.store, &buckets, who, &services)
                .await?
                .into_iter()
                .collect();
        // Services are in catalog (name) order, so this is (bucket, service) order.
        t.sort_by_key(|(k, _)| *k);
        let customer_id = customer.map(|c| c.to_string());
        let buckets: Vec<Bucket> = t
            .into_iter()
            .filter_map(|((bucket, service), a)| {
                Some(Bucket {
                    bucket,
                    customer_id: customer_id.clone(),
                    service: services.get(service)?.to_string(),
                    events: a.events,
                    quantity: a.quantity,
                    min: a.min,
                    max: a.max,
                })
            })
            .collect();
        Ok(Aggregation {
            period: granularity,
            tz: zone,
            buckets,
        })
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
        let (mut found, _) = self.services(Some(service)).await?;
        let service = found.pop().unwrap_or_else(|| service.clone());
        let end = Zone::UTC.bucket_start(as_of, Granularity::Day);
        let window = TimeRange::new(end - Duration::days(i64::from(days)), end)?;
        let values = match over {
            Over::Events => {
                self.store
                    .event_quantities(customer, &service, window)
                    .await?
            }
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
        stats_of(values, customer, &service, over, window)
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
                    service: services.get(s).map(ToString::to_string).unwrap_or_default(),
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
    /// ties broken by the earlier bucket.
    pub async fn peaks(
        &self,
        customer: &CustomerId,
        service: &Service,
        by: Granularity,
        limit: Limit,
    ) -> Result<Vec<Peak>> {
        let top = self.store.top_buckets(customer, service, by, limit).await?;
        Ok(top
            .into_iter()
            .map(|b| Peak {
                bucket: b.bucket,
                service: service.to_string(),
                total: b.quantity,
                events: b.events,
            })
            .collect())
    }

    /// An invoice preview for `period` (normally a calendar month), priced with the
    /// price in force at the period's start: a usage line per service used, or
    /// charging something without use (a first-tier flat fee, a minimum); a true-up
    /// line where a service is below its minimum, a cap line where it is above its
    /// maximum; an invoice minimum line where the total is below the book's minimum.
    /// Amounts are rounded to the currency's minor unit ([`PriceBook::exponent`]).
    pub async fn invoice(&self, customer: &CustomerId, period: TimeRange) -> Result<Invoice> {
        let (services, _) = self.services(None).await?;
        let sums: BTreeMap<usize, Totals> = by_service(
            totals(
                &self.store,
                &[(period.from(), period)],
                Who::One(customer),
                &services,
            )
            .await?,
        )?;
        let exponent = self.prices.exponent();
        let money = |d: Decimal| round_to(d, exponent);
        let mut lines = Vec::new();
        for (i, s) in services.iter().enumerate() {
            let used = sums.get(&i);
            let quantity = used.map_or(Decimal::ZERO, |t| t.quantity);
            let line = |kind, quantity, billable_quantity, amount| InvoiceLine {
                service: Some(s.to_string()),
                kind,
                quantity,
                billable_quantity,
                amount,
            };
            let Some(price) = self.prices.price_at(s, period.from()) else {
                // Used, but without a price: listed, at zero.
                if used.is_some() {
                    lines.push(line(
                        LineKind::Usage,
                        quantity,
                        quantity,
                        money(Decimal::ZERO),
                    ));
                }
                continue;
            };
            let metered = self.metered(price, used, customer, s, period).await?;
            let charge = price.charge(&metered, exponent)?;
            if used.is_none() && charge.line.amount.is_zero() && charge.true_up.is_none() {
                continue; // nothing used, nothing charged
            }
            lines.push(line(
                LineKind::Usage,
                charge.line.quantity,
                charge.line.billable_quantity,
                charge.line.amount,
            ));
            if let Some(up) = charge.true_up {
                lines.push(line(LineKind::TrueUp, Decimal::ZERO, Decimal::ZERO, up));
            }
            if let Some(cap) = charge.cap {
                lines.push(line(LineKind::Cap, Decimal::ZERO, Decimal::ZERO, cap));
            }
        }
        let mut total = money(Decimal::ZERO);
        for l in &lines {
            total = add_money(total, l.amount)?;
        }
        if let Some(min) = self.prices.minimum.map(money)
            && total < min
        {
            lines.push(InvoiceLine {
                service: None,
                kind: LineKind::Minimum,
                quantity: Decimal::ZERO,
                billable_quantity: Decimal::ZERO,
                amount: money(min - total),
            });
            total = min;
        }
        Ok(Invoice {
            customer_id: customer.to_string(),
            period_start: period.from(),
            period_end: period.to(),
            currency: self.prices.currency.clone(),
            lines,
            total: money(total),
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
