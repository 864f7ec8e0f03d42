//! Usage metering and usage-based billing inside your application's own PostgreSQL.
//!
//! This is the one crate to depend on. [`Tally`] is a handle on a Tally database: it
//! records usage exactly once (directly or through a batching [`Recorder`]), imports
//! files, verifies the rollups, reads summaries, aggregations, statistics, trends,
//! peaks and invoices, checks quotas and fires and delivers alerts. Every call returns
//! the one error type, [`Error`]. The crate only re-exports and delegates: the logic
//! lives in `tally-core` (domain, pricing), `tally-store` (PostgreSQL),
//! `tally-analytics` (reads), `tally-alerts` (quotas and alerts) and `tally-export`
//! (files).
//!
//! ```no_run
//! use tally::{CustomerId, Granularity, Service, Tally, TimeRange, Zone, track};
//! use tally::export::{EventFilter, ExportFormat};
//!
//! # async fn run() -> Result<(), tally::Error> {
//! // Connects now: a wrong URL or password fails here, naming host, port and user.
//! // (`Tally::builder(url)` configures; `TallyBuilder::from_env()` reads DATABASE_URL,
//! // USAGE_BATCH_* and USAGE_ALERT_*; nothing else reads the environment.)
//! let tally = Tally::connect("postgres://postgres@127.0.0.1/app").await?;
//! tally.migrate().await?;
//!
//! // Record from any task: the recorder batches, writes by binary COPY, exactly once.
//! let recorder = tally.recorder();
//! let customer: CustomerId = "acme".parse()?;
//! let usage = track::api_request("/v1/things", "GET", 200)?;
//! recorder.record(usage.for_customer(customer.clone())).await?;
//! recorder.flush().await?; // committed; alerts are evaluated after each batch
//!
//! // Read it back, priced: this month so far.
//! let month = TimeRange::this_month(Zone::UTC);
//! let summary = tally.summary(&customer, month).await?;
//! println!("{} due", summary.total_amount);
//! let days = tally.usage(month).customer(&customer).by(Granularity::Day).await?;
//! println!("{} days with usage", days.buckets.len());
//!
//! // Quotas: on the free plan (hard limits), a request past the limit is blocked.
//! tally.alerts().assign_plan(&customer, &"free".parse()?, None).await?;
//! let decision = tally.check_quota(&customer, &Service::API, "1".parse()?).await?;
//! if !decision.allowed() { /* answer 429 */ }
//!
//! // Export the month for finance, as a workbook that never overwrites a file.
//! let filter = EventFilter { range: month, customer: Some(customer), service: None };
//! tally.export_to(ExportFormat::Xlsx, filter, "usage.xlsx".as_ref(), false, None).await?;
//! recorder.close().await?;
//! # Ok(()) }
//! ```
//!
//! Reads are query builders (sqlx-style): the required parts in the call, the rest as
//! methods, `.await` runs it; each honours a zone, the handle's ([`TallyBuilder::zone`])
//! by default. Money is always named `amount` (`total_amount` for a sum of amounts);
//! anything else is a quantity or a count.
//!
//! Names that would collide or that only some programs need are grouped:
//! [`pricing`] (price books), [`report`] (read results and queries), [`import`] (file import),
//! [`alerts`] (quotas, plans, alerts and sinks), [`export`] (CSV, JSON, XLSX),
//! [`archive`] (archive and restore).

#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::io::Read;

use tally_alerts::{AlertConfig, Alerts};
use tally_analytics::Analytics;

pub use tally_core::{
    BuiltIn, Catalog, CustomerId, EventId, Granularity, Level, Limit, Metadata, Meter, Progress,
    Quantity, Service, Thresholds, TimeRange, Totals, Usage, UsageEvent, Zone, check_instant,
    chrono, convert, normalize_instant, parse_instant, parse_month, rust_decimal, serde_fmt,
    supported_instants, track, uuid,
};
pub use tally_store::{
    Error, ErrorKind, MigrateReport, PartitionStatus, Recorder, RecorderConfig, RecorderStatus,
    Result, VerifyReport, WriteOutcome, app_grants,
};

/// Meters (docs/meters.md): what a meter is, the events it reads, how it is queried.
pub mod meters {
    pub use tally_core::meter::{
        Acc, Aggregation, CloudEvent, DEFAULT_CARDINALITY_LIMIT, Dimension, EventType, EventsError,
        JsonPath, MAX_DIMENSIONS, MeterSlug, MeterSpec, Payload, WindowSize, parse_events,
    };
    pub use tally_store::{DefinedMeter, MeterQuery, MeterQueryResult, MeterRow, MeterState};
}

/// Price books: per-unit, package, graduated and volume prices, allowances, one
/// rounding point.
pub mod pricing {
    pub use tally_core::{
        Charge, Line, MONEY_SCALE, MeterPrice, MeterPrices, Metered, Price, PriceBook, PriceModel,
        PriceVersion, Rounding, Tier, currency_exponent, round_money, round_to,
    };
}

/// The read queries and what they return. Each result serializes to the JSON of the
/// CLI contract.
pub mod report {
    #[doc(hidden)]
    pub use tally_analytics::percentile_cont;
    pub use tally_analytics::{
        Aggregation, Answer, Bucket, DayLine, Invoice, InvoiceLine, LineKind, Over, Peak,
        PeaksQuery, ServiceLine, Stats, StatsQuery, Summary, SummaryQuery, TrendDay, TrendsQuery,
        UsageQuery,
    };
}

/// Quotas, plans, alerts and where alerts are delivered.
pub mod alerts {
    pub use tally_alerts::{
        Admission, AlertConfig, Alerts, Delivery, DeliveryReport, LogFileSink, Sink, SinkError,
        StderrSink,
    };
    pub use tally_core::{
        Alert, AnchorDay, BillingCycle, Decision, Measure, MeterSlug, Mode, PeriodName, Plan,
        PlanName, Quota, QuotaLimit, QuotaSource, percent_of,
    };
    pub use tally_store::AlertFilter;
}

/// Exports of raw usage as CSV, JSON or XLSX.
pub mod export {
    pub use tally_export::{
        COLUMNS, ExportFormat, ExportReport, Exporter, ServiceTotal, XLSX_MAX_ROWS,
        default_file_name,
    };
    pub use tally_store::{EventFilter, RecentFilter, StoredEvent};
}

/// Archives of old raw events, and restoring them.
pub mod archive {
    pub use tally_store::{ArchiveOptions, ArchiveReport, Manifest, RestoreReport, ServiceCount};
}

/// Bulk import of CSV and NDJSON files.
pub mod import {
    #[doc(hidden)]
    pub use tally_store::parse_file;
    pub use tally_store::{ImportFormat, ImportOptions, ImportReport, LineError, MAX_LINE_BYTES};
}

/// The error of parsing a value from outside (a customer id, a quantity, a zone...):
/// it names the field and the value, and `?` turns it into an [`Error`] of kind
/// [`ErrorKind::Invalid`].
pub use tally_core::Error as InvalidInput;

#[doc(hidden)]
pub use tally_store::schema_fingerprint;

use import::{ImportOptions, ImportReport};
use pricing::PriceBook;
use report::{Invoice, PeaksQuery, StatsQuery, SummaryQuery, TrendsQuery, UsageQuery};

/// A handle on a Tally database. Cheap to clone; share it between tasks.
#[derive(Debug, Clone)]
pub struct Tally {
    store: tally_store::Store,
    analytics: Analytics,
    alerts: Alerts,
    recorder_config: RecorderConfig,
}

/// Configures a [`Tally`], the one way to: [`Tally::builder`] or
/// [`TallyBuilder::from_env`], then [`TallyBuilder::build`] (connects) or
/// [`TallyBuilder::build_lazy`] (connects on first use).
#[must_use]
pub struct TallyBuilder {
    url: String,
    pool_size: usize,
    recorder: RecorderConfig,
    alerts: tally_alerts::AlertConfig,
    prices: Option<PriceBook>,
    zone: Zone,
    sinks: Vec<std::sync::Arc<dyn alerts::Sink>>,
}

impl std::fmt::Debug for TallyBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TallyBuilder")
            .field("pool_size", &self.pool_size)
            .field("recorder", &self.recorder)
            .field("alerts", &self.alerts)
            .field("zone", &self.zone)
            .field("sinks", &self.sinks.len())
            .finish_non_exhaustive()
    }
}

impl TallyBuilder {
    /// A builder from the environment, the seed's variables: `DATABASE_URL` (required),
    /// `USAGE_BATCH_SIZE`, `USAGE_BATCH_TIMEOUT`, `USAGE_ALERT_WARNING`,
    /// `USAGE_ALERT_CRITICAL`, `USAGE_ALERT_EXCEEDED`. A bad value is an error naming
    /// the variable.
    pub fn from_env() -> Result<TallyBuilder> {
        TallyBuilder::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`TallyBuilder::from_env`], reading the variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<TallyBuilder> {
        let url = lookup("DATABASE_URL")
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| InvalidInput::Setting {
                field: "DATABASE_URL",
                value: String::new(),
                reason: "is not set; it names the database (postgres://user@host/db)".into(),
            })?;
        let mut b = Tally::builder(url);
        b.recorder = RecorderConfig::from_lookup(&lookup)?;
        b.alerts = tally_alerts::AlertConfig::from_lookup(&lookup)?;
        Ok(b)
    }

    /// Connections in the pool (default 8).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.max(1);
        self
    }

    /// How [`Tally::recorder`] batches (default [`RecorderConfig::default`]).
    pub fn recorder(mut self, config: RecorderConfig) -> Self {
        self.recorder = config;
        self
    }

    /// Events per recorder batch.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.recorder = self.recorder.batch_size(n);
        self
    }

    /// Longest an event waits in the recorder's queue.
    pub fn batch_timeout(mut self, d: std::time::Duration) -> Self {
        self.recorder = self.recorder.batch_timeout(d);
        self
    }

    /// Alert thresholds (a plan may have its own).
    pub fn thresholds(mut self, t: Thresholds) -> Self {
        self.alerts = self.alerts.thresholds(t);
        self
    }

    /// Everything about quota checks and alert delivery.
    pub fn alert_config(mut self, config: tally_alerts::AlertConfig) -> Self {
        self.alerts = config;
        self
    }

    /// The price book reads and exports use (default: the built-in per-unit prices).
    pub fn prices(mut self, prices: PriceBook) -> Self {
        self.prices = Some(prices);
        self
    }

    /// The zone every read uses unless its query names one ([`Tally::zone`]; default
    /// UTC).
    pub fn zone(mut self, zone: Zone) -> Self {
        self.zone = zone;
        self
    }

    /// Adds an alert sink.
    pub fn sink(mut self, sink: std::sync::Arc<dyn alerts::Sink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Connects now: a server that is down, a wrong password or a missing database
    /// fails here, naming host, port, user and database (never the password). Alerts
    /// are then evaluated after every batch the write path commits.
    pub async fn build(self) -> Result<Tally> {
        let tally = self.build_lazy()?;
        tally.store.check_connection().await?;
        Ok(tally)
    }

    /// As [`TallyBuilder::build`], connecting on first use instead (a bad URL still
    /// fails here): for a program that must start while the database is down.
    pub fn build_lazy(self) -> Result<Tally> {
        let store = tally_store::Store::with_pool_size(&self.url, self.pool_size)?;
        let mut analytics = Analytics::new(store.clone()).with_zone(self.zone);
        if let Some(p) = self.prices {
            analytics = analytics.with_prices(p);
        }
        let alerts = Alerts::new(store.clone(), self.alerts);
        for s in self.sinks {
            alerts.add_sink(s);
        }
        alerts.watch();
        Ok(Tally {
            store,
            analytics,
            alerts,
            recorder_config: self.recorder,
        })
    }
}

impl Tally {
    /// Connects to `url` (`postgres://…` or `host=… dbname=…`) with the defaults: a
    /// pool of 8, UTC, the built-in prices and thresholds. A server that is down or a
    /// wrong password fails here; [`Tally::builder`] configures anything else.
    pub async fn connect(url: &str) -> Result<Tally> {
        Tally::builder(url).build().await
    }

    /// As [`Tally::connect`], connecting on first use instead.
    pub fn connect_lazy(url: &str) -> Result<Tally> {
        Tally::builder(url).build_lazy()
    }

    /// A builder for `url`: pool size, recorder batching, alert thresholds and sinks,
    /// price book, default zone. It reads no environment ([`TallyBuilder::from_env`]
    /// does).
    pub fn builder(url: impl Into<String>) -> TallyBuilder {
        TallyBuilder {
            url: url.into(),
            pool_size: 8,
            recorder: RecorderConfig::default(),
            alerts: AlertConfig::default(),
            prices: None,
            zone: Zone::UTC,
            sinks: Vec::new(),
        }
    }

    /// A batching recorder configured as the builder said. Alerts are evaluated after
    /// each batch it commits.
    pub fn recorder(&self) -> Recorder {
        self.recorder_with(self.recorder_config.clone())
    }

    /// A batching recorder configured by `config`.
    pub fn recorder_with(&self, config: RecorderConfig) -> Recorder {
        self.alerts.watch();
        self.store.recorder(config)
    }

    /// The zone reads use unless a query names one (set by the builder; UTC otherwise).
    pub fn zone(&self) -> Zone {
        self.analytics.zone()
    }

    /// An exporter over this database, pricing rows with [`Tally::prices`].
    pub fn exporter(&self) -> export::Exporter {
        export::Exporter::new(self.store.clone(), self.analytics.clone())
    }

    /// Writes the raw events matching `filter` to `out` as CSV, JSON or XLSX,
    /// streaming; see [`export::Exporter::export`].
    pub async fn export(
        &self,
        format: export::ExportFormat,
        filter: export::EventFilter,
        out: Box<dyn std::io::Write + Send>,
        progress: Option<Progress>,
    ) -> Result<export::ExportReport> {
        self.exporter().export(format, filter, out, progress).await
    }

    /// Writes the raw events matching `filter` to the file `path`, whole or not at
    /// all, never over an existing file unless `force`; see
    /// [`export::Exporter::export_to`].
    pub async fn export_to(
        &self,
        format: export::ExportFormat,
        filter: export::EventFilter,
        path: &std::path::Path,
        force: bool,
        progress: Option<Progress>,
    ) -> Result<export::ExportReport> {
        self.exporter()
            .export_to(format, filter, path, force, progress)
            .await
    }

    /// Moves raw events older than the cutoff to archive files (rollups and dedupe
    /// keys stay); see docs/archive.md.
    pub async fn archive(
        &self,
        options: &archive::ArchiveOptions,
    ) -> Result<archive::ArchiveReport> {
        self.store.archive(options).await
    }

    /// How many events matching `filter`'s customer and service are in archives whose
    /// span overlaps its range (an upper bound): why an export of an archived range
    /// finds nothing.
    pub async fn archived_events(&self, filter: &export::EventFilter) -> Result<i64> {
        self.store.archived_events(filter).await
    }

    /// Puts an archive's raw events back (not into the rollups: they never left).
    pub async fn restore(&self, file: &std::path::Path) -> Result<archive::RestoreReport> {
        self.store.restore(file).await
    }

    /// Quotas, plans, alert history and delivery.
    pub fn alerts(&self) -> &Alerts {
        &self.alerts
    }

    /// May `customer` use `requested` more of a service (a `&Service`), or add it to a
    /// meter's value (a `&MeterSlug`), now? Allow, warn or block; see
    /// [`Alerts::check_quota`].
    pub async fn check_quota(
        &self,
        customer: &CustomerId,
        on: impl Into<alerts::Measure>,
        requested: Quantity,
    ) -> Result<alerts::Decision> {
        self.alerts.check_quota(customer, on, requested).await
    }

    /// Records `event` only if every quota it counts against lets it through (its
    /// service's and each of its type's meters'), exact across processes (one
    /// transaction per event under a lock of each); see [`Alerts::record_within_quota`].
    pub async fn record_within_quota(&self, event: &UsageEvent) -> Result<alerts::Admission> {
        self.alerts.watch();
        self.alerts.record_within_quota(event).await
    }

    /// The price book reads use.
    pub fn prices(&self) -> &PriceBook {
        self.analytics.prices()
    }

    /// Applies the embedded migrations; safe to run concurrently and repeatedly.
    pub async fn migrate(&self) -> Result<MigrateReport> {
        self.store.migrate().await
    }

    /// Writes events exactly once, now, in one transaction; alerts are evaluated
    /// after it commits.
    pub async fn write(&self, events: &[UsageEvent]) -> Result<WriteOutcome> {
        self.alerts.watch();
        self.store.write(events).await
    }

    /// Writes CloudEvents exactly once, now, in one transaction (as [`Tally::write`]):
    /// each is stored under its type, deduplicated by `source` and `id`, and metered
    /// by every meter of its type; one a meter cannot read refuses the whole call,
    /// naming the meter, the path and why. An event without `time` is stamped now.
    pub async fn write_cloud_events(&self, events: &[meters::CloudEvent]) -> Result<WriteOutcome> {
        let now = chrono::Utc::now();
        let events = events
            .iter()
            .map(|e| e.clone().into_usage(now))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        self.write(&events).await
    }

    /// Creates a meter and backfills it from the stored events of its type; see
    /// [`tally_store::Store::create_meter`]. `progress` is told the events read.
    pub async fn create_meter(
        &self,
        spec: &meters::MeterSpec,
        progress: Option<Progress>,
    ) -> Result<meters::DefinedMeter> {
        self.store.create_meter(spec, progress).await
    }

    /// Counts a meter's stored events again from scratch when its backfill was
    /// interrupted or failed; see [`tally_store::Store::restart_meter`].
    pub async fn restart_meter(
        &self,
        slug_or_id: &str,
        progress: Option<Progress>,
    ) -> Result<meters::DefinedMeter> {
        self.store.restart_meter(slug_or_id, progress).await
    }

    /// Every meter, by slug.
    pub async fn meters(&self) -> Result<Vec<meters::DefinedMeter>> {
        self.store.meters().await
    }

    /// The meter with this slug or id.
    pub async fn meter(&self, slug_or_id: &str) -> Result<meters::DefinedMeter> {
        self.store.meter(slug_or_id).await
    }

    /// Renames or redescribes a meter (`None` clears the field); what it meters, and
    /// so its rollups, are unchanged.
    pub async fn update_meter(
        &self,
        slug_or_id: &str,
        name: Option<String>,
        description: Option<String>,
    ) -> Result<meters::DefinedMeter> {
        self.store.update_meter(slug_or_id, name, description).await
    }

    /// The newest stored events matching `filter`, newest first: a debugging view
    /// (see [`tally_store::Store::recent_events`]).
    pub async fn recent_events(
        &self,
        filter: &export::RecentFilter,
    ) -> Result<Vec<export::StoredEvent>> {
        self.store.recent_events(filter).await
    }

    /// Deletes a meter (it is no longer maintained or queried; its slug is free).
    pub async fn delete_meter(&self, slug_or_id: &str) -> Result<meters::DefinedMeter> {
        self.store.delete_meter(slug_or_id).await
    }

    /// Reads a meter: one query for every aggregation, window, zone, grouping and
    /// filter ([`meters::MeterQuery`]).
    pub async fn query_meter(
        &self,
        slug_or_id: &str,
        query: &meters::MeterQuery,
    ) -> Result<meters::MeterQueryResult> {
        self.store.query_meter(slug_or_id, query).await
    }

    /// Imports a CSV or NDJSON stream.
    pub async fn import<R: Read + Send + 'static>(
        &self,
        reader: R,
        options: ImportOptions,
        progress: Option<Progress>,
    ) -> Result<ImportReport> {
        self.alerts.watch();
        self.store.import(reader, options, progress).await
    }

    /// Recomputes the rollups from raw events and reports differences.
    pub async fn verify(&self) -> Result<VerifyReport> {
        self.store.verify().await
    }

    /// The known services (built-ins and defined meters).
    pub async fn catalog(&self) -> Result<Catalog> {
        self.store.catalog().await
    }

    /// The service named `name` (a built-in or a defined meter).
    pub async fn service(&self, name: &str) -> Result<Service> {
        self.store.service(name).await
    }

    /// Defines a user meter.
    pub async fn define_meter(&self, meter: &Meter) -> Result<()> {
        self.store.define_meter(meter).await
    }

    /// The events table's partitions and what the default partition holds.
    pub async fn partition_status(&self) -> Result<PartitionStatus> {
        self.store.partition_status().await
    }

    /// Gives the application role `role` exactly the privileges it needs on Tally's
    /// tables, taking back anything wider (docs/operations.md; the SQL is
    /// [`app_grants`]). Run as the schema owner after each migrate.
    pub async fn grant_app(&self, role: &str) -> Result<()> {
        self.store.grant_app(role).await
    }

    /// Creates the events partitions of this month and `months` after it (run it as
    /// the schema owner on a schedule; see docs/operations.md, "Least privilege").
    pub async fn ensure_partitions_ahead(&self, months: u32) -> Result<Vec<chrono::NaiveDate>> {
        self.store.ensure_partitions_ahead(months).await
    }

    /// A customer's usage and cost per service over `range`: `.service(s)`,
    /// `.daily()` (a per-day breakdown), `.in_zone(z)`, then `.await`.
    pub fn summary(&self, customer: &CustomerId, range: TimeRange) -> SummaryQuery<'_> {
        self.analytics.summary(customer, range)
    }

    /// Usage per bucket over `range`, all customers added up unless `.customer(c)`;
    /// `.service(s)`, `.by(granularity)` (default day), `.in_zone(z)`, then `.await`.
    pub fn usage(&self, range: TimeRange) -> UsageQuery<'_> {
        self.analytics.usage(range)
    }

    /// Statistics of a customer's use of a service over whole days before `as_of`'s:
    /// `.days(n)` (default 30), `.over(o)` (default events), `.as_of(t)` (default now),
    /// `.in_zone(z)`, then `.await`.
    pub fn stats(&self, customer: &CustomerId, service: &Service) -> StatsQuery<'_> {
        self.analytics.stats(customer, service)
    }

    /// Daily totals with day-over-day change: `.service(s)`, `.days(n)` (default 7),
    /// `.as_of(t)` (default now), `.in_zone(z)`, then `.await`.
    pub fn trends(&self, customer: &CustomerId) -> TrendsQuery<'_> {
        self.analytics.trends(customer)
    }

    /// The largest buckets of a customer's use of a service: `.by(granularity)`
    /// (default hour), `.limit(n)` (default 10), `.in_zone(z)`, then `.await`.
    pub fn peaks(&self, customer: &CustomerId, service: &Service) -> PeaksQuery<'_> {
        self.analytics.peaks(customer, service)
    }

    /// When `customer`'s billing periods start (`alerts().set_billing_cycle` sets it;
    /// the 1st of the month, UTC, otherwise). Its `period_at` and `period_named` give
    /// the periods to invoice.
    pub async fn billing_cycle(&self, customer: &CustomerId) -> Result<alerts::BillingCycle> {
        self.store.billing_cycle(customer).await
    }

    /// An invoice preview for `period`.
    pub async fn invoice(&self, customer: &CustomerId, period: TimeRange) -> Result<Invoice> {
        self.analytics.invoice(customer, period).await
    }
}
