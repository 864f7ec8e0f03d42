//! The one rollup aggregate: what every rollup row, raw-event aggregate and read
//! result holds, and the one rule by which two of them combine.

use rust_decimal::Decimal;

/// Count, sum, minimum and maximum of event quantities.
///
/// This is the rule every rollup follows: counts and sums add, minimum and maximum
/// widen. The store's SQL upserts apply the same rule and `verify` checks them
/// against it.
///
/// ```
/// use tally_core::Totals;
/// let mut a = Totals::of("2".parse()?);
/// a.add("5".parse()?);
/// a.merge(Totals::of("1".parse()?));
/// assert_eq!((a.events, a.quantity, a.min, a.max), (3, "8".parse()?, "1".parse()?, "5".parse()?));
/// # Ok::<(), rust_decimal::Error>(())
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

impl Totals {
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
    pub fn add(&mut self, q: Decimal) {
        self.merge(Totals::of(q));
    }

    /// Absorbs `other`: counts and sums add, minimum and maximum widen.
    pub fn merge(&mut self, other: Totals) {
        self.events += other.events;
        self.quantity += other.quantity;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
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
