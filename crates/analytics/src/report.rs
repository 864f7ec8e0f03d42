//! What the reads return, and the statistics' arithmetic (exact `percentile_cont`).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Serialize, Serializer, ser::SerializeStruct};
use tally_core::{CustomerId, Granularity, Service, TimeRange, Zone, serde_fmt};
use tally_store::Result;

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
    pub customer_id: CustomerId,
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

impl std::fmt::Display for Summary {
    /// A plain-text block: the customer and range, a line per service (quantity, unit,
    /// events, amount), then the total. Every number exact.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} {} .. {}",
            self.customer_id,
            serde_fmt::rfc3339(self.from),
            serde_fmt::rfc3339(self.to)
        )?;
        for l in &self.services {
            writeln!(
                f,
                "  {} {} {} ({} events) {}",
                l.service,
                l.quantity.normalize(),
                l.unit,
                l.events,
                serde_fmt::money_text(l.amount)
            )?;
        }
        write!(f, "  total {}", serde_fmt::money_text(self.total_amount))
    }
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
    pub customer_id: CustomerId,
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
    /// Their sum (a quantity; `total` in JSON).
    #[serde(rename = "total", serialize_with = "serde_fmt::decimal")]
    pub sum: Decimal,
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
    /// That day's quantity (0 without usage; `total` in JSON).
    #[serde(rename = "total", serialize_with = "serde_fmt::decimal")]
    pub quantity: Decimal,
    /// The previous calendar day's total, `None` before the window.
    #[serde(serialize_with = "serde_fmt::opt_decimal")]
    pub previous: Option<Decimal>,
    /// Change against the previous day in percent, 2 places, half-up; `None` when the
    /// previous day is 0 or before the window.
    #[serde(serialize_with = "serde_fmt::opt_fixed2")]
    pub change_pct: Option<Decimal>,
    /// The day is still running (`as_of`'s day): its total so far is compared with a
    /// whole day. In JSON only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

/// One peak bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peak {
    /// Bucket start (UTC).
    #[serde(serialize_with = "serde_fmt::instant")]
    pub bucket: DateTime<Utc>,
    /// The service.
    pub service: String,
    /// The bucket's quantity (`total` in JSON).
    #[serde(rename = "total", serialize_with = "serde_fmt::decimal")]
    pub quantity: Decimal,
    /// Its events.
    pub events: i64,
}

impl std::fmt::Display for Invoice {
    /// A plain-text block: the customer, period and currency, a line per invoice line
    /// (service, kind, quantity, billable quantity, amount), then the total. Every
    /// number exact.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "invoice {} {} .. {} ({})",
            self.customer_id,
            serde_fmt::rfc3339(self.period_start),
            serde_fmt::rfc3339(self.period_end),
            self.currency
        )?;
        for l in &self.lines {
            writeln!(
                f,
                "  {} {} {} billable {} {}",
                l.label(),
                l.kind,
                l.quantity.normalize(),
                l.billable_quantity.normalize(),
                serde_fmt::money_text(l.amount)
            )?;
        }
        write!(f, "  total {}", serde_fmt::money_text(self.total_amount))
    }
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

impl std::fmt::Display for LineKind {
    /// As in JSON: `usage`, `true_up`, `cap`, `minimum`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LineKind::Usage => "usage",
            LineKind::TrueUp => "true_up",
            LineKind::Cap => "cap",
            LineKind::Minimum => "minimum",
        })
    }
}

/// One line of an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvoiceLine {
    /// The service (`None` for a meter's line and an invoice-level minimum).
    pub service: Option<String>,
    /// The meter of a line priced per meter ([`tally_core::MeterPrice`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meter: Option<String>,
    /// The dimension values a meter's line prices (empty: all of the meter's events,
    /// or, beside lines that have them, the rest).
    #[serde(rename = "where", skip_serializing_if = "BTreeMap::is_empty")]
    pub dimensions: BTreeMap<String, String>,
    /// A meter's fallback line beside lines for combinations: its events that have
    /// none of them.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rest: bool,
    /// What the line is for.
    pub kind: LineKind,
    /// Where a price changes inside the period, the part `[from, to)` this line
    /// prices (absent: the whole period).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serde_fmt::opt_instant"
    )]
    pub from: Option<DateTime<Utc>>,
    /// The end of that part (exclusive).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serde_fmt::opt_instant"
    )]
    pub to: Option<DateTime<Utc>>,
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

impl InvoiceLine {
    /// What the line is for, in one word: the service, the meter with the values it
    /// prices (`tokens[model=gpt-4o]`, the rest `tokens[rest]`), or `-` for the
    /// invoice's minimum; followed by its part of the period, `[from, to)`, where a
    /// price changes inside the period.
    pub fn label(&self) -> String {
        let what = self.what();
        match (self.from, self.to) {
            (Some(from), Some(to)) => format!(
                "{what} [{}, {})",
                serde_fmt::rfc3339(from),
                serde_fmt::rfc3339(to)
            ),
            _ => what,
        }
    }

    fn what(&self) -> String {
        match (&self.service, &self.meter) {
            (Some(s), _) => s.clone(),
            (None, Some(m)) if self.dimensions.is_empty() && self.rest => format!("{m}[rest]"),
            (None, Some(m)) if self.dimensions.is_empty() => m.clone(),
            (None, Some(m)) => {
                let values: Vec<String> = self
                    .dimensions
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                format!("{m}[{}]", values.join(","))
            }
            (None, None) => "-".to_owned(),
        }
    }
}

/// An invoice preview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invoice {
    /// The customer.
    pub customer_id: CustomerId,
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
    /// Sum of the line amounts (`total` in JSON).
    #[serde(rename = "total", serialize_with = "serde_fmt::money")]
    pub total_amount: Decimal,
}

pub(crate) fn invalid(field: &'static str, value: &str, reason: &str) -> tally_core::Error {
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

pub(crate) fn add_money(a: Decimal, b: Decimal) -> Result<Decimal> {
    Ok(tally_core::add_exact(a, b, "an invoice total")?)
}

const P50: Decimal = Decimal::from_parts(5, 0, 0, false, 1);
const P95: Decimal = Decimal::from_parts(95, 0, 0, false, 2);
const P99: Decimal = Decimal::from_parts(99, 0, 0, false, 2);

pub(crate) fn stats_of(
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
        customer_id: customer.clone(),
        service: service.to_string(),
        over,
        from: window.from(),
        to: window.to(),
        count,
        sum: total,
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
