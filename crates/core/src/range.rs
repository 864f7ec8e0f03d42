//! Half-open ranges of instants, and the one way a range is cut for reading rollups
//! ([`TimeRange::utc_split`]): whole UTC days, whole UTC hours, parts of an hour cut on
//! quarter hours, and what is left. Analytics and quota periods both read by it.

use chrono::{DateTime, Datelike, Duration, DurationRound, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    Error, Granularity, Result, Zone,
    time::{out_of_range, parse_instant, supported_instants},
};

/// A [`TimeRange`] cut along UTC buckets ([`TimeRange::utc_split`]). The pieces are
/// disjoint and together make the range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UtcSplit {
    /// Whole UTC days.
    pub days: Option<TimeRange>,
    /// Whole UTC hours not in those days.
    pub hours: Vec<TimeRange>,
    /// Parts of a UTC hour whose ends fall on quarter hours (every bucket edge of
    /// every zone today): read from the hourly rollups' quarter-hour detail.
    pub quarters: Vec<QuarterPiece>,
    /// The rest: parts of an hour with an end off the quarter hour (raw events).
    pub raw: Vec<TimeRange>,
}

/// Quarters `from..to` (0–4) of the UTC hour starting at `hour`: `[hour + 15·from,
/// hour + 15·to)` minutes, `from < to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuarterPiece {
    /// The hour's start.
    pub hour: DateTime<Utc>,
    /// The first quarter inside (0–3).
    pub from: u8,
    /// The first quarter after (1–4).
    pub to: u8,
}

pub(crate) fn floor_to(t: DateTime<Utc>, unit: Duration) -> DateTime<Utc> {
    // Truncating fails only near the ends of chrono's range, which the range checks
    // keep instants away from; `t` itself is then the safe answer.
    t.duration_trunc(unit).unwrap_or(t)
}

fn ceil_to(t: DateTime<Utc>, unit: Duration) -> DateTime<Utc> {
    let f = floor_to(t, unit);
    if f == t { t } else { f + unit }
}

/// A half-open range of instants `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TimeRange {
    pub(crate) from: DateTime<Utc>,
    pub(crate) to: DateTime<Utc>,
}

impl TimeRange {
    /// `[from, to)`; `from` must be before `to`, both within [`supported_instants`]
    /// (`to` may be its end).
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<TimeRange> {
        let (lo, hi) = supported_instants();
        if from < lo || from >= hi {
            return Err(out_of_range("from", &from.to_rfc3339()));
        }
        if to > hi {
            return Err(out_of_range("to", &to.to_rfc3339()));
        }
        if from >= to {
            return Err(Error::invalid(
                "to",
                to.to_rfc3339(),
                format!("must be after from ({})", from.to_rfc3339()),
            ));
        }
        Ok(TimeRange { from, to })
    }

    /// The first instant inside.
    pub fn from(&self) -> DateTime<Utc> {
        self.from
    }

    /// The first instant after.
    pub fn to(&self) -> DateTime<Utc> {
        self.to
    }

    /// Whether `t` lies in `[from, to)`.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.from <= t && t < self.to
    }

    /// The range cut along UTC buckets: whole UTC days, whole UTC hours outside them,
    /// parts of hours cut on quarter hours, and the rest (at most two pieces of each
    /// kind besides the days and, in a range shorter than two hours, four quarter
    /// pieces). Rollups answer all but the rest exactly; only it needs raw events.
    pub fn utc_split(&self) -> UtcSplit {
        let (hour, day) = (Duration::hours(1), Duration::days(1));
        let mut out = UtcSplit::default();
        let push = |v: &mut Vec<TimeRange>, lo, hi| {
            if lo < hi {
                v.push(TimeRange { from: lo, to: hi });
            }
        };
        let (h0, h1) = (ceil_to(self.from, hour), floor_to(self.to, hour));
        let mut edges = Vec::with_capacity(2);
        if h0 >= h1 {
            push(&mut edges, self.from, self.to);
        } else {
            push(&mut edges, self.from, h0);
            push(&mut edges, h1, self.to);
            let (d0, d1) = (ceil_to(h0, day), floor_to(h1, day));
            if d0 < d1 {
                push(&mut out.hours, h0, d0);
                push(&mut out.hours, d1, h1);
                out.days = Some(TimeRange { from: d0, to: d1 });
            } else {
                push(&mut out.hours, h0, h1);
            }
        }
        // A sub-hour edge is shorter than two hours: cut it at the hours inside it,
        // then each part is quarters of its hour or raw.
        for e in edges {
            let mut lo = e.from;
            while lo < e.to {
                let next = (floor_to(lo, hour) + hour).min(e.to);
                let part = TimeRange { from: lo, to: next };
                match part.quarter_piece() {
                    Some(q) => out.quarters.push(q),
                    None => out.raw.push(part),
                }
                lo = next;
            }
        }
        out
    }

    /// The range as quarters of one UTC hour, if it lies in one and both ends fall on
    /// a quarter hour.
    fn quarter_piece(&self) -> Option<QuarterPiece> {
        let quarter = Duration::minutes(15);
        let on_quarter = |t: DateTime<Utc>| floor_to(t, quarter) == t;
        if !(on_quarter(self.from) && on_quarter(self.to)) {
            return None;
        }
        let hour = floor_to(self.from, Duration::hours(1));
        let index = |t: DateTime<Utc>| u8::try_from((t - hour).num_seconds() / 900).ok();
        let (from, to) = (index(self.from)?, index(self.to)?);
        (from < to && to <= 4).then_some(QuarterPiece { hour, from, to })
    }

    /// The calendar month of `zone` that holds `t`: `[first day, first of the next)`.
    pub fn month_of(zone: Zone, t: DateTime<Utc>) -> TimeRange {
        let start = zone.bucket_start(t, Granularity::Month);
        TimeRange {
            from: start,
            to: zone.next_bucket(start, Granularity::Month),
        }
    }

    /// The calendar day of `zone` that holds `t`.
    pub fn day_of(zone: Zone, t: DateTime<Utc>) -> TimeRange {
        let start = zone.bucket_start(t, Granularity::Day);
        TimeRange {
            from: start,
            to: zone.next_bucket(start, Granularity::Day),
        }
    }

    /// This calendar month in `zone`, by the system clock ([`TimeRange::month_of`] takes
    /// the instant).
    pub fn this_month(zone: Zone) -> TimeRange {
        TimeRange::month_of(zone, Utc::now())
    }

    /// Today in `zone`, by the system clock ([`TimeRange::day_of`] takes the instant).
    pub fn today(zone: Zone) -> TimeRange {
        TimeRange::day_of(zone, Utc::now())
    }

    /// The range between two optional bounds from outside (`field` names as in
    /// [`parse_instant`]), each parsed in `zone`. A missing bound defaults to the start
    /// or end of the calendar month holding `now` in `zone`.
    pub fn from_bounds(
        from: Option<&str>,
        to: Option<&str>,
        zone: Zone,
        now: DateTime<Utc>,
    ) -> Result<TimeRange> {
        let first = zone.date_of(now).with_day(1).unwrap_or_default();
        let from = match from {
            Some(s) => parse_instant("from", s, zone)?,
            None => zone.start_of_day(first),
        };
        let to = match to {
            Some(s) => parse_instant("to", s, zone)?,
            None => {
                let next = first
                    .checked_add_months(chrono::Months::new(1))
                    .ok_or_else(|| Error::invalid("to", first, "out of range"))?;
                zone.start_of_day(next)
            }
        };
        TimeRange::new(from, to)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn month_and_day_of_an_instant_in_a_zone() {
        let ny: Zone = "America/New_York".parse().unwrap();
        let t: DateTime<Utc> = "2026-12-01T03:00:00Z".parse().unwrap(); // 30 Nov, 22:00 EST
        let m = TimeRange::month_of(ny, t);
        assert_eq!(m.from().to_rfc3339(), "2026-11-01T04:00:00+00:00"); // EDT midnight
        assert_eq!(m.to().to_rfc3339(), "2026-12-01T05:00:00+00:00");
        let d = TimeRange::day_of(ny, t);
        assert_eq!(d.from().to_rfc3339(), "2026-11-30T05:00:00+00:00");
        assert_eq!(d.to().to_rfc3339(), "2026-12-01T05:00:00+00:00");
        let m = TimeRange::this_month(Zone::UTC);
        assert!((28..=31).contains(&(m.to() - m.from()).num_days()));
        let d = TimeRange::today(ny);
        assert!((23..=25).contains(&(d.to() - d.from()).num_hours()));
    }
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn range(a: &str, b: &str) -> TimeRange {
        TimeRange::new(utc(a), utc(b)).unwrap()
    }

    #[test]
    fn ranges_are_half_open() {
        let r = TimeRange::new(utc("2026-01-01T00:00:00Z"), utc("2026-01-02T00:00:00Z")).unwrap();
        assert!(r.contains(utc("2026-01-01T00:00:00Z")));
        assert!(!r.contains(utc("2026-01-02T00:00:00Z")));
        assert!(TimeRange::new(r.to(), r.from()).is_err());
        assert!(TimeRange::new(r.from(), r.from()).is_err());
    }

    #[test]
    fn a_range_is_cut_into_days_hours_quarters_and_the_rest() {
        // Asia/Kolkata's day: 18:30 to 18:30 UTC, plus a raw edge off the quarter.
        let s = range("2026-01-01T18:30:00Z", "2026-01-03T18:37:10Z").utc_split();
        assert_eq!(
            s.days,
            Some(range("2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"))
        );
        assert_eq!(
            s.hours,
            [
                range("2026-01-01T19:00:00Z", "2026-01-02T00:00:00Z"),
                range("2026-01-03T00:00:00Z", "2026-01-03T18:00:00Z"),
            ]
        );
        assert_eq!(
            s.quarters,
            [QuarterPiece {
                hour: utc("2026-01-01T18:00:00Z"),
                from: 2,
                to: 4
            }]
        );
        // An hour's part with one end off the quarter is read raw as a whole.
        assert_eq!(
            s.raw,
            [range("2026-01-03T18:00:00Z", "2026-01-03T18:37:10Z")]
        );
    }

    #[test]
    fn a_short_range_across_an_hour_is_cut_at_it() {
        let s = range("2026-01-01T10:45:00Z", "2026-01-01T11:15:00Z").utc_split();
        assert_eq!((s.days, s.hours.len(), s.raw.len()), (None, 0, 0));
        assert_eq!(
            s.quarters,
            [
                QuarterPiece {
                    hour: utc("2026-01-01T10:00:00Z"),
                    from: 3,
                    to: 4
                },
                QuarterPiece {
                    hour: utc("2026-01-01T11:00:00Z"),
                    from: 0,
                    to: 1
                },
            ]
        );
        let s = range("2026-01-01T10:15:00.5Z", "2026-01-01T10:30:00Z").utc_split();
        assert!(s.quarters.is_empty());
        assert_eq!(
            s.raw,
            [range("2026-01-01T10:15:00.5Z", "2026-01-01T10:30:00Z")]
        );
    }

    #[test]
    fn quarter_edges_become_parts_of_hours() {
        // Moved from the store's period usage, which now reads by this split.
        let q = |a, b| range(a, b).utc_split();
        let piece = |h, from, to| QuarterPiece {
            hour: utc(h),
            from,
            to,
        };
        assert_eq!(
            q("2026-11-14T18:30:00Z", "2026-11-14T19:00:00Z").quarters,
            [piece("2026-11-14T18:00:00Z", 2, 4)]
        );
        assert_eq!(
            q("2026-11-14T10:45:00Z", "2026-11-14T11:15:00Z").quarters,
            [
                piece("2026-11-14T10:00:00Z", 3, 4),
                piece("2026-11-14T11:00:00Z", 0, 1)
            ]
        );
        for (a, b) in [
            ("2026-11-14T10:45:00Z", "2026-11-14T10:50:00Z"),
            ("2026-11-14T10:45:00.000001Z", "2026-11-14T11:00:00Z"),
        ] {
            let s = q(a, b);
            assert!(s.quarters.is_empty());
            assert_eq!(s.raw, [range(a, b)]);
        }
    }

    proptest::proptest! {
        #[test]
        fn the_pieces_make_the_range_exactly(a in 0i64..400_000, len in 1i64..400_000) {
            let base = utc("2026-03-01T00:00:00Z");
            // Steps of 5 minutes hit hours and quarters often, and both sides of them.
            let r = TimeRange::new(base + Duration::seconds(a * 300 / 7 * 7), base + Duration::seconds((a + len) * 300 / 7 * 7 + 1)).unwrap();
            let s = r.utc_split();
            let mut pieces: Vec<(DateTime<Utc>, DateTime<Utc>)> = s.days.iter().chain(&s.hours).chain(&s.raw).map(|p| (p.from(), p.to())).collect();
            pieces.extend(s.quarters.iter().map(|q| (q.hour + Duration::minutes(15 * i64::from(q.from)), q.hour + Duration::minutes(15 * i64::from(q.to)))));
            pieces.sort();
            let mut at = r.from();
            for (lo, hi) in pieces {
                proptest::prop_assert_eq!(lo, at);
                proptest::prop_assert!(lo < hi);
                at = hi;
            }
            proptest::prop_assert_eq!(at, r.to());
        }
    }
}
