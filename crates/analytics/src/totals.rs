//! The one exact primitive: totals over labeled ranges, from rollups where whole UTC
//! days and hours fit, from the hourly rollups' quarter-hour detail where an edge falls
//! on a quarter hour (every zone's bucket edges today), and from raw events only for
//! other sub-hour edges.

use std::collections::{HashMap, HashSet, hash_map::Entry};

use chrono::{DateTime, Duration, Utc};
use tally_core::{QuarterPiece, Service, TimeRange, Totals};
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

/// A range cut for reading ([`TimeRange::utc_split`], labelled): whole days and hours
/// from rollups, quarter pieces from the hourly rollups' detail, the rest raw.
#[derive(Default)]
struct Decomposed {
    days: Pieces,
    hours: Pieces,
    quarters: Vec<(DateTime<Utc>, QuarterPiece)>,
    raw: Vec<(DateTime<Utc>, TimeRange)>,
}

impl Decomposed {
    fn add(&mut self, label: DateTime<Utc>, r: TimeRange) {
        let split = r.utc_split();
        for p in split.days.iter() {
            self.days.push(label, p.from(), p.to());
        }
        for p in &split.hours {
            self.hours.push(label, p.from(), p.to());
        }
        self.quarters
            .extend(split.quarters.into_iter().map(|q| (label, q)));
        self.raw.extend(split.raw.into_iter().map(|p| (label, p)));
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
    let mut cut = Decomposed::default();
    for (label, r) in ranges {
        cut.add(*label, *r);
    }
    let Decomposed {
        mut days,
        mut hours,
        quarters,
        raw: mut edges,
    } = cut;
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
    let mut by_hour: HashMap<DateTime<Utc>, Vec<(DateTime<Utc>, QuarterPiece)>> = HashMap::new();
    for (label, q) in quarters {
        by_hour.entry(q.hour).or_default().push((label, q));
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
            for (label, q) in pieces {
                if let Some(t) = quarters.part(usize::from(q.from), usize::from(q.to))? {
                    add((*label, row.service), t)?;
                }
            }
        }
        for hour in &unknown {
            for (label, q) in by_hour.get(hour).into_iter().flatten() {
                let lo = *hour + Duration::minutes(15 * i64::from(q.from));
                let hi = *hour + Duration::minutes(15 * i64::from(q.to));
                edges.extend(TimeRange::new(lo, hi).ok().map(|r| (*label, r)));
            }
        }
    }
    for row in store.raw_totals(who, services, &edges).await? {
        add((row.bucket, row.service), row.totals)?;
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
    fn decomposition_uses_rollups_only_for_whole_utc_hours_and_days() {
        let mut cut = Decomposed::default();
        let range = TimeRange::new(t("2026-01-01T10:07:00Z"), t("2026-01-04T05:30:00Z")).unwrap();
        cut.add(range.from(), range);
        let Decomposed {
            days: d,
            hours: h,
            quarters: q,
            raw: r,
        } = cut;
        // The edge off the quarter hour is raw; the one on it is quarters of its hour.
        assert_eq!(
            r,
            [(
                range.from(),
                TimeRange::new(t("2026-01-01T10:07:00Z"), t("2026-01-01T11:00:00Z")).unwrap()
            )]
        );
        assert_eq!(
            q.iter()
                .map(|(l, q)| (*l, q.hour, q.from, q.to))
                .collect::<Vec<_>>(),
            [(range.from(), t("2026-01-04T05:00:00Z"), 0, 2)]
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
        // A Kolkata hour straddles two UTC hours: two quarter pieces, labelled with
        // it. A Berlin day is whole hours.
        let mut cut = Decomposed::default();
        let k = TimeRange::new(t("2026-01-01T09:30:00Z"), t("2026-01-01T10:30:00Z")).unwrap();
        cut.add(k.from(), k);
        assert_eq!(
            cut.quarters
                .iter()
                .map(|(l, q)| (*l, q.hour, q.from, q.to))
                .collect::<Vec<_>>(),
            [
                (k.from(), t("2026-01-01T09:00:00Z"), 2, 4),
                (k.from(), t("2026-01-01T10:00:00Z"), 0, 2)
            ]
        );
        assert_eq!(
            (cut.raw.len(), cut.hours.0.len(), cut.days.0.len()),
            (0, 0, 0)
        );
        let mut cut = Decomposed::default();
        let b = TimeRange::new(t("2026-03-28T23:00:00Z"), t("2026-03-29T22:00:00Z")).unwrap();
        cut.add(b.from(), b);
        assert_eq!(
            (cut.raw.len(), cut.hours.0.len(), cut.days.0.len()),
            (0, 1, 0)
        );
    }
}
