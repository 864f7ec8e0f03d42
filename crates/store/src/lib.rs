//! Tally's PostgreSQL layer: everything that writes usage, exactly once.
//!
//! - [`Store`]: a cloneable handle over a deadpool-postgres pool; [`Store::migrate`]
//!   applies the embedded SQL migrations from `migrations/` (advisory-locked,
//!   checksummed, idempotent).
//! - [`Recorder`]: a bounded in-memory queue flushed by binary COPY when a batch fills
//!   (`USAGE_BATCH_SIZE`) or ages (`USAGE_BATCH_TIMEOUT`); failures are retried with
//!   backoff and visible in [`Recorder::status`].
//! - The write path claims each event's `(event id, customer)` key, inserts the event
//!   into its monthly partition and updates the hourly and daily rollups, all in one
//!   transaction, so rollups always equal the raw events ([`Store::verify`] checks).
//! - [`Store::import`] reads CSV or NDJSON files through the same path.
//!
//! ```no_run
//! use tally_core::{CustomerId, Service, UsageEvent};
//! use tally_store::{RecorderConfig, Store};
//!
//! # async fn run() -> tally_store::Result<()> {
//! let store = Store::connect("postgres://postgres@127.0.0.1/tally")?;
//! store.migrate().await?;
//! let recorder = store.recorder(RecorderConfig::from_env()?);
//! let customer: CustomerId = "acme".parse()?;
//! recorder.record(UsageEvent::new(customer, Service::API, "1".parse()?)).await?;
//! recorder.close().await?; // everything recorded is committed
//! assert_eq!(store.verify().await?.mismatches, 0);
//! # Ok(()) }
//! ```

mod error;
mod import;
mod ingest;
mod migrate;
mod numeric;
mod partitions;
mod pool;
mod recorder;
mod store;

pub use error::{Error, Result};
pub use import::{ImportFormat, ImportOptions, ImportReport, LineError, Progress};
pub use ingest::WriteOutcome;
pub use migrate::{MIGRATIONS, MigrateReport, Migration, migrate, schema_fingerprint};
pub use numeric::Numeric;
pub use pool::{build_pool, parse_url};
pub use recorder::{Recorder, RecorderConfig, RecorderStatus};
pub use store::{PartitionStatus, Store, VerifyReport};

/// Re-exported for the crates layered on this one.
pub use deadpool_postgres;
pub use tokio_postgres;
