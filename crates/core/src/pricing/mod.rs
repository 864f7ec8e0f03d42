//! Price books and tier math (SPEC §9), with the rules of the billing systems users
//! migrate from (Lago, OpenMeter): a first-tier flat fee charged at zero usage, minimums
//! with true-up, caps, per-tier rounding, currency exponents and percentage charges.
//! docs/pricing.md has every model with a worked example.
//!
//! Amounts are exact decimals until one rounding point: by default a line's amount is
//! rounded half-up to the currency's minor unit once ([`Rounding::Line`]), and totals
//! are sums of rounded lines.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

mod book;
mod price;
#[cfg(test)]
mod tests;

pub use book::{MeterPart, MeterPrice, MeterPrices, PriceBook, PriceVersion, share_of};

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

impl Charge {
    /// The usage line with its true-up and cap: what the charge adds to an invoice.
    pub fn total(&self) -> Result<Decimal> {
        [self.true_up, self.cap]
            .into_iter()
            .flatten()
            .try_fold(self.line.amount, |a, b| {
                crate::add_exact(a, b, "a charge's lines")
            })
    }
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
