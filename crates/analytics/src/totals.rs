//! The one exact primitive: totals over labeled ranges, from rollups where whole UTC
//! days and hours fit and from raw events only for sub-hour edges.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, DurationRound, Utc};
use rust_decimal::Decimal;
use tally_core::{CustomerId, Service, TimeRange};
use tally_store::Store;

use crate::{Error, Result};

/// Sum, count, min and max of usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Agg {
    pub(crate) events: i64,
    pub(crate) quantity: Decimal,
    pub(crate) min: Decimal,
    pub(crate) max: Decimal,
}

impl Agg {
    fn merge(&mut self, o: Agg) {
        self.events += o.events;
        self.quantity += o.quantity;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
}

/// A `numeric` column, decoded without rust_decimal's per-digit-group divisions.
fn num(row: &tally_store::tokio_postgres::Row, i: usize) -> Decimal {
    row.get::<_, tally_store::Numeric>(i).0
}

/// Whose usage: one customer's, or every customer's added up.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Who<'a> {
    One(&'a CustomerId),
    All,
}

impl Who<'_> {
    /// The customer as a query parameter (`NULL` for all).
    fn customer(&self) -> Option<&str> {
        match self {
            Who::One(c) => Some(c.as_str()),
            Who::All => None,
        }
    }
}

/// Key of a result row: label and the service's index in the `services` asked for.
/// (The customer is the one asked for, or all: it needs no place in the key.)
pub(crate) type Key = (DateTime<Utc>, usize);

#[derive(Default)]
struct Pieces {
    label: Vec<DateTime<Utc>>,
    lo: Vec<DateTime<Utc>>,
    hi: Vec<DateTime<Utc>>,
}

impl Pieces {
    fn push(&mut self, label: DateTime<Utc>, lo: DateTime<Utc>, hi: DateTime<Utc>) {
        if lo < hi {
            self.label.push(label);
            self.lo.push(lo);
            self.hi.push(hi);
        }
    }
}

fn floor(t: DateTime<Utc>, unit: Duration) -> DateTime<Utc> {
    t.duration_trunc(unit).expect("in range")
}

fn ceil(t: DateTime<Utc>, unit: Duration) -> DateTime<Utc> {
    let f = floor(t, unit);
    if f == t { t } else { f + unit }
}

/// Splits `[lo, hi)` into whole UTC days, whole UTC hours and sub-hour edges.
fn decompose(
    label: DateTime<Utc>,
    r: TimeRange,
    days: &mut Pieces,
    hours: &mut Pieces,
    raw: &mut Pieces,
) {
    let (hour, day) = (Duration::hours(1), Duration::days(1));
    let (h0, h1) = (ceil(r.from(), hour), floor(r.to(), hour));
    if h0 >= h1 {
        raw.push(label, r.from(), r.to());
        return;
    }
    raw.push(label, r.from(), h0);
    raw.push(label, h1, r.to());
    let (d0, d1) = (ceil(h0, day), floor(h1, day));
    if d0 < d1 {
        hours.push(label, h0, d0);
        days.push(label, d0, d1);
        hours.push(label, d1, h1);
    } else {
        hours.push(label, h0, h1);
    }
}

impl Pieces {
    /// Piece indices sorted by start, cut into clusters of pieces less than two days
    /// apart: each cluster is read with one index range scan.
    fn clusters(&self) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.lo.len()).collect();
        order.sort_by_key(|&i| self.lo[i]);
        let mut out: Vec<Vec<usize>> = Vec::new();
        for i in order {
            match out.last_mut() {
                Some(c)
                    if self.lo[i] - self.hi[*c.last().expect("non-empty")] < Duration::days(2) =>
                {
                    c.push(i)
                }
                _ => out.push(vec![i]),
            }
        }
        out
    }

    /// The label of the piece (among `cluster`, sorted and disjoint) holding `t`.
    fn label_of(&self, cluster: &[usize], t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let n = cluster.partition_point(|&i| self.lo[i] <= t);
        let i = *cluster.get(n.checked_sub(1)?)?;
        (t < self.hi[i]).then_some(self.label[i])
    }
}

/// Totals per label, customer and service over labeled ranges. Ranges may not overlap
/// (they are buckets). Exact for every zone: only whole UTC hours and days come from
/// rollups, sub-hour edges from raw events.
pub(crate) async fn totals(
    store: &Store,
    ranges: &[(DateTime<Utc>, TimeRange)],
    who: Who<'_>,
    services: &[Service],
) -> Result<HashMap<Key, Agg>> {
    let (mut days, mut hours, mut raw) = (Pieces::default(), Pieces::default(), Pieces::default());
    for (label, r) in ranges {
        decompose(*label, *r, &mut days, &mut hours, &mut raw);
    }
    let services: Vec<&str> = services.iter().map(Service::as_str).collect();
    // Rows name their service; results key it by index into the services asked for.
    let index: HashMap<&str, usize> = services.iter().enumerate().map(|(i, s)| (*s, i)).collect();
    let client = store
        .pool()
        .get()
        .await
        .map_err(Error::pool("reading usage"))?;
    let mut out: HashMap<Key, Agg> = HashMap::new();
    let mut add = |key: Key, agg: Agg| {
        out.entry(key).and_modify(|a| a.merge(agg)).or_insert(agg);
    };

    // Rollups: the rows of each cluster's span by primary key, labelled here. For all
    // customers the all-customer hourly rollup serves whole days too (24 rows a day).
    let sources: Vec<(&str, &Pieces)> = match who {
        Who::One(_) => vec![("usage_daily", &days), ("usage_hourly", &hours)],
        Who::All => {
            for i in 0..days.lo.len() {
                hours.push(days.label[i], days.lo[i], days.hi[i]);
            }
            vec![("usage_hourly_total", &hours)]
        }
    };
    for (table, pieces) in sources {
        // Table names come from the fixed list above, never from input.
        let sql = match who {
            Who::One(_) => format!(
                "SELECT bucket, service, events, quantity, min_quantity, max_quantity FROM {table}
                 WHERE customer_id = $4 AND service = ANY($1::text[]) AND bucket >= $2 AND bucket < $3"
            ),
            Who::All => format!(
                "SELECT bucket, service, events, quantity, min_quantity, max_quantity FROM {table}
                 WHERE service = ANY($1::text[]) AND bucket >= $2 AND bucket < $3 AND $4::text IS NULL"
            ),
        };
        let customer = who.customer();
        let stmt = client
            .prepare_cached(&sql)
            .await
            .map_err(Error::db("preparing a usage query"))?;
        for cluster in pieces.clusters() {
            let lo = pieces.lo[cluster[0]];
            let hi = cluster
                .iter()
                .map(|&i| pieces.hi[i])
                .max()
                .expect("non-empty");
            let rows = client
                .query(&stmt, &[&services, &lo, &hi, &customer])
                .await
                .map_err(Error::db("reading usage"))?;
            for row in rows {
                let Some(label) = pieces.label_of(&cluster, row.get(0)) else {
                    continue;
                };
                let agg = Agg {
                    events: row.get(2),
                    quantity: num(&row, 3),
                    min: num(&row, 4),
                    max: num(&row, 5),
                };
                add((label, index[row.get::<_, &str>(1)]), agg);
            }
        }
    }

    // Raw events for the sub-hour edges: short pieces, one BRIN-assisted range each.
    if !raw.label.is_empty() {
        let who_filter = match who {
            Who::One(_) => "r.customer_id = $5",
            Who::All => "$5::text IS NULL",
        };
        let sql = format!(
            "SELECT p.label, r.service, count(*), sum(r.quantity), min(r.quantity), max(r.quantity)
             FROM unnest($1::timestamptz[], $2::timestamptz[], $3::timestamptz[]) AS p(label, lo, hi)
             JOIN usage_events r ON r.recorded_at >= p.lo AND r.recorded_at < p.hi
             WHERE r.service = ANY($4::text[]) AND {who_filter}
             GROUP BY 1, 2"
        );
        let customer = who.customer();
        let stmt = client
            .prepare_cached(&sql)
            .await
            .map_err(Error::db("preparing a usage query"))?;
        let rows = client
            .query(&stmt, &[&raw.label, &raw.lo, &raw.hi, &services, &customer])
            .await
            .map_err(Error::db("reading usage"))?;
        for row in rows {
            add(
                (row.get(0), index[row.get::<_, &str>(1)]),
                Agg {
                    events: row.get(2),
                    quantity: num(&row, 3),
                    min: num(&row, 4),
                    max: num(&row, 5),
                },
            );
        }
    }
    Ok(out)
}

/// Totals keyed by service index only (one label).
pub(crate) fn by_service(totals: HashMap<Key, Agg>) -> BTreeMap<usize, Agg> {
    let mut out: BTreeMap<usize, Agg> = BTreeMap::new();
    for ((_, service), agg) in totals {
        out.entry(service)
            .and_modify(|a| a.merge(agg))
            .or_insert(agg);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn decomposition_uses_rollups_only_for_whole_utc_hours_and_days() {
        let (mut d, mut h, mut r) = (Pieces::default(), Pieces::default(), Pieces::default());
        let range = TimeRange::new(t("2026-01-01T10:07:00Z"), t("2026-01-04T05:30:00Z")).unwrap();
        decompose(range.from(), range, &mut d, &mut h, &mut r);
        assert_eq!(
            r.lo,
            vec![t("2026-01-01T10:07:00Z"), t("2026-01-04T05:00:00Z")]
        );
        assert_eq!(
            r.hi,
            vec![t("2026-01-01T11:00:00Z"), t("2026-01-04T05:30:00Z")]
        );
        assert_eq!(
            (h.lo[0], h.hi[0]),
            (t("2026-01-01T11:00:00Z"), t("2026-01-02T00:00:00Z"))
        );
        assert_eq!(
            (d.lo[0], d.hi[0]),
            (t("2026-01-02T00:00:00Z"), t("2026-01-04T00:00:00Z"))
        );
        assert_eq!(
            (h.lo[1], h.hi[1]),
            (t("2026-01-04T00:00:00Z"), t("2026-01-04T05:00:00Z"))
        );
        // A Kolkata hour straddles two UTC hours: one raw piece. A Berlin day is whole hours.
        let (mut d, mut h, mut r) = (Pieces::default(), Pieces::default(), Pieces::default());
        let k = TimeRange::new(t("2026-01-01T09:30:00Z"), t("2026-01-01T10:30:00Z")).unwrap();
        decompose(k.from(), k, &mut d, &mut h, &mut r);
        assert_eq!((r.lo.len(), h.lo.len(), d.lo.len()), (1, 0, 0));
        let (mut d, mut h, mut r) = (Pieces::default(), Pieces::default(), Pieces::default());
        let b = TimeRange::new(t("2026-03-28T23:00:00Z"), t("2026-03-29T22:00:00Z")).unwrap();
        decompose(b.from(), b, &mut d, &mut h, &mut r);
        assert_eq!((r.lo.len(), h.lo.len(), d.lo.len()), (0, 1, 0));
    }
}
