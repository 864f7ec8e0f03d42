//! One price applied to what was metered: the models' tier math, allowance, minimum
//! with true-up, maximum with cap, and the one rounding point.

use rust_decimal::Decimal;

use super::{
    Charge, Line, MONEY_SCALE, Metered, Price, PriceModel, Rounding, Tier, check_non_negative,
    check_tiers, exact_total, overflow, round_to,
};
use crate::{Error, Result};

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

    /// This price over a part of a period (`share` of its length, from
    /// [`share_of`](crate::share_of)): its minimum and maximum scaled by the
    /// share, the rest as it is (the allowance and the tiers apply to the part's usage
    /// in full, as Lago bills the two halves of a plan change).
    pub fn for_share(&self, share: Decimal) -> Price {
        let mut p = self.clone();
        if share != Decimal::ONE {
            p.minimum = p.minimum.map(|m| m.checked_mul(share).unwrap_or(m));
            p.maximum = p.maximum.map(|m| m.checked_mul(share).unwrap_or(m));
        }
        p
    }

    /// What this price charges over `part` of `whole` (its minimum and maximum
    /// prorated, [`Price::for_share`]) on `used`, or on nothing when `used` is `None`.
    /// `None` when nothing was used and nothing is charged (no flat fee at zero, no
    /// minimum): no line. The one rule the invoice, the summary and the export follow.
    pub fn charge_part(
        &self,
        part: crate::TimeRange,
        whole: crate::TimeRange,
        used: Option<&Metered>,
        exponent: u32,
    ) -> Result<Option<Charge>> {
        let price = self.for_share(super::share_of(part, whole));
        let unused = Metered {
            per_event: price.needs_events().then(Vec::new),
            ..Metered::new(Decimal::ZERO, 0)
        };
        let charge = price.charge(used.unwrap_or(&unused), exponent)?;
        let charged = !charge.line.amount.is_zero() || charge.true_up.is_some();
        Ok((used.is_some() || charged).then_some(charge))
    }

    /// The per-unit price, where the model has one (for reports).
    pub fn unit_price(&self) -> Option<Decimal> {
        match &self.model {
            PriceModel::PerUnit { unit_price } => Some(*unit_price),
            _ => None,
        }
    }
}
