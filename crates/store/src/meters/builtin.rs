//! The built-in meters: each service is a `SUM` meter of its events' quantity (the
//! CloudEvents type is the service), stored in the service rollups — hourly and daily
//! per customer, hourly for all customers, each hour with its quarter-hour detail.
//! [`Store::totals`] is their one exact read: the meter query answers a service's
//! name with it, and the analytics crate reads every summary, aggregation,
//! statistic, trend, peak and invoice line of a service through it.

use std::collections::{BTreeMap, HashMap, HashSet, hash_map::Entry};

use chrono::{DateTime, Duration, Utc};
use tally_core::{CustomerId, QuarterPiece, Service, TimeRange, Totals, meter::windows};

use super::{MeterQuery, MeterQueryResult, MeterRow};
use crate::{Error, Grain, Result, Store, Who};

/// Key of a [`Store::totals`] entry: the range's label and the service's index in the
/// `services` asked for. (The customer is the one asked for, or all: it needs no place
/// in the key.)
pub type TotalsKey = (DateTime<Utc>, usize);

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

impl Store {
    /// The built-in meters' one read: count, sum, minimum and maximum per label and
    /// service over labelled ranges, for one customer or all. Ranges may not overlap
    /// (they are buckets, windows or a price's parts). Exact for every zone: whole UTC
    /// hours and days come from rollups, parts of hours cut on a quarter hour from the
    /// hourly rollups' quarter detail, and only other sub-hour edges from raw events.
    pub async fn totals(
        &self,
        ranges: &[(DateTime<Utc>, TimeRange)],
        who: Who<'_>,
        services: &[Service],
    ) -> Result<HashMap<TotalsKey, Totals>> {
        let store = self;
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
        let mut out: HashMap<TotalsKey, Totals> = HashMap::new();
        let mut add = |key: TotalsKey, t: Totals| -> Result<()> {
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
        let mut by_hour: HashMap<DateTime<Utc>, Vec<(DateTime<Utc>, QuarterPiece)>> =
            HashMap::new();
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
                let (Some(quarters), Some(pieces)) = (row.quarters, by_hour.get(&row.bucket))
                else {
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
}

impl Store {
    /// Answers `q` from the built-in meter of `service`: the sum of its events'
    /// quantities per window, customer (when grouped by `subject`) or all. A built-in
    /// meter has no dimensions: grouping by anything but `subject`, and filters, are
    /// refused.
    pub(super) async fn query_builtin(
        &self,
        service: &Service,
        q: &MeterQuery,
    ) -> Result<MeterQueryResult> {
        let no_dimension = |field: &'static str, name: &str| {
            Error::invalid(
                field,
                name,
                format!("built-in meter {service} has no such dimension (it has: subject)"),
            )
        };
        if let Some(g) = q.group_by.iter().find(|g| *g != "subject") {
            return Err(no_dimension("group_by", g));
        }
        if let Some(name) = q.filters.keys().next() {
            return Err(no_dimension("filter", name));
        }
        if let Some(name) = q.excludes.iter().flat_map(|c| c.keys()).next() {
            return Err(no_dimension("exclude", name));
        }
        let by_subject = q.group_by.iter().any(|g| g == "subject");
        let windows = windows(q.range, q.window, q.zone)?;
        // Windows are disjoint, so their starts label them.
        let labelled: Vec<(DateTime<Utc>, TimeRange)> =
            windows.iter().map(|w| (w.from(), *w)).collect();
        let index: HashMap<DateTime<Utc>, usize> = windows
            .iter()
            .enumerate()
            .map(|(i, w)| (w.from(), i))
            .collect();
        let services = std::slice::from_ref(service);
        let mut customers: Vec<CustomerId> = q.customers.clone();
        customers.sort();
        customers.dedup();
        if customers.is_empty() && by_subject {
            customers = self.customers_using(service, q.range).await?;
        }
        let mut rows: BTreeMap<(usize, Option<String>), Totals> = BTreeMap::new();
        let mut add = |subject: Option<String>, t: HashMap<TotalsKey, Totals>| -> Result<()> {
            for ((label, _), t) in t {
                let Some(&w) = index.get(&label) else {
                    continue;
                };
                match rows.entry((w, subject.clone())) {
                    std::collections::btree_map::Entry::Occupied(mut a) => a.get_mut().merge(t)?,
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(t);
                    }
                }
            }
            Ok(())
        };
        if customers.is_empty() {
            add(None, self.totals(&labelled, Who::All, services).await?)?;
        } else {
            for c in &customers {
                let t = self.totals(&labelled, Who::One(c), services).await?;
                add(by_subject.then(|| c.as_str().to_owned()), t)?;
            }
        }
        Ok(MeterQueryResult {
            from: q.range.from(),
            to: q.range.to(),
            window_size: q.window,
            data: rows
                .into_iter()
                .filter(|(_, t)| t.events > 0)
                .filter_map(|((w, subject), t)| {
                    let window = windows.get(w)?;
                    Some(MeterRow {
                        value: t.quantity,
                        window_start: window.from(),
                        window_end: window.to(),
                        subject,
                        group_by: BTreeMap::new(),
                    })
                })
                .collect(),
        })
    }
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
