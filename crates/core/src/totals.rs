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
/// overflow, which for money and usage is a silent loss. A sum with fewer decimals
/// than an operand is exact when that operand's dropped digits were zeros (rust_decimal
/// returns `1232.9 + 0.00` as `1232.9`): the digits the operands need decide, checked
/// only then (normalizing is not free on the rollup path).
pub(crate) fn exact_add(a: Decimal, b: Decimal) -> Option<Decimal> {
    let s = a.checked_add(b)?;
    let exact = s.scale() >= a.scale().max(b.scale())
        || s.scale() >= a.normalize().scale().max(b.normalize().scale());
    exact.then_some(s)
}

/// `a + b`, exact, or refused with an overflow error naming `what`: never rounded (as
/// `checked_add` may round away fractional digits) and never saturated.
pub fn add_exact(a: Decimal, b: Decimal, what: &'static str) -> Result<Decimal> {
    exact_add(a, b).ok_or(Error::Overflow { what })
}

/// `a + b` as a usage total: exact and at most [`Totals::MAX_QUANTITY`], or refused;
/// without trailing zeros (a quantity, unlike money, has no display scale).
fn add_total(a: Decimal, b: Decimal) -> Result<Decimal> {
    exact_add(a, b)
        .map(|s| s.normalize())
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

/// An hour's totals by quarter hour — minutes `[0, 15)`, `[15, 30)`, `[30, 45)` and
/// `[45, 60)` of a UTC hour — with `None` for a quarter without events.
///
/// The hourly rollups keep them so that a range cut on a quarter hour (every bucket edge
/// in Asia/Kolkata or Asia/Kathmandu) is exact from rollups: a part of an hour is the
/// merge of its quarters.
///
/// ```
/// use tally_core::Quarters;
/// let mut h = Quarters::default();
/// h.add(0, "2".parse()?)?; // minute 0-14
/// h.add(3, "5".parse()?)?; // minute 45-59
/// let last_half = h.part(2, 4)?.unwrap();
/// assert_eq!((last_half.events, last_half.quantity), (1, "5".parse()?));
/// assert_eq!(h.part(1, 3)?, None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quarters(pub [Option<Totals>; 4]);

/// [`Quarters`] as the rollup tables store them: the count and sum of the first 15,
/// 30 and 45 minutes (cumulative, so they add like the hour's count and sum), and each
/// quarter's minimum and maximum (`None` for an empty quarter; they widen like the
/// hour's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuarterColumns {
    /// Events in the first 15, 30 and 45 minutes.
    pub events_by: [i64; 3],
    /// Their quantities' sums.
    pub quantity_by: [Decimal; 3],
    /// Smallest quantity of each quarter.
    pub min: [Option<Decimal>; 4],
    /// Largest quantity of each quarter.
    pub max: [Option<Decimal>; 4],
}

impl Quarters {
    /// The quarter (0–3) of an hour that `minute` (0–59) falls in.
    pub fn of_minute(minute: u32) -> usize {
        (minute / 15).min(3) as usize
    }

    /// Adds one event of quantity `q` to quarter `quarter` (0–3; larger is the last).
    pub fn add(&mut self, quarter: usize, q: Decimal) -> Result<()> {
        let i = quarter.min(3);
        match self.0.get_mut(i) {
            Some(Some(t)) => t.add(q),
            Some(slot) => {
                *slot = Some(Totals::of(q));
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Absorbs `other` quarter by quarter.
    pub fn merge(&mut self, other: &Quarters) -> Result<()> {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            match (mine.as_mut(), theirs) {
                (Some(a), Some(b)) => a.merge(b)?,
                (None, b) => *mine = b,
                (Some(_), None) => {}
            }
        }
        Ok(())
    }

    /// Totals of quarters `a..b` (`0 <= a < b <= 4`; minutes `15a` to `15b`), `None`
    /// when they hold no events.
    pub fn part(&self, a: usize, b: usize) -> Result<Option<Totals>> {
        let mut out: Option<Totals> = None;
        for t in self.0.get(a..b.min(4)).unwrap_or_default().iter().flatten() {
            match out.as_mut() {
                Some(o) => o.merge(*t)?,
                None => out = Some(*t),
            }
        }
        Ok(out)
    }

    /// The stored form.
    pub fn columns(&self) -> Result<QuarterColumns> {
        let mut c = QuarterColumns::default();
        let (mut events, mut quantity) = (0i64, Decimal::ZERO);
        for (i, t) in self.0.iter().enumerate() {
            if let Some(t) = t {
                events = events.checked_add(t.events).ok_or(Error::Overflow {
                    what: "an event count",
                })?;
                quantity = add_total(quantity, t.quantity)?;
            }
            if let (Some(e), Some(q)) = (c.events_by.get_mut(i), c.quantity_by.get_mut(i)) {
                (*e, *q) = (events, quantity);
            }
            if let (Some(lo), Some(hi)) = (c.min.get_mut(i), c.max.get_mut(i)) {
                (*lo, *hi) = (t.map(|t| t.min), t.map(|t| t.max));
            }
        }
        Ok(c)
    }

    /// Reads the stored form back, given the hour's whole count and sum. `None` when
    /// the columns contradict each other (counts that go down, a quarter with events
    /// but no minimum, a sum without events): a rollup row Tally did not write.
    pub fn from_columns(c: &QuarterColumns, events: i64, quantity: Decimal) -> Option<Quarters> {
        let [e1, e2, e3] = c.events_by;
        let [q1, q2, q3] = c.quantity_by;
        let ev = [0, e1, e2, e3, events];
        let qs = [Decimal::ZERO, q1, q2, q3, quantity];
        let mut out = Quarters::default();
        for (i, slot) in out.0.iter_mut().enumerate() {
            let n = ev.get(i + 1)?.checked_sub(*ev.get(i)?)?;
            let q = exact_sub(*qs.get(i + 1)?, *qs.get(i)?)?;
            let (lo, hi) = (*c.min.get(i)?, *c.max.get(i)?);
            *slot = match n {
                0 if q.is_zero() => None,
                n if n > 0 => Some(Totals {
                    events: n,
                    quantity: q,
                    min: lo?,
                    max: hi?,
                }),
                _ => return None,
            };
        }
        Some(out)
    }
}

/// `a - b` when exact.
fn exact_sub(a: Decimal, b: Decimal) -> Option<Decimal> {
    exact_add(a, -b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarters_round_trip_through_their_columns() {
        let mut h = Quarters::default();
        for (quarter, q) in [(0, "1.5"), (2, "4"), (2, "0.25"), (3, "7")] {
            h.add(quarter, q.parse().unwrap()).unwrap();
        }
        let c = h.columns().unwrap();
        assert_eq!(c.events_by, [1, 1, 3]);
        assert_eq!(c.min[1], None);
        let whole = h.part(0, 4).unwrap().unwrap();
        assert_eq!(
            Quarters::from_columns(&c, whole.events, whole.quantity),
            Some(h)
        );
        assert_eq!(h.part(1, 3).unwrap().unwrap().quantity.to_string(), "4.25");
        // Columns that contradict each other are refused, not read.
        let mut bad = c;
        bad.events_by[1] = 0;
        assert_eq!(
            Quarters::from_columns(&bad, whole.events, whole.quantity),
            None
        );
        // The last quarter would have a sum but no events.
        assert_eq!(Quarters::from_columns(&c, 3, whole.quantity), None);
    }

    #[test]
    fn a_zero_with_decimals_adds_to_a_sum_of_fewer_decimals() {
        // rust_decimal returns the other operand unchanged when one is zero, so
        // 1232.9 + 0.00 keeps scale 1: exact, not a rounding.
        let mut t = Totals::of("639.18".parse().unwrap());
        t.add("593.72".parse().unwrap()).unwrap();
        t.add("0.00".parse().unwrap()).unwrap();
        assert_eq!((t.events, t.quantity.to_string()), (3, "1232.9".to_owned()));
        let (a, b): (Decimal, Decimal) = ("1232.9".parse().unwrap(), "0.000".parse().unwrap());
        assert_eq!(exact_add(a, b), Some(a));
        assert_eq!(exact_add(b, a), Some(a));
        // What cannot be held exactly is still refused.
        let big: Decimal = "79228162514264.337593543950335".parse().unwrap();
        let tiny: Decimal = "0.0000000000000001".parse().unwrap();
        assert_eq!(exact_add(big, tiny), None);
    }

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
