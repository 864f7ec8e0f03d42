//! Price books and tier math (SPEC §9), with the rules of the billing systems users
//! migrate from (Lago, OpenMeter): a first-tier flat fee charged at zero usage, minimums
//! with true-up, caps, per-tier rounding, currency exponents and percentage charges.
//! docs/pricing.md has every model with a worked example.
//!
//! Amounts are exact decimals until one rounding point: by default a line's amount is
//! rounded half-up to the currency's minor unit once ([`Rounding::Line`]), and totals
//! are sums of rounded lines.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::{BuiltIn, Error, Result, Service};

/// Digits after the decimal point of the currency's minor unit.
pub const MONEY_SCALE: u32 = 2;

/// Rounds an exact amount half-up (away from zero) to cents: the one rounding point.
pub fn round_money(amount: Decimal) -> Decimal {
    round_to(amount, MONEY_SCALE)
}

/// Rounds half-up (away from zero) to `exponent` fractional digits, keeping exactly
/// that many (so `5` in a two-digit currency is `5.00`).
pub fn round_to(amount: Decimal, exponent: u32) -> Decimal {
    let mut d = amount.round_dp_with_strategy(exponent, RoundingStrategy::MidpointAwayFromZero);
    d.rescale(exponent);
    d
}

/// Digits of a currency's minor unit (ISO 4217): 0 for JPY, KRW…, 3 for BHD, KWD…,
/// 2 for the rest.
pub fn currency_exponent(code: &str) -> u32 {
    match code.to_ascii_uppercase().as_str() {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// Whether `code` is an ISO 4217 currency code in use (2025 list, funds and
/// metals included).
pub fn is_iso_4217(code: &str) -> bool {
    const CODES: &str = "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD \
        BND BOB BOV BRL BSD BTN BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC \
        CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD \
        HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD \
        KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR \
        MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR \
        SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY \
        TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF XAG XAU XBA XBB \
        XBC XBD XCD XCG XDR XOF XPD XPF XPT XSU XTS XUA XXX YER ZAR ZMW ZWG ZWL";
    code.len() == 3 && CODES.split_ascii_whitespace().any(|c| c == code)
}

/// Where amounts are rounded to the currency's minor unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Exact tier math, then the line rounded once (Tally's default).
    #[default]
    Line,
    /// Each tier's amount (units × price + flat fee) rounded first, then added
    /// (OpenMeter's behaviour).
    PerTier,
}

/// What a price is applied to: the period's usage of one service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metered {
    /// Units used.
    pub quantity: Decimal,
    /// Events recorded (for per-event fees).
    pub events: i64,
    /// Each event's quantity, when the price needs them (percentage with per-event
    /// bounds; see [`Price::needs_events`]).
    pub per_event: Option<Vec<Decimal>>,
}

impl Metered {
    /// `quantity` units over `events` events.
    pub fn new(quantity: Decimal, events: i64) -> Metered {
        Metered {
            quantity,
            events,
            per_event: None,
        }
    }
}

/// One tier of a graduated or volume price. `up_to` is inclusive; `None` is the last,
/// unbounded tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    /// Inclusive upper bound in units, or `None` for infinity.
    #[serde(default)]
    pub up_to: Option<Decimal>,
    /// Price per unit in this tier.
    pub unit_price: Decimal,
    /// Charged once when usage reaches the tier.
    #[serde(default)]
    pub flat_fee: Decimal,
}

impl Tier {
    /// A tier without a flat fee.
    pub fn new(up_to: Option<Decimal>, unit_price: Decimal) -> Tier {
        Tier {
            up_to,
            unit_price,
            flat_fee: Decimal::ZERO,
        }
    }
}

/// How a quantity becomes an amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PriceModel {
    /// `quantity × unit_price`.
    PerUnit {
        /// Price of one unit.
        unit_price: Decimal,
    },
    /// `price` per started package of `size` units.
    Package {
        /// Units in a package.
        size: Decimal,
        /// Price of one package.
        price: Decimal,
    },
    /// Each unit priced by the tier it falls in.
    Graduated {
        /// Tiers in increasing order.
        tiers: Vec<Tier>,
    },
    /// All units priced by the tier the total falls in.
    Volume {
        /// Tiers in increasing order.
        tiers: Vec<Tier>,
    },
    /// A rate in percent of the quantity (for services whose quantity is money, such
    /// as payment volume), plus an optional fee per event; with per-event bounds, each
    /// event's fee is held between them (Lago's percentage charge).
    Percentage {
        /// Percent of the billable quantity (`1.5` is 1.5 %).
        rate: Decimal,
        /// Added once per event.
        #[serde(default)]
        fixed_fee: Decimal,
        /// Least fee per event.
        #[serde(default)]
        per_event_min: Option<Decimal>,
        /// Most fee per event.
        #[serde(default)]
        per_event_max: Option<Decimal>,
    },
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A price: a model, an included allowance that is free, and what bounds the line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    /// The model.
    #[serde(flatten)]
    pub model: PriceModel,
    /// Units included for free before the model applies.
    #[serde(default)]
    pub included: Decimal,
    /// Whether the first tier's flat fee is charged at zero billable usage, as Lago and
    /// OpenMeter do (default). `false` charges nothing at zero.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub flat_fee_at_zero: bool,
    /// Least amount for the line: below it, a true-up line makes up the difference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<Decimal>,
    /// Most amount for the line (a cap): above it, a negative cap line takes the excess
    /// off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<Decimal>,
    /// Where the amount is rounded.
    #[serde(default, skip_serializing_if = "is_line")]
    pub rounding: Rounding,
}

fn is_line(r: &Rounding) -> bool {
    *r == Rounding::Line
}

/// What a price charges for a period: the usage line and what bounds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The usage line.
    pub line: Line,
    /// Added when the line is below the price's minimum (≥ 0).
    pub true_up: Option<Decimal>,
    /// Added when the line is above the price's maximum (≤ 0).
    pub cap: Option<Decimal>,
}

/// A priced line: what was used, what is billed, and the rounded amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    /// Units used.
    pub quantity: Decimal,
    /// Units billed after the allowance.
    pub billable_quantity: Decimal,
    /// The amount, rounded to cents.
    pub amount: Decimal,
}

fn overflow() -> Error {
    Error::Overflow {
        what: "price amount",
    }
}

fn exact_total(terms: &[Decimal]) -> Result<Decimal> {
    terms.iter().try_fold(Decimal::ZERO, |a, t| {
        crate::totals::exact_add(a, *t).ok_or_else(overflow)
    })
}

fn check_non_negative(field: &'static str, d: Decimal) -> Result<()> {
    if d.is_sign_negative() && !d.is_zero() {
        return Err(Error::invalid(field, d, "must not be negative"));
    }
    Ok(())
}

fn check_tiers(tiers: &[Tier]) -> Result<()> {
    if tiers.is_empty() {
        return Err(Error::invalid("tiers", "[]", "need at least one tier"));
    }
    let mut prev = Decimal::ZERO;
    for (i, t) in tiers.iter().enumerate() {
        check_non_negative("unit_price", t.unit_price)?;
        check_non_negative("flat_fee", t.flat_fee)?;
        match t.up_to {
            Some(u) if u <= prev => {
                return Err(Error::invalid(
                    "up_to",
                    u,
                    format!("tier {} must end above {prev}", i + 1),
                ));
            }
            Some(u) => prev = u,
            None if i + 1 != tiers.len() => {
                return Err(Error::invalid(
                    "up_to",
                    "null",
                    "only the last tier may be unbounded",
                ));
            }
            None => {}
        }
    }
    if tiers.last().and_then(|t| t.up_to).is_some() {
        return Err(Error::invalid(
            "up_to",
            prev,
            "the last tier must be unbounded (up_to: null)",
        ));
    }
    Ok(())
}

impl Price {
    /// A validated price (flat fee at zero, no minimum or maximum, line rounding).
    pub fn new(model: PriceModel, included: Decimal) -> Result<Price> {
        Price {
            model,
            included,
            flat_fee_at_zero: true,
            minimum: None,
            maximum: None,
            rounding: Rounding::Line,
        }
        .validated()
    }

    /// Checks every field (after deserializing, or after setting fields by hand).
    pub fn validated(self) -> Result<Price> {
        let Price {
            model, included, ..
        } = &self;
        let included = *included;
        check_non_negative("included", included)?;
        if let Some(m) = self.minimum {
            check_non_negative("minimum", m)?;
        }
        if let Some(m) = self.maximum {
            check_non_negative("maximum", m)?;
            if self.minimum.is_some_and(|min| min > m) {
                return Err(Error::invalid("maximum", m, "must not be below minimum"));
            }
        }
        match &model {
            PriceModel::PerUnit { unit_price } => check_non_negative("unit_price", *unit_price)?,
            PriceModel::Package { size, price } => {
                if *size <= Decimal::ZERO {
                    return Err(Error::invalid(
                        "size",
                        size,
                        "a package holds more than 0 units",
                    ));
                }
                check_non_negative("price", *price)?;
            }
            PriceModel::Graduated { tiers } | PriceModel::Volume { tiers } => check_tiers(tiers)?,
            PriceModel::Percentage {
                rate,
                fixed_fee,
                per_event_min,
                per_event_max,
            } => {
                check_non_negative("rate", *rate)?;
                check_non_negative("fixed_fee", *fixed_fee)?;
                for (f, v) in [
                    ("per_event_min", per_event_min),
                    ("per_event_max", per_event_max),
                ] {
                    if let Some(v) = v {
                        check_non_negative(f, *v)?;
                    }
                }
                if let (Some(lo), Some(hi)) = (per_event_min, per_event_max)
                    && lo > hi
                {
                    return Err(Error::invalid(
                        "per_event_max",
                        hi,
                        "must not be below per_event_min",
                    ));
                }
                if (per_event_min.is_some() || per_event_max.is_some()) && !included.is_zero() {
                    return Err(Error::invalid(
                        "included",
                        included,
                        "cannot be combined with per-event bounds (each event is priced alone)",
                    ));
                }
            }
        }
        Ok(self)
    }

    /// Whether [`Price::charge`] needs each event's quantity ([`Metered::per_event`]).
    pub fn needs_events(&self) -> bool {
        matches!(
            self.model,
            PriceModel::Percentage { per_event_min, per_event_max, .. }
                if per_event_min.is_some() || per_event_max.is_some()
        )
    }

    /// A per-unit price without allowance.
    pub fn per_unit(unit_price: Decimal) -> Price {
        Price {
            model: PriceModel::PerUnit { unit_price },
            included: Decimal::ZERO,
            flat_fee_at_zero: true,
            minimum: None,
            maximum: None,
            rounding: Rounding::Line,
        }
    }

    /// Units billed after the allowance.
    pub fn billable(&self, quantity: Decimal) -> Decimal {
        (quantity - self.included).max(Decimal::ZERO)
    }

    /// The exact, unrounded amount for `quantity` used (no per-event fees).
    pub fn exact_amount(&self, quantity: Decimal) -> Result<Decimal> {
        self.terms(&Metered::new(quantity, 0))?
            .into_iter()
            .try_fold(Decimal::ZERO, |a, t| {
                crate::totals::exact_add(a, t).ok_or_else(overflow)
            })
    }

    /// The amount's terms before rounding: one per tier reached (graduated), or one.
    fn terms(&self, used: &Metered) -> Result<Vec<Decimal>> {
        let q = self.billable(used.quantity);
        let mul = |a: Decimal, b: Decimal| a.checked_mul(b).ok_or_else(overflow);
        let add = |a: Decimal, b: Decimal| crate::totals::exact_add(a, b).ok_or_else(overflow);
        match &self.model {
            PriceModel::PerUnit { unit_price } => Ok(vec![mul(q, *unit_price)?]),
            PriceModel::Package { size, price } => {
                let packages = q.checked_div(*size).ok_or_else(overflow)?.ceil();
                Ok(vec![mul(packages, *price)?])
            }
            PriceModel::Graduated { tiers } => {
                if q.is_zero() {
                    return Ok(vec![self.zero_fee(tiers)]);
                }
                let mut terms = Vec::new();
                let mut lower = Decimal::ZERO;
                for t in tiers {
                    if q <= lower {
                        break;
                    }
                    let upper = t.up_to.map_or(q, |u| u.min(q));
                    terms.push(add(mul(upper - lower, t.unit_price)?, t.flat_fee)?);
                    match t.up_to {
                        Some(u) => lower = u,
                        None => break,
                    }
                }
                Ok(terms)
            }
            PriceModel::Volume { tiers } => {
                if q.is_zero() {
                    return Ok(vec![self.zero_fee(tiers)]);
                }
                // Validation makes the last tier unbounded, so one always matches.
                let Some(tier) = tiers.iter().find(|t| t.up_to.is_none_or(|u| q <= u)) else {
                    return Err(Error::invalid(
                        "tiers",
                        q,
                        "no tier holds this quantity (the last tier must be unbounded)",
                    ));
                };
                Ok(vec![add(mul(q, tier.unit_price)?, tier.flat_fee)?])
            }
            PriceModel::Percentage {
                rate,
                fixed_fee,
                per_event_min,
                per_event_max,
            } => {
                let rate = rate
                    .checked_div(Decimal::ONE_HUNDRED)
                    .ok_or_else(overflow)?;
                if per_event_min.is_none() && per_event_max.is_none() {
                    let events = Decimal::from(used.events.max(0));
                    return Ok(vec![add(mul(q, rate)?, mul(events, *fixed_fee)?)?]);
                }
                let Some(each) = &used.per_event else {
                    return Err(Error::invalid(
                        "per_event",
                        "none",
                        "a percentage price with per-event bounds needs each event's quantity",
                    ));
                };
                let mut total = Decimal::ZERO;
                for e in each {
                    let mut fee = add(mul(*e, rate)?, *fixed_fee)?;
                    if let Some(lo) = per_event_min {
                        fee = fee.max(*lo);
                    }
                    if let Some(hi) = per_event_max {
                        fee = fee.min(*hi);
                    }
                    total = add(total, fee)?;
                }
                Ok(vec![total])
            }
        }
    }

    /// At zero billable usage: the first tier's flat fee, unless turned off.
    fn zero_fee(&self, tiers: &[Tier]) -> Decimal {
        match tiers.first() {
            Some(t) if self.flat_fee_at_zero => t.flat_fee,
            _ => Decimal::ZERO,
        }
    }

    /// The priced line for `quantity`, rounded once to cents (no per-event fees).
    pub fn line(&self, quantity: Decimal) -> Result<Line> {
        self.priced(&Metered::new(quantity, 0), MONEY_SCALE)
    }

    /// The usage line for `used`, rounded to `exponent` digits by the price's
    /// [`Rounding`].
    pub fn priced(&self, used: &Metered, exponent: u32) -> Result<Line> {
        let terms = self.terms(used)?;
        let amount = match self.rounding {
            Rounding::Line => round_to(exact_total(&terms)?, exponent),
            Rounding::PerTier => {
                let rounded: Vec<Decimal> = terms.iter().map(|t| round_to(*t, exponent)).collect();
                round_to(exact_total(&rounded)?, exponent)
            }
        };
        Ok(Line {
            quantity: used.quantity,
            billable_quantity: self.billable(used.quantity),
            amount,
        })
    }

    /// The usage line with its minimum true-up and its cap, each rounded to `exponent`.
    pub fn charge(&self, used: &Metered, exponent: u32) -> Result<Charge> {
        let line = self.priced(used, exponent)?;
        let true_up = self
            .minimum
            .map(|m| round_to(m, exponent))
            .filter(|m| line.amount < *m)
            .map(|m| round_to(m - line.amount, exponent));
        let cap = self
            .maximum
            .map(|m| round_to(m, exponent))
            .filter(|m| line.amount > *m)
            .map(|m| round_to(m - line.amount, exponent));
        Ok(Charge { line, true_up, cap })
    }

    /// The per-unit price, where the model has one (for reports).
    pub fn unit_price(&self) -> Option<Decimal> {
        match &self.model {
            PriceModel::PerUnit { unit_price } => Some(*unit_price),
            _ => None,
        }
    }
}

/// A price in force from an instant on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceVersion {
    /// From when (inclusive) this price applies.
    pub effective_from: DateTime<Utc>,
    /// The price.
    #[serde(flatten)]
    pub price: Price,
}

/// Prices per service, each a history of versions, so a change takes effect from a date
/// and never rewrites past periods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceBook {
    /// ISO currency code; amounts are rounded to its minor unit ([`currency_exponent`]).
    #[serde(default = "default_currency")]
    pub currency: String,
    /// Digits of the minor unit, when the currency code's own should not be used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor_units: Option<u32>,
    /// Least total of an invoice: below it, a true-up line makes up the difference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<Decimal>,
    /// Versions per service name, in any order.
    pub services: BTreeMap<String, Vec<PriceVersion>>,
}

fn default_currency() -> String {
    "USD".to_owned()
}

impl Default for PriceBook {
    /// The seed's per-unit defaults for the six built-ins, in effect from the first
    /// supported instant (so a range starting before 1970 is priced too).
    fn default() -> Self {
        let epoch = crate::supported_instants().0;
        let services = BuiltIn::ALL
            .into_iter()
            .map(|b| {
                (
                    b.name().to_owned(),
                    vec![PriceVersion {
                        effective_from: epoch,
                        price: Price::per_unit(b.default_unit_price()),
                    }],
                )
            })
            .collect();
        PriceBook {
            currency: default_currency(),
            minor_units: None,
            minimum: None,
            services,
        }
    }
}

impl PriceBook {
    /// An empty book.
    pub fn empty() -> PriceBook {
        PriceBook {
            currency: default_currency(),
            minor_units: None,
            minimum: None,
            services: BTreeMap::new(),
        }
    }

    /// Digits of the minor unit amounts are rounded to.
    pub fn exponent(&self) -> u32 {
        self.minor_units
            .unwrap_or_else(|| currency_exponent(&self.currency))
    }

    /// Adds a price for `service` from `effective_from` on.
    pub fn set(
        &mut self,
        service: &Service,
        effective_from: DateTime<Utc>,
        price: Price,
    ) -> &mut Self {
        let versions = self
            .services
            .entry(service.as_str().to_owned())
            .or_default();
        versions.retain(|v| v.effective_from != effective_from);
        versions.push(PriceVersion {
            effective_from,
            price,
        });
        self
    }

    /// Validates every price (after deserializing a file).
    pub fn validate(&self) -> Result<()> {
        if let Some(m) = self.minimum {
            check_non_negative("minimum", m)?;
        }
        if self.minor_units.is_some_and(|d| d > 6) {
            return Err(Error::invalid(
                "minor_units",
                self.minor_units.unwrap_or_default(),
                "must be from 0 to 6",
            ));
        }
        if !is_iso_4217(&self.currency) {
            return Err(Error::invalid(
                "currency",
                &self.currency,
                "must be an ISO 4217 code such as USD, EUR or JPY",
            ));
        }
        for (service, versions) in &self.services {
            let mut from = std::collections::BTreeSet::new();
            for v in versions {
                if !from.insert(v.effective_from) {
                    return Err(Error::invalid(
                        "effective_from",
                        v.effective_from.to_rfc3339(),
                        format!("two versions of {service:?} start at the same instant"),
                    ));
                }
                v.price.clone().validated()?;
            }
        }
        Ok(())
    }

    /// Refuses a price for a service the catalogue does not know (`"apis"` would
    /// otherwise price nothing and bill 0.00 for `api`).
    pub fn check_services(&self, catalog: &crate::Catalog) -> Result<()> {
        for name in self.services.keys() {
            catalog.service(name)?;
        }
        Ok(())
    }

    /// The price of `service` in force at `t`, if any.
    pub fn price_at(&self, service: &Service, t: DateTime<Utc>) -> Option<&Price> {
        self.services
            .get(service.as_str())?
            .iter()
            .filter(|v| v.effective_from <= t)
            .max_by_key(|v| v.effective_from)
            .map(|v| &v.price)
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal::dec;

    use super::*;

    fn spec_tiers() -> Vec<Tier> {
        vec![
            Tier::new(Some(dec!(100)), dec!(1.00)),
            Tier::new(Some(dec!(200)), dec!(0.50)),
            Tier::new(None, dec!(0.10)),
        ]
    }

    #[test]
    fn spec_section_9_table() {
        let g = Price::new(
            PriceModel::Graduated {
                tiers: spec_tiers(),
            },
            Decimal::ZERO,
        )
        .unwrap();
        let v = Price::new(
            PriceModel::Volume {
                tiers: spec_tiers(),
            },
            Decimal::ZERO,
        )
        .unwrap();
        for (usage, graduated, volume) in [
            (dec!(100), dec!(100.00), dec!(100.00)),
            (dec!(200), dec!(150.00), dec!(100.00)),
            (dec!(201), dec!(150.10), dec!(20.10)),
            (dec!(250), dec!(155.00), dec!(25.00)),
        ] {
            assert_eq!(
                g.line(usage).unwrap().amount,
                graduated,
                "graduated {usage}"
            );
            assert_eq!(v.line(usage).unwrap().amount, volume, "volume {usage}");
        }
    }

    #[test]
    fn package_after_allowance() {
        let p = Price::new(
            PriceModel::Package {
                size: dec!(100),
                price: dec!(5.00),
            },
            dec!(100),
        )
        .unwrap();
        let line = p.line(dec!(201)).unwrap();
        assert_eq!(line.billable_quantity, dec!(101));
        assert_eq!(line.amount, dec!(10.00));
        assert_eq!(p.line(dec!(100)).unwrap().amount, dec!(0));
        assert_eq!(p.line(dec!(100.5)).unwrap().amount, dec!(5.00));
    }

    #[test]
    fn flat_fees_once_per_reached_tier() {
        let mut tiers = spec_tiers();
        tiers[0].flat_fee = dec!(10);
        tiers[1].flat_fee = dec!(20);
        let g = Price::new(
            PriceModel::Graduated {
                tiers: tiers.clone(),
            },
            Decimal::ZERO,
        )
        .unwrap();
        // At zero usage the first tier's flat fee is charged (Lago, OpenMeter)...
        assert_eq!(g.line(dec!(0)).unwrap().amount, dec!(10));
        // ...unless the price says otherwise (Tally's rule before issue 14).
        let mut old_rule = g.clone();
        old_rule.flat_fee_at_zero = false;
        assert_eq!(old_rule.line(dec!(0)).unwrap().amount, dec!(0));
        assert_eq!(old_rule.line(dec!(50)).unwrap().amount, dec!(60));
        assert_eq!(g.line(dec!(50)).unwrap().amount, dec!(60));
        assert_eq!(g.line(dec!(100)).unwrap().amount, dec!(110));
        assert_eq!(g.line(dec!(101)).unwrap().amount, dec!(130.50));
        let v = Price::new(PriceModel::Volume { tiers }, Decimal::ZERO).unwrap();
        assert_eq!(v.line(dec!(150)).unwrap().amount, dec!(95));
    }

    #[test]
    fn fractional_units_exact_and_rounded_half_up_once() {
        let p = Price::per_unit(dec!(0.0001));
        assert_eq!(p.exact_amount(dec!(12345)).unwrap(), dec!(1.2345));
        assert_eq!(p.line(dec!(12345)).unwrap().amount, dec!(1.23));
        assert_eq!(p.line(dec!(12350)).unwrap().amount, dec!(1.24)); // 1.235 -> half-up
        let g = Price::new(
            PriceModel::Graduated {
                tiers: spec_tiers(),
            },
            Decimal::ZERO,
        )
        .unwrap();
        assert_eq!(g.exact_amount(dec!(200.05)).unwrap(), dec!(150.005));
        assert_eq!(g.line(dec!(200.05)).unwrap().amount, dec!(150.01));
    }

    #[test]
    fn invalid_prices_are_rejected() {
        let bad = vec![
            Tier::new(Some(dec!(100)), dec!(1)),
            Tier::new(Some(dec!(50)), dec!(1)),
            Tier::new(None, dec!(1)),
        ];
        assert_eq!(
            Price::new(PriceModel::Graduated { tiers: bad }, Decimal::ZERO)
                .unwrap_err()
                .field(),
            Some("up_to")
        );
        let bounded = vec![Tier::new(Some(dec!(100)), dec!(1))];
        assert!(Price::new(PriceModel::Volume { tiers: bounded }, Decimal::ZERO).is_err());
        assert!(
            Price::new(
                PriceModel::Package {
                    size: dec!(0),
                    price: dec!(1)
                },
                Decimal::ZERO
            )
            .is_err()
        );
        assert!(
            Price::new(
                PriceModel::PerUnit {
                    unit_price: dec!(-1)
                },
                Decimal::ZERO
            )
            .is_err()
        );
        assert!(
            Price::new(
                PriceModel::PerUnit {
                    unit_price: dec!(1)
                },
                dec!(-1)
            )
            .is_err()
        );
    }

    #[test]
    fn price_changes_apply_from_their_date() {
        let mut book = PriceBook::default();
        let change: DateTime<Utc> = "2026-06-01T00:00:00Z".parse().unwrap();
        book.set(&Service::API, change, Price::per_unit(dec!(0.0002)));
        let before: DateTime<Utc> = "2026-05-31T23:59:59Z".parse().unwrap();
        assert_eq!(
            book.price_at(&Service::API, before).unwrap().unit_price(),
            Some(dec!(0.0001))
        );
        assert_eq!(
            book.price_at(&Service::API, change).unwrap().unit_price(),
            Some(dec!(0.0002))
        );
        assert!(
            book.price_at(&Service::custom("gpu").unwrap(), change)
                .is_none()
        );
    }

    #[test]
    fn price_book_round_trips_through_json() {
        let mut book = PriceBook::default();
        book.set(
            &Service::COMPUTE,
            DateTime::<Utc>::UNIX_EPOCH,
            Price::new(
                PriceModel::Graduated {
                    tiers: spec_tiers(),
                },
                dec!(10),
            )
            .unwrap(),
        );
        let text = serde_json::to_string(&book).unwrap();
        let back: PriceBook = serde_json::from_str(&text).unwrap();
        assert_eq!(back, book);
        back.validate().unwrap();
    }
}
