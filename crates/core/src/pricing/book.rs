//! A price book: dated price versions per service, its currency, its minimum, and the
//! built-in per-unit defaults.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{Price, check_non_negative, currency_exponent, is_iso_4217};
use crate::{BuiltIn, Error, Result, Service, TimeRange};

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
    /// Prices of meters, per dimension combination (see [`MeterPrice`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meters: Vec<MeterPrice>,
}

/// A price of a meter's value over the period, for the events whose dimensions have
/// the values in `where` (every key must match), or, with `where` empty, for the rest
/// of the meter's events (the fallback). An invoice has a line per entry: Lago's
/// charge filters and their default.
///
/// The entries of a meter that have a `where` all name the same dimensions, so each
/// event is priced by exactly one entry (or the fallback, or none). Each combination
/// is a history of versions like a service's, keyed by `effective_from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterPrice {
    /// The meter's slug.
    pub meter: String,
    /// Dimension values this entry prices; empty: the fallback.
    #[serde(default, rename = "where", skip_serializing_if = "BTreeMap::is_empty")]
    pub filter: BTreeMap<String, String>,
    /// From when (inclusive) this price applies (default: always).
    #[serde(default = "always")]
    pub effective_from: DateTime<Utc>,
    /// The price.
    #[serde(flatten)]
    pub price: Price,
}

fn always() -> DateTime<Utc> {
    crate::supported_instants().0
}

/// The entries of one meter's prices in force at an instant: the combinations (each
/// a `where`) and the fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterPrices<'a> {
    /// The meter's slug.
    pub meter: &'a str,
    /// Each priced combination and its price, in `where` order.
    pub combinations: Vec<(&'a BTreeMap<String, String>, &'a Price)>,
    /// The price of the rest, if any.
    pub fallback: Option<&'a Price>,
}

/// One priced part of a meter's entry ([`PriceBook::meter_parts`]): the meter's value
/// over `range` for the events with the `filter` values (empty: the fallback, the
/// events with none of `excluded`), priced by `price`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterPart<'a> {
    /// The meter's slug.
    pub meter: &'a str,
    /// The dimension values priced; empty: the fallback.
    pub filter: &'a BTreeMap<String, String>,
    /// The price over this part.
    pub price: &'a Price,
    /// For the fallback: the combinations priced by the other entries over this part.
    pub excluded: Vec<&'a BTreeMap<String, String>>,
    /// The part of the range.
    pub range: TimeRange,
    /// Whether the entry's range is cut into parts (its lines then say which).
    pub split: bool,
}

/// A meter's price entry: the meter and its `where`.
type Entry<'a> = (&'a str, &'a BTreeMap<String, String>);

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
            meters: Vec::new(),
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
            meters: Vec::new(),
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
        self.validate_meters()
    }

    fn validate_meters(&self) -> Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        let mut keys: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
        for m in &self.meters {
            m.meter.parse::<crate::MeterSlug>()?;
            m.price.clone().validated()?;
            let per_event_fee = matches!(
                m.price.model,
                crate::PriceModel::Percentage { fixed_fee, .. } if !fixed_fee.is_zero()
            );
            if m.price.needs_events() || per_event_fee {
                return Err(Error::invalid(
                    "model",
                    "percentage",
                    format!(
                        "the price of meter {:?} has per-event bounds or fees; a meter prices its value, not its events",
                        m.meter
                    ),
                ));
            }
            if !seen.insert((&m.meter, &m.filter, m.effective_from)) {
                return Err(Error::invalid(
                    "effective_from",
                    m.effective_from.to_rfc3339(),
                    format!(
                        "two prices of meter {:?} where {:?} start at the same instant",
                        m.meter, m.filter
                    ),
                ));
            }
            if m.filter.is_empty() {
                continue;
            }
            let these: Vec<&String> = m.filter.keys().collect();
            match keys.get(m.meter.as_str()) {
                Some(first) if *first != these => {
                    return Err(Error::invalid(
                        "where",
                        format!("{:?}", m.filter),
                        format!(
                            "the prices of meter {:?} must all name the same dimensions ({:?}), so that each event has one price",
                            m.meter, first
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    keys.insert(&m.meter, these);
                }
            }
        }
        Ok(())
    }

    /// The meters priced, each with its entries in force at `t`.
    pub fn meter_prices_at(&self, t: DateTime<Utc>) -> Vec<MeterPrices<'_>> {
        let mut latest: BTreeMap<(&str, &BTreeMap<String, String>), &MeterPrice> = BTreeMap::new();
        for m in self.meters.iter().filter(|m| m.effective_from <= t) {
            let e = latest.entry((m.meter.as_str(), &m.filter)).or_insert(m);
            if m.effective_from > e.effective_from {
                *e = m;
            }
        }
        let mut out: Vec<MeterPrices<'_>> = Vec::new();
        for ((meter, filter), m) in latest {
            if out.last().is_none_or(|p| p.meter != meter) {
                out.push(MeterPrices {
                    meter,
                    combinations: Vec::new(),
                    fallback: None,
                });
            }
            if let Some(p) = out.last_mut() {
                if filter.is_empty() {
                    p.fallback = Some(&m.price);
                } else {
                    p.combinations.push((filter, &m.price));
                }
            }
        }
        out
    }

    /// Refuses a price for a service the catalogue does not know (`"apis"` would
    /// otherwise price nothing and bill 0.00 for `api`).
    pub fn check_services(&self, catalog: &crate::Catalog) -> Result<()> {
        for name in self.services.keys() {
            catalog.service(name)?;
        }
        Ok(())
    }

    /// `range` cut where a price of `service` starts inside it, each part with the
    /// price in force over it (`None` before the service's first version): the parts
    /// an invoice and an export price separately (docs/pricing.md, "A price that
    /// changes inside a period"). One part when no version starts inside the range.
    pub fn parts(&self, service: &Service, range: TimeRange) -> Vec<(TimeRange, Option<&Price>)> {
        let starts = self
            .services
            .get(service.as_str())
            .into_iter()
            .flatten()
            .map(|v| v.effective_from);
        cut(range, starts)
            .into_iter()
            .map(|part| (part, self.price_at(service, part.from())))
            .collect()
    }

    /// What the meters' prices charge over `range`, entry by entry: each (meter,
    /// `where`) cut only where a version of that entry starts inside the range, and
    /// each meter's fallback also where a combination starts being priced (the events
    /// left to it change there). A part before an entry's first version
    /// has no price and is left out.
    pub fn meter_parts(&self, range: TimeRange) -> Vec<MeterPart<'_>> {
        let mut entries: BTreeMap<Entry<'_>, Vec<DateTime<Utc>>> = BTreeMap::new();
        for m in &self.meters {
            entries
                .entry((m.meter.as_str(), &m.filter))
                .or_default()
                .push(m.effective_from);
        }
        let mut out = Vec::new();
        for ((meter, filter), starts) in &entries {
            let starts: Vec<DateTime<Utc>> = if filter.is_empty() {
                // The fallback changes with its own versions, and where a combination
                // starts being priced (its first version): the events left to it
                // change there.
                let firsts = entries
                    .iter()
                    .filter(|((m, f), _)| m == meter && !f.is_empty())
                    .filter_map(|(_, s)| s.iter().min().copied());
                starts.iter().copied().chain(firsts).collect()
            } else {
                starts.clone()
            };
            let parts = cut(range, starts.into_iter());
            let split = parts.len() > 1;
            for part in parts {
                let Some(prices) = self
                    .meter_prices_at(part.from())
                    .into_iter()
                    .find(|p| p.meter == *meter)
                else {
                    continue;
                };
                let price = if filter.is_empty() {
                    prices.fallback
                } else {
                    prices
                        .combinations
                        .iter()
                        .find(|(f, _)| f == filter)
                        .map(|(_, p)| *p)
                };
                let Some(price) = price else {
                    continue;
                };
                out.push(MeterPart {
                    meter,
                    filter,
                    price,
                    excluded: if filter.is_empty() {
                        prices.combinations.iter().map(|(f, _)| *f).collect()
                    } else {
                        Vec::new()
                    },
                    range: part,
                    split,
                });
            }
        }
        // Per meter, the combinations (in `where` order), then the fallback.
        out.sort_by(|a, b| {
            (a.meter, a.filter.is_empty(), a.filter, a.range.from()).cmp(&(
                b.meter,
                b.filter.is_empty(),
                b.filter,
                b.range.from(),
            ))
        });
        out
    }

    /// `range` cut at every instant inside it where a service's price starts: each
    /// of [`PriceBook::parts`]' parts is a run of these pieces.
    pub fn pieces(&self, range: TimeRange) -> Vec<TimeRange> {
        cut(
            range,
            self.services.values().flatten().map(|v| v.effective_from),
        )
    }

    /// What an invoice totalling `total` adds to reach the book's minimum (rounded to
    /// the minor unit), if it is below it.
    pub fn minimum_top_up(&self, total: Decimal) -> Option<Decimal> {
        let exponent = self.exponent();
        self.minimum
            .map(|m| super::round_to(m, exponent))
            .filter(|m| total < *m)
            .map(|m| super::round_to(m - total, exponent))
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

/// `range` cut at each of `starts` strictly inside it, in order.
fn cut(range: TimeRange, starts: impl Iterator<Item = DateTime<Utc>>) -> Vec<TimeRange> {
    let mut at: Vec<DateTime<Utc>> = starts
        .filter(|t| range.from() < *t && *t < range.to())
        .collect();
    at.sort_unstable();
    at.dedup();
    let mut from = range.from();
    let mut out = Vec::with_capacity(at.len() + 1);
    for t in at.into_iter().chain(std::iter::once(range.to())) {
        // Both ends are inside a valid range, in order: never refused.
        if let Ok(part) = TimeRange::new(from, t) {
            out.push(part);
        }
        from = t;
    }
    out
}

/// `part`'s share of `whole` by duration, exact to the microsecond (1 for the whole).
pub fn share_of(part: TimeRange, whole: TimeRange) -> Decimal {
    let us = |r: TimeRange| (r.to() - r.from()).num_microseconds().unwrap_or(i64::MAX);
    if part == whole {
        return Decimal::ONE;
    }
    Decimal::from(us(part))
        .checked_div(Decimal::from(us(whole)))
        .unwrap_or(Decimal::ONE)
}
