//! Tally's quotas and alerts: plans and per-customer limits, a quota check fast enough
//! for every request, threshold alerts fired at most once per customer, service, level
//! and billing period, and their delivery to sinks through an outbox. Logic only: the
//! SQL is the store's ([`tally_store::Store::quota`], [`tally_store::Store::record_alerts`]
//! and friends).
//!
//! - A quota is a limit per customer and service for a monthly billing period anchored
//!   on a day and a zone ([`tally_core::BillingCycle`]), set for the customer or taken
//!   from their plan, `soft` (warn) or `hard` (block), or unlimited.
//! - [`Alerts::check_quota`] answers allow / warn / block from the rollups plus what
//!   this process is still writing.
//! - Alerts are evaluated after every commit of the store's write path once
//!   [`Alerts::watch`] runs, and on demand ([`Alerts::check`]). Levels are unique in
//!   the database, so any number of processes fire each one once.
//! - Every announced alert is offered to every [`Sink`] until it takes it, exactly once
//!   per sink name, surviving crashes and restarts.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tally_alerts::{AlertConfig, Alerts, LogFileSink};
//! use tally_core::{CustomerId, Decision, PlanName, Service};
//!
//! # async fn run(store: tally_store::Store) -> tally_store::Result<()> {
//! let alerts = Alerts::new(store, AlertConfig::from_env()?);
//! alerts.add_sink(Arc::new(LogFileSink::new("/var/log/tally-alerts.log")));
//! alerts.watch(); // evaluate after every committed batch
//!
//! let customer: CustomerId = "acme".parse()?;
//! alerts.assign_plan(&customer, &"free".parse::<PlanName>()?, None).await?;
//! match alerts.check_quota(&customer, &Service::API, "1".parse()?).await? {
//!     Decision::Block { usage, limit } => println!("429: {usage} of {limit} used"),
//!     Decision::Warn { level, .. } => println!("allowed, at {level}"),
//!     _ => {}
//! }
//! # Ok(()) }
//! ```

#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod alerts;
mod sink;

pub use alerts::{Admission, AlertConfig, Alerts, DeliveryReport};
pub use sink::{Delivery, LogFileSink, Sink, SinkError, StderrSink};
