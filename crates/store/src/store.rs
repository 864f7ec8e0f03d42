use chrono::NaiveDate;
use deadpool_postgres::Pool;
use rust_decimal::Decimal;
use serde::Serialize;
use tally_core::{Catalog, CustomerId, Measure, Meter, Service, TimeRange, UsageEvent, serde_fmt};

use crate::{
    CommitHook, Error, LocalMark, Recorder, RecorderConfig, Result,
    ingest::{Ingest, Lane, WriteOutcome},
    migrate::{self, MigrateReport},
};

/// A handle on a Tally database: cheap to clone, shared by every task.
#[derive(Clone)]
pub struct Store {
    ingest: Ingest,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.pool().status())
            .finish()
    }
}

/// What `verify` found: the raw totals and how many rollup rows disagree with them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Raw events stored.
    pub events: i64,
    /// Their total quantity.
    #[serde(serialize_with = "serde_fmt::decimal")]
    pub quantity: Decimal,
    /// Rollup buckets (hourly, daily and all-customer hourly) that differ from a
    /// recomputation from raw events, including rows missing on either side. Buckets
    /// of archived periods are compared per customer, service and archived span, with
    /// what the archives hold added (docs/archive.md). Every ready meter's rollup
    /// rows too, recomputed from the stored events of its type (those of buckets an
    /// archive took events from are not compared; docs/meters.md).
    pub mismatches: i64,
    /// Events without a dedupe key, plus dedupe keys without an event beyond those
    /// of archived events (whose keys stay unless archived with `forget_keys`).
    pub key_mismatches: i64,
    /// Events held in complete archives (not in `events`).
    pub archived_events: i64,
    /// Their total quantity.
    #[serde(serialize_with = "serde_fmt::decimal")]
    pub archived_quantity: Decimal,
}

/// The partitions of the events table and what the default partition caught.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionStatus {
    /// Months that have a partition (first days; `YYYY-MM` in JSON).
    #[serde(serialize_with = "serde_fmt::months")]
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
        let pool = crate::pool::build_pool(cfg.clone(), pool_size)?;
        Ok(Store {
            ingest: Ingest::new(pool, cfg),
        })
    }

    pub(crate) fn pool(&self) -> &Pool {
        self.ingest.pool()
    }

    /// A pooled connection, for doing `context`.
    pub(crate) async fn client(&self, context: &'static str) -> Result<deadpool_postgres::Client> {
        self.pool().get().await.map_err(Error::pool(context))
    }

    pub(crate) fn ingest(&self) -> &Ingest {
        &self.ingest
    }

    /// Connects now (the pool is otherwise lazy) and runs `SELECT 1`: a server that is
    /// down, a wrong password or a missing database fails here, with a message naming
    /// host, port, user and database (never the password).
    pub async fn check_connection(&self) -> Result<()> {
        let cfg = self.ingest.config();
        let hosts: Vec<String> = cfg
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = cfg.get_ports().iter().map(u16::to_string).collect();
        let target = format!(
            "{} port {} as user {} (database {})",
            if hosts.is_empty() {
                "localhost".to_owned()
            } else {
                hosts.join(",")
            },
            if ports.is_empty() {
                "5432".to_owned()
            } else {
                ports.join(",")
            },
            cfg.get_user().unwrap_or("(default)"),
            cfg.get_dbname().unwrap_or("(default)"),
        );
        let client = self.pool().get().await.map_err(Error::connect(target))?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(Error::db("checking the connection"))?;
        Ok(())
    }

    /// Applies missing migrations (advisory-locked, checksummed, idempotent) and creates the events
    /// partitions for this month and the next three.
    pub async fn migrate(&self) -> Result<MigrateReport> {
        let mut client = self.client("migrating").await?;
        let report = migrate::migrate(&mut client).await?;
        drop(client);
        // Cached statements may refer to the old schema.
        self.pool().manager().statement_caches.clear();
        self.ingest.ensure_partitions_ahead(None).await?;
        Ok(report)
    }

    /// Gives `role` exactly what an application needs on Tally's tables and takes back
    /// anything wider (the SQL is [`crate::app_grants`]), in one transaction. Run as the
    /// schema owner after each migrate: a table a later migration adds is the
    /// application's only once this ran again.
    pub async fn grant_app(&self, role: &str) -> Result<()> {
        const CTX: &str = "granting the application role";
        let sql = migrate::app_grants(role)?;
        let mut client = self.client(CTX).await?;
        let tx = client.transaction().await.map_err(Error::db(CTX))?;
        tx.batch_execute(&sql).await.map_err(Error::db(CTX))?;
        tx.commit().await.map_err(Error::db(CTX))
    }

    /// Creates the events partitions of this month and `months` after it (what a
    /// schedule runs as the schema owner, so an application role without DDL rights
    /// never needs to). Returns the months now covered.
    pub async fn ensure_partitions_ahead(&self, months: u32) -> Result<Vec<NaiveDate>> {
        if months > 120 {
            return Err(Error::invalid(
                "months",
                months.to_string(),
                "must be at most 120",
            ));
        }
        self.ingest.ensure_partitions_ahead(Some(months)).await
    }

    /// Writes `events` exactly once, in one transaction: events already stored (same
    /// customer and id) are skipped; the rest and their rollups commit together.
    /// Every event is checked first ([`UsageEvent::check`]): on a bad one nothing is
    /// written.
    pub async fn write(&self, events: &[UsageEvent]) -> Result<WriteOutcome> {
        for e in events {
            e.check()?;
        }
        self.ingest.write_counted(events, Lane::next()).await
    }

    /// Writes `events` (all of one customer) only if `admit` accepts what they do to
    /// each key: the (before, after) of that customer's usage of the key's service, or
    /// of its meter's value, over the key's range (`None`: a meter not ready to read),
    /// read in the write's own transaction under a lock of each key (see
    /// `tally_alerts::Alerts::record_within_quota`). `None`: refused, nothing written.
    pub async fn write_admitted(
        &self,
        events: &[UsageEvent],
        keys: &[(CustomerId, Measure, TimeRange)],
        admit: impl FnOnce(&[Option<(Decimal, Decimal)>]) -> bool,
    ) -> Result<Option<WriteOutcome>> {
        for e in events {
            e.check()?;
            for (customer, measure, _) in keys {
                let service_differs = measure.service().is_some_and(|s| *s != e.service);
                if e.customer != *customer || service_differs {
                    return Err(Error::internal(
                        "an admitted write",
                        format!(
                            "an event of {}/{} in a write admitted for {customer}/{measure} only",
                            e.customer, e.service
                        ),
                    ));
                }
            }
        }
        self.ingest
            .write_admitted(events, Lane::next(), keys, admit)
            .await
    }

    /// Registers `hook`, called after every batch this handle's write path commits
    /// ([`Store::write`], the recorders, import) with the customer and service pairs
    /// it touched. Hooks run on the writer's task: they must be quick (hand the keys
    /// over, don't do I/O).
    pub fn on_commit(&self, hook: CommitHook) {
        self.ingest.local().on_commit(hook);
    }

    /// Marks how much of `customer`'s `service` usage this process has written so far;
    /// take it just before reading that usage from the database, and add
    /// [`Store::local_since`] to what was read.
    pub fn local_mark(&self, customer: &CustomerId, service: &Service) -> LocalMark {
        self.ingest.local().mark(customer, service)
    }

    /// What this process has handed to its write path for `customer` and `service`
    /// that a database read after `mark` may not include: everything recorded since,
    /// plus what was still uncommitted at the mark. It may count an event twice (one
    /// committed between the mark and the read) but never misses one. `None` when the
    /// mark is too old to tell (read again).
    pub fn local_since(
        &self,
        customer: &CustomerId,
        service: &Service,
        mark: LocalMark,
    ) -> Option<Decimal> {
        self.ingest.local().since(customer, service, mark)
    }

    /// A recorder writing to this store.
    pub fn recorder(&self, config: RecorderConfig) -> Recorder {
        Recorder::start(self.ingest.clone(), config)
    }

    /// The built-in services and the meters defined in the database.
    pub async fn catalog(&self) -> Result<Catalog> {
        let client = self.client("reading meters").await?;
        let rows = client
            .query(
                "SELECT service, unit FROM tally_meters WHERE NOT built_in ORDER BY service",
                &[],
            )
            .await
            .map_err(Error::db("reading meters"))?;
        let mut catalog = Catalog::default();
        for row in rows {
            let (service, unit): (&str, &str) = (
                row.try_get(0).map_err(Error::db("reading meters"))?,
                row.try_get(1).map_err(Error::db("reading meters"))?,
            );
            let meter = Meter::new(service, unit).map_err(|e| {
                Error::corrupt(
                    "reading meters",
                    format!("an invalid row in tally_meters: {e}"),
                )
            })?;
            catalog.define(meter);
        }
        Ok(catalog)
    }

    /// Defines (or re-units) a user meter.
    /// Refused (`Invalid`, field `service`) where a meter has that slug: the service
    /// would be a built-in meter of the same name.
    pub async fn define_meter(&self, meter: &Meter) -> Result<()> {
        let client = self.client("defining a meter").await?;
        match crate::meters::meter_on(&client, meter.service.as_str()).await {
            Ok(_) => {
                return Err(Error::invalid(
                    "service",
                    meter.service.as_str(),
                    "is a meter's slug, and a service is a built-in meter of its own name; choose another name",
                ));
            }
            Err(e) if e.kind() == crate::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
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
        let client = self.client("verifying").await?;
        let totals = client
            .query_one(
                "SELECT count(*), coalesce(sum(quantity), 0) FROM usage_events",
                &[],
            )
            .await
            .map_err(Error::db("counting events"))?;
        let mut mismatches = 0i64;
        for rollup in crate::rollup::ROLLUPS {
            let n: i64 = client
                .query_one(&rollup.verify_sql(), &[])
                .await
                .map_err(Error::db("verifying rollups"))?
                .try_get(0)
                .map_err(Error::db("verifying rollups"))?;
            mismatches += n;
        }
        let keys = client
            .query_one(
                "SELECT count(*) FILTER (WHERE k.event_id IS NULL), count(*) FILTER (WHERE e.event_id IS NULL)
                 FROM usage_event_keys k FULL JOIN usage_events e
                   ON e.event_id = k.event_id AND e.customer_id = k.customer_id
                 WHERE k.event_id IS NULL OR e.event_id IS NULL",
                &[],
            )
            .await
            .map_err(Error::db("verifying dedupe keys"))?;
        let (no_key, no_event): (i64, i64) = (
            keys.try_get(0)
                .map_err(Error::db("verifying dedupe keys"))?,
            keys.try_get(1)
                .map_err(Error::db("verifying dedupe keys"))?,
        );
        let kept: i64 = client
            .query_one(
                "SELECT coalesce(sum(events), 0)::int8 FROM usage_archives WHERE state = 'complete' AND keys_kept",
                &[],
            )
            .await
            .map_err(Error::db("reading the archive ledger"))?
            .try_get(0)
            .map_err(Error::db("reading the archive ledger"))?;
        let (archived_events, archived_quantity) = self.archived_totals().await?;
        mismatches += self.verify_meters().await?;
        Ok(VerifyReport {
            events: totals.try_get(0).map_err(Error::db("counting events"))?,
            quantity: totals
                .try_get::<_, crate::Numeric>(1)
                .map_err(Error::db("counting events"))?
                .0,
            mismatches,
            key_mismatches: no_key + (no_event - kept).abs(),
            archived_events,
            archived_quantity,
        })
    }

    /// Lists the monthly partitions and counts what the default partition holds.
    pub async fn partition_status(&self) -> Result<PartitionStatus> {
        let client = self.client("reading partitions").await?;
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
            .try_get(0)
            .map_err(Error::db("counting the default partition"))?;
        Ok(PartitionStatus {
            months: rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()
                .map_err(Error::db("listing partitions"))?,
            default_rows,
        })
    }

    /// The service named `name`, from the built-ins and defined meters.
    pub async fn service(&self, name: &str) -> Result<Service> {
        Ok(self.catalog().await?.service(name)?)
    }
}
