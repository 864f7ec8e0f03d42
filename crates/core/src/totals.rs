//! The one rollup aggregate: what every rollup row, raw-event aggregate and read
//! result holds, and the one rule by which two of them combine.

use rust_decimal::Decimal;

use crate::{Error, Result};

/// Count, sum, minimum and maximum of event quantities.
///
/// This is the rule every rollup follows: counts and sums add, minimum and maximum
/// widen. The store's SQL upserts apply the same rule and `verify` checks them
/// against it. Sums are exact or refused: past [`Totals::MAX_QUANTITY`] a decimal can
/// no longer hold 15 fractional digits, and [`Totals::merge`] fails rather than round.
///
/// ```
/// use tally_core::Totals;
/// let mut a = Totals::of("2".parse()?);
/// a.add("5".parse()?)?;
/// a.merge(Totals::of("1".parse()?))?;
/// assert_eq!((a.events, a.quantity, a.min, a.max), (3, "8".parse()?, "1".parse()?, "5".parse()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Number of events.
    pub events: i64,
    /// Sum of their quantities.
    pub quantity: Decimal,
    /// Smallest quantity.
    pub min: Decimal,
    /// Largest quantity.
    pub max: Decimal,
}

/// `a + b` when exact: `rust_decimal` rounds away fractional digits rather than
/// overflow, which for money and usage is a silent loss.
pub(crate) fn exact_add(a: Decimal, b: Decimal) -> Option<Decimal> {
    let s = a.checked_add(b)?;
    (s.scale() >= a.scale().max(b.scale())).then_some(s)
}

/// `a + b` as a usage total: exact and at most [`Totals::MAX_QUANTITY`], or refused.
fn add_total(a: Decimal, b: Decimal) -> Result<Decimal> {
    exact_add(a, b)
        .filter(|s| s.abs() <= Totals::MAX_QUANTITY)
        .ok_or(Error::Overflow {
            what: "a usage total: the largest Tally sums exactly is 79228162514264.337593543950335",
        })
}

/// The exact sum of `values`, refused (never rounded) past [`Totals::MAX_QUANTITY`].
pub fn exact_sum(values: impl IntoIterator<Item = Decimal>) -> Result<Decimal> {
    values.into_iter().try_fold(Decimal::ZERO, add_total)
}

impl Totals {
    /// The largest total Tally adds up exactly: 2^96 − 1 units of 10^-15, i.e.
    /// 79 228 162 514 264.337593543950335. The rollup tables refuse rows past it
    /// (migration 0004), and sums of rows past it are an error, never rounded.
    pub const MAX_QUANTITY: Decimal = Decimal::from_parts(u32::MAX, u32::MAX, u32::MAX, false, 15);

    /// The totals of one event of quantity `q`.
    pub fn of(q: Decimal) -> Totals {
        Totals {
            events: 1,
            quantity: q,
            min: q,
            max: q,
        }
    }

    /// Adds one event of quantity `q`.
    pub fn add(&mut self, q: Decimal) -> Result<()> {
        self.merge(Totals::of(q))
    }

    /// Absorbs `other`: counts and sums add, minimum and maximum widen. Fails, leaving
    /// `self` unchanged, when the sum cannot be held exactly.
    pub fn merge(&mut self, other: Totals) -> Result<()> {
        let quantity = add_total(self.quantity, other.quantity)?;
        let events = self
            .events
            .checked_add(other.events)
            .ok_or(Error::Overflow {
                what: "an event count",
            })?;
        self.events = events;
        self.quantity = quantity;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        Ok(())
    }

    /// Mean quantity (0 without events).
    pub fn avg(&self) -> Decimal {
        if self.events == 0 {
            Decimal::ZERO
        } else {
            self.quantity / Decimal::from(self.events)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_exact_up_to_the_limit_and_refused_past_it() {
        let big: Decimal = "9999999999999.999999999999999".parse().unwrap();
        let mut t = Totals::of(big);
        for _ in 0..6 {
            t.add(big).unwrap();
        }
        assert_eq!(t.quantity.to_string(), "69999999999999.999999999999993");
        let before = t;
        let e = t.add(big).unwrap_err();
        assert!(
            e.to_string().contains("79228162514264.337593543950335"),
            "{e}"
        );
        assert_eq!(t, before, "a refused merge changes nothing");
        assert_eq!(
            Totals::MAX_QUANTITY.to_string(),
            "79228162514264.337593543950335"
        );
    }
}
