//! Price books and tier math (SPEC §9).
//!
//! Amounts are exact decimals until [`round_money`], the single rounding point: a line's
//! amount is rounded half-up to the currency's minor unit (cents) once, and totals are
//! sums of rounded lines.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::{BuiltIn, Error, Result, Service};

/// Digits after the decimal point of the currency's minor unit.
pub const MONEY_SCALE: u32 = 2;

/// Rounds an exact amount half-up (away from zero) to cents: the one rounding point.
pub fn round_money(amount: Decimal) -> Decimal {
    amount.round_dp_with_strategy(MONEY_SCALE, RoundingStrategy::MidpointAwayFromZero)
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
}

/// A price: a model and an included allowance that is free.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    /// The model.
    #[serde(flatten)]
    pub model: PriceModel,
    /// Units included for free before the model applies.
    #[serde(default)]
    pub included: Decimal,
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
    /// A validated price.
    pub fn new(model: PriceModel, included: Decimal) -> Result<Price> {
        check_non_negative("included", included)?;
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
        }
        Ok(Price { model, included })
    }

    /// A per-unit price without allowance.
    pub fn per_unit(unit_price: Decimal) -> Price {
        Price {
            model: PriceModel::PerUnit { unit_price },
            included: Decimal::ZERO,
        }
    }

    /// Units billed after the allowance.
    pub fn billable(&self, quantity: Decimal) -> Decimal {
        (quantity - self.included).max(Decimal::ZERO)
    }

    /// The exact, unrounded amount for `quantity` used.
    pub fn exact_amount(&self, quantity: Decimal) -> Result<Decimal> {
        let q = self.billable(quantity);
        let overflow = Error::Overflow {
            what: "price amount",
        };
        match &self.model {
            PriceModel::PerUnit { unit_price } => q.checked_mul(*unit_price).ok_or(overflow),
            PriceModel::Package { size, price } => {
                let packages = (q / size).ceil();
                packages.checked_mul(*price).ok_or(overflow)
            }
            PriceModel::Graduated { tiers } => {
                let mut total = Decimal::ZERO;
                let mut lower = Decimal::ZERO;
                for t in tiers {
                    if q <= lower {
                        break;
                    }
                    let upper = t.up_to.map_or(q, |u| u.min(q));
                    let units = upper - lower;
                    total = total
                        .checked_add(units.checked_mul(t.unit_price).ok_or(overflow.clone())?)
                        .and_then(|x| x.checked_add(t.flat_fee))
                        .ok_or(overflow.clone())?;
                    match t.up_to {
                        Some(u) => lower = u,
                        None => break,
                    }
                }
                Ok(total)
            }
            PriceModel::Volume { tiers } => {
                if q.is_zero() {
                    return Ok(Decimal::ZERO);
                }
                // Validation makes the last tier unbounded, so one always matches.
                let Some(tier) = tiers.iter().find(|t| t.up_to.is_none_or(|u| q <= u)) else {
                    return Err(Error::invalid(
                        "tiers",
                        q,
                        "no tier holds this quantity (the last tier must be unbounded)",
                    ));
                };
                q.checked_mul(tier.unit_price)
                    .and_then(|x| x.checked_add(tier.flat_fee))
                    .ok_or(overflow)
            }
        }
    }

    /// The priced line for `quantity`, rounded once.
    pub fn line(&self, quantity: Decimal) -> Result<Line> {
        Ok(Line {
            quantity,
            billable_quantity: self.billable(quantity),
            amount: round_money(self.exact_amount(quantity)?),
        })
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
    /// ISO currency code (amounts are rounded to its 2-digit minor unit).
    #[serde(default = "default_currency")]
    pub currency: String,
    /// Versions per service name, in any order.
    pub services: BTreeMap<String, Vec<PriceVersion>>,
}

fn default_currency() -> String {
    "USD".to_owned()
}

impl Default for PriceBook {
    /// The seed's per-unit defaults for the six built-ins.
    fn default() -> Self {
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
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
            services,
        }
    }
}

impl PriceBook {
    /// An empty book.
    pub fn empty() -> PriceBook {
        PriceBook {
            currency: default_currency(),
            services: BTreeMap::new(),
        }
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
        for versions in self.services.values() {
            for v in versions {
                Price::new(v.price.model.clone(), v.price.included)?;
            }
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
        assert_eq!(g.line(dec!(0)).unwrap().amount, dec!(0));
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
