//! The exact arithmetic of the aggregations. [`Acc`] is what a rollup row holds for
//! every aggregation but `UNIQUE_COUNT` (distinct values, counted by the store) and
//! `TIME_WEIGHTED` (samples, integrated by [`time_weighted`]); accumulators of
//! disjoint events merge into the accumulator of their union, in any order.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::Aggregation;
use crate::{Result, add_exact};

/// The latest value: by time, ties broken by event id (the greater wins), so the
/// answer does not depend on arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latest {
    /// When.
    pub at: DateTime<Utc>,
    /// The event.
    pub id: Uuid,
    /// The value.
    pub value: Decimal,
}

impl Latest {
    fn later(self, other: Latest) -> Latest {
        if (other.at, other.id) > (self.at, self.id) {
            other
        } else {
            self
        }
    }
}

/// Count, sum, extremes and latest value of some events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Acc {
    /// Events.
    pub events: i64,
    /// Sum of their values (zero for `COUNT`).
    pub sum: Decimal,
    /// The least value.
    pub min: Option<Decimal>,
    /// The greatest value.
    pub max: Option<Decimal>,
    /// The latest value.
    pub latest: Option<Latest>,
}

impl Acc {
    /// Adds one event (`value` none for `COUNT`).
    pub fn add(&mut self, at: DateTime<Utc>, id: Uuid, value: Option<Decimal>) -> Result<()> {
        self.merge(&Acc::of(at, id, value))
    }

    /// One event's accumulator.
    pub fn of(at: DateTime<Utc>, id: Uuid, value: Option<Decimal>) -> Acc {
        Acc {
            events: 1,
            sum: value.unwrap_or_default(),
            min: value,
            max: value,
            latest: value.map(|value| Latest { at, id, value }),
        }
    }

    /// Merges the accumulator of other events.
    pub fn merge(&mut self, o: &Acc) -> Result<()> {
        self.events += o.events;
        self.sum = add_exact(self.sum, o.sum, "a meter's sum")?;
        self.min = match (self.min, o.min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max = match (self.max, o.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.latest = match (self.latest, o.latest) {
            (Some(a), Some(b)) => Some(a.later(b)),
            (a, b) => a.or(b),
        };
        Ok(())
    }

    /// The aggregate: `None` for no events (an empty window has no row). `AVG` is
    /// the sum over the count, rounded to 28 significant digits when it does not
    /// terminate. Not for `UNIQUE_COUNT` or `TIME_WEIGHTED` (`None`).
    pub fn value(&self, aggregation: Aggregation) -> Option<Decimal> {
        if self.events == 0 {
            return None;
        }
        match aggregation {
            Aggregation::Sum => Some(self.sum),
            Aggregation::Count => Some(Decimal::from(self.events)),
            Aggregation::Avg => self.sum.checked_div(Decimal::from(self.events)),
            Aggregation::Min => self.min,
            Aggregation::Max => self.max,
            Aggregation::Latest => self.latest.map(|l| l.value),
            Aggregation::UniqueCount | Aggregation::TimeWeighted => None,
        }
    }
}

/// One gauge sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sample {
    /// When the value was set.
    pub at: DateTime<Utc>,
    /// The event that set it (orders samples at the same instant).
    pub id: Uuid,
    /// The value.
    pub value: Decimal,
}

const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// The value-hours of a gauge integral in value × microseconds (what
/// [`time_weighted`] returns; integrals of several series add exactly in that unit):
/// one division, rounded to 28 significant digits when it does not terminate.
pub fn value_hours(value_micros: Decimal) -> Decimal {
    value_micros
        .checked_div(Decimal::from(MICROS_PER_HOUR))
        .unwrap_or(value_micros)
}

/// A gauge's integral over each window, in value × microseconds (see
/// [`value_hours`]): each sample's value holds
/// from its instant until the next sample's (of the same series), or until `until`
/// after the last one. `samples` is one series (one customer and dimension set) in
/// any order, and must include the last sample before the first window if there is
/// one; a window no sample covers is `None`. Exact: the products value × µs are
/// summed exactly. `windows` are in order and disjoint.
pub fn time_weighted(
    samples: &[Sample],
    windows: &[(DateTime<Utc>, DateTime<Utc>)],
    until: DateTime<Utc>,
) -> Result<Vec<Option<Decimal>>> {
    let mut sorted: Vec<Sample> = samples.to_vec();
    sorted.sort();
    let mut sums: Vec<Option<Decimal>> = vec![None; windows.len()];
    // One sweep: windows are in order and disjoint, so each segment of constant value
    // touches a run of them starting where the previous segment's run started.
    let mut first = 0;
    for (i, s) in sorted.iter().enumerate() {
        let seg_end = sorted.get(i + 1).map_or(until, |n| n.at).min(until);
        if s.at >= seg_end {
            continue;
        }
        while windows.get(first).is_some_and(|w| w.1.min(until) <= s.at) {
            first += 1;
        }
        for (k, &(lo, hi)) in windows.iter().enumerate().skip(first) {
            if lo >= seg_end {
                break;
            }
            let (start, end) = (s.at.max(lo), seg_end.min(hi));
            if start >= end {
                continue;
            }
            let us = (end - start).num_microseconds().unwrap_or(i64::MAX);
            let part = s.value.checked_mul(Decimal::from(us)).ok_or_else(|| {
                crate::Error::invalid(
                    "value",
                    s.value,
                    "a gauge's value × duration is past what Tally can hold exactly",
                )
            })?;
            if let Some(slot) = sums.get_mut(k) {
                *slot = Some(add_exact(
                    slot.unwrap_or_default(),
                    part,
                    "a gauge's integral",
                )?);
            }
        }
    }
    Ok(sums)
}
