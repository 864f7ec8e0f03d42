//! Reading raw events out in bounded chunks, for exports.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::{CustomerId, Service, TimeRange};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{Error, Numeric, Result, Store};

/// Which raw events to read.
#[derive(Debug, Clone)]
pub struct EventFilter {
    /// `[from, to)`.
    pub range: TimeRange,
    /// One customer, or all.
    pub customer: Option<CustomerId>,
    /// One service, or all.
    pub service: Option<Service>,
}

/// A raw event as stored: metadata is the JSON text PostgreSQL holds (not parsed
/// again), quantity exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its id.
    pub event_id: Uuid,
    /// The customer.
    pub customer_id: String,
    /// The service.
    pub service: String,
    /// The quantity.
    pub quantity: Decimal,
    /// When it happened.
    pub recorded_at: DateTime<Utc>,
    /// Metadata, a JSON object as text.
    pub metadata: String,
}

const CTX: &str = "reading events for export";

fn stored(row: &tokio_postgres::Row) -> Result<StoredEvent> {
    let get = |e| Error::db(CTX)(e);
    Ok(StoredEvent {
        event_id: row.try_get(0).map_err(get)?,
        customer_id: row.try_get(1).map_err(get)?,
        service: row.try_get(2).map_err(get)?,
        quantity: row.try_get::<_, Numeric>(3).map_err(get)?.0,
        recorded_at: row.try_get(4).map_err(get)?,
        metadata: row.try_get(5).map_err(get)?,
    })
}

impl Store {
    /// The raw events matching `filter`, in chunks of up to `chunk` rows, in customer
    /// order, each customer's in time order, so that a reader can total and price
    /// each customer as its rows end, holding one customer at a time. One snapshot: a
    /// transaction and a portal on a pooled connection, fetched chunk by chunk as the
    /// receiver takes them (two chunks ahead at most), so memory stays bounded
    /// however many rows match (the server sorts by customer within `work_mem`,
    /// spilling to disk past it). Dropping the receiver ends the read.
    pub fn events(
        &self,
        filter: EventFilter,
        chunk: usize,
    ) -> mpsc::Receiver<Result<Vec<StoredEvent>>> {
        let (tx, rx) = mpsc::channel(2);
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(e) = store.stream_events(&filter, chunk.max(1), &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }

    async fn stream_events(
        &self,
        filter: &EventFilter,
        chunk: usize,
        out: &mpsc::Sender<Result<Vec<StoredEvent>>>,
    ) -> Result<()> {
        let mut client = self.client(CTX).await?;
        let tx = client
            .build_transaction()
            .read_only(true)
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await
            .map_err(Error::db(CTX))?;
        // The sort by customer in memory up to 64 MB, as the write path's.
        tx.batch_execute("SET LOCAL work_mem = '64MB'")
            .await
            .map_err(Error::db(CTX))?;
        let stmt = tx
            .prepare(
                "SELECT event_id, customer_id, service, quantity, recorded_at, metadata::text
                 FROM usage_events
                 WHERE recorded_at >= $1 AND recorded_at < $2
                   AND ($3::text IS NULL OR customer_id = $3) AND ($4::text IS NULL OR service = $4)
                 ORDER BY customer_id, recorded_at",
            )
            .await
            .map_err(Error::db(CTX))?;
        let portal = tx
            .bind(
                &stmt,
                &[
                    &filter.range.from(),
                    &filter.range.to(),
                    &filter.customer.as_ref().map(CustomerId::as_str),
                    &filter.service.as_ref().map(Service::as_str),
                ],
            )
            .await
            .map_err(Error::db(CTX))?;
        let max = i32::try_from(chunk).unwrap_or(i32::MAX);
        loop {
            let rows = tx
                .query_portal(&portal, max)
                .await
                .map_err(Error::db(CTX))?;
            if rows.is_empty() {
                break;
            }
            let events = rows.iter().map(stored).collect::<Result<Vec<_>>>()?;
            if out.send(Ok(events)).await.is_err() {
                break; // the reader went away
            }
        }
        tx.commit().await.map_err(Error::db(CTX))
    }
}

/// Which recent events to list ([`Store::recent_events`]; OpenMeter's `listEvents`).
#[derive(Debug, Clone)]
pub struct RecentFilter {
    /// When the events happened, `[from, to)`.
    pub range: TimeRange,
    /// Only customers whose id contains this.
    pub customer_contains: Option<String>,
    /// Only events whose id (as text) contains this.
    pub id_contains: Option<String>,
    /// Only these customers (all when empty).
    pub customers: Vec<String>,
    /// At most this many, newest first.
    pub limit: u32,
}

impl Store {
    /// The newest events matching `filter`, newest first (ties by id): a debugging
    /// view, not a bulk read (the raw events have no index, so this scans the
    /// partitions the range covers; [`Store::events`] streams in bulk).
    pub async fn recent_events(&self, filter: &RecentFilter) -> Result<Vec<StoredEvent>> {
        const CTX: &str = "listing recent events";
        let client = self.client(CTX).await?;
        let rows = client
            .query(
                "SELECT event_id, customer_id, service, quantity, recorded_at, metadata::text
                 FROM usage_events
                 WHERE recorded_at >= $1 AND recorded_at < $2
                   AND ($3::text IS NULL OR strpos(customer_id, $3) > 0)
                   AND ($4::text IS NULL OR strpos(event_id::text, lower($4)) > 0)
                   AND (cardinality($6::text[]) = 0 OR customer_id = ANY($6))
                 ORDER BY recorded_at DESC, event_id DESC
                 LIMIT $5",
                &[
                    &filter.range.from(),
                    &filter.range.to(),
                    &filter.customer_contains,
                    &filter.id_contains,
                    &i64::from(filter.limit),
                    &filter.customers,
                ],
            )
            .await
            .map_err(Error::db(CTX))?;
        rows.iter().map(stored).collect()
    }
}
