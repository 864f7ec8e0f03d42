//! Integration tests: every test gets its own database on a real PostgreSQL (see
//! `tally-testdb`), so they run in parallel and leave nothing behind.

mod alerts;
mod analytics;
mod archive;
mod builder;
mod citus;
mod export;
mod faults;
mod fuzz;
mod import;
mod ingest;
mod invariants;
mod layering;
mod meter_quotas;
mod meters;
mod migrate;
mod partitions;
mod pricing;
mod recorder;
mod testdb;
