//! Query windows and how a window is read from the meter rollups: whole UTC days from
//! the daily rollup, whole UTC quarter hours from the quarter-hour rollup (every
//! bucket edge of every zone in use today falls on a quarter hour), and what is left
//! — only at an end off the quarter hour — from the raw events.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::{Error, Granularity, Result, TimeRange, Zone, range::floor_to};

/// A query's window (OpenMeter's `windowSize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WindowSize {
    /// Minutes (read from raw events: ranges of at most a day).
    Minute,
    /// The zone's clock hours.
    Hour,
    /// The zone's calendar days.
    Day,
    /// The zone's calendar months.
    Month,
}

impl WindowSize {
    /// The longest range a `MINUTE` query may cover.
    pub const MAX_MINUTE_RANGE: Duration = Duration::days(1);
}

impl FromStr for WindowSize {
    type Err = Error;
    fn from_str(s: &str) -> Result<WindowSize> {
        match s.to_ascii_uppercase().as_str() {
            "MINUTE" => Ok(WindowSize::Minute),
            "HOUR" | "HOURLY" => Ok(WindowSize::Hour),
            "DAY" | "DAILY" => Ok(WindowSize::Day),
            "MONTH" | "MONTHLY" => Ok(WindowSize::Month),
            _ => Err(Error::invalid(
                "window_size",
                s,
                "expected MINUTE, HOUR, DAY or MONTH",
            )),
        }
    }
}

impl fmt::Display for WindowSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WindowSize::Minute => "MINUTE",
            WindowSize::Hour => "HOUR",
            WindowSize::Day => "DAY",
            WindowSize::Month => "MONTH",
        })
    }
}

/// The windows of `range`: the whole range for `None`, else the zone's buckets, each
/// clipped to the range. `MINUTE` refuses a range over a day.
pub fn windows(range: TimeRange, size: Option<WindowSize>, zone: Zone) -> Result<Vec<TimeRange>> {
    let granularity = match size {
        None => return Ok(vec![range]),
        Some(WindowSize::Minute) => {
            if range.to() - range.from() > WindowSize::MAX_MINUTE_RANGE {
                return Err(Error::invalid(
                    "window_size",
                    "MINUTE",
                    "a MINUTE query covers at most a day (it reads raw events)",
                ));
            }
            // Every zone's minutes are UTC minutes (offsets are whole minutes).
            let mut out = Vec::new();
            let mut t = floor_to(range.from(), Duration::minutes(1));
            while t < range.to() {
                let next = t + Duration::minutes(1);
                out.push(TimeRange {
                    from: t.max(range.from()),
                    to: next.min(range.to()),
                });
                t = next;
            }
            return Ok(out);
        }
        Some(WindowSize::Hour) => Granularity::Hour,
        Some(WindowSize::Day) => Granularity::Day,
        Some(WindowSize::Month) => Granularity::Month,
    };
    Ok(zone
        .buckets(range, granularity)
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// A window cut for reading: the pieces are disjoint and make the window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeterPieces {
    /// Whole UTC days (the daily rollup).
    pub days: Option<TimeRange>,
    /// Whole UTC quarter hours outside those days (the quarter-hour rollup).
    pub quarters: Vec<TimeRange>,
    /// The rest (raw events).
    pub raw: Vec<TimeRange>,
}

fn ceil_to(t: DateTime<Utc>, unit: Duration) -> DateTime<Utc> {
    let f = floor_to(t, unit);
    if f == t { t } else { f + unit }
}

/// How `window` is read (see the module docs).
pub fn meter_pieces(window: TimeRange) -> MeterPieces {
    let day = Duration::days(1);
    let (lo, hi) = (window.from(), window.to());
    let (dlo, dhi) = (ceil_to(lo, day), floor_to(hi, day));
    let mut out = MeterPieces::default();
    let rest = if dlo < dhi {
        out.days = Some(TimeRange { from: dlo, to: dhi });
        vec![(lo, dlo), (dhi, hi)]
    } else {
        vec![(lo, hi)]
    };
    let quarter = Duration::minutes(15);
    for (x, y) in rest {
        if x >= y {
            continue;
        }
        let (qlo, qhi) = (ceil_to(x, quarter), floor_to(y, quarter));
        if qlo < qhi {
            out.quarters.push(TimeRange { from: qlo, to: qhi });
            for (a, b) in [(x, qlo), (qhi, y)] {
                if a < b {
                    out.raw.push(TimeRange { from: a, to: b });
                }
            }
        } else {
            out.raw.push(TimeRange { from: x, to: y });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_kolkata_day_is_quarters_and_a_utc_month_is_days() {
        let zone: Zone = "Asia/Kolkata".parse().unwrap();
        let range = TimeRange::new(t("2026-03-01T18:30:00Z"), t("2026-03-03T18:30:00Z")).unwrap();
        let w = windows(range, Some(WindowSize::Day), zone).unwrap();
        assert_eq!(w.len(), 2);
        let p = meter_pieces(w[0]);
        assert_eq!(p.days, None, "18:30 to 18:30 holds no whole UTC day");
        assert_eq!(p.quarters, vec![w[0]], "one run of quarter hours");
        assert!(p.raw.is_empty());
        let month = TimeRange::new(t("2026-03-01T00:00:00Z"), t("2026-04-01T00:00:00Z")).unwrap();
        let p = meter_pieces(month);
        assert_eq!(p.days, Some(month));
        assert!(p.quarters.is_empty() && p.raw.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn pieces_are_disjoint_and_make_the_window(a in 0i64..10_000_000, len in 1i64..400_000_000) {
            let lo = t("2026-01-01T00:00:00Z") + Duration::seconds(a);
            let w = TimeRange::new(lo, lo + Duration::milliseconds(len * 10)).unwrap();
            let p = meter_pieces(w);
            let mut all: Vec<TimeRange> = p.days.into_iter().chain(p.quarters.clone()).chain(p.raw.clone()).collect();
            all.sort_by_key(|r| r.from());
            let mut at = w.from();
            for r in &all {
                proptest::prop_assert_eq!(r.from(), at);
                at = r.to();
            }
            proptest::prop_assert_eq!(at, w.to());
            for q in &p.quarters {
                proptest::prop_assert_eq!(floor_to(q.from(), Duration::minutes(15)), q.from());
                proptest::prop_assert_eq!(floor_to(q.to(), Duration::minutes(15)), q.to());
            }
        }
    }
}
