//! Typed read primitives over the rollups and raw events: the only place the read
//! side's SQL lives. Callers (the analytics crate) decide which ranges to read from
//! where; these functions read them, each with bind parameters and index range scans.

use std::{collections::HashMap, sync::LazyLock};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::{
    CustomerId, Granularity, Limit, QuarterColumns, Quarters, Service, TimeRange, Totals,
};
use tokio_postgres::Row;

use crate::{
    Error, Numeric, Result, Store,
    rollup::{self, Rollup},
};

/// Whose usage a read is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who<'a> {
    /// One customer's.
    One(&'a CustomerId),
    /// Every customer's, added up.
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

/// The bucket width of a rollup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grain {
    /// UTC hours.
    Hour,
    /// UTC days.
    Day,
}

/// Usage in one bucket (or labelled piece) and service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageRow {
    /// The bucket's start (a rollup's UTC hour or day, or the label a raw read was
    /// given).
    pub bucket: DateTime<Utc>,
    /// Index of the row's service in the `services` asked for.
    pub service: usize,
    /// Count, sum, minimum and maximum.
    pub totals: Totals,
}

/// The quarter-hour detail of one hourly rollup row (for all customers: of one lane's
/// row; lanes add up like any rollup rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuarterRow {
    /// The UTC hour.
    pub bucket: DateTime<Utc>,
    /// Index of the row's service in the `services` asked for.
    pub service: usize,
    /// The hour's totals by quarter; `None` when not known (the row's raw events were
    /// archived before migration 0009 added the detail): read raw events instead.
    pub quarters: Option<Quarters>,
}

/// A top bucket of one customer's use of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopBucket {
    /// The bucket's start (UTC).
    pub bucket: DateTime<Utc>,
    /// Its total quantity.
    pub quantity: Decimal,
    /// Its events.
    pub events: i64,
}

fn numeric(row: &Row, i: usize) -> Result<Decimal> {
    row.try_get::<_, Numeric>(i)
        .map(|n| n.0)
        .map_err(Error::db("reading usage"))
}

/// Reads `(bucket, service, events, quantity, min, max)` into a [`UsageRow`].
fn usage_row(row: &Row, index: &HashMap<&str, usize>) -> Result<Option<UsageRow>> {
    let service: &str = row.try_get(1).map_err(Error::db("reading usage"))?;
    // A service not asked for cannot match the filter; skip rather than trust it.
    let Some(&service) = index.get(service) else {
        return Ok(None);
    };
    Ok(Some(UsageRow {
        bucket: row.try_get(0).map_err(Error::db("reading usage"))?,
        service,
        totals: Totals {
            events: row.try_get(2).map_err(Error::db("reading usage"))?,
            quantity: numeric(row, 3)?,
            min: numeric(row, 4)?,
            max: numeric(row, 5)?,
        },
    }))
}

fn optional_numeric(row: &Row, i: usize) -> Result<Option<Decimal>> {
    row.try_get::<_, Option<Numeric>>(i)
        .map(|n| n.map(|n| n.0))
        .map_err(Error::db("reading usage"))
}

/// Reads `(bucket, service, events, quantity, quarter_columns…)` into a [`QuarterRow`].
fn quarter_row(row: &Row, index: &HashMap<&str, usize>) -> Result<Option<QuarterRow>> {
    let service: &str = row.try_get(1).map_err(Error::db("reading usage"))?;
    let Some(&service) = index.get(service) else {
        return Ok(None);
    };
    let bucket: DateTime<Utc> = row.try_get(0).map_err(Error::db("reading usage"))?;
    let events: i64 = row.try_get(2).map_err(Error::db("reading usage"))?;
    let quantity = numeric(row, 3)?;
    let int =
        |i: usize| -> Result<Option<i64>> { row.try_get(i).map_err(Error::db("reading usage")) };
    let (Some(e15), Some(e30), Some(e45)) = (int(7)?, int(8)?, int(9)?) else {
        return Ok(Some(QuarterRow {
            bucket,
            service,
            quarters: None,
        }));
    };
    let (Some(q15), Some(q30), Some(q45)) = (
        optional_numeric(row, 4)?,
        optional_numeric(row, 5)?,
        optional_numeric(row, 6)?,
    ) else {
        return Ok(Some(QuarterRow {
            bucket,
            service,
            quarters: None,
        }));
    };
    let ends = |from: usize| -> Result<[Option<Decimal>; 4]> {
        Ok([
            optional_numeric(row, from)?,
            optional_numeric(row, from + 1)?,
            optional_numeric(row, from + 2)?,
            optional_numeric(row, from + 3)?,
        ])
    };
    let columns = QuarterColumns {
        events_by: [e15, e30, e45],
        quantity_by: [q15, q30, q45],
        min: ends(10)?,
        max: ends(14)?,
    };
    let quarters = Quarters::from_columns(&columns, events, quantity).ok_or_else(|| {
        Error::corrupt(
            "reading an hourly rollup row",
            format!(
                "a row whose quarter-hour columns contradict each other or its totals \
                 ({bucket} {columns:?})"
            ),
        )
    })?;
    Ok(Some(QuarterRow {
        bucket,
        service,
        quarters: Some(quarters),
    }))
}

/// The rows `decode` keeps (it skips a row by returning `None`).
fn decode_all<T>(rows: &[Row], decode: impl Fn(&Row) -> Result<Option<T>>) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(r) = decode(row)? {
            out.push(r);
        }
    }
    Ok(out)
}

fn service_index(services: &[Service]) -> (Vec<&str>, HashMap<&str, usize>) {
    let names: Vec<&str> = services.iter().map(Service::as_str).collect();
    let index = names.iter().enumerate().map(|(i, s)| (*s, i)).collect();
    (names, index)
}

/// `rollup_rows`' statements (hourly and daily for one customer, all customers):
/// bucket, service and the rollup's totals ([`crate::rollup::VALUES`]), over a span.
static ROWS_SQL: LazyLock<[String; 3]> = LazyLock::new(|| {
    let values = rollup::value_names(false);
    let one = |r: &Rollup| {
        format!(
            "SELECT bucket, service, {values} FROM {}
             WHERE customer_id = $4 AND service = ANY($1::text[]) AND bucket >= $2 AND bucket < $3",
            r.table
        )
    };
    [
        one(&rollup::HOURLY),
        one(&rollup::DAILY),
        format!(
            "SELECT bucket, service, {values} FROM {}
             WHERE service = ANY($1::text[]) AND bucket >= $2 AND bucket < $3 AND $4::text IS NULL",
            rollup::ALL_CUSTOMERS.table
        ),
    ]
});

/// `rollup_quarters`' statements (one customer, all customers): bucket, service,
/// events, quantity and the quarter-hour detail ([`crate::rollup::QUARTERS`]) of some
/// hours.
static QUARTERS_SQL: LazyLock<[String; 2]> = LazyLock::new(|| {
    let quarters = rollup::list(rollup::QUARTERS.iter().map(|v| v.name));
    [
        format!(
            "SELECT bucket, service, events, quantity, {quarters} FROM {}
             WHERE customer_id = $3 AND service = ANY($1::text[]) AND bucket = ANY($2::timestamptz[])",
            rollup::HOURLY.table
        ),
        format!(
            "SELECT bucket, service, events, quantity, {quarters} FROM {}
             WHERE service = ANY($1::text[]) AND bucket = ANY($2::timestamptz[]) AND $3::text IS NULL",
            rollup::ALL_CUSTOMERS.table
        ),
    ]
});

impl Store {
    /// The rollup rows of `services` with buckets in each of `spans`, one result list
    /// per span, each read by one primary-key range scan. For one customer, `grain`
    /// picks the hourly or daily rollup. For all customers, rows come from the
    /// all-customer hourly rollup whatever the grain (its buckets are UTC hours), and
    /// several rows may share a bucket and service (one per writer lane): merge them.
    pub async fn rollup_rows(
        &self,
        who: Who<'_>,
        grain: Grain,
        services: &[Service],
        spans: &[TimeRange],
    ) -> Result<Vec<Vec<UsageRow>>> {
        let (names, index) = service_index(services);
        let [hourly, daily, all] = &*ROWS_SQL;
        let sql = match (who, grain) {
            (Who::One(_), Grain::Hour) => hourly,
            (Who::One(_), Grain::Day) => daily,
            (Who::All, _) => all,
        };
        self.per_span(sql, who, &names, spans, |row| usage_row(row, &index))
            .await
    }

    /// The hourly rollup rows of `services` for each of `hours` (UTC hour starts), with
    /// their quarter-hour detail: what a range cut on a quarter hour reads instead of raw
    /// events. One query, one primary-key probe per service and hour; for all customers,
    /// one row per lane.
    pub async fn rollup_quarters(
        &self,
        who: Who<'_>,
        services: &[Service],
        hours: &[DateTime<Utc>],
    ) -> Result<Vec<QuarterRow>> {
        if hours.is_empty() {
            return Ok(Vec::new());
        }
        let (names, index) = service_index(services);
        let [one, all] = &*QUARTERS_SQL;
        let sql = match who {
            Who::One(_) => one,
            Who::All => all,
        };
        let client = self.client("reading usage").await?;
        let stmt = client
            .prepare_cached(sql)
            .await
            .map_err(Error::db("preparing a usage query"))?;
        let rows = client
            .query(&stmt, &[&names, &hours, &who.customer()])
            .await
            .map_err(Error::db("reading usage"))?;
        decode_all(&rows, |row| quarter_row(row, &index))
    }

    /// Runs `sql` (parameters: service names, span start, span end, customer or NULL)
    /// once per span and decodes its rows.
    async fn per_span<T>(
        &self,
        sql: &str,
        who: Who<'_>,
        names: &[&str],
        spans: &[TimeRange],
        decode: impl Fn(&Row) -> Result<Option<T>>,
    ) -> Result<Vec<Vec<T>>> {
        let client = self.client("reading usage").await?;
        let stmt = client
            .prepare_cached(sql)
            .await
            .map_err(Error::db("preparing a usage query"))?;
        let customer = who.customer();
        let mut out = Vec::with_capacity(spans.len());
        for span in spans {
            let rows = client
                .query(&stmt, &[&names, &span.from(), &span.to(), &customer])
                .await
                .map_err(Error::db("reading usage"))?;
            out.push(decode_all(&rows, &decode)?);
        }
        Ok(out)
    }

    /// Totals of raw events of `services` in each labelled piece, keyed by the piece's
    /// label: for the parts of a range that no rollup bucket fits (sub-hour edges).
    /// Pieces must not overlap.
    pub async fn raw_totals(
        &self,
        who: Who<'_>,
        services: &[Service],
        pieces: &[(DateTime<Utc>, TimeRange)],
    ) -> Result<Vec<UsageRow>> {
        if pieces.is_empty() {
            return Ok(Vec::new());
        }
        let (names, index) = service_index(services);
        let sql = match who {
            Who::One(_) => {
                "SELECT p.label, r.service, count(*), sum(r.quantity), min(r.quantity), max(r.quantity)
                 FROM unnest($1::timestamptz[], $2::timestamptz[], $3::timestamptz[]) AS p(label, lo, hi)
                 JOIN usage_events r ON r.recorded_at >= p.lo AND r.recorded_at < p.hi
                 WHERE r.service = ANY($4::text[]) AND r.customer_id = $5
                 GROUP BY 1, 2"
            }
            Who::All => {
                "SELECT p.label, r.service, count(*), sum(r.quantity), min(r.quantity), max(r.quantity)
                 FROM unnest($1::timestamptz[], $2::timestamptz[], $3::timestamptz[]) AS p(label, lo, hi)
                 JOIN usage_events r ON r.recorded_at >= p.lo AND r.recorded_at < p.hi
                 WHERE r.service = ANY($4::text[]) AND $5::text IS NULL
                 GROUP BY 1, 2"
            }
        };
        let labels: Vec<DateTime<Utc>> = pieces.iter().map(|(l, _)| *l).collect();
        let lo: Vec<DateTime<Utc>> = pieces.iter().map(|(_, r)| r.from()).collect();
        let hi: Vec<DateTime<Utc>> = pieces.iter().map(|(_, r)| r.to()).collect();
        let client = self.client("reading usage").await?;
        let stmt = client
            .prepare_cached(sql)
            .await
            .map_err(Error::db("preparing a usage query"))?;
        let rows = client
            .query(&stmt, &[&labels, &lo, &hi, &names, &who.customer()])
            .await
            .map_err(Error::db("reading usage"))?;
        decode_all(&rows, |row| usage_row(row, &index))
    }

    /// The customers with usage of `service` in the UTC days `range` touches (a
    /// superset of those with usage in `range`), in name order: whom a read of every
    /// customer, one by one, reads.
    pub(crate) async fn customers_using(
        &self,
        service: &Service,
        range: TimeRange,
    ) -> Result<Vec<CustomerId>> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT DISTINCT customer_id FROM {}
                 WHERE service = $1 AND bucket >= $2 AND bucket < $3 AND events > 0
                 ORDER BY customer_id",
                rollup::DAILY.table
            )
        });
        use chrono::DurationRound;
        let from = range
            .from()
            .duration_trunc(chrono::Duration::days(1))
            .unwrap_or(range.from());
        let client = self.client("reading usage").await?;
        let rows = client
            .query(SQL.as_str(), &[&service.as_str(), &from, &range.to()])
            .await
            .map_err(Error::db("reading usage"))?;
        rows.iter()
            .map(|row| {
                let id: &str = row.try_get(0).map_err(Error::db("reading usage"))?;
                id.parse().map_err(|e| {
                    Error::corrupt("reading usage", format!("a customer id {id:?}: {e}"))
                })
            })
            .collect()
    }

    /// The quantity of every event of `customer` and `service` in `range`, unordered.
    pub async fn event_quantities(
        &self,
        customer: &CustomerId,
        service: &Service,
        range: TimeRange,
    ) -> Result<Vec<Decimal>> {
        let client = self.client("reading events").await?;
        let rows = client
            .query(
                "SELECT quantity FROM usage_events
                 WHERE customer_id = $1 AND service = $2 AND recorded_at >= $3 AND recorded_at < $4",
                &[&customer.as_str(), &service.as_str(), &range.from(), &range.to()],
            )
            .await
            .map_err(Error::db("reading events"))?;
        rows.iter().map(|r| numeric(r, 0)).collect()
    }

    /// The `limit` UTC hours, days or months with the largest total of `customer`'s
    /// use of `service`, largest first, ties broken by the earlier bucket.
    pub async fn top_buckets(
        &self,
        customer: &CustomerId,
        service: &Service,
        by: Granularity,
        limit: Limit,
    ) -> Result<Vec<TopBucket>> {
        let sql = match by {
            Granularity::Hour => {
                "SELECT bucket, quantity, events FROM usage_hourly
                 WHERE customer_id = $1 AND service = $2 ORDER BY quantity DESC, bucket LIMIT $3"
            }
            Granularity::Day => {
                "SELECT bucket, quantity, events FROM usage_daily
                 WHERE customer_id = $1 AND service = $2 ORDER BY quantity DESC, bucket LIMIT $3"
            }
            Granularity::Month => {
                "SELECT date_trunc('month', bucket, 'UTC'), sum(quantity), sum(events)::int8 FROM usage_daily
                 WHERE customer_id = $1 AND service = $2 GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $3"
            }
        };
        let client = self.client("reading peaks").await?;
        let rows = client
            .query(
                sql,
                &[
                    &customer.as_str(),
                    &service.as_str(),
                    &i64::from(limit.get()),
                ],
            )
            .await
            .map_err(Error::db("reading peaks"))?;
        rows.iter()
            .map(|r| {
                Ok(TopBucket {
                    bucket: r.try_get(0).map_err(Error::db("reading peaks"))?,
                    quantity: numeric(r, 1)?,
                    events: r.try_get(2).map_err(Error::db("reading peaks"))?,
                })
            })
            .collect()
    }

    /// The hours `customer` used `service` in, as one range: from the first hour with
    /// usage to the end of the last (`None` without usage). The hourly rollup holds
    /// every event, archived ones included.
    pub async fn usage_extent(
        &self,
        customer: &CustomerId,
        service: &Service,
    ) -> Result<Option<TimeRange>> {
        let client = self.client("reading the extent of usage").await?;
        let row = client
            .query_one(
                "SELECT min(bucket), max(bucket) + interval '1 hour' FROM usage_hourly
                 WHERE customer_id = $1 AND service = $2",
                &[&customer.as_str(), &service.as_str()],
            )
            .await
            .map_err(Error::db("reading the extent of usage"))?;
        let from: Option<DateTime<Utc>> = row
            .try_get(0)
            .map_err(Error::db("reading the extent of usage"))?;
        let to: Option<DateTime<Utc>> = row
            .try_get(1)
            .map_err(Error::db("reading the extent of usage"))?;
        match (from, to) {
            (Some(from), Some(to)) => Ok(Some(TimeRange::new(from, to)?)),
            _ => Ok(None),
        }
    }
}
