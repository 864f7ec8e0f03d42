//! Quotas: plans, limits, billing periods and the allow / warn / block decision.

use std::{collections::BTreeMap, fmt, str::FromStr};

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::{
    CustomerId, Error, Level, MeterSlug, Result, Service, Thresholds, TimeRange, Zone, serde_fmt,
};

/// What happens when usage passes a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Warn: alerts fire, requests are allowed.
    Soft,
    /// Block: a request that would take usage past the limit is refused.
    Hard,
}

impl Mode {
    /// The mode's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Soft => "soft",
            Mode::Hard => "hard",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Mode> {
        match s {
            "soft" => Ok(Mode::Soft),
            "hard" => Ok(Mode::Hard),
            _ => Err(Error::invalid("mode", s, "expected soft or hard")),
        }
    }
}

/// What a quota limits: a service's total quantity, or a meter's value over the period
/// (its sum, count, unique count, peak, … as the meter aggregates).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Measure {
    /// A service (a built-in or a defined custom service).
    Service(Service),
    /// A meter, by slug.
    Meter(MeterSlug),
}

impl Measure {
    /// The service, if it is one.
    pub fn service(&self) -> Option<&Service> {
        match self {
            Measure::Service(s) => Some(s),
            Measure::Meter(_) => None,
        }
    }

    /// The meter, if it is one.
    pub fn meter(&self) -> Option<&MeterSlug> {
        match self {
            Measure::Meter(m) => Some(m),
            Measure::Service(_) => None,
        }
    }
}

impl fmt::Display for Measure {
    /// A service's name, or `meter:` and the slug.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Measure::Service(s) => write!(f, "{s}"),
            Measure::Meter(m) => write!(f, "meter:{m}"),
        }
    }
}

impl From<Service> for Measure {
    fn from(s: Service) -> Measure {
        Measure::Service(s)
    }
}

impl From<&Service> for Measure {
    fn from(s: &Service) -> Measure {
        Measure::Service(s.clone())
    }
}

impl From<MeterSlug> for Measure {
    fn from(m: MeterSlug) -> Measure {
        Measure::Meter(m)
    }
}

impl From<&MeterSlug> for Measure {
    fn from(m: &MeterSlug) -> Measure {
        Measure::Meter(m.clone())
    }
}

impl Serialize for Measure {
    /// Fields to flatten into a quota or an alert: `service` (`null` for a meter) and,
    /// for a meter, `meter` (as an invoice's meter lines).
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        match self {
            Measure::Service(svc) => m.serialize_entry("service", svc.as_str())?,
            Measure::Meter(slug) => {
                m.serialize_entry("service", &None::<&str>)?;
                m.serialize_entry("meter", slug.as_str())?;
            }
        }
        m.end()
    }
}

/// A quota's limit, in the unit the service records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaLimit {
    /// At most this much per period (never negative).
    Limited(Decimal),
    /// No limit: never blocks, never alerts.
    Unlimited,
}

impl QuotaLimit {
    /// A limit of `value`, refused when negative.
    pub fn new(value: Decimal) -> Result<QuotaLimit> {
        if value.is_sign_negative() && !value.is_zero() {
            return Err(Error::invalid("limit", value, "must not be negative"));
        }
        // Usage is kept to the quantity scale: a finer limit could never be met exactly.
        if value.normalize().scale() > crate::Quantity::SCALE {
            return Err(Error::invalid(
                "limit",
                value,
                format!("has more than {} fractional digits", crate::Quantity::SCALE),
            ));
        }
        Ok(QuotaLimit::Limited(value.normalize()))
    }

    /// The limit, or `None` when unlimited.
    pub fn value(self) -> Option<Decimal> {
        match self {
            QuotaLimit::Limited(v) => Some(v),
            QuotaLimit::Unlimited => None,
        }
    }
}

impl fmt::Display for QuotaLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuotaLimit::Limited(v) => write!(f, "{v}"),
            QuotaLimit::Unlimited => f.write_str("unlimited"),
        }
    }
}

impl FromStr for QuotaLimit {
    type Err = Error;
    /// `unlimited`, or a non-negative decimal number.
    fn from_str(s: &str) -> Result<QuotaLimit> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("unlimited") {
            return Ok(QuotaLimit::Unlimited);
        }
        let v = if t.contains(['e', 'E']) {
            Decimal::from_scientific(t)
        } else {
            Decimal::from_str_exact(t)
        }
        .map_err(|_| Error::invalid("limit", s, "expected a non-negative number or unlimited"))?;
        QuotaLimit::new(v)
    }
}

impl Serialize for QuotaLimit {
    /// A decimal string, or `"unlimited"`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A plan's name: 1–64 characters of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct PlanName(String);

impl PlanName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<PlanName> {
        let name = name.into();
        if name.is_empty() || name.len() > 64 {
            return Err(Error::invalid("plan", &name, "must be 1 to 64 characters"));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "_.-".contains(*c)))
        {
            return Err(Error::invalid(
                "plan",
                &name,
                format!("contains {c:?}; only letters, digits and _ . - are allowed"),
            ));
        }
        Ok(PlanName(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PlanName {
    type Err = Error;
    fn from_str(s: &str) -> Result<PlanName> {
        PlanName::new(s)
    }
}

impl From<PlanName> for String {
    fn from(p: PlanName) -> String {
        p.0
    }
}

impl fmt::Display for PlanName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The day of the month billing periods start on: 1–31; past a month's last day the
/// period starts on that last day (31 in February: the 28th, or the 29th in a leap
/// year).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct AnchorDay(u8);

impl AnchorDay {
    /// The first of the month (the default).
    pub const FIRST: AnchorDay = AnchorDay(1);

    /// Validates `day`.
    pub fn new(day: i64) -> Result<AnchorDay> {
        match u8::try_from(day) {
            Ok(d @ 1..=31) => Ok(AnchorDay(d)),
            _ => Err(Error::invalid("anchor_day", day, "must be 1 to 31")),
        }
    }

    /// The day number.
    pub fn get(self) -> u8 {
        self.0
    }

    /// The anchor's date in the month of `month` (any date of it).
    fn in_month(self, month: NaiveDate) -> Option<NaiveDate> {
        let first = month.with_day(1)?;
        let last = first.checked_add_months(Months::new(1))?.pred_opt()?;
        first.with_day(u32::from(self.0).min(last.day()))
    }
}

impl FromStr for AnchorDay {
    type Err = Error;
    fn from_str(s: &str) -> Result<AnchorDay> {
        s.trim()
            .parse::<i64>()
            .map_err(|_| Error::invalid("anchor_day", s, "must be a whole number 1 to 31"))
            .and_then(AnchorDay::new)
    }
}

/// When a customer's billing periods start: monthly, on the anchor day, at local
/// midnight of the zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct BillingCycle {
    /// The day of the month periods start on.
    pub anchor: AnchorDay,
    /// The zone whose midnight starts them.
    #[serde(serialize_with = "serde_fmt::display")]
    pub zone: Zone,
}

impl Default for BillingCycle {
    /// The 1st of the month, UTC.
    fn default() -> Self {
        BillingCycle {
            anchor: AnchorDay::FIRST,
            zone: Zone::UTC,
        }
    }
}

/// A billing period named from outside: a month (`YYYY-MM`: the period that starts
/// in it) or a day (`YYYY-MM-DD`: the period that holds it), in the cycle's zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodName {
    /// The period starting in this month (the date is the month's first day).
    Month(NaiveDate),
    /// The period holding this local day.
    Day(NaiveDate),
}

impl FromStr for PeriodName {
    type Err = Error;
    fn from_str(s: &str) -> Result<PeriodName> {
        let t = s.trim();
        let day = |f: &str| NaiveDate::parse_from_str(f, "%Y-%m-%d").ok();
        match t.len() {
            7 => day(&format!("{t}-01")).map(PeriodName::Month),
            10 => day(t).map(PeriodName::Day),
            _ => None,
        }
        .ok_or_else(|| {
            Error::invalid(
                "period",
                s,
                "expected a month YYYY-MM (the period starting in it) or a day YYYY-MM-DD (the period holding it)",
            )
        })
    }
}

impl BillingCycle {
    /// The period `name` names: for a month, the period starting on its anchor day
    /// (the calendar month for the default cycle); for a day, the period holding that
    /// day's local midnight.
    pub fn period_named(&self, name: PeriodName) -> Result<TimeRange> {
        let out_of_range =
            |d: NaiveDate| Error::invalid("period", d, "outside the supported range");
        let day = match name {
            PeriodName::Month(m) => self.anchor.in_month(m).ok_or_else(|| out_of_range(m))?,
            PeriodName::Day(d) => d,
        };
        let (lo, hi) = crate::supported_instants();
        if day < lo.date_naive() || day >= hi.date_naive() {
            return Err(out_of_range(day));
        }
        self.period_at(self.zone.start_of_day(day))
    }

    /// The period holding `t`: `[start, end)` from one anchor day's local midnight to
    /// the next month's.
    pub fn period_at(&self, t: DateTime<Utc>) -> Result<TimeRange> {
        let out_of_range = || Error::invalid("now", t.to_rfc3339(), "outside the supported range");
        let today = self.zone.date_of(t);
        let this = self.anchor.in_month(today).ok_or_else(out_of_range)?;
        let start = if self.zone.start_of_day(this) <= t {
            this
        } else {
            let prev = today
                .with_day(1)
                .and_then(|d| d.checked_sub_months(Months::new(1)))
                .ok_or_else(out_of_range)?;
            self.anchor.in_month(prev).ok_or_else(out_of_range)?
        };
        let next = start
            .with_day(1)
            .and_then(|d| d.checked_add_months(Months::new(1)))
            .and_then(|d| self.anchor.in_month(d))
            .ok_or_else(out_of_range)?;
        TimeRange::new(self.zone.start_of_day(start), self.zone.start_of_day(next))
    }
}

/// A plan: limits per service, one mode, optional alert thresholds of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Its name.
    pub name: PlanName,
    /// Soft (warn) or hard (block).
    pub mode: Mode,
    /// Limits by service name; a service not listed has no quota under this plan.
    pub limits: BTreeMap<String, QuotaLimit>,
    /// Limits by meter: on the meter's value over the period.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meters: BTreeMap<MeterSlug, QuotaLimit>,
    /// Alert thresholds for this plan's customers (`None`: the installation's).
    pub thresholds: Option<Thresholds>,
}

impl Plan {
    /// A plan without limits.
    pub fn new(name: PlanName, mode: Mode) -> Plan {
        Plan {
            name,
            mode,
            limits: BTreeMap::new(),
            meters: BTreeMap::new(),
            thresholds: None,
        }
    }

    /// Sets the limit for `service`.
    pub fn limit(mut self, service: &Service, limit: QuotaLimit) -> Plan {
        self.limits.insert(service.as_str().to_owned(), limit);
        self
    }

    /// Sets the limit of `meter`'s value.
    pub fn meter_limit(mut self, meter: &MeterSlug, limit: QuotaLimit) -> Plan {
        self.meters.insert(meter.clone(), limit);
        self
    }
}

/// Where a customer's quota comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "plan")]
pub enum QuotaSource {
    /// The customer's plan.
    Plan(PlanName),
    /// A limit set for the customer (beats the plan's).
    Customer,
}

/// The quota that applies to one customer and service or meter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quota {
    /// The customer.
    pub customer_id: CustomerId,
    /// The service or meter it limits.
    #[serde(flatten)]
    pub measure: Measure,
    /// The limit per period.
    pub limit: QuotaLimit,
    /// Soft or hard.
    pub mode: Mode,
    /// Plan or customer override.
    pub source: QuotaSource,
    /// When its periods start.
    pub cycle: BillingCycle,
    /// The plan's thresholds, if it has its own.
    #[serde(skip)]
    pub thresholds: Option<Thresholds>,
}

/// The answer to "may this customer use `requested` more?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "decision")]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Go ahead, but usage with the request reaches `level` of the limit.
    Warn {
        /// The highest level reached with the request counted.
        level: Level,
        /// Usage of the period so far, without the request.
        #[serde(serialize_with = "serde_fmt::decimal")]
        usage: Decimal,
        /// The limit.
        #[serde(serialize_with = "serde_fmt::decimal")]
        limit: Decimal,
    },
    /// Refuse: the request would take usage past the limit of a hard quota.
    Block {
        /// Usage of the period so far, without the request.
        #[serde(serialize_with = "serde_fmt::decimal")]
        usage: Decimal,
        /// The limit.
        #[serde(serialize_with = "serde_fmt::decimal")]
        limit: Decimal,
    },
}

impl Decision {
    /// The decision for `requested` more on top of `usage` under `limit` and `mode`:
    /// block only in hard mode when `usage + requested` would pass the limit (reaching
    /// it exactly is allowed); otherwise warn when that sum reaches a threshold.
    pub fn decide(
        usage: Decimal,
        requested: Decimal,
        limit: QuotaLimit,
        mode: Mode,
        thresholds: &Thresholds,
    ) -> Decision {
        let QuotaLimit::Limited(limit) = limit else {
            return Decision::Allow;
        };
        // Overflow means astronomically past any limit.
        let after = usage.checked_add(requested);
        if mode == Mode::Hard && after.is_none_or(|a| a > limit) {
            return Decision::Block { usage, limit };
        }
        match thresholds.classify(after.unwrap_or(Decimal::MAX), limit) {
            Some(level) if !(limit.is_zero() && after.is_some_and(|a| a.is_zero())) => {
                Decision::Warn {
                    level,
                    usage,
                    limit,
                }
            }
            _ => Decision::Allow,
        }
    }

    /// Whether the request may go ahead.
    pub fn allowed(&self) -> bool {
        !matches!(self, Decision::Block { .. })
    }
}

/// `usage` as a percentage of `limit`, to two decimals (`None` for a zero limit).
pub fn percent_of(usage: Decimal, limit: Decimal) -> Option<Decimal> {
    if limit.is_zero() {
        return None;
    }
    usage
        .checked_mul(Decimal::ONE_HUNDRED)?
        .checked_div(limit)
        .map(|p| p.round_dp(2).normalize())
}

/// An alert: a level one customer's usage of one service (or a meter's value) reached
/// in one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// Its id (also what a sink can use to recognise a redelivery).
    pub id: i64,
    /// The customer.
    pub customer_id: CustomerId,
    /// The service or meter.
    #[serde(flatten)]
    pub measure: Measure,
    /// The level reached.
    pub level: Level,
    /// Usage of the period when it fired.
    #[serde(serialize_with = "serde_fmt::decimal")]
    pub usage: Decimal,
    /// The limit.
    #[serde(serialize_with = "serde_fmt::decimal")]
    pub limit: Decimal,
    /// Usage in percent of the limit (two decimals; `null` for a zero limit).
    #[serde(serialize_with = "serde_fmt::opt_decimal")]
    pub percent: Option<Decimal>,
    /// The period's start.
    #[serde(serialize_with = "serde_fmt::instant")]
    pub period_start: DateTime<Utc>,
    /// The period's end.
    #[serde(serialize_with = "serde_fmt::instant")]
    pub period_end: DateTime<Utc>,
    /// When it fired.
    #[serde(serialize_with = "serde_fmt::instant")]
    pub triggered_at: DateTime<Utc>,
    /// Whether it is the one an evaluation announced (its highest new level); levels
    /// passed on the way are recorded but not announced.
    pub notify: bool,
}

impl Alert {
    /// The alert as one line of text: customer, service, level, usage, limit, percent,
    /// period and the UTC time it fired.
    pub fn line(&self) -> String {
        let pct = self
            .percent
            .map_or_else(|| "n/a".to_owned(), |p| format!("{p}%"));
        format!(
            "{} ALERT {} customer={} service={} usage={} limit={} percent={} period={}/{} id={}",
            serde_fmt::rfc3339(self.triggered_at),
            self.level.as_str().to_uppercase(),
            self.customer_id,
            self.measure,
            self.usage.normalize(),
            self.limit.normalize(),
            pct,
            serde_fmt::rfc3339(self.period_start),
            serde_fmt::rfc3339(self.period_end),
            self.id
        )
    }
}

impl Thresholds {
    /// The defaults overridden by `USAGE_ALERT_WARNING`, `USAGE_ALERT_CRITICAL` and
    /// `USAGE_ALERT_EXCEEDED` (percent) read through `lookup`; an unset variable keeps
    /// its default, a bad one is an error naming it.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Thresholds> {
        let d = Thresholds::default();
        let read = |name: &'static str, default: Decimal| -> Result<Decimal> {
            match lookup(name) {
                None => Ok(default),
                Some(v) => Decimal::from_str_exact(v.trim()).map_err(|_| {
                    Error::invalid(name, &v, "must be a number of percent").into_setting()
                }),
            }
        };
        Thresholds::new(
            read("USAGE_ALERT_WARNING", d.percent(Level::Warning))?,
            read("USAGE_ALERT_CRITICAL", d.percent(Level::Critical))?,
            read("USAGE_ALERT_EXCEEDED", d.percent(Level::Exceeded))?,
        )
        .map_err(Error::into_setting)
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal::dec;

    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn period(anchor: i64, zone: &str, now: &str) -> (String, String) {
        let c = BillingCycle {
            anchor: AnchorDay::new(anchor).unwrap(),
            zone: zone.parse().unwrap(),
        };
        let p = c.period_at(t(now)).unwrap();
        (p.from().to_rfc3339(), p.to().to_rfc3339())
    }

    #[test]
    fn periods_follow_the_anchor_day() {
        let p = |a, now| period(a, "UTC", now);
        assert_eq!(
            p(1, "2025-02-10T00:00:00Z"),
            (
                "2025-02-01T00:00:00+00:00".into(),
                "2025-03-01T00:00:00+00:00".into()
            )
        );
        assert_eq!(
            p(15, "2025-02-10T00:00:00Z"),
            (
                "2025-01-15T00:00:00+00:00".into(),
                "2025-02-15T00:00:00+00:00".into()
            )
        );
        // 31 means the last day in shorter months; leap year too.
        assert_eq!(
            p(31, "2025-02-28T12:00:00Z"),
            (
                "2025-02-28T00:00:00+00:00".into(),
                "2025-03-31T00:00:00+00:00".into()
            )
        );
        assert_eq!(
            p(31, "2025-02-27T12:00:00Z"),
            (
                "2025-01-31T00:00:00+00:00".into(),
                "2025-02-28T00:00:00+00:00".into()
            )
        );
        assert_eq!(
            p(31, "2024-02-28T12:00:00Z"),
            (
                "2024-01-31T00:00:00+00:00".into(),
                "2024-02-29T00:00:00+00:00".into()
            )
        );
        // Local midnight: Kolkata is UTC+05:30.
        assert_eq!(
            period(1, "Asia/Kolkata", "2025-02-28T18:30:00Z"),
            (
                "2025-02-28T18:30:00+00:00".into(),
                "2025-03-31T18:30:00+00:00".into()
            )
        );
        assert_eq!(
            period(1, "Asia/Kolkata", "2025-02-28T18:29:59Z"),
            (
                "2025-01-31T18:30:00+00:00".into(),
                "2025-02-28T18:30:00+00:00".into()
            )
        );
    }

    #[test]
    fn decisions() {
        let th = Thresholds::default();
        let l = QuotaLimit::Limited(dec!(10000));
        assert_eq!(
            Decision::decide(dec!(7498), dec!(1), l, Mode::Soft, &th),
            Decision::Allow
        );
        assert!(matches!(
            Decision::decide(dec!(7499), dec!(1), l, Mode::Soft, &th),
            Decision::Warn {
                level: Level::Warning,
                ..
            }
        ));
        // Hard: reaching the limit is allowed (exceeded), passing it is not.
        assert!(matches!(
            Decision::decide(dec!(9999), dec!(1), l, Mode::Hard, &th),
            Decision::Warn {
                level: Level::Exceeded,
                ..
            }
        ));
        assert!(matches!(
            Decision::decide(dec!(9999), dec!(2), l, Mode::Hard, &th),
            Decision::Block { .. }
        ));
        assert!(matches!(
            Decision::decide(dec!(20000), dec!(1), l, Mode::Soft, &th),
            Decision::Warn {
                level: Level::Exceeded,
                ..
            }
        ));
        let u = QuotaLimit::Unlimited;
        assert_eq!(
            Decision::decide(dec!(1e20), dec!(1), u, Mode::Hard, &th),
            Decision::Allow
        );
    }

    #[test]
    fn parsing_names_the_field() {
        assert_eq!(
            "-1".parse::<QuotaLimit>().unwrap_err().field(),
            Some("limit")
        );
        assert_eq!(
            "x".parse::<QuotaLimit>().unwrap_err().field(),
            Some("limit")
        );
        assert_eq!(
            "unlimited".parse::<QuotaLimit>().unwrap(),
            QuotaLimit::Unlimited
        );
        assert_eq!(
            "0".parse::<QuotaLimit>().unwrap(),
            QuotaLimit::Limited(dec!(0))
        );
        assert_eq!(
            "32".parse::<AnchorDay>().unwrap_err().field(),
            Some("anchor_day")
        );
        assert_eq!("a b".parse::<PlanName>().unwrap_err().field(), Some("plan"));
        assert_eq!("firm".parse::<Mode>().unwrap_err().field(), Some("mode"));
        let env = |k: &str| (k == "USAGE_ALERT_WARNING").then(|| "80".to_owned());
        assert_eq!(
            Thresholds::from_lookup(env)
                .unwrap()
                .percent(Level::Warning),
            dec!(80)
        );
        let bad = |k: &str| (k == "USAGE_ALERT_CRITICAL").then(|| "x".to_owned());
        assert_eq!(
            Thresholds::from_lookup(bad).unwrap_err().field(),
            Some("USAGE_ALERT_CRITICAL")
        );
    }
}
