//! Tally's PostgreSQL layer: the only crate that speaks SQL or knows a table.
//!
//! - [`Store`]: a cloneable handle over a connection pool; [`Store::migrate`] applies
//!   the embedded SQL migrations from `migrations/` (advisory-locked, checksummed,
//!   idempotent).
//! - The write path ([`Store::write`], the [`Recorder`], [`Store::import`]) claims each
//!   event's `(event id, customer)` key, inserts the event into its monthly partition
//!   and updates the hourly, daily and all-customer rollups, all in one transaction,
//!   so rollups always equal the raw events ([`Store::verify`] checks).
//! - The [`Recorder`] is a bounded in-memory queue flushed by binary COPY when a batch
//!   fills (`USAGE_BATCH_SIZE`) or ages (`USAGE_BATCH_TIMEOUT`); transient failures
//!   are retried with backoff, permanent ones isolated into a dead-letter table.
//! - Typed read primitives ([`Store::rollup_rows`], [`Store::raw_totals`],
//!   [`Store::event_quantities`], [`Store::top_buckets`]) for the crates above.
//! - [`Error`]: the one error type of Tally (re-exported as `tally::Error`).
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

#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod archive;
mod error;
mod export;
mod import;
mod ingest;
mod meters;
mod migrate;
mod numeric;
mod partitions;
mod pool;
mod quotas;
mod reads;
mod recorder;
mod rollup;
mod store;

pub use archive::{ArchiveOptions, ArchiveReport, Manifest, RestoreReport, ServiceCount};
pub use error::{Error, ErrorKind, Result};
pub use export::{EventFilter, RecentFilter, StoredEvent};
pub use import::{
    ImportFormat, ImportOptions, ImportReport, LineError, MAX_LINE_BYTES, parse_file,
};
pub use ingest::WriteOutcome;
pub use meters::{DefinedMeter, MeterQuery, MeterQueryResult, MeterRow, MeterState};
pub use migrate::{MigrateReport, app_grants};
pub use quotas::AlertFilter;
pub use recorder::{Recorder, RecorderConfig, RecorderStatus};
pub use store::{PartitionStatus, Store, VerifyReport};

// Plumbing between the store and the crates above it (alerts, analytics): public
// because those crates need it, hidden because an application never should.
#[doc(hidden)]
pub use ingest::{CommitHook, LocalMark};
#[doc(hidden)]
pub use meters::TotalsKey;
#[doc(hidden)]
pub use migrate::schema_fingerprint;
#[doc(hidden)]
pub use quotas::{Claimed, DeliveryClaim, Reached};
#[doc(hidden)]
pub use reads::{Grain, QuarterRow, TopBucket, UsageRow, Who};

use numeric::Numeric;
