//! The one exact primitive: totals over labeled ranges, from rollups where whole UTC
//! days and hours fit, from the hourly rollups' quarter-hour detail where an edge falls
//! on a quarter hour (every zone's bucket edges today), and from raw events only for
//! other sub-hour edges.

use std::collections::{BTreeMap, HashMap, HashSet, hash_map::Entry};

use chrono::{DateTime, Duration, Timelike, Utc};
use tally_core::{Service, TimeRange, Totals};
use tally_store::{Grain, Store, Who};

use tally_store::Result;

/// Key of a result row: label and the service's index in the `services` asked for.
/// (The customer is the one asked for, or all: it needs no place in the key.)
pub(crate) type Key = (DateTime<Utc>, usize);

/// A labelled part `[lo, hi)` of a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    label: DateTime<Utc>,
    lo: DateTime<Utc>,
    hi: DateTime<Utc>,
}

#[derive(Default)]
struct Pieces(Vec<Piece>);

impl Pieces {
    fn push(&mut self, label: DateTime<Utc>, lo: DateTime<Utc>, hi: DateTime<Utc>) {
        if lo < hi {
            self.0.push(Piece { label, lo, hi });
        }
    }
}

/// A labelled part of one UTC hour cut on quarter hours: quarters `a..b` of `hour`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QuarterPiece {
    label: DateTime<Utc>,
    hour: DateTime<Utc>,
    a: usize,
    b: usize,
}

/// `p` cut at the UTC hours inside it (a sub-hour edge of `utc_split` is shorter than
/// two hours: a range within one hour, or one that crosses a single hour boundary).
fn split_at_hours(p: &Piece) -> Vec<Piece> {
    let mut out = Vec::with_capacity(2);
    let mut lo = p.lo;
    while lo < p.hi {
        let next = DateTime::from_timestamp((lo.timestamp().div_euclid(3600) + 1) * 3600, 0)
            .map_or(p.hi, |n| n.min(p.hi));
        out.push(Piece {
            label: p.label,
            lo,
            hi: next,
        });
        lo = next;
    }
    out
}

/// `p` as quarters of its UTC hour, if it lies in one and both ends fall on a quarter
/// hour.
fn quarter_piece(p: &Piece) -> Option<QuarterPiece> {
    let on_quarter = |t: DateTime<Utc>| t.nanosecond() == 0 && t.timestamp().rem_euclid(900) == 0;
    if !(on_quarter(p.lo) && on_quarter(p.hi)) {
        return None;
    }
    let hour = DateTime::from_timestamp(p.lo.timestamp().div_euclid(3600) * 3600, 0)?;
    let index = |t: DateTime<Utc>| usize::try_from((t - hour).num_seconds() / 900).ok();
    let (a, b) = (index(p.lo)?, index(p.hi)?);
    (a < b && b <= 4).then_some(QuarterPiece {
        label: p.label,
        hour,
        a,
        b,
    })
}

/// Splits `[lo, hi)` into whole UTC days, whole UTC hours and sub-hour edges.
fn decompose(
    label: DateTime<Utc>,
    r: TimeRange,
    days: &mut Pieces,
    hours: &mut Pieces,
    raw: &mut Pieces,
) {
    let split = r.utc_split();
    for (into, pieces) in [
        (days, split.days.as_slice()),
        (hours, &split.hours),
        (raw, &split.raw),
    ] {
        for p in pieces {
            into.push(label, p.from(), p.to());
        }
    }
}

impl Pieces {
    /// The pieces sorted by start, cut into clusters of pieces less than two days
    /// apart: each cluster is read with one index range scan.
    fn clusters(&self) -> Vec<Vec<Piece>> {
        let mut sorted = self.0.clone();
        sorted.sort_by_key(|p| p.lo);
        let mut out: Vec<Vec<Piece>> = Vec::new();
        for p in sorted {
            let near = |c: &Vec<Piece>| c.last().is_some_and(|q| p.lo - q.hi < Duration::days(2));
            match out.last_mut() {
                Some(c) if near(c) => c.push(p),
                _ => out.push(vec![p]),
            }
        }
        out
    }
}

/// The label of the piece (among `cluster`, sorted and disjoint) holding `t`.
fn label_of(cluster: &[Piece], t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let n = cluster.partition_point(|p| p.lo <= t);
    let p = cluster.get(n.checked_sub(1)?)?;
    (t < p.hi).then_some(p.label)
}

/// Totals per label, customer and service over labeled ranges. Ranges may not overlap
/// (they are buckets). Exact for every zone: whole UTC hours and days come from
/// rollups, parts of hours cut on a quarter hour from the hourly rollups' quarter
/// detail, and only other sub-hour edges from raw events.
pub(crate) async fn totals(
    store: &Store,
    ranges: &[(DateTime<Utc>, TimeRange)],
    who: Who<'_>,
    services: &[Service],
) -> Result<HashMap<Key, Totals>> {
    let (mut days, mut hours, mut raw) = (Pieces::default(), Pieces::default(), Pieces::default());
    for (label, r) in ranges {
        decompose(*label, *r, &mut days, &mut hours, &mut raw);
    }
    let mut out: HashMap<Key, Totals> = HashMap::new();
    let mut add = |key: Key, t: Totals| -> Result<()> {
        match out.entry(key) {
            Entry::Occupied(mut a) => Ok(a.get_mut().merge(t)?),
            Entry::Vacant(v) => {
                v.insert(t);
                Ok(())
            }
        }
    };

    // Rollups: the rows of each cluster's span by primary key, labelled here. For all
    // customers the store serves days from the all-customer hourly rollup anyway, so
    // whole days join the hours and each cluster is read once.
    let sources: Vec<(Grain, &Pieces)> = match who {
        Who::One(_) => vec![(Grain::Day, &days), (Grain::Hour, &hours)],
        Who::All => {
            hours.0.append(&mut days.0);
            vec![(Grain::Hour, &hours)]
        }
    };
    for (grain, pieces) in sources {
        // Each cluster with its span (pieces are non-empty, so every span is too).
        let (clusters, spans): (Vec<Vec<Piece>>, Vec<TimeRange>) = pieces
            .clusters()
            .into_iter()
            .filter_map(|c| {
                let lo = c.first()?.lo;
                let hi = c.iter().map(|p| p.hi).max()?;
                Some((c, TimeRange::new(lo, hi).ok()?))
            })
            .unzip();
        let rows = store.rollup_rows(who, grain, services, &spans).await?;
        for (cluster, rows) in clusters.iter().zip(rows) {
            for row in rows {
                if let Some(label) = label_of(cluster, row.bucket) {
                    add((label, row.service), row.totals)?;
                }
            }
        }
    }

    // Sub-hour edges on a quarter hour: parts of the hourly rollup rows. The rest (edges
    // off the quarter hour, and hours whose detail is not known) from raw events.
    let mut edges: Vec<(DateTime<Utc>, TimeRange)> = Vec::new();
    let mut by_hour: HashMap<DateTime<Utc>, Vec<QuarterPiece>> = HashMap::new();
    for p in raw.0.iter().flat_map(split_at_hours) {
        match quarter_piece(&p) {
            Some(q) => by_hour.entry(q.hour).or_default().push(q),
            None => edges.extend(TimeRange::new(p.lo, p.hi).ok().map(|r| (p.label, r))),
        }
    }
    if !by_hour.is_empty() {
        let hours: Vec<DateTime<Utc>> = by_hour.keys().copied().collect();
        let rows = store.rollup_quarters(who, services, &hours).await?;
        // An hour with a row of unknown detail is read raw, wholly (every service and
        // lane), so nothing is counted twice.
        let unknown: HashSet<DateTime<Utc>> = rows
            .iter()
            .filter(|r| r.quarters.is_none())
            .map(|r| r.bucket)
            .collect();
        for row in &rows {
            let (Some(quarters), Some(pieces)) = (row.quarters, by_hour.get(&row.bucket)) else {
                continue;
            };
            if unknown.contains(&row.bucket) {
                continue;
            }
            for q in pieces {
                if let Some(t) = quarters.part(q.a, q.b)? {
                    add((q.label, row.service), t)?;
                }
            }
        }
        for hour in &unknown {
            for q in by_hour.get(hour).into_iter().flatten() {
                let lo = *hour + Duration::minutes(15 * q.a as i64);
                let hi = *hour + Duration::minutes(15 * q.b as i64);
                edges.extend(TimeRange::new(lo, hi).ok().map(|r| (q.label, r)));
            }
        }
    }
    for row in store.raw_totals(who, services, &edges).await? {
        add((row.bucket, row.service), row.totals)?;
    }
    Ok(out)
}

/// Totals keyed by service index only (one label).
pub(crate) fn by_service(totals: HashMap<Key, Totals>) -> Result<BTreeMap<usize, Totals>> {
    let mut out: BTreeMap<usize, Totals> = BTreeMap::new();
    for ((_, service), t) in totals {
        match out.get_mut(&service) {
            Some(a) => a.merge(t)?,
            None => {
                out.insert(service, t);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn edges_are_cut_at_utc_hours_and_read_as_quarters_when_they_can_be() {
        // A Kolkata hour, 09:30–10:30 UTC: the second half of one UTC hour and the
        // first half of the next.
        let piece = Piece {
            label: t("2026-01-01T09:30:00Z"),
            lo: t("2026-01-01T09:30:00Z"),
            hi: t("2026-01-01T10:30:00Z"),
        };
        let parts: Vec<QuarterPiece> = split_at_hours(&piece)
            .iter()
            .filter_map(quarter_piece)
            .collect();
        assert_eq!(
            parts.iter().map(|q| (q.hour, q.a, q.b)).collect::<Vec<_>>(),
            vec![
                (t("2026-01-01T09:00:00Z"), 2, 4),
                (t("2026-01-01T10:00:00Z"), 0, 2)
            ]
        );
        assert!(parts.iter().all(|q| q.label == piece.label));
        // Off the quarter hour (a range from 10:07, or a microsecond off): raw events.
        for lo in ["2026-01-01T10:07:00Z", "2026-01-01T10:15:00.000001Z"] {
            let p = Piece {
                label: t(lo),
                lo: t(lo),
                hi: t("2026-01-01T10:45:00Z"),
            };
            assert_eq!(
                split_at_hours(&p).iter().filter_map(quarter_piece).count(),
                0
            );
        }
    }

    #[test]
    fn decomposition_uses_rollups_only_for_whole_utc_hours_and_days() {
        let (mut d, mut h, mut r) = (Pieces::default(), Pieces::default(), Pieces::default());
        let range = TimeRange::new(t("2026-01-01T10:07:00Z"), t("2026-01-04T05:30:00Z")).unwrap();
        decompose(range.from(), range, &mut d, &mut h, &mut r);
        let lo = |p: &Pieces| p.0.iter().map(|x| x.lo).collect::<Vec<_>>();
        let hi = |p: &Pieces| p.0.iter().map(|x| x.hi).collect::<Vec<_>>();
        assert_eq!(
            lo(&r),
            vec![t("2026-01-01T10:07:00Z"), t("2026-01-04T05:00:00Z")]
        );
        assert_eq!(
            hi(&r),
            vec![t("2026-01-01T11:00:00Z"), t("2026-01-04T05:30:00Z")]
        );
        assert_eq!(
            (h.0[0].lo, h.0[0].hi),
            (t("2026-01-01T11:00:00Z"), t("2026-01-02T00:00:00Z"))
        );
        assert_eq!(
            (d.0[0].lo, d.0[0].hi),
            (t("2026-01-02T00:00:00Z"), t("2026-01-04T00:00:00Z"))
        );
        assert_eq!(
            (h.0[1].lo, h.0[1].hi),
            (t("2026-01-04T00:00:00Z"), t("2026-01-04T05:00:00Z"))
        );
        // A Kolkata hour straddles two UTC hours: one raw piece. A Berlin day is whole hours.
        let (mut d, mut h, mut r) = (Pieces::default(), Pieces::default(), Pieces::default());
        let k = TimeRange::new(t("2026-01-01T09:30:00Z"), t("2026-01-01T10:30:00Z")).unwrap();
        decompose(k.from(), k, &mut d, &mut h, &mut r);
        assert_eq!((r.0.len(), h.0.len(), d.0.len()), (1, 0, 0));
        let (mut d, mut h, mut r) = (Pieces::default(), Pieces::default(), Pieces::default());
        let b = TimeRange::new(t("2026-03-28T23:00:00Z"), t("2026-03-29T22:00:00Z")).unwrap();
        decompose(b.from(), b, &mut d, &mut h, &mut r);
        assert_eq!((r.0.len(), h.0.len(), d.0.len()), (0, 1, 0));
    }
}
