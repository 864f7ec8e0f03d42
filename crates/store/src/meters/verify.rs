//! `verify` for meters: every ready meter's rollups recomputed from the stored events
//! of its type (the same [`MeterDeltas`] the write path and the backfill build) and
//! compared row by row, in one snapshot so a concurrent write is on both sides or
//! neither. Buckets that overlap an archived range are left out on both sides: their
//! events are partly in an archive while the rollups keep them (docs/archive.md).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use tally_core::Acc;
use uuid::Uuid;

use super::deltas::{LiveMeter, MeterDeltas, RowKey, dims_text, month_of};
use super::{BACKFILL_CHUNK, COLUMNS, MeterState, cursor_events, declare_events, defined};
use crate::{Error, Result, Store, numeric::Numeric};

const DOING: &str = "verifying meters";

/// What a meter's rollup tables hold, in the shapes of [`MeterDeltas`].
#[derive(Default)]
struct Stored {
    quarters: BTreeMap<RowKey, Acc>,
    days: BTreeMap<RowKey, Acc>,
    distinct: [BTreeSet<(RowKey, String)>; 3],
    samples: BTreeMap<(i64, String, String, DateTime<Utc>, Uuid), rust_decimal::Decimal>,
}

impl Store {
    /// Meter rollup rows that differ from a recomputation over the raw events (rows
    /// missing on either side included), over every ready meter.
    pub(crate) async fn verify_meters(&self) -> Result<i64> {
        let mut client = self.client(DOING).await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(Error::db(DOING))?;
        let archived: Vec<(DateTime<Utc>, DateTime<Utc>)> = tx
            .query(
                "SELECT range_from, range_to FROM usage_archives WHERE state = 'complete'",
                &[],
            )
            .await
            .map_err(Error::db(DOING))?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<std::result::Result<_, tokio_postgres::Error>>()
            .map_err(Error::db(DOING))?;
        // Compared only where no archive took part of the bucket's events.
        let whole = |lo: DateTime<Utc>, hi: DateTime<Utc>| {
            !archived.iter().any(|(from, to)| *from < hi && lo < *to)
        };
        let meters = tx
            .query(
                &format!("SELECT {COLUMNS} FROM tally_meter_defs WHERE deleted_at IS NULL"),
                &[],
            )
            .await
            .map_err(Error::db(DOING))?
            .iter()
            .map(defined)
            .collect::<Result<Vec<_>>>()?;
        let mut mismatches = 0i64;
        for meter in meters.iter().filter(|m| m.state == MeterState::Ready) {
            let live = [LiveMeter {
                number: meter.number,
                spec: meter.spec.clone(),
            }];
            let mut want = MeterDeltas::default();
            declare_events(&tx, &meter.spec, DOING).await?;
            let service = meter.spec.event_type.service();
            loop {
                let rows = tx
                    .query(&format!("FETCH {BACKFILL_CHUNK} FROM tally_events"), &[])
                    .await
                    .map_err(Error::db(DOING))?;
                if rows.is_empty() {
                    break;
                }
                want.add(&live, &cursor_events(&rows, &service, DOING)?, false)?;
            }
            tx.execute("CLOSE tally_events", &[])
                .await
                .map_err(Error::db(DOING))?;
            let got = stored(&tx, meter.number).await?;
            let quarter = |b: DateTime<Utc>| whole(b, b + Duration::minutes(15));
            let day = |b: DateTime<Utc>| whole(b, b + Duration::days(1));
            let month = |b: DateTime<Utc>| whole(b, month_of(b + Duration::days(32)));
            mismatches += differ(&want.quarters, &got.quarters, |k| quarter(k.2));
            mismatches += differ(&want.days, &got.days, |k| day(k.2));
            for (level, in_whole) in [&quarter as &dyn Fn(_) -> bool, &day, &month]
                .into_iter()
                .enumerate()
            {
                if let (Some(w), Some(g)) = (want.distinct.get(level), got.distinct.get(level)) {
                    let keep = |s: &BTreeSet<(RowKey, String)>| -> BTreeSet<(RowKey, String)> {
                        s.iter().filter(|(k, _)| in_whole(k.2)).cloned().collect()
                    };
                    mismatches += count(keep(w).symmetric_difference(&keep(g)).count());
                }
            }
            mismatches += differ(&want.samples, &got.samples, |k| {
                whole(k.3, k.3 + Duration::microseconds(1))
            });
        }
        tx.commit().await.map_err(Error::db(DOING))?;
        Ok(mismatches)
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Keys (that `compared` keeps) missing on one side or with different values.
fn differ<K: Ord, V: PartialEq>(
    want: &BTreeMap<K, V>,
    got: &BTreeMap<K, V>,
    compared: impl Fn(&K) -> bool,
) -> i64 {
    let missing = want
        .iter()
        .filter(|(k, v)| compared(k) && got.get(k) != Some(v))
        .count();
    let extra = got
        .keys()
        .filter(|k| compared(k) && !want.contains_key(k))
        .count();
    count(missing + extra)
}

/// The rollup rows of meter `number`.
async fn stored(tx: &deadpool_postgres::Transaction<'_>, number: i64) -> Result<Stored> {
    let db = || Error::db(DOING);
    let dims = |text: String| -> Result<String> {
        let values: Vec<Option<String>> = serde_json::from_str(&text)
            .map_err(|e| Error::corrupt(DOING, format!("dimensions {text}: {e}")))?;
        dims_text(&values)
    };
    let mut out = Stored::default();
    for (table, level) in [("tally_meter_quarters", 0), ("tally_meter_days", 1)] {
        let rows = tx
            .query(
                &format!(
                    "SELECT customer_id, bucket, dims::text, events, total, lo, hi, latest_at, latest_id, latest_value
                     FROM {table} WHERE meter = $1"
                ),
                &[&number],
            )
            .await
            .map_err(db())?;
        for r in &rows {
            let key = (
                number,
                r.try_get(0).map_err(db())?,
                r.try_get(1).map_err(db())?,
                dims(r.try_get(2).map_err(db())?)?,
            );
            let acc = super::query::acc_of(r, 3, DOING)?;
            let map = if level == 0 {
                &mut out.quarters
            } else {
                &mut out.days
            };
            map.insert(key, acc);
        }
    }
    for (level, table) in [
        "tally_meter_distinct_quarters",
        "tally_meter_distinct_days",
        "tally_meter_distinct_months",
    ]
    .into_iter()
    .enumerate()
    {
        let rows = tx
            .query(
                &format!(
                    "SELECT customer_id, bucket, dims::text, value FROM {table} WHERE meter = $1"
                ),
                &[&number],
            )
            .await
            .map_err(db())?;
        for r in &rows {
            let key = (
                number,
                r.try_get(0).map_err(db())?,
                r.try_get(1).map_err(db())?,
                dims(r.try_get(2).map_err(db())?)?,
            );
            if let Some(set) = out.distinct.get_mut(level) {
                set.insert((key, r.try_get(3).map_err(db())?));
            }
        }
    }
    let rows = tx
        .query(
            "SELECT customer_id, dims::text, at, event_id, value FROM tally_meter_samples WHERE meter = $1",
            &[&number],
        )
        .await
        .map_err(db())?;
    for r in &rows {
        out.samples.insert(
            (
                number,
                r.try_get(0).map_err(db())?,
                dims(r.try_get(1).map_err(db())?)?,
                r.try_get(2).map_err(db())?,
                r.try_get(3).map_err(db())?,
            ),
            r.try_get::<_, Numeric>(4).map_err(db())?.0,
        );
    }
    Ok(out)
}
