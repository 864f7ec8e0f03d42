use std::sync::Arc;

use chrono::NaiveDate;
use deadpool_postgres::Pool;
use rust_decimal::Decimal;
use tally_core::{Catalog, Meter, Service, UsageEvent};

use crate::{
    Error, Recorder, RecorderConfig, Result,
    ingest::{self, WriteOutcome},
    migrate::{self, MigrateReport},
    partitions::Partitions,
};

/// A handle on a Tally database: cheap to clone, shared by every task.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    partitions: Partitions,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.inner.pool.status())
            .finish()
    }
}

/// What `verify` found: the raw totals and how many rollup rows disagree with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Raw events stored.
    pub events: i64,
    /// Their total quantity.
    pub quantity: Decimal,
    /// Rollup rows (hourly, daily and all-customer hourly) that differ from a
    /// recomputation from raw events, including rows missing on either side.
    pub mismatches: i64,
    /// Dedupe keys without an event, or events without a key.
    pub key_mismatches: i64,
}

/// The partitions of the events table and what the default partition caught.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    /// Months that have a partition.
    pub months: Vec<NaiveDate>,
    /// Events in the default partition (outside every monthly partition). Not an
    /// error, but worth a look: they are usually far in the past or future.
    pub default_rows: i64,
}

impl Store {
    /// A store for `url` (`postgres://user@host/db` or key=value form) with a pool of 8
    /// connections, made lazily: this does not connect.
    pub fn connect(url: &str) -> Result<Store> {
        Store::with_pool_size(url, 8)
    }

    /// As [`Store::connect`], with at most `pool_size` connections.
    pub fn with_pool_size(url: &str, pool_size: usize) -> Result<Store> {
        let cfg = crate::pool::parse_url(url)?;
        Ok(Store::from_pool(crate::pool::build_pool(cfg, pool_size)?))
    }

    /// A store over an existing pool.
    pub fn from_pool(pool: Pool) -> Store {
        Store {
            inner: Arc::new(Inner {
                pool,
                partitions: Partitions::default(),
            }),
        }
    }

    /// The connection pool, for the crates layered on this one.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Applies missing migrations (see [`crate::migrate()`]) and creates the events
    /// partitions for this month and the next three.
    pub async fn migrate(&self) -> Result<MigrateReport> {
        let mut client = self
            .inner
            .pool
            .get()
            .await
            .map_err(Error::pool("migrating"))?;
        let report = migrate::migrate(&mut client).await?;
        drop(client);
        // Cached statements may refer to the old schema.
        self.inner.pool.manager().statement_caches.clear();
        self.inner.partitions.ensure_ahead(&self.inner.pool).await?;
        Ok(report)
    }

    /// Writes `events` exactly once, in one transaction: events already stored (same
    /// customer and id) are skipped; the rest and their rollups commit together.
    pub async fn write(&self, events: &[UsageEvent]) -> Result<WriteOutcome> {
        self.write_in_lane(events, ingest::next_lane()).await
    }

    /// As [`Store::write`], updating lane `lane` of the all-customer rollup.
    pub(crate) async fn write_in_lane(
        &self,
        events: &[UsageEvent],
        lane: i16,
    ) -> Result<WriteOutcome> {
        self.inner
            .partitions
            .ensure_for(&self.inner.pool, events)
            .await?;
        let mut client = self
            .inner
            .pool
            .get()
            .await
            .map_err(Error::pool("writing events"))?;
        let tx = client
            .transaction()
            .await
            .map_err(Error::db("starting a write"))?;
        let outcome = ingest::write_batch(&tx, events, false, lane).await?;
        tx.commit().await.map_err(Error::db("committing events"))?;
        Ok(outcome)
    }

    pub(crate) fn partitions(&self) -> &Partitions {
        &self.inner.partitions
    }

    /// A recorder writing to this store.
    pub fn recorder(&self, config: RecorderConfig) -> Recorder {
        Recorder::start(self.clone(), config)
    }

    /// The built-in services and the meters defined in the database.
    pub async fn catalog(&self) -> Result<Catalog> {
        let client = self
            .inner
            .pool
            .get()
            .await
            .map_err(Error::pool("reading meters"))?;
        let rows = client
            .query(
                "SELECT service, unit FROM tally_meters WHERE NOT built_in ORDER BY service",
                &[],
            )
            .await
            .map_err(Error::db("reading meters"))?;
        let mut catalog = Catalog::default();
        for row in rows {
            catalog.define(Meter::new(row.get(0), row.get(1))?);
        }
        Ok(catalog)
    }

    /// Defines (or re-units) a user meter.
    pub async fn define_meter(&self, meter: &Meter) -> Result<()> {
        let client = self
            .inner
            .pool
            .get()
            .await
            .map_err(Error::pool("defining a meter"))?;
        client
            .execute(
                "INSERT INTO tally_meters (service, unit) VALUES ($1, $2)
                 ON CONFLICT (service) DO UPDATE SET unit = excluded.unit WHERE NOT tally_meters.built_in",
                &[&meter.service.as_str(), &meter.unit],
            )
            .await
            .map_err(Error::db("defining a meter"))?;
        Ok(())
    }

    /// Recomputes every rollup from the raw events and counts the rows that differ.
    ///
    /// Scans all raw events: an operator's check, not a hot path.
    pub async fn verify(&self) -> Result<VerifyReport> {
        let client = self
            .inner
            .pool
            .get()
            .await
            .map_err(Error::pool("verifying"))?;
        let totals = client
            .query_one(
                "SELECT count(*), coalesce(sum(quantity), 0) FROM usage_events",
                &[],
            )
            .await
            .map_err(Error::db("counting events"))?;
        let mut mismatches = 0i64;
        for (table, unit) in [("usage_hourly", "hour"), ("usage_daily", "day")] {
            // Table and unit come from the fixed list above, never from input.
            let sql = format!(
                "WITH raw AS (
                    SELECT customer_id, service, date_trunc('{unit}', recorded_at, 'UTC') AS bucket,
                           count(*) AS events, sum(quantity) AS quantity, min(quantity) AS lo, max(quantity) AS hi
                    FROM usage_events GROUP BY 1, 2, 3)
                 SELECT count(*) FROM raw FULL JOIN {table} r
                   ON r.customer_id = raw.customer_id AND r.service = raw.service AND r.bucket = raw.bucket
                 WHERE raw.events IS DISTINCT FROM r.events OR raw.quantity IS DISTINCT FROM r.quantity
                    OR raw.lo IS DISTINCT FROM r.min_quantity OR raw.hi IS DISTINCT FROM r.max_quantity"
            );
            let n: i64 = client
                .query_one(&sql, &[])
                .await
                .map_err(Error::db("verifying rollups"))?
                .get(0);
            mismatches += n;
        }
        let total_rows: i64 = client
            .query_one(
                "WITH raw AS (
                    SELECT service, date_trunc('hour', recorded_at, 'UTC') AS bucket,
                           count(*) AS events, sum(quantity) AS quantity, min(quantity) AS lo, max(quantity) AS hi
                    FROM usage_events GROUP BY 1, 2)
                 , lanes AS (
                    SELECT service, bucket, sum(events) AS events, sum(quantity) AS quantity,
                           min(min_quantity) AS min_quantity, max(max_quantity) AS max_quantity
                    FROM usage_hourly_total GROUP BY 1, 2)
                 SELECT count(*) FROM raw FULL JOIN lanes r ON r.service = raw.service AND r.bucket = raw.bucket
                 WHERE raw.events IS DISTINCT FROM r.events OR raw.quantity IS DISTINCT FROM r.quantity
                    OR raw.lo IS DISTINCT FROM r.min_quantity OR raw.hi IS DISTINCT FROM r.max_quantity",
                &[],
            )
            .await
            .map_err(Error::db("verifying the all-customer rollup"))?
            .get(0);
        mismatches += total_rows;
        let key_mismatches: i64 = client
            .query_one(
                "SELECT count(*) FROM usage_event_keys k FULL JOIN usage_events e
                   ON e.event_id = k.event_id AND e.customer_id = k.customer_id
                 WHERE k.event_id IS NULL OR e.event_id IS NULL",
                &[],
            )
            .await
            .map_err(Error::db("verifying dedupe keys"))?
            .get(0);
        Ok(VerifyReport {
            events: totals.get(0),
            quantity: totals.get(1),
            mismatches,
            key_mismatches,
        })
    }

    /// Lists the monthly partitions and counts what the default partition holds.
    pub async fn partition_status(&self) -> Result<PartitionStatus> {
        let client = self
            .inner
            .pool
            .get()
            .await
            .map_err(Error::pool("reading partitions"))?;
        let rows = client
            .query(
                "SELECT to_date(substr(c.relname, 14), 'YYYY_MM') FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'usage_events'::regclass AND c.relname ~ '^usage_events_[0-9]{4}_[0-9]{2}$'
                 ORDER BY 1",
                &[],
            )
            .await
            .map_err(Error::db("listing partitions"))?;
        let default_rows: i64 = client
            .query_one("SELECT count(*) FROM usage_events_default", &[])
            .await
            .map_err(Error::db("counting the default partition"))?
            .get(0);
        Ok(PartitionStatus {
            months: rows.iter().map(|r| r.get(0)).collect(),
            default_rows,
        })
    }

    /// The service named `name`, from the built-ins and defined meters.
    pub async fn service(&self, name: &str) -> Result<Service> {
        Ok(self.catalog().await?.service(name)?)
    }
}
