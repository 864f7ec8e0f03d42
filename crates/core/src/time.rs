//! UTC instants and calendar buckets in any IANA time zone.

use std::{fmt, str::FromStr};

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::{Error, Result, TimeRange, range::floor_to};

/// The instants Tally accepts, everywhere (writes, reads, import, CLI):
/// `[1900-01-01T00:00:00Z, 2200-01-01T00:00:00Z)`. Wide enough for any usage record
/// and any billing period, narrow enough that every calendar computation on it (zones,
/// buckets, nanosecond arithmetic) is exact and cannot overflow.
pub fn supported_instants() -> (DateTime<Utc>, DateTime<Utc>) {
    // Seconds since the epoch of 1900-01-01 and 2200-01-01, UTC.
    let at = |s: i64| DateTime::from_timestamp(s, 0).unwrap_or_default();
    (at(-2_208_988_800), at(7_258_118_400))
}

/// An instant the way PostgreSQL stores it: a leap second (`23:59:60`) is the first
/// instant of the next second, and digits below a microsecond are dropped. Tally
/// buckets the normalized instant, so an event has one bucket in every table.
pub fn normalize_instant(t: DateTime<Utc>) -> DateTime<Utc> {
    let (mut secs, mut nanos) = (t.timestamp(), t.timestamp_subsec_nanos());
    if nanos >= 1_000_000_000 {
        secs += 1;
        nanos -= 1_000_000_000;
    }
    DateTime::from_timestamp(secs, nanos / 1_000 * 1_000).unwrap_or(t)
}

/// Checks an instant from outside: normalized (see [`normalize_instant`]) and inside
/// [`supported_instants`].
pub fn check_instant(field: &'static str, t: DateTime<Utc>) -> Result<DateTime<Utc>> {
    let (lo, hi) = supported_instants();
    let n = normalize_instant(t);
    if n < lo || n >= hi {
        return Err(Error::invalid(
            field,
            t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            "is outside the supported range 1900-01-01T00:00:00Z to 2200-01-01T00:00:00Z",
        ));
    }
    Ok(n)
}

/// Parses an instant from outside: RFC 3339 with an explicit offset
/// (`2026-11-27T10:00:00Z`, `…+05:30`), or a bare date `YYYY-MM-DD`, which means
/// midnight of that date in `tz`. A date-time without an offset is rejected: its
/// meaning would depend on some server's clock setting. The result is normalized and
/// in the supported range ([`check_instant`]).
pub fn parse_instant(field: &'static str, s: &str, tz: Zone) -> Result<DateTime<Utc>> {
    let t = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return check_instant(field, dt.with_timezone(&Utc)).map_err(|_| out_of_range(field, s));
    }
    if let Ok(date) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        let (lo, hi) = supported_instants();
        if date < lo.date_naive() || date >= hi.date_naive() {
            return Err(out_of_range(field, s));
        }
        return Ok(tz.start_of_day(date));
    }
    let reason = if NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f").is_ok()
        || NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f").is_ok()
    {
        "has no UTC offset; add one such as Z or +02:00"
    } else {
        "is not an RFC 3339 timestamp (2026-11-27T10:00:00Z) or a date (2026-11-27)"
    };
    Err(Error::invalid(field, s, reason))
}

pub(crate) fn out_of_range(field: &'static str, s: &str) -> Error {
    Error::invalid(
        field,
        s,
        "is outside the supported range 1900-01-01T00:00:00Z to 2200-01-01T00:00:00Z",
    )
}

/// Parses a billing period `YYYY-MM` into the UTC calendar month `[first, next first)`.
pub fn parse_month(field: &'static str, s: &str) -> Result<TimeRange> {
    let t = s.trim();
    let first = NaiveDate::parse_from_str(&format!("{t}-01"), "%Y-%m-%d")
        .ok()
        .filter(|_| t.len() == 7)
        .ok_or_else(|| Error::invalid(field, s, "expected a month as YYYY-MM"))?;
    let (lo, hi) = supported_instants();
    if first < lo.date_naive() || first >= hi.date_naive() {
        return Err(out_of_range(field, s));
    }
    let next = first
        .checked_add_months(chrono::Months::new(1))
        .ok_or_else(|| Error::invalid(field, s, "out of range"))?;
    TimeRange::new(Zone::UTC.start_of_day(first), Zone::UTC.start_of_day(next))
}

/// A bucket size for aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// Clock hours of the zone.
    Hour,
    /// Calendar days of the zone (23, 24 or 25 hours long).
    Day,
    /// Calendar months of the zone.
    Month,
}

impl FromStr for Granularity {
    type Err = Error;
    fn from_str(s: &str) -> Result<Granularity> {
        match s {
            "hour" | "hourly" => Ok(Granularity::Hour),
            "day" | "daily" => Ok(Granularity::Day),
            "month" | "monthly" => Ok(Granularity::Month),
            _ => Err(Error::invalid(
                "period",
                s,
                "expected hourly, daily or monthly",
            )),
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Granularity::Hour => "hourly",
            Granularity::Day => "daily",
            Granularity::Month => "monthly",
        })
    }
}

/// An IANA time zone (`UTC` by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Zone(Tz);

impl Zone {
    /// UTC.
    pub const UTC: Zone = Zone(Tz::UTC);

    /// The zone's IANA name.
    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// The chrono-tz zone.
    pub fn tz(&self) -> Tz {
        self.0
    }

    /// Whether every UTC offset the zone has ever used is a whole number of hours, so that
    /// its hour buckets coincide with UTC hours. (Checked over 1900–2100 transitions.)
    pub fn whole_hour_offsets(&self) -> bool {
        // Offsets change only at transitions; sampling every 1st and 15th of each month
        // catches every offset that lasted at least half a month, which covers all
        // zones in the database (short offsets are DST, always in whole hours or 30 min).
        let (Some(mut date), Some(end)) = (
            NaiveDate::from_ymd_opt(1970, 1, 1),
            NaiveDate::from_ymd_opt(2100, 1, 1),
        ) else {
            return false;
        };
        while date < end {
            for day in [1, 15] {
                let Some(d) = date.with_day(day) else {
                    continue;
                };
                let t = Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN));
                let off = self
                    .0
                    .offset_from_utc_datetime(&t.naive_utc())
                    .fix()
                    .local_minus_utc();
                if off % 3600 != 0 {
                    return false;
                }
            }
            let Some(next) = date.checked_add_months(chrono::Months::new(1)) else {
                break;
            };
            date = next;
        }
        true
    }

    /// The instant the local calendar day `date` starts. Where midnight does not exist
    /// (a DST gap at 00:00) the day starts at the first local time that does; where it
    /// exists twice, at the first.
    pub fn start_of_day(&self, date: NaiveDate) -> DateTime<Utc> {
        let mut local = date.and_time(NaiveTime::MIN);
        loop {
            match self.0.from_local_datetime(&local) {
                LocalResult::Single(t) => return t.with_timezone(&Utc),
                LocalResult::Ambiguous(a, b) => return a.min(b).with_timezone(&Utc),
                // Gaps are at most a few hours; step in minutes to the first valid time.
                LocalResult::None => local += Duration::minutes(1),
            }
        }
    }

    /// The zone's UTC offset at `t`, in seconds.
    fn offset_at(&self, t: DateTime<Utc>) -> i32 {
        self.0
            .offset_from_utc_datetime(&t.naive_utc())
            .fix()
            .local_minus_utc()
    }

    /// The instant of the zone's first change of offset in `(lo, hi]`, for spans of at
    /// most an hour or so. No zone changes its offset twice within one hour, so the
    /// offset is sampled every 15 minutes and the change found by bisection to the
    /// second (transitions fall on whole seconds).
    fn first_change(&self, lo: DateTime<Utc>, hi: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let before = self.offset_at(lo);
        // The same offset at both ends: no change between (there is never a second
        // one to undo the first). Two lookups instead of five for nearly every hour: a
        // month of hourly buckets calls this 720 times.
        if self.offset_at(hi) == before {
            return None;
        }
        let mut a = lo;
        loop {
            let b = (a + Duration::minutes(15)).min(hi);
            if self.offset_at(b) != before {
                return Some(self.bisect(a, b, before));
            }
            if b >= hi {
                return None;
            }
            a = b;
        }
    }

    /// The instant of the zone's last change of offset in `(lo, hi]` (see
    /// [`Zone::first_change`]).
    fn last_change(&self, lo: DateTime<Utc>, hi: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let after = self.offset_at(hi);
        if self.offset_at(lo) == after {
            return None;
        }
        let mut b = hi;
        loop {
            let a = (b - Duration::minutes(15)).max(lo);
            if self.offset_at(a) != after {
                return Some(self.bisect(a, b, self.offset_at(a)));
            }
            if a <= lo {
                return None;
            }
            b = a;
        }
    }

    /// The first instant in `(a, b]` whose offset is not `before`, given that `a`'s is
    /// and `b`'s is not: bisection on whole seconds.
    fn bisect(&self, mut a: DateTime<Utc>, mut b: DateTime<Utc>, before: i32) -> DateTime<Utc> {
        // Transitions fall on whole seconds: start from the whole second after `a`.
        let whole = floor_to(a, Duration::seconds(1));
        if whole + Duration::seconds(1) <= b && self.offset_at(whole) == before {
            a = whole;
        }
        while b - a > Duration::seconds(1) {
            let mid = a + Duration::seconds((b - a).num_seconds() / 2);
            if self.offset_at(mid) == before {
                a = mid;
            } else {
                b = mid;
            }
        }
        b
    }

    /// The local calendar date of `t`.
    pub fn date_of(&self, t: DateTime<Utc>) -> NaiveDate {
        t.with_timezone(&self.0).date_naive()
    }

    /// The start of the bucket of `granularity` that holds `t`.
    pub fn bucket_start(&self, t: DateTime<Utc>, granularity: Granularity) -> DateTime<Utc> {
        let local = t.with_timezone(&self.0);
        match granularity {
            // UTC never changes offset: its hours are plain arithmetic (the common case,
            // and a month of hourly buckets is 720 of these).
            Granularity::Hour if self.0 == Tz::UTC => floor_to(t, Duration::hours(1)),
            Granularity::Hour => {
                // The local clock hour holding `t`, from where it began on the clock in
                // force at `t`: a change of offset inside that hour starts a bucket
                // (the repeated hour of a fall-back is two buckets; after a 30-minute
                // spring forward, 02:30–03:00 is one).
                let on_the_hour = t - into_hour(&local);
                self.last_change(on_the_hour, t).unwrap_or(on_the_hour)
            }
            Granularity::Day => self.start_of_day(local.date_naive()),
            Granularity::Month => {
                let d = local.date_naive();
                self.start_of_day(d.with_day(1).unwrap_or(d))
            }
        }
    }

    /// The start of the bucket after the one starting at `start`.
    pub fn next_bucket(&self, start: DateTime<Utc>, granularity: Granularity) -> DateTime<Utc> {
        match granularity {
            Granularity::Hour if self.0 == Tz::UTC => {
                floor_to(start, Duration::hours(1)) + Duration::hours(1)
            }
            Granularity::Hour => {
                let local = start.with_timezone(&self.0);
                let next_hour = start - into_hour(&local) + Duration::hours(1);
                self.first_change(start, next_hour).unwrap_or(next_hour)
            }
            // The fallbacks are for dates at the end of chrono's calendar, far past the
            // supported range; they still move forward, so a bucket loop always ends.
            Granularity::Day => match self.date_of(start).succ_opt() {
                Some(next) => self.start_of_day(next),
                None => start + Duration::days(1),
            },
            Granularity::Month => {
                let d = self.date_of(start);
                match d
                    .with_day(1)
                    .and_then(|first| first.checked_add_months(chrono::Months::new(1)))
                {
                    Some(next) => self.start_of_day(next),
                    None => start + Duration::days(31),
                }
            }
        }
    }

    /// The buckets that cover `range`, each clipped to it: `(bucket start, [from, to))`.
    pub fn buckets(
        &self,
        range: TimeRange,
        granularity: Granularity,
    ) -> Vec<(DateTime<Utc>, TimeRange)> {
        let mut out = Vec::new();
        let mut start = self.bucket_start(range.from(), granularity);
        while start < range.to() {
            let next = self.next_bucket(start, granularity);
            let lo = start.max(range.from());
            let hi = next.min(range.to());
            out.push((start, TimeRange { from: lo, to: hi }));
            start = next;
        }
        out
    }
}

/// How far `local` is into its clock hour.
fn into_hour(local: &DateTime<Tz>) -> Duration {
    Duration::seconds(i64::from(local.minute() * 60 + local.second()))
        + Duration::nanoseconds(i64::from(local.nanosecond()))
}

impl FromStr for Zone {
    type Err = Error;
    fn from_str(s: &str) -> Result<Zone> {
        s.parse::<Tz>().map(Zone).map_err(|_| {
            Error::invalid(
                "tz",
                s,
                "not an IANA time zone name such as UTC or Europe/Berlin",
            )
        })
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn instants_need_an_offset() {
        assert_eq!(
            parse_instant("from", "2026-01-02T03:04:05+05:30", Zone::UTC).unwrap(),
            utc("2026-01-01T21:34:05Z")
        );
        assert_eq!(
            parse_instant("from", "2026-01-02", Zone::UTC).unwrap(),
            utc("2026-01-02T00:00:00Z")
        );
        let kolkata: Zone = "Asia/Kolkata".parse().unwrap();
        assert_eq!(
            parse_instant("from", "2026-01-02", kolkata).unwrap(),
            utc("2026-01-01T18:30:00Z")
        );
        for bad in [
            "2026-01-02T03:04:05",
            "2026-01-02 03:04:05",
            "yesterday",
            "",
            "2026-13-01",
        ] {
            let e = parse_instant("from", bad, Zone::UTC).unwrap_err();
            assert_eq!(e.field(), Some("from"));
        }
        assert!(
            parse_instant("at", "2026-01-02T03:04:05", Zone::UTC)
                .unwrap_err()
                .to_string()
                .contains("offset")
        );
    }

    #[test]
    fn months_parse_to_utc_calendar_months() {
        let m = parse_month("period", "2026-02").unwrap();
        assert_eq!(
            (m.from(), m.to()),
            (utc("2026-02-01T00:00:00Z"), utc("2026-03-01T00:00:00Z"))
        );
        let d = parse_month("period", "2026-12").unwrap();
        assert_eq!(d.to(), utc("2027-01-01T00:00:00Z"));
        for bad in ["2026-13", "2026-1", "26-01", "2026-01-05", ""] {
            assert_eq!(
                parse_month("period", bad).unwrap_err().field(),
                Some("period"),
                "{bad}"
            );
        }
    }

    #[test]
    fn hour_buckets_follow_half_and_quarter_hour_offsets() {
        let kolkata: Zone = "Asia/Kolkata".parse().unwrap();
        let kathmandu: Zone = "Asia/Kathmandu".parse().unwrap();
        let t = utc("2026-03-10T10:10:00Z");
        assert_eq!(
            kolkata.bucket_start(t, Granularity::Hour),
            utc("2026-03-10T09:30:00Z")
        );
        assert_eq!(
            kathmandu.bucket_start(t, Granularity::Hour),
            utc("2026-03-10T09:15:00Z")
        );
        assert_eq!(
            kolkata.bucket_start(t, Granularity::Day),
            utc("2026-03-09T18:30:00Z")
        );
        assert_eq!(
            kathmandu.bucket_start(t, Granularity::Day),
            utc("2026-03-09T18:15:00Z")
        );
        assert_eq!(
            kathmandu.bucket_start(t, Granularity::Month),
            utc("2026-02-28T18:15:00Z")
        );
        assert!(!kolkata.whole_hour_offsets());
        assert!(!kathmandu.whole_hour_offsets());
        assert!(Zone::UTC.whole_hour_offsets());
        assert!(
            "Europe/Berlin"
                .parse::<Zone>()
                .unwrap()
                .whole_hour_offsets()
        );
    }

    #[test]
    fn dst_days_are_23_and_25_hours() {
        let berlin: Zone = "Europe/Berlin".parse().unwrap();
        let ny: Zone = "America/New_York".parse().unwrap();
        let spring = berlin.bucket_start(utc("2026-03-29T12:00:00Z"), Granularity::Day);
        assert_eq!(spring, utc("2026-03-28T23:00:00Z"));
        assert_eq!(
            berlin.next_bucket(spring, Granularity::Day) - spring,
            Duration::hours(23)
        );
        let fall = berlin.bucket_start(utc("2026-10-25T12:00:00Z"), Granularity::Day);
        assert_eq!(
            berlin.next_bucket(fall, Granularity::Day) - fall,
            Duration::hours(25)
        );
        let ny_spring = ny.bucket_start(utc("2026-03-08T12:00:00Z"), Granularity::Day);
        assert_eq!(ny_spring, utc("2026-03-08T05:00:00Z"));
        assert_eq!(
            ny.next_bucket(ny_spring, Granularity::Day) - ny_spring,
            Duration::hours(23)
        );
        let ny_fall = ny.bucket_start(utc("2026-11-01T12:00:00Z"), Granularity::Day);
        assert_eq!(
            ny.next_bucket(ny_fall, Granularity::Day) - ny_fall,
            Duration::hours(25)
        );
        // The repeated hour of a fall-back is two buckets.
        let day = TimeRange::new(fall, berlin.next_bucket(fall, Granularity::Day)).unwrap();
        assert_eq!(berlin.buckets(day, Granularity::Hour).len(), 25);
        let a = berlin.bucket_start(utc("2026-10-25T00:30:00Z"), Granularity::Hour);
        let b = berlin.bucket_start(utc("2026-10-25T01:30:00Z"), Granularity::Hour);
        assert_ne!(a, b);
    }

    #[test]
    fn a_half_hour_dst_shift_makes_a_half_hour_bucket() {
        // Australia/Lord_Howe springs forward 30 minutes at 02:00 local (+10:30 to +11,
        // 15:30Z) on 2026-10-04: local 02:30–03:00 is a bucket of its own, and the next
        // starts at 03:00 local (16:00Z), whatever the range's start.
        let lh: Zone = "Australia/Lord_Howe".parse().unwrap();
        let t = utc("2026-10-03T16:10:00Z");
        assert_eq!(
            lh.bucket_start(t, Granularity::Hour),
            utc("2026-10-03T16:00:00Z")
        );
        let day = parse_instant("from", "2026-10-04", lh).unwrap();
        let r = TimeRange::new(day, parse_instant("to", "2026-10-05", lh).unwrap()).unwrap();
        let b = lh.buckets(r, Granularity::Hour);
        let starts: Vec<_> = b.iter().map(|(s, _)| *s).take(4).collect();
        assert_eq!(
            starts,
            [
                utc("2026-10-03T13:30:00Z"),
                utc("2026-10-03T14:30:00Z"),
                utc("2026-10-03T15:30:00Z"),
                utc("2026-10-03T16:00:00Z")
            ]
        );
        assert_eq!(b.len(), 24); // 23.5 hours: one bucket is half an hour
        let holding = |t| b.iter().find(|(_, r)| r.contains(t)).map(|(s, _)| *s);
        assert_eq!(holding(t), Some(utc("2026-10-03T16:00:00Z")));
        // Back in April 2027 (+11 to +10:30 at 02:00 local, 15:00Z): 01:30–02:00 again,
        // its own bucket.
        let fall = lh.bucket_start(utc("2027-04-03T15:10:00Z"), Granularity::Hour);
        assert_eq!(fall, utc("2027-04-03T15:00:00Z"));
        assert_eq!(
            lh.next_bucket(fall, Granularity::Hour),
            utc("2027-04-03T15:30:00Z")
        );
    }

    /// Every zone's hour and day buckets around each of its offset changes of 2026 and
    /// 2027, against a computation that knows nothing of transitions: minute by
    /// minute, a bucket starts where the local (date, hour, offset) — or, for days, the
    /// local date — differs from the minute before.
    #[test]
    fn buckets_follow_the_local_clock_in_every_zone_in_2026_and_2027() {
        type Key = (NaiveDate, u32, i32);
        let (start, end) = (utc("2026-01-01T00:00:00Z"), utc("2028-01-01T00:00:00Z"));
        let mut changes = 0;
        for tz in chrono_tz::TZ_VARIANTS {
            let zone = Zone(tz);
            let key = |t: DateTime<Utc>| -> Key {
                let l = t.with_timezone(&tz);
                (l.date_naive(), l.hour(), l.offset().fix().local_minus_utc())
            };
            let mut around = vec![utc("2026-06-15T00:00:00Z")];
            let mut t = start;
            while t < end {
                let n = t + Duration::hours(1);
                if key(t).2 != key(n).2 {
                    around.push(t);
                    changes += 1;
                }
                t = n;
            }
            for at in around {
                for (g, span, field) in [
                    (Granularity::Hour, Duration::hours(4), 0),
                    (Granularity::Day, Duration::hours(30), 1),
                ] {
                    let (lo, hi) = (at - span, at + span);
                    let same = |a: Key, b: Key| match field {
                        0 => a == b,
                        _ => a.0 == b.0,
                    };
                    let mut brute = Vec::new();
                    let mut m = lo + Duration::minutes(1);
                    while m < hi {
                        if !same(key(m - Duration::minutes(1)), key(m)) {
                            brute.push(m);
                        }
                        m += Duration::minutes(1);
                    }
                    let r = TimeRange::new(lo, hi).unwrap();
                    let ours: Vec<_> = zone
                        .buckets(r, g)
                        .into_iter()
                        .map(|(s, _)| s)
                        .filter(|s| *s > lo)
                        .collect();
                    assert_eq!(ours, brute, "{} {g:?} around {at}", tz.name());
                    // And the bucket of every minute after the first start is the latest
                    // start before it.
                    let mut m = brute.first().copied().unwrap_or(hi);
                    while m < hi {
                        let expect = brute.iter().rev().find(|b| **b <= m).copied();
                        assert_eq!(
                            Some(zone.bucket_start(m, g)),
                            expect,
                            "{} {g:?} at {m}",
                            tz.name()
                        );
                        m += Duration::minutes(7);
                    }
                }
            }
        }
        assert!(changes > 200, "{changes} offset changes found in 2026-2027");
    }

    #[test]
    fn midnight_gap_starts_day_at_first_valid_time() {
        // America/Santiago springs forward at 24:00 local: 2026-09-06 has no midnight.
        let santiago: Zone = "America/Santiago".parse().unwrap();
        let start = santiago.start_of_day(NaiveDate::from_ymd_opt(2026, 9, 6).unwrap());
        assert_eq!(start.with_timezone(&santiago.tz()).hour(), 1);
    }

    #[test]
    fn buckets_are_clipped_to_the_range() {
        let r = TimeRange::new(utc("2026-01-01T10:30:00Z"), utc("2026-01-03T05:00:00Z")).unwrap();
        let b = Zone::UTC.buckets(r, Granularity::Day);
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].0, utc("2026-01-01T00:00:00Z"));
        assert_eq!(b[0].1.from(), r.from());
        assert_eq!(b[2].1.to(), r.to());
    }

    #[test]
    fn unknown_zone_is_rejected() {
        assert_eq!(
            "Mars/Olympus".parse::<Zone>().unwrap_err().field(),
            Some("tz")
        );
    }
}
