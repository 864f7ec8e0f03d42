//! Usage metering and usage-based billing inside your application's own PostgreSQL.
//!
//! This is the one crate to depend on. [`Tally`] is a handle on a Tally database; it
//! re-exports the domain types of `tally-core` and the write path of `tally-store`
//! and adds no logic of its own.
//!
//! ```no_run
//! use tally::{CustomerId, RecorderConfig, Tally, track};
//!
//! # async fn run() -> Result<(), tally::Error> {
//! let tally = Tally::connect("postgres://postgres@127.0.0.1/app")?;
//! tally.migrate().await?;
//!
//! // Record from any task: the recorder batches, writes by binary COPY, exactly once.
//! let recorder = tally.recorder(RecorderConfig::from_env()?);
//! let customer: CustomerId = "acme".parse()?;
//! let usage = track::api_request("/v1/things", "GET", 200)?;
//! recorder.record(usage.for_customer(customer)).await?;
//! recorder.close().await?;
//!
//! let check = tally.verify().await?;
//! assert_eq!(check.mismatches, 0);
//! # Ok(()) }
//! ```

use std::io::Read;

pub use tally_analytics::{
    Analytics, Bucket, DayLine, Invoice, InvoiceLine, Over, Peak, ServiceLine, Stats, Summary,
    TrendDay, percentile_cont,
};
/// A value from outside that failed validation (names the field and the value).
pub use tally_core::Error as InvalidInput;
pub use tally_core::{
    BuiltIn, Catalog, CustomerId, EventId, Granularity, Level, Line, MONEY_SCALE, Metadata, Meter,
    Price, PriceBook, PriceModel, PriceVersion, Quantity, Service, Thresholds, Tier, TimeRange,
    Usage, UsageEvent, Zone, chrono, convert, format_compact, parse_instant, parse_month,
    round_money, rust_decimal, track, uuid,
};
/// An error of the storage layer (database, files, settings).
pub use tally_store::Error as StoreError;
pub use tally_store::{
    ImportFormat, ImportOptions, ImportReport, LineError, MigrateReport, PartitionStatus, Progress,
    Recorder, RecorderConfig, RecorderStatus, Store, VerifyReport, WriteOutcome,
};

/// Any error Tally returns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value from outside failed validation (names the field and value).
    #[error(transparent)]
    Invalid(#[from] tally_core::Error),
    /// The database, a file or a setting failed.
    #[error(transparent)]
    Store(#[from] tally_store::Error),
    /// Any other failure of the read side.
    #[error(transparent)]
    Analytics(tally_analytics::Error),
}

impl From<tally_analytics::Error> for Error {
    fn from(e: tally_analytics::Error) -> Error {
        match e {
            tally_analytics::Error::Invalid(e) => Error::Invalid(e),
            tally_analytics::Error::Store(e) => Error::Store(e),
            other => Error::Analytics(other),
        }
    }
}

impl Error {
    /// The SQLSTATE, when the database refused something.
    pub fn sqlstate(&self) -> Option<&tally_store::tokio_postgres::error::SqlState> {
        match self {
            Error::Store(e) => e.sqlstate(),
            Error::Invalid(_) | Error::Analytics(_) => None,
        }
    }
}

/// How many schema migrations this build embeds.
pub const MIGRATIONS_COUNT: usize = tally_store::MIGRATIONS.len();

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A handle on a Tally database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tally {
    store: Store,
}

impl Tally {
    /// A handle for `url` (`postgres://…` or `host=… dbname=…`); connects lazily.
    pub fn connect(url: &str) -> Result<Tally> {
        Ok(Tally {
            store: Store::connect(url)?,
        })
    }

    /// A handle over an existing store.
    pub fn from_store(store: Store) -> Tally {
        Tally { store }
    }

    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Applies the embedded migrations; safe to run concurrently and repeatedly.
    pub async fn migrate(&self) -> Result<MigrateReport> {
        Ok(self.store.migrate().await?)
    }

    /// A batching recorder.
    pub fn recorder(&self, config: RecorderConfig) -> Recorder {
        self.store.recorder(config)
    }

    /// Writes events exactly once, now, in one transaction.
    pub async fn write(&self, events: &[UsageEvent]) -> Result<WriteOutcome> {
        Ok(self.store.write(events).await?)
    }

    /// Imports a CSV or NDJSON stream.
    pub async fn import<R: Read + Send + 'static>(
        &self,
        reader: R,
        options: ImportOptions,
        progress: Option<Progress>,
    ) -> Result<ImportReport> {
        Ok(self.store.import(reader, options, progress).await?)
    }

    /// Recomputes the rollups from raw events and reports differences.
    pub async fn verify(&self) -> Result<VerifyReport> {
        Ok(self.store.verify().await?)
    }

    /// The known services (built-ins and defined meters).
    pub async fn catalog(&self) -> Result<Catalog> {
        Ok(self.store.catalog().await?)
    }

    /// Defines a user meter.
    pub async fn define_meter(&self, meter: &Meter) -> Result<()> {
        Ok(self.store.define_meter(meter).await?)
    }

    /// Reports, aggregation, statistics, trends, peaks and invoices, priced with `prices`.
    pub fn analytics(&self, prices: PriceBook) -> Analytics {
        Analytics::new(self.store.clone()).with_prices(prices)
    }

    /// The events table's partitions and what the default partition holds.
    pub async fn partition_status(&self) -> Result<PartitionStatus> {
        Ok(self.store.partition_status().await?)
    }
}
