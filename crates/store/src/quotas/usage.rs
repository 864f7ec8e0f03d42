//! Period usage for quotas: each (customer, service, period) cut into whole UTC days,
//! whole UTC hours and quarter pieces (core's one decomposition), all keys summed from the
//! rollups in one statement.

use std::{
    collections::{BTreeMap, HashMap},
    sync::LazyLock,
};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::{CustomerId, Measure, MeterSlug, Service, TimeRange};
use tokio_postgres::types::ToSql;

use super::{get, numeric_opt};
use crate::{
    Error, ErrorKind, MeterQuery, Result, Store,
    meters::{MeterState, meter_on, query_defined},
    rollup,
};

/// What a piece of a period is read from.
#[derive(Clone, Copy)]
enum Piece {
    /// Whole UTC days: the daily rollup.
    Days,
    /// Whole UTC hours: the hourly rollup.
    Hours,
    /// Quarters `a..b` of one hour: the hourly rollup's partial sums.
    Quarters(i16, i16),
}

/// Pieces of periods as query parameters.
#[derive(Default)]
struct Pieces<'a> {
    idx: Vec<i32>,
    customers: Vec<&'a str>,
    services: Vec<&'a str>,
    kinds: Vec<i16>,
    lo: Vec<DateTime<Utc>>,
    hi: Vec<DateTime<Utc>>,
    qa: Vec<i16>,
    qb: Vec<i16>,
}

impl<'a> Pieces<'a> {
    fn push(
        &mut self,
        i: i32,
        c: &'a CustomerId,
        s: &'a Service,
        piece: Piece,
        lo: DateTime<Utc>,
        hi: DateTime<Utc>,
    ) {
        let (kind, qa, qb) = match piece {
            Piece::Days => (0, 0, 0),
            Piece::Hours => (1, 0, 0),
            Piece::Quarters(a, b) => (2, a, b),
        };
        self.idx.push(i);
        self.customers.push(c.as_str());
        self.services.push(s.as_str());
        self.kinds.push(kind);
        self.lo.push(lo);
        self.hi.push(hi);
        self.qa.push(qa);
        self.qb.push(qb);
    }
}
impl Store {
    /// The total quantity of each `(customer, service, range)`, exactly, all keys in one
    /// statement by primary key: whole UTC days from the daily rollup, whole UTC hours
    /// from the hourly rollup, and edges on a quarter hour (a period starting at local
    /// midnight in Asia/Kolkata starts at 18:30 UTC) from the hourly rollup's sums of
    /// its first 15, 30 and 45 minutes. Only an edge off the quarter hour (historic
    /// local-mean-time offsets) reads raw events, one scan per edge.
    pub async fn period_usage(
        &self,
        keys: &[(CustomerId, Service, TimeRange)],
    ) -> Result<Vec<Decimal>> {
        let client = self.client("reading period usage").await?;
        period_usage_on(&client, keys).await
    }
}

impl Store {
    /// The usage of each `(customer, service or meter, range)` as its quota reads it: a
    /// service's total ([`Store::period_usage`]), or a meter's aggregate over the range
    /// through the meter query (zero without events; a gauge integrated up to `now` at
    /// most). `None` for a meter not defined or not ready (backfilling or failed): its
    /// quotas are not evaluated until it is.
    pub async fn usage(
        &self,
        keys: &[(CustomerId, Measure, TimeRange)],
        now: DateTime<Utc>,
    ) -> Result<Vec<Option<Decimal>>> {
        let client = self.client("reading usage").await?;
        let distributed = self.ingest().is_distributed(&client).await?;
        usage_on(&client, keys, now, distributed).await
    }
}

/// [`Store::usage`] on a given connection: inside a write's transaction it sees that
/// transaction's own events (what an admission compares before and after).
pub(crate) async fn usage_on(
    client: &deadpool_postgres::Client,
    keys: &[(CustomerId, Measure, TimeRange)],
    now: DateTime<Utc>,
    distributed: bool,
) -> Result<Vec<Option<Decimal>>> {
    let mut services = Vec::new();
    let mut meters = Vec::new();
    for (c, m, r) in keys {
        match m {
            Measure::Service(s) => services.push((c.clone(), s.clone(), *r)),
            Measure::Meter(slug) => meters.push((c.clone(), slug.clone(), *r)),
        }
    }
    let mut services = period_usage_on(client, &services).await?.into_iter();
    let mut meters = meter_usage_on(client, &meters, now, distributed)
        .await?
        .into_iter();
    Ok(keys
        .iter()
        .map(|(_, m, _)| match m {
            Measure::Service(_) => services.next(),
            Measure::Meter(_) => meters.next().flatten(),
        })
        .collect())
}

/// Meters' values for [`usage_on`] (`None`: not defined or not ready).
async fn meter_usage_on(
    client: &tokio_postgres::Client,
    keys: &[(CustomerId, MeterSlug, TimeRange)],
    now: DateTime<Utc>,
    distributed: bool,
) -> Result<Vec<Option<Decimal>>> {
    let mut out = vec![None; keys.len()];
    // One query per meter and range: customers on the same cycle share it.
    type Group<'k> = (&'k MeterSlug, DateTime<Utc>, DateTime<Utc>);
    let mut groups: BTreeMap<Group<'_>, Vec<usize>> = BTreeMap::new();
    for (i, (_, m, r)) in keys.iter().enumerate() {
        groups.entry((m, r.from(), r.to())).or_default().push(i);
    }
    let mut defs = HashMap::new();
    for ((slug, from, to), idx) in groups {
        if !defs.contains_key(slug) {
            let def = match meter_on(client, slug.as_str()).await {
                Ok(d) if d.state == MeterState::Ready => Some(d),
                Ok(_) => None,
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            defs.insert(slug, def);
        }
        let Some(Some(def)) = defs.get(slug) else {
            continue;
        };
        let mut q = MeterQuery::new(TimeRange::new(from, to)?, now).group_by("subject");
        for &i in &idx {
            if let Some((c, _, _)) = keys.get(i)
                && !q.customers.contains(c)
            {
                q.customers.push(c.clone());
            }
        }
        let values: HashMap<String, Decimal> = query_defined(client, def, &q, distributed)
            .await?
            .data
            .into_iter()
            .filter_map(|row| Some((row.subject?, row.value)))
            .collect();
        for i in idx {
            if let (Some(slot), Some((c, _, _))) = (out.get_mut(i), keys.get(i)) {
                *slot = Some(values.get(c.as_str()).copied().unwrap_or_default());
            }
        }
    }
    Ok(out)
}

/// Period usage from rollups, one row per key: each piece reads one rollup only (the
/// kind tests are one-time filters). Quarter pieces take a part of one hour: its sum up
/// to quarter `b` minus its sum up to quarter `a` (0 = nothing, 4 = the whole hour),
/// from the hourly rollup's quarter detail ([`rollup::QUARTERS`]).
static PERIOD_PIECES_SQL: LazyLock<String> = LazyLock::new(|| {
    let up_to = |q: &str, none: &str| {
        let cases: String = (1..4)
            .filter_map(|n| Some(format!(" WHEN {n} THEN h.{}", rollup::sum_to_quarter(n)?)))
            .collect();
        format!("CASE {q}{cases} ELSE {none} END")
    };
    format!(
        "WITH p AS (
             SELECT * FROM unnest($1::int4[], $2::text[], $3::text[], $4::int2[], $5::timestamptz[],
                                  $6::timestamptz[], $7::int2[], $8::int2[])
                 AS p(i, customer_id, service, kind, lo, hi, qa, qb))
         SELECT x.i, sum(x.q) FROM (
             SELECT p.i, d.quantity AS q FROM p JOIN {daily} d
               ON p.kind = 0 AND d.customer_id = p.customer_id AND d.service = p.service
              AND d.bucket >= p.lo AND d.bucket < p.hi
             UNION ALL
             SELECT p.i, h.quantity FROM p JOIN {hourly} h
               ON p.kind = 1 AND h.customer_id = p.customer_id AND h.service = p.service
              AND h.bucket >= p.lo AND h.bucket < p.hi
             UNION ALL
             SELECT p.i, {b} - {a}
             FROM p JOIN {hourly} h
               ON p.kind = 2 AND h.customer_id = p.customer_id AND h.service = p.service
              AND h.bucket = p.lo
         ) x
         GROUP BY x.i",
        daily = rollup::DAILY.table,
        hourly = rollup::HOURLY.table,
        b = up_to("p.qb", "h.quantity"),
        a = up_to("p.qa", "0"),
    )
});

/// [`Store::period_usage`] on a given connection (through [`usage_on`], the write
/// path's admission reads it inside its own transaction).
pub(crate) async fn period_usage_on(
    client: &deadpool_postgres::Client,
    keys: &[(CustomerId, Service, TimeRange)],
) -> Result<Vec<Decimal>> {
    const CTX: &str = "reading period usage";
    let mut p = Pieces::default();
    let mut edges = Vec::new();
    for (i, (c, s, range)) in keys.iter().enumerate() {
        let split = range.utc_split();
        let i = i32::try_from(i)
            .map_err(|_| Error::invalid("keys", keys.len().to_string(), "too many at once"))?;
        for r in split.days.iter() {
            p.push(i, c, s, Piece::Days, r.from(), r.to());
        }
        for r in &split.hours {
            p.push(i, c, s, Piece::Hours, r.from(), r.to());
        }
        for q in &split.quarters {
            let (a, b) = (i16::from(q.from), i16::from(q.to));
            p.push(i, c, s, Piece::Quarters(a, b), q.hour, q.hour);
        }
        for r in &split.raw {
            edges.push((i, c, s, *r));
        }
    }
    let mut out = vec![Decimal::ZERO; keys.len()];
    let mut add = |i: i32, q: Decimal| -> Result<()> {
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) {
            *slot = tally_core::add_exact(*slot, q, "period usage")?;
        }
        Ok(())
    };
    if !p.idx.is_empty() {
        // The kind tests are one-time filters: each piece reads one rollup only.
        // Quarter pieces take a part of one hour: its sum up to quarter `b` minus
        // its sum up to quarter `a` (0 = nothing, 4 = the whole hour).
        let stmt = client
            .prepare_cached(&PERIOD_PIECES_SQL)
            .await
            .map_err(Error::db("preparing a period usage read"))?;
        let params: [&(dyn ToSql + Sync); 8] = [
            &p.idx,
            &p.customers,
            &p.services,
            &p.kinds,
            &p.lo,
            &p.hi,
            &p.qa,
            &p.qb,
        ];
        for row in client.query(&stmt, &params).await.map_err(Error::db(CTX))? {
            add(
                get(&row, 0, CTX)?,
                numeric_opt(&row, 1, CTX)?.unwrap_or_default(),
            )?;
        }
    }
    if !edges.is_empty() {
        let stmt = client
            .prepare_cached(
                "SELECT sum(quantity) FROM usage_events
                 WHERE recorded_at >= $3 AND recorded_at < $4 AND customer_id = $1 AND service = $2",
            )
            .await
            .map_err(Error::db("preparing a period usage read"))?;
        // Not on a quarter hour (historic local-mean-time offsets): raw events.
        for (i, c, s, r) in edges {
            let row = client
                .query_one(&stmt, &[&c.as_str(), &s.as_str(), &r.from(), &r.to()])
                .await
                .map_err(Error::db(CTX))?;
            add(i, numeric_opt(&row, 0, CTX)?.unwrap_or_default())?;
        }
    }
    Ok(out)
}
