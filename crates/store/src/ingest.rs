//! The one write path: binary COPY into a staging table, then one statement that
//! claims the dedupe keys, inserts the new events and upserts the rollups from exactly
//! the rows it inserted. The recorder and import both use it.

use std::{collections::HashSet, error::Error as StdError};

use bytes::{BufMut, BytesMut};
use deadpool_postgres::Transaction;
use rust_decimal::Decimal;
use tally_core::UsageEvent;
use tokio_postgres::{
    binary_copy::BinaryCopyInWriter,
    types::{IsNull, ToSql, Type, WrongType},
};

use crate::{Error, Result};

/// What writing a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Events newly stored (and added to the rollups).
    pub inserted: u64,
    /// Events already stored before, or repeated within the batch: counted once.
    pub duplicates: u64,
    /// Sum of the inserted events' quantities.
    pub quantity: Decimal,
}

impl WriteOutcome {
    pub(crate) fn add(&mut self, o: WriteOutcome) {
        self.inserted += o.inserted;
        self.duplicates += o.duplicates;
        self.quantity += o.quantity;
    }
}

const STAGE_DDL: &str = "CREATE TEMP TABLE tally_stage (
    event_id uuid, customer_id text, service text, quantity numeric, recorded_at timestamptz, metadata jsonb
) ON COMMIT DELETE ROWS";

const STAGE_TYPES: [Type; 6] = [
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::NUMERIC,
    Type::TIMESTAMPTZ,
    Type::JSONB,
];

// Lock order: keys in (event_id, customer_id) order, then hourly rows, then daily rows,
// each in key order. Every writer takes row locks in this one global order, so
// concurrent flushes wait for each other but cannot deadlock.
const APPLY_SQL: &str = "
WITH new_keys AS (
    INSERT INTO usage_event_keys (event_id, customer_id)
    SELECT event_id, customer_id FROM tally_stage ORDER BY event_id, customer_id
    ON CONFLICT DO NOTHING
    RETURNING event_id, customer_id
), ins AS (
    INSERT INTO usage_events (event_id, customer_id, service, quantity, recorded_at, metadata)
    SELECT s.event_id, s.customer_id, s.service, s.quantity, s.recorded_at, s.metadata
    FROM tally_stage s JOIN new_keys k ON k.event_id = s.event_id AND k.customer_id = s.customer_id
    RETURNING customer_id, service, quantity, recorded_at
), hourly AS (
    INSERT INTO usage_hourly AS r (customer_id, service, bucket, events, quantity, min_quantity, max_quantity)
    SELECT customer_id, service, date_trunc('hour', recorded_at, 'UTC'), count(*), sum(quantity), min(quantity), max(quantity)
    FROM ins GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (customer_id, service, bucket) DO UPDATE SET
        events = r.events + excluded.events,
        quantity = r.quantity + excluded.quantity,
        min_quantity = least(r.min_quantity, excluded.min_quantity),
        max_quantity = greatest(r.max_quantity, excluded.max_quantity)
    RETURNING 1
), daily AS (
    INSERT INTO usage_daily AS r (customer_id, service, bucket, events, quantity, min_quantity, max_quantity)
    SELECT customer_id, service, date_trunc('day', recorded_at, 'UTC'), count(*), sum(quantity), min(quantity), max(quantity)
    FROM ins GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (customer_id, service, bucket) DO UPDATE SET
        events = r.events + excluded.events,
        quantity = r.quantity + excluded.quantity,
        min_quantity = least(r.min_quantity, excluded.min_quantity),
        max_quantity = greatest(r.max_quantity, excluded.max_quantity)
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins), (SELECT coalesce(sum(quantity), 0) FROM ins),
       (SELECT count(*) FROM hourly) + (SELECT count(*) FROM daily)";

/// Writes `events` exactly once inside `tx`: events already stored (same customer and
/// id) are skipped, the rest are inserted and added to the rollups. Nothing is
/// visible until `tx` commits. With `clear_stage`, the staging table is emptied
/// afterwards so the same transaction can write another batch.
pub(crate) async fn write_batch(
    tx: &Transaction<'_>,
    events: &[UsageEvent],
    clear_stage: bool,
) -> Result<WriteOutcome> {
    if events.is_empty() {
        return Ok(WriteOutcome::default());
    }
    let exists: bool = tx
        .query_one("SELECT to_regclass('pg_temp.tally_stage') IS NOT NULL", &[])
        .await
        .map_err(Error::db("looking for the staging table"))?
        .get(0);
    if !exists {
        tx.batch_execute(STAGE_DDL)
            .await
            .map_err(Error::db("creating the staging table"))?;
    }

    // A key repeated inside the batch would join twice against its one new key row.
    let mut seen = HashSet::with_capacity(events.len());
    {
        let sink = tx
            .copy_in("COPY tally_stage (event_id, customer_id, service, quantity, recorded_at, metadata) FROM STDIN BINARY")
            .await
            .map_err(Error::db("starting COPY into the staging table"))?;
        let writer = BinaryCopyInWriter::new(sink, &STAGE_TYPES);
        let mut writer = std::pin::pin!(writer);
        for e in events {
            if !seen.insert((e.id, e.customer.as_str())) {
                continue;
            }
            let id = e.id.uuid();
            let quantity = e.quantity.value();
            let metadata = Jsonb(e.metadata.as_str());
            writer
                .as_mut()
                .write(&[
                    &id,
                    &e.customer.as_str(),
                    &e.service.as_str(),
                    &quantity,
                    &e.recorded_at,
                    &metadata,
                ])
                .await
                .map_err(Error::db("copying events"))?;
        }
        writer
            .as_mut()
            .finish()
            .await
            .map_err(Error::db("finishing COPY"))?;
    }

    let stmt = tx
        .prepare_cached(APPLY_SQL)
        .await
        .map_err(Error::db("preparing the ingest statement"))?;
    let row = tx
        .query_one(&stmt, &[])
        .await
        .map_err(Error::db("applying a batch"))?;
    let inserted = row.get::<_, i64>(0) as u64;
    if clear_stage {
        tx.batch_execute("TRUNCATE tally_stage")
            .await
            .map_err(Error::db("clearing the staging table"))?;
    }
    Ok(WriteOutcome {
        inserted,
        duplicates: events.len() as u64 - inserted,
        quantity: row.get(1),
    })
}

/// Metadata text sent as `jsonb` without parsing it again (binary jsonb is a version
/// byte followed by the text).
#[derive(Debug)]
struct Jsonb<'a>(&'a str);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        if !Self::accepts(ty) {
            return Err(Box::new(WrongType::new::<Self>(ty.clone())));
        }
        self.to_sql(ty, out)
    }
}
