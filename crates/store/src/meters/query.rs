//! The one meter query: a meter, some customers (or all), `[from, to)`, a window in a
//! zone, a grouping and filters. Each window is cut into whole UTC days, whole quarter
//! hours and (only at an end off the quarter hour, or for `MINUTE`) raw events
//! (`tally_core::meter_pieces`); the rollups answer the first two, the raw events the
//! rest, and the parts merge exactly (`tally_core::Acc`; distinct values are counted
//! across all of a window's parts at once).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use tally_core::{
    Acc, Aggregation, CustomerId, Latest, Payload, Sample, TimeRange, Value, WindowSize, Zone,
    meter::{meter_pieces, time_weighted, windows},
};

use super::DefinedMeter;
use crate::{Error, Result, Store, numeric::Numeric};

type Client = tokio_postgres::Client;

/// What to read from a meter.
#[derive(Debug, Clone)]
pub struct MeterQuery {
    /// `[from, to)`.
    pub range: TimeRange,
    /// The window (`None`: the whole range is one).
    pub window: Option<WindowSize>,
    /// The zone windows are cut in.
    pub zone: Zone,
    /// The customers (all when empty).
    pub customers: Vec<CustomerId>,
    /// What to group by: dimension names, and `subject` for the customer.
    pub group_by: Vec<String>,
    /// Only events whose dimension has one of these values.
    pub filters: BTreeMap<String, Vec<String>>,
    /// Not the events that have all of one of these combinations' values (the rest
    /// of a meter after its priced combinations; an event missing one of the
    /// dimensions does not have the combination).
    pub excludes: Vec<BTreeMap<String, String>>,
    /// A gauge (`TIME_WEIGHTED`) holds its last value up to here at most (the caller's
    /// now): a range that ends later is not integrated into the future.
    pub now: DateTime<Utc>,
}

impl MeterQuery {
    /// The whole of `range`, every customer, no grouping, in UTC.
    pub fn new(range: TimeRange, now: DateTime<Utc>) -> MeterQuery {
        MeterQuery {
            range,
            window: None,
            zone: Zone::UTC,
            customers: Vec::new(),
            group_by: Vec::new(),
            filters: BTreeMap::new(),
            excludes: Vec::new(),
            now,
        }
    }

    /// Windows of this size.
    pub fn window(mut self, size: WindowSize) -> MeterQuery {
        self.window = Some(size);
        self
    }

    /// Windows cut in this zone.
    pub fn in_zone(mut self, zone: Zone) -> MeterQuery {
        self.zone = zone;
        self
    }

    /// Only this customer (callable again for more).
    pub fn customer(mut self, customer: &CustomerId) -> MeterQuery {
        self.customers.push(customer.clone());
        self
    }

    /// Grouped by this dimension (or `subject`).
    pub fn group_by(mut self, name: &str) -> MeterQuery {
        self.group_by.push(name.to_owned());
        self
    }

    /// Only events whose dimension `name` is `value` (callable again for more values).
    pub fn filter(mut self, name: &str, value: &str) -> MeterQuery {
        self.filters
            .entry(name.to_owned())
            .or_default()
            .push(value.to_owned());
        self
    }

    /// Not the events whose dimensions have every value of `combination`
    /// (callable again for more combinations).
    pub fn exclude(mut self, combination: &BTreeMap<String, String>) -> MeterQuery {
        self.excludes.push(combination.clone());
        self
    }
}

/// One row of a result (OpenMeter's `MeterQueryRow`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterRow {
    /// The aggregate.
    #[serde(serialize_with = "tally_core::serde_fmt::decimal")]
    pub value: Decimal,
    /// The window's start.
    #[serde(serialize_with = "tally_core::serde_fmt::instant")]
    pub window_start: DateTime<Utc>,
    /// The window's end.
    #[serde(serialize_with = "tally_core::serde_fmt::instant")]
    pub window_end: DateTime<Utc>,
    /// The customer, when grouped by `subject`.
    pub subject: Option<String>,
    /// The grouped dimensions' values (`None`: absent).
    pub group_by: BTreeMap<String, Option<String>>,
}

/// A query's answer (OpenMeter's `MeterQueryResult`): rows only for windows and
/// groups with events, ordered by window, subject and group values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterQueryResult {
    /// The range's start.
    #[serde(serialize_with = "tally_core::serde_fmt::instant")]
    pub from: DateTime<Utc>,
    /// The range's end.
    #[serde(serialize_with = "tally_core::serde_fmt::instant")]
    pub to: DateTime<Utc>,
    /// The window.
    pub window_size: Option<WindowSize>,
    /// The rows.
    pub data: Vec<MeterRow>,
}

/// A result group: the window, the customer (when grouped by it), the grouped values.
type Group = (usize, Option<String>, Vec<Option<String>>);

/// The plan of a query over one meter: which positions of the dimension tuple are
/// grouped and filtered.
struct Plan<'a> {
    meter: &'a DefinedMeter,
    windows: Vec<TimeRange>,
    by_subject: bool,
    grouped: Vec<usize>,
    filters: Vec<(usize, Vec<String>)>,
    excludes: Vec<Vec<(usize, String)>>,
    customers: Option<Vec<String>>,
}

impl<'a> Plan<'a> {
    fn new(meter: &'a DefinedMeter, q: &MeterQuery) -> Result<Plan<'a>> {
        let spec = &meter.spec;
        let index = |field: &'static str, name: &str| {
            spec.dimension_index(name).ok_or_else(|| {
                let known: Vec<&str> = spec.group_by.iter().map(|d| d.name.as_str()).collect();
                Error::invalid(
                    field,
                    name,
                    format!(
                        "meter {} has no such dimension (it has: subject{}{})",
                        spec.slug,
                        if known.is_empty() { "" } else { ", " },
                        known.join(", ")
                    ),
                )
            })
        };
        let mut grouped = Vec::new();
        let mut by_subject = false;
        for g in &q.group_by {
            if g == "subject" {
                by_subject = true;
            } else {
                let i = index("group_by", g)?;
                if !grouped.contains(&i) {
                    grouped.push(i);
                }
            }
        }
        grouped.sort_unstable();
        let filters = q
            .filters
            .iter()
            .map(|(k, v)| Ok((index("filter", k)?, v.clone())))
            .collect::<Result<Vec<_>>>()?;
        let excludes = q
            .excludes
            .iter()
            .map(|c| {
                c.iter()
                    .map(|(k, v)| Ok((index("exclude", k)?, v.clone())))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Plan {
            meter,
            windows: windows(q.range, q.window, q.zone)?,
            by_subject,
            grouped,
            filters,
            excludes,
            customers: (!q.customers.is_empty())
                .then(|| q.customers.iter().map(|c| c.as_str().to_owned()).collect()),
        })
    }

    fn keep(&self, dims: &[Option<String>]) -> bool {
        let has = |i: &usize, f: &dyn Fn(&String) -> bool| {
            dims.get(*i).and_then(|v| v.as_ref()).is_some_and(f)
        };
        self.filters
            .iter()
            .all(|(i, allowed)| has(i, &|v| allowed.contains(v)))
            && !self
                .excludes
                .iter()
                .any(|c| c.iter().all(|(i, value)| has(i, &|v| v == value)))
    }

    fn group(&self, window: usize, customer: &str, dims: &[Option<String>]) -> Group {
        (
            window,
            self.by_subject.then(|| customer.to_owned()),
            self.grouped
                .iter()
                .map(|i| dims.get(*i).cloned().flatten())
                .collect(),
        )
    }

    /// The SQL filter on `r.dims`, parameters from `$first`: what [`Plan::keep`]
    /// keeps (a missing dimension is SQL's NULL, which matches neither a filter nor
    /// an excluded combination).
    fn dims_sql(&self, first: usize) -> String {
        let mut n = first;
        let mut next = || {
            n += 1;
            n - 1
        };
        let mut sql: String = self
            .filters
            .iter()
            .map(|(i, _)| format!(" AND r.dims->>{i} = ANY(${}::text[])", next()))
            .collect();
        for c in &self.excludes {
            let all: Vec<String> = c
                .iter()
                .map(|(i, _)| format!("r.dims->>{i} IS NOT DISTINCT FROM ${}::text", next()))
                .collect();
            // An empty combination is every event's, as in `keep`.
            let has = if all.is_empty() {
                "true".to_owned()
            } else {
                all.join(" AND ")
            };
            sql.push_str(&format!(" AND NOT ({has})"));
        }
        sql
    }

    /// The filters' values, as the parameters [`Plan::dims_sql`] names.
    fn push_filters<'p>(&'p self, params: &mut Vec<&'p (dyn tokio_postgres::types::ToSql + Sync)>) {
        for (_, allowed) in &self.filters {
            params.push(allowed);
        }
        for c in &self.excludes {
            for (_, value) in c {
                params.push(value);
            }
        }
    }

    fn row(&self, (w, subject, values): Group, value: Decimal) -> Option<MeterRow> {
        let window = self.windows.get(w)?;
        Some(MeterRow {
            value,
            window_start: window.from(),
            window_end: window.to(),
            subject,
            group_by: self
                .grouped
                .iter()
                .zip(values)
                .filter_map(|(i, v)| Some((self.meter.spec.group_by.get(*i)?.name.clone(), v)))
                .collect(),
        })
    }
}

fn dims_of(text: &str) -> Result<Vec<Option<String>>> {
    serde_json::from_str(text)
        .map_err(|e| Error::corrupt("reading meter rollups", format!("dimensions {text}: {e}")))
}

/// Pieces of every window at one level, as the arrays a read joins against. A piece
/// adds its rows to its window, or (sign −1, additive aggregations only) takes them
/// away.
#[derive(Default)]
struct Pieces {
    lo: Vec<DateTime<Utc>>,
    hi: Vec<DateTime<Utc>>,
    window: Vec<i32>,
    sign: Vec<i32>,
}

impl Pieces {
    fn push(&mut self, w: usize, r: TimeRange) {
        self.push_signed(w, r, 1);
    }

    fn push_signed(&mut self, w: usize, r: TimeRange, sign: i32) {
        self.lo.push(r.from());
        self.hi.push(r.to());
        self.window.push(i32::try_from(w).unwrap_or(i32::MAX));
        self.sign.push(sign);
    }

    fn window_of(&self, t: DateTime<Utc>) -> Option<usize> {
        let k = self.hi.partition_point(|hi| *hi <= t);
        let (lo, w) = (self.lo.get(k)?, self.window.get(k)?);
        (*lo <= t).then_some(usize::try_from(*w).ok()?)
    }
}

struct Levels {
    months: Pieces,
    days: Pieces,
    quarters: Pieces,
    raw: Pieces,
}

/// How a window's pieces are read from the rollups.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Distinct values: whole UTC months from the month buckets.
    Distinct,
    /// Sums and counts: a run of quarter hours longer than half a UTC day is read as
    /// the day minus the quarters around it (a local day in Asia/Kolkata: 1 day row
    /// and 44 quarter rows instead of 96 quarter rows).
    Additive,
    /// Extremes and the latest value: what the pieces say.
    Plain,
}

/// `q` (quarter hours) added to window `w`, for an additive read as day − complement
/// wherever it covers more than half of a UTC day.
fn push_quarters(l: &mut Levels, w: usize, q: TimeRange, read: Read) {
    if read != Read::Additive {
        l.quarters.push(w, q);
        return;
    }
    let day = chrono::Duration::days(1);
    let mut t = q.from();
    while t < q.to() {
        let d = super::deltas::day_of(t);
        let hi = (d + day).min(q.to());
        if hi - t > chrono::Duration::hours(12) {
            if let Ok(r) = TimeRange::new(d, d + day) {
                l.days.push(w, r);
            }
            for (a, b) in [(d, t), (hi, d + day)] {
                if let Ok(r) = TimeRange::new(a, b) {
                    l.quarters.push_signed(w, r, -1);
                }
            }
        } else if let Ok(r) = TimeRange::new(t, hi) {
            l.quarters.push(w, r);
        }
        t = hi;
    }
}

fn levels(windows: &[TimeRange], read: Read) -> Levels {
    let mut l = Levels {
        months: Pieces::default(),
        days: Pieces::default(),
        quarters: Pieces::default(),
        raw: Pieces::default(),
    };
    for (w, window) in windows.iter().enumerate() {
        let p = meter_pieces(*window);
        if let Some(days) = p.days {
            if read == Read::Distinct {
                // Whole UTC months inside read the month buckets: fewer rows to count.
                let mut t = days.from();
                while t < days.to() {
                    let m = super::deltas::month_of(t);
                    let next = tally_core::Zone::UTC.next_bucket(m, tally_core::Granularity::Month);
                    let (lo, hi) = (t, next.min(days.to()));
                    if let Ok(r) = TimeRange::new(lo, hi) {
                        if lo == m && hi == next {
                            l.months.push(w, r);
                        } else {
                            l.days.push(w, r);
                        }
                    }
                    t = hi;
                }
            } else {
                l.days.push(w, days);
            }
        }
        for q in p.quarters {
            push_quarters(&mut l, w, q, read);
        }
        for r in p.raw {
            l.raw.push(w, r);
        }
    }
    l
}

impl Store {
    /// Answers `q` from the meter with this slug or id (see the module docs), or,
    /// where no defined meter has it, from the built-in meter of the service of that
    /// name (the sum of its quantities; docs/meters.md, "Built-in meters").
    /// Refuses (`Invalid`) an unknown dimension or window, a `MINUTE` query over more
    /// than a day, and a meter still backfilling or failed; `NotFound` for a name that
    /// is neither.
    pub async fn query_meter(&self, meter: &str, q: &MeterQuery) -> Result<MeterQueryResult> {
        let meter = match self.meter(meter).await {
            Ok(m) => m,
            Err(e) if e.kind() == crate::ErrorKind::NotFound => {
                return match self.catalog().await?.service(meter) {
                    Ok(service) => self.query_builtin(&service, q).await,
                    Err(_) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        if meter.state != super::MeterState::Ready {
            return Err(Error::invalid(
                "meter",
                meter.spec.slug.as_str(),
                match meter.state {
                    super::MeterState::Failed => format!(
                        "its backfill failed ({}); restart it, or delete it and create it again with a higher limit",
                        meter.state_detail.as_deref().unwrap_or("no reason recorded")
                    ),
                    _ => "is still backfilling (or its backfill was interrupted: restart it, `tally meter restart`)".to_owned(),
                },
            ));
        }
        let client = self.client("querying a meter").await?;
        let distributed = self.ingest().is_distributed(&client).await?;
        query_defined(&client, &meter, q, distributed).await
    }
}

/// Answers `q` from `meter` (ready) on `client`: inside a transaction, it sees that
/// transaction's own writes (a quota's admission reads a meter before and after one).
/// `distributed`: the database is a Citus cluster (some plans are not pushed down).
pub(crate) async fn query_defined(
    client: &Client,
    meter: &DefinedMeter,
    q: &MeterQuery,
    distributed: bool,
) -> Result<MeterQueryResult> {
    let plan = Plan::new(meter, q)?;
    let values: BTreeMap<Group, Decimal> = match meter.spec.aggregation {
        Aggregation::UniqueCount => read_distinct(client, &plan, distributed).await?,
        Aggregation::TimeWeighted => read_gauge(client, &plan, q.now).await?,
        a => {
            let accs = read_accs(
                client,
                &plan,
                q.window == Some(WindowSize::Minute),
                distributed,
            )
            .await?;
            accs.into_iter()
                .filter_map(|(g, acc)| Some((g, acc.value(a)?)))
                .collect()
        }
    };
    Ok(MeterQueryResult {
        from: q.range.from(),
        to: q.range.to(),
        window_size: q.window,
        data: values
            .into_iter()
            .filter_map(|(g, v)| plan.row(g, v))
            .collect(),
    })
}

async fn read_accs(
    client: &Client,
    plan: &Plan<'_>,
    minute: bool,
    distributed: bool,
) -> Result<BTreeMap<Group, Acc>> {
    let lv = if minute {
        let mut raw = Pieces::default();
        for (w, r) in plan.windows.iter().enumerate() {
            raw.push(w, *r);
        }
        Levels {
            months: Pieces::default(),
            days: Pieces::default(),
            quarters: Pieces::default(),
            raw,
        }
    } else {
        let additive = matches!(
            plan.meter.spec.aggregation,
            Aggregation::Sum | Aggregation::Count | Aggregation::Avg
        );
        levels(
            &plan.windows,
            if additive {
                Read::Additive
            } else {
                Read::Plain
            },
        )
    };
    let customers = &plan.customers;
    let agg = plan.meter.spec.aggregation;
    let mut out: BTreeMap<Group, Acc> = BTreeMap::new();
    for (table, pieces) in [
        ("tally_meter_days", &lv.days),
        ("tally_meter_quarters", &lv.quarters),
    ] {
        if pieces.lo.is_empty() {
            continue;
        }
        // Only the columns the aggregation reads: without the ordered `array_agg`s of
        // LATEST the groups are hashed, not sorted (a customer-month of quarter rows in
        // Asia/Kolkata: 3–5 × faster).
        let extremes = if matches!(agg, Aggregation::Min | Aggregation::Max) {
            "min(r.lo), max(r.hi)"
        } else {
            "NULL::numeric, NULL::numeric"
        };
        let latest = if agg == Aggregation::Latest {
            "(array_agg(r.latest_at ORDER BY r.latest_at DESC NULLS LAST, r.latest_id DESC))[1],
             (array_agg(r.latest_id ORDER BY r.latest_at DESC NULLS LAST, r.latest_id DESC))[1],
             (array_agg(r.latest_value ORDER BY r.latest_at DESC NULLS LAST, r.latest_id DESC))[1]"
        } else {
            "NULL::timestamptz, NULL::uuid, NULL::numeric"
        };
        // With customers, one index range scan per piece (the fence keeps the planner
        // from a scan of the whole meter filtered by a join); for all customers, the
        // join (the key leads with the customer, so a piece alone is no index range).
        // Citus does not push a lateral OFFSET down to its shards: the join there.
        let rows_of = if customers.is_some() && !distributed {
            format!(
                "CROSS JOIN LATERAL (SELECT * FROM {table} r WHERE r.meter = $1 AND r.customer_id = ANY($5)
                     AND r.bucket >= w.lo AND r.bucket < w.hi OFFSET 0) r"
            )
        } else {
            format!("JOIN {table} r ON r.meter = $1 AND r.bucket >= w.lo AND r.bucket < w.hi")
        };
        let sql = format!(
            "SELECT w.i, r.customer_id, r.dims::text, sum(r.events * w.s)::int8, sum(r.total * w.s), {extremes}, {latest}
             FROM unnest($2::timestamptz[], $3::timestamptz[], $4::int4[], $6::int4[]) AS w(lo, hi, i, s)
             {rows_of}
             WHERE ($5::text[] IS NULL OR r.customer_id = ANY($5)){}
             GROUP BY w.i, r.customer_id, r.dims",
            plan.dims_sql(7)
        );
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
            &plan.meter.number,
            &pieces.lo,
            &pieces.hi,
            &pieces.window,
            &customers,
            &pieces.sign,
        ];
        plan.push_filters(&mut params);
        let rows = client
            .query(&sql, &params)
            .await
            .map_err(Error::db("querying a meter"))?;
        for r in &rows {
            let db = || Error::db("querying a meter");
            let w: i32 = r.try_get(0).map_err(db())?;
            let customer: String = r.try_get(1).map_err(db())?;
            let dims = dims_of(&r.try_get::<_, String>(2).map_err(db())?)?;
            let acc = acc_of(r, 3, "querying a meter")?;
            let g = plan.group(usize::try_from(w).unwrap_or_default(), &customer, &dims);
            out.entry(g).or_default().merge(&acc)?;
        }
    }
    read_raw(client, plan, &lv.raw, |g, at, id, value| {
        if let Value::Number(_) | Value::None = value {
            out.entry(g).or_default().add(at, id, value.number())?;
        }
        Ok(())
    })
    .await?;
    Ok(out)
}

/// The accumulator in a rollup row's columns `first..first + 7`: events, sum, min, max,
/// and the latest value's time, event id and value (the query's and `verify`'s reads).
pub(super) fn acc_of(r: &tokio_postgres::Row, first: usize, ctx: &'static str) -> Result<Acc> {
    let db = || Error::db(ctx);
    let latest = match (
        r.try_get::<_, Option<DateTime<Utc>>>(first + 4)
            .map_err(db())?,
        r.try_get::<_, Option<uuid::Uuid>>(first + 5)
            .map_err(db())?,
        r.try_get::<_, Option<Numeric>>(first + 6).map_err(db())?,
    ) {
        (Some(at), Some(id), Some(v)) => Some(Latest { at, id, value: v.0 }),
        _ => None,
    };
    Ok(Acc {
        events: r.try_get(first).map_err(db())?,
        sum: r.try_get::<_, Numeric>(first + 1).map_err(db())?.0,
        min: r
            .try_get::<_, Option<Numeric>>(first + 2)
            .map_err(db())?
            .map(|n| n.0),
        max: r
            .try_get::<_, Option<Numeric>>(first + 3)
            .map_err(db())?
            .map(|n| n.0),
        latest,
    })
}

/// Reads the raw events of the meter's type in `pieces`, calling `f` with each
/// reading's group (events the meter skips or filters out are not given).
async fn read_raw(
    client: &Client,
    plan: &Plan<'_>,
    pieces: &Pieces,
    mut f: impl FnMut(Group, DateTime<Utc>, uuid::Uuid, Value) -> Result<()>,
) -> Result<()> {
    if pieces.lo.is_empty() {
        return Ok(());
    }
    let customers = &plan.customers;
    let rows = client
        .query(
            "SELECT e.event_id, e.customer_id, e.recorded_at, e.metadata::text
             FROM unnest($2::timestamptz[], $3::timestamptz[]) AS w(lo, hi)
             JOIN usage_events e ON e.service = $1 AND e.recorded_at >= w.lo AND e.recorded_at < w.hi
             WHERE $4::text[] IS NULL OR e.customer_id = ANY($4)",
            &[
                &plan.meter.spec.event_type.as_str(),
                &pieces.lo,
                &pieces.hi,
                &customers,
            ],
        )
        .await
        .map_err(Error::db("reading raw events for a meter"))?;
    for r in &rows {
        let db = || Error::db("reading raw events for a meter");
        let id: uuid::Uuid = r.try_get(0).map_err(db())?;
        let customer: String = r.try_get(1).map_err(db())?;
        let at: DateTime<Utc> = r.try_get(2).map_err(db())?;
        let metadata: tally_core::Metadata = r.try_get::<_, String>(3).map_err(db())?.parse()?;
        // Stored before the meter existed and unreadable by it: skipped, as the
        // backfill skipped it.
        let Ok(Some(reading)) = plan.meter.spec.read(&Payload::of(&metadata), at) else {
            continue;
        };
        if !plan.keep(&reading.dims) {
            continue;
        }
        let Some(w) = pieces.window_of(at) else {
            continue;
        };
        f(
            plan.group(w, &customer, &reading.dims),
            at,
            id,
            reading.value,
        )?;
    }
    Ok(())
}

/// Whether the rows a distinct read gathers are distinct within each result group
/// already, so counting them is the answer: a month bucket row is unique per (customer,
/// combination, month, value), so they are when every window is one whole UTC month
/// and nothing else, and a group is one customer and one combination (grouped by
/// subject or one customer asked for; grouped by every dimension). The common billing
/// read (a customer's unique users in a month) needs no sort.
fn distinct_rows(plan: &Plan<'_>, lv: &Levels) -> bool {
    let one_month_each = {
        let mut w = lv.months.window.clone();
        w.sort_unstable();
        w.windows(2).all(|p| p.first() != p.last())
    };
    lv.days.lo.is_empty()
        && lv.quarters.lo.is_empty()
        && lv.raw.lo.is_empty()
        && one_month_each
        && (plan.by_subject || plan.customers.as_ref().is_some_and(|c| c.len() == 1))
        && plan.grouped.len() == plan.meter.spec.group_by.len()
}

async fn read_distinct(
    client: &Client,
    plan: &Plan<'_>,
    distributed: bool,
) -> Result<BTreeMap<Group, Decimal>> {
    let lv = levels(&plan.windows, Read::Distinct);
    // The raw edges first (few events: only minutes off the quarter hour); their values
    // go to the database with the rollups', which counts them all at once, so only the
    // counts come back (not every distinct value).
    let n = plan.grouped.len();
    let mut raw_w: Vec<i32> = Vec::new();
    let mut raw_s: Vec<Option<String>> = Vec::new();
    let mut raw_g: Vec<Vec<Option<String>>> = vec![Vec::new(); n];
    let mut raw_v: Vec<String> = Vec::new();
    read_raw(
        client,
        plan,
        &lv.raw,
        |(w, subject, values), _, _, value| {
            if let Value::Text(v) = value {
                raw_w.push(i32::try_from(w).unwrap_or(i32::MAX));
                raw_s.push(subject);
                for (column, g) in raw_g.iter_mut().zip(values) {
                    column.push(g);
                }
                raw_v.push(v);
            }
            Ok(())
        },
    )
    .await?;
    let customers = &plan.customers;
    let mut branches = Vec::new();
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        vec![&plan.meter.number, &customers];
    let subject = if plan.by_subject {
        "r.customer_id"
    } else {
        "NULL::text"
    };
    let grouped: String = plan
        .grouped
        .iter()
        .enumerate()
        .map(|(k, i)| format!(", r.dims->>{i} AS g{k}"))
        .collect();
    for (table, pieces) in [
        ("tally_meter_distinct_months", &lv.months),
        ("tally_meter_distinct_days", &lv.days),
        ("tally_meter_distinct_quarters", &lv.quarters),
    ] {
        if pieces.lo.is_empty() {
            continue;
        }
        let k = params.len();
        branches.push(format!(
            "SELECT w.i AS i, {subject} AS s{grouped}, r.value AS v
             FROM unnest(${}::timestamptz[], ${}::timestamptz[], ${}::int4[]) AS w(lo, hi, i)
             JOIN {table} r ON r.meter = $1 AND r.bucket >= w.lo AND r.bucket < w.hi
             WHERE ($2::text[] IS NULL OR r.customer_id = ANY($2)){{filters}}",
            k + 1,
            k + 2,
            k + 3
        ));
        params.extend_from_slice(&[&pieces.lo, &pieces.hi, &pieces.window]);
    }
    let first_filter = params.len() + 1;
    plan.push_filters(&mut params);
    let filters = plan.dims_sql(first_filter);
    let mut union: Vec<String> = branches
        .iter()
        .map(|b| b.replace("{filters}", &filters))
        .collect();
    if !raw_v.is_empty() {
        if union.is_empty() {
            // No rollup read: its parameters would be untyped.
            params.clear();
        }
        let first = params.len() + 1;
        let columns: String = (0..n)
            .map(|k| format!(", ${}::text[]", first + 2 + k))
            .collect();
        let names: String = (0..n).map(|k| format!(", g{k}")).collect();
        union.push(format!(
            "SELECT * FROM unnest(${first}::int4[], ${}::text[]{columns}, ${}::text[]) AS u(i, s{names}, v)",
            first + 1,
            first + 2 + n
        ));
        params.push(&raw_w);
        params.push(&raw_s);
        for column in &raw_g {
            params.push(column);
        }
        params.push(&raw_v);
    }
    if union.is_empty() {
        return Ok(BTreeMap::new());
    }
    let keys: String = (0..n).map(|k| format!(", g{k}")).collect();
    // Bytewise distinct (as values compare everywhere else), which also sorts fastest;
    // rows already distinct are only counted.
    let sql = match (distinct_rows(plan, &lv), distributed) {
        // Counted per window where it is read, so no sort of every row by window.
        // Citus gets the plain join, as for the per-piece scans: a lateral subquery
        // over more than one shard is not pushed down.
        (true, false) => format!(
            "SELECT w.i, x.* FROM unnest($3::timestamptz[], $4::timestamptz[], $5::int4[]) AS w(lo, hi, i)
             CROSS JOIN LATERAL (SELECT {subject} AS s{grouped}, count(*) FROM tally_meter_distinct_months r
             WHERE r.meter = $1 AND r.bucket >= w.lo AND r.bucket < w.hi
             AND ($2::text[] IS NULL OR r.customer_id = ANY($2)){filters} GROUP BY s{keys}) x"
        ),
        (true, true) => format!(
            "SELECT i, s{keys}, count(*) FROM ({}) x GROUP BY i, s{keys}",
            union.join(" UNION ALL ")
        ),
        (false, _) => format!(
            "SELECT i, s{keys}, count(DISTINCT v COLLATE \"C\") FROM ({}) x GROUP BY i, s{keys}",
            union.join(" UNION ALL ")
        ),
    };
    let rows = client
        .query(&sql, &params)
        .await
        .map_err(Error::db("querying a meter"))?;
    let mut counts: BTreeMap<Group, Decimal> = BTreeMap::new();
    for r in &rows {
        let db = || Error::db("querying a meter");
        let w: i32 = r.try_get(0).map_err(db())?;
        let subject: Option<String> = r.try_get(1).map_err(db())?;
        let values = (0..n)
            .map(|k| r.try_get::<_, Option<String>>(2 + k))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(db())?;
        let c: i64 = r.try_get(2 + n).map_err(db())?;
        counts.insert(
            (usize::try_from(w).unwrap_or_default(), subject, values),
            Decimal::from(c),
        );
    }
    Ok(counts)
}

async fn read_gauge(
    client: &Client,
    plan: &Plan<'_>,
    now: DateTime<Utc>,
) -> Result<BTreeMap<Group, Decimal>> {
    let (Some(first), Some(last)) = (plan.windows.first(), plan.windows.last()) else {
        return Ok(BTreeMap::new());
    };
    let (from, to) = (first.from(), last.to());
    let customers = &plan.customers;
    let filters = plan.dims_sql(5);
    let sql = format!(
        "SELECT r.customer_id, r.dims::text, r.at, r.event_id, r.value FROM tally_meter_samples r
         WHERE r.meter = $1 AND r.at >= $2 AND r.at < $3 AND ($4::text[] IS NULL OR r.customer_id = ANY($4)){filters}
         UNION ALL
         (SELECT DISTINCT ON (r.customer_id, r.dims) r.customer_id, r.dims::text, r.at, r.event_id, r.value
          FROM tally_meter_samples r
          WHERE r.meter = $1 AND r.at < $2 AND ($4::text[] IS NULL OR r.customer_id = ANY($4)){filters}
          ORDER BY r.customer_id, r.dims, r.at DESC, r.event_id DESC)"
    );
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        vec![&plan.meter.number, &from, &to, &customers];
    plan.push_filters(&mut params);
    let rows = client
        .query(&sql, &params)
        .await
        .map_err(Error::db("querying a meter"))?;
    let mut series: HashMap<(String, String), Vec<Sample>> = HashMap::new();
    for r in &rows {
        let db = || Error::db("querying a meter");
        series
            .entry((r.try_get(0).map_err(db())?, r.try_get(1).map_err(db())?))
            .or_default()
            .push(Sample {
                at: r.try_get(2).map_err(db())?,
                id: r.try_get(3).map_err(db())?,
                value: r.try_get::<_, Numeric>(4).map_err(db())?.0,
            });
    }
    let bounds: Vec<(DateTime<Utc>, DateTime<Utc>)> =
        plan.windows.iter().map(|w| (w.from(), w.to())).collect();
    let mut out: BTreeMap<Group, Decimal> = BTreeMap::new();
    for ((customer, dims), samples) in series {
        let dims = dims_of(&dims)?;
        for (w, v) in time_weighted(&samples, &bounds, now.min(to))?
            .into_iter()
            .enumerate()
        {
            if let Some(v) = v {
                let slot = out.entry(plan.group(w, &customer, &dims)).or_default();
                *slot = tally_core::add_exact(*slot, v, "a gauge's integral")?;
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|(g, v)| (g, tally_core::meter::value_hours(v)))
        .collect())
}
