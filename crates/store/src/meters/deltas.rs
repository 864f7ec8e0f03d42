//! A batch's meter deltas, in memory, no I/O: what each new event adds to the rollups
//! of every meter of its type, aggregated per rollup row and sorted by key (the lock
//! order every writer follows). Ingest and backfill both build them here.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Duration, DurationRound, TimeZone, Utc};
use tally_core::{Acc, Aggregation, MeterSpec, Payload, UsageEvent, Value};
use uuid::Uuid;

use crate::{Error, Result};

/// A meter as the write path sees it: its number and what it reads.
#[derive(Debug, Clone)]
pub(crate) struct LiveMeter {
    pub(crate) number: i64,
    pub(crate) spec: MeterSpec,
}

/// A rollup row's key: meter, customer, bucket, dimension values (JSON array text).
pub(crate) type RowKey = (i64, String, DateTime<Utc>, String);

/// What some events add to the meter rollups.
#[derive(Debug, Default)]
pub(crate) struct MeterDeltas {
    pub(crate) quarters: BTreeMap<RowKey, Acc>,
    pub(crate) days: BTreeMap<RowKey, Acc>,
    /// `UNIQUE_COUNT` values per bucket (quarter hour, day, month).
    pub(crate) distinct: [BTreeSet<(RowKey, String)>; 3],
    /// `TIME_WEIGHTED` samples: (meter, customer, dims, at, event id) → value.
    pub(crate) samples: BTreeMap<(i64, String, String, DateTime<Utc>, Uuid), rust_decimal::Decimal>,
    /// Every dimension combination seen, per meter.
    pub(crate) combinations: BTreeSet<(i64, String)>,
    /// Events metered (an event read by two meters counts twice).
    pub(crate) readings: u64,
}

pub(crate) fn quarter_of(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(Duration::minutes(15)).unwrap_or(t)
}

pub(crate) fn day_of(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(Duration::days(1)).unwrap_or(t)
}

pub(crate) fn month_of(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(t)
}

/// The JSON text a dimension tuple is stored as (`["gpt-4o",null]`).
pub(crate) fn dims_text(dims: &[Option<String>]) -> Result<String> {
    serde_json::to_string(dims).map_err(|e| Error::internal("encoding dimensions", e.to_string()))
}

impl MeterDeltas {
    /// Adds `events` (new: not stored before) for the `meters` of their types. With
    /// `strict`, a value a meter cannot read refuses the batch (ingest: the event is
    /// refused, with the reason); without, the event is skipped for that meter and
    /// counted in the returned number (backfill: the event was accepted before the
    /// meter existed).
    pub(crate) fn add<'e>(
        &mut self,
        meters: &[LiveMeter],
        events: impl IntoIterator<Item = &'e UsageEvent>,
        strict: bool,
    ) -> Result<u64> {
        let mut skipped = 0;
        for e in events {
            let mut of_type = meters
                .iter()
                .filter(|m| m.spec.event_type.as_str() == e.service.as_str())
                .peekable();
            if of_type.peek().is_none() {
                continue;
            }
            let payload = Payload::of(&e.metadata);
            for m in of_type {
                let reading = match m.spec.read(&payload, e.recorded_at) {
                    Ok(Some(r)) => r,
                    Ok(None) => continue,
                    Err(err) if strict => return Err(err.into()),
                    Err(_) => {
                        skipped += 1;
                        continue;
                    }
                };
                self.readings += 1;
                let dims = dims_text(&reading.dims)?;
                let customer = e.customer.as_str().to_owned();
                self.combinations.insert((m.number, dims.clone()));
                let at = e.recorded_at;
                let key = |bucket| (m.number, customer.clone(), bucket, dims.clone());
                match (m.spec.aggregation, reading.value) {
                    (Aggregation::UniqueCount, Value::Text(v)) => {
                        let [q, d, mo] = &mut self.distinct;
                        q.insert((key(quarter_of(at)), v.clone()));
                        d.insert((key(day_of(at)), v.clone()));
                        mo.insert((key(month_of(at)), v));
                    }
                    (Aggregation::TimeWeighted, Value::Number(v)) => {
                        self.samples.insert(
                            (m.number, customer.clone(), dims.clone(), at, e.id.uuid()),
                            v,
                        );
                    }
                    (_, value) => {
                        let one = Acc::of(at, e.id.uuid(), value.number());
                        self.quarters
                            .entry(key(quarter_of(at)))
                            .or_default()
                            .merge(&one)?;
                        self.days.entry(key(day_of(at))).or_default().merge(&one)?;
                    }
                }
            }
        }
        Ok(skipped)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.readings == 0
    }
}
