//! `tally`: the command-line program over the Tally library.
//!
//! Every input is validated into a typed value before anything is written; a bad one
//! is reported on stderr naming the flag and the value, with exit code 2. Failures
//! while running exit with 1. See `docs/cli.md`.

#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::{path::PathBuf, process::ExitCode};

mod compact;
mod demo;
mod files;
mod output;
mod quotas;
mod reads;
mod writes;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use tally::{ErrorKind, MigrateReport, PartitionStatus, Tally};

use output::{Format, Tabular, emit, out};

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Usage metering and billing on PostgreSQL"
)]
struct Cli {
    /// PostgreSQL connection string (postgres://… or host=… dbname=…).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the schema migrations (idempotent, safe to run concurrently).
    Migrate(OutputArg),
    /// Record one usage event, exactly once.
    Record(writes::RecordArgs),
    /// Record usage through one of the six tracking helpers.
    Track(writes::TrackArgs),
    /// Import usage events from a CSV or NDJSON file (or - for stdin).
    Import(writes::ImportArgs),
    /// Recompute the rollups from raw events and report differences.
    Verify(OutputArg),
    /// Show the events table's monthly partitions and the default partition's size.
    Partitions(PartitionsArgs),
    /// Give an application role exactly what it needs on Tally's tables (as the schema
    /// owner, after each migrate).
    Grant(GrantArgs),
    /// A customer's usage and cost per service over a range.
    Report(reads::ReportArgs),
    /// Usage per hour, day or month in a time zone, for a customer or all customers.
    Aggregate(reads::AggregateArgs),
    /// Count, total, avg, min, max, median, p95, p99 over events or hourly/daily totals.
    Stats(reads::StatsArgs),
    /// Daily totals with the change against the previous calendar day.
    Trends(reads::TrendsArgs),
    /// The largest hours, days or months.
    Peaks(reads::PeaksArgs),
    /// An invoice preview for a billing period.
    Invoice(reads::InvoiceArgs),
    /// Run the seed's scenarios end to end on a database of its own (a throwaway
    /// PostgreSQL when DATABASE_URL is unset).
    Demo(demo::DemoArgs),
    /// Export raw usage as CSV, JSON or XLSX.
    Export(files::ExportArgs),
    /// Move raw events older than N days to archive files (rollups and keys stay).
    Archive(files::ArchiveArgs),
    /// Put an archive's raw events back (not into the rollups again).
    Restore {
        /// The archive file (usage_YYYY_MM_N.ndjson.gz).
        file: PathBuf,
    },
    /// Plans: named sets of limits.
    #[command(subcommand)]
    Plan(quotas::PlanCommand),
    /// Quotas: a customer's limits and plan.
    #[command(subcommand)]
    Quota(quotas::QuotaCommand),
    /// Alerts: evaluate quotas now, or list the history.
    #[command(subcommand)]
    Alerts(quotas::AlertsCommand),
}

#[derive(Args)]
struct PartitionsArgs {
    /// First create the partitions of this month and N months ahead (as the schema
    /// owner, e.g. from a daily schedule).
    #[arg(long, value_name = "N")]
    ensure_ahead: Option<u32>,
    #[command(flatten)]
    output: OutputArg,
}

#[derive(Args)]
struct GrantArgs {
    /// The application's role.
    #[arg(long)]
    role: String,
    /// Print the SQL instead of running it.
    #[arg(long)]
    print: bool,
}

#[derive(Args)]
pub(crate) struct OutputArg {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub(crate) format: Format,
}

/// An error with the exit code it deserves.
pub(crate) enum Failure {
    /// Bad input: exit 2.
    Usage(String),
    /// Something failed while running: exit 1.
    Runtime(String),
    /// The reader of stdout went away (`tally … | head`): stop, quietly, exit 0.
    Quiet,
    /// A lenient import stored the good lines and rejected others (its summary says
    /// which): exit 3.
    Partial,
}

impl From<tally::Error> for Failure {
    fn from(e: tally::Error) -> Failure {
        match e.kind() {
            // Values and settings from outside: the caller's to fix.
            ErrorKind::Invalid
            | ErrorKind::Config
            | ErrorKind::ImportRejected
            | ErrorKind::Conflict => Failure::Usage(e.to_string()),
            _ => {
                let hint = match e.sqlstate() {
                    Some("42P01" | "42883") => " (is the schema there? run `tally migrate` first)",
                    _ => "",
                };
                Failure::Runtime(format!("{e}{hint}"))
            }
        }
    }
}

/// Bad input from the command line (a value that failed validation).
pub(crate) fn bad(e: tally::InvalidInput) -> Failure {
    Failure::Usage(e.to_string())
}

/// An optional flag's value, validated into its type.
pub(crate) fn parse_opt<T: std::str::FromStr<Err = tally::InvalidInput>>(
    v: &Option<String>,
) -> Result<Option<T>, Failure> {
    v.as_deref().map(str::parse).transpose().map_err(bad)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
                // deadpool's own connection warnings repeat what Tally's errors say.
                .unwrap_or_else(|_| "warn,deadpool=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
        Err(Failure::Quiet) => ExitCode::SUCCESS,
        Err(Failure::Partial) => ExitCode::from(3),
    }
}

pub(crate) fn tally_for(url: Option<String>) -> Result<Tally, Failure> {
    tally_builder(url)?.build_lazy().map_err(Failure::from)
}

/// The builder every command starts from: the URL, and alert thresholds from
/// `USAGE_ALERT_*` (the seed's variables). It connects on first use, so a command
/// fails on the database only when it needs one.
pub(crate) fn tally_builder(url: Option<String>) -> Result<tally::TallyBuilder, Failure> {
    let url = url.ok_or_else(|| {
        Failure::Usage("no database: pass --database-url URL or set DATABASE_URL".into())
    })?;
    let alerts = tally::alerts::AlertConfig::from_env()?;
    Ok(Tally::builder(url).alert_config(alerts))
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Migrate(o) => {
            let tally = tally_for(cli.database_url)?;
            let report = tally.migrate().await?;
            match o.format {
                Format::Table => {
                    if report.applied.is_empty() {
                        out(format_args!(
                            "schema up to date ({} migration(s) applied before)\n",
                            report.already.len()
                        ))?;
                    } else {
                        out(format_args!("applied migration(s) {:?}\n", report.applied))?;
                    }
                    if !report.distributed.is_empty() {
                        out(format_args!(
                            "distributed on Citus: {}\n",
                            report.distributed.join(", ")
                        ))?;
                    }
                }
                f => emit(f, &Migrated(report))?,
            }
        }
        Command::Record(a) => writes::record(cli.database_url, a).await?,
        Command::Track(t) => writes::track(cli.database_url, t).await?,
        Command::Import(a) => writes::import(cli.database_url, a).await?,
        Command::Verify(o) => {
            let tally = tally_for(cli.database_url)?;
            let r = tally.verify().await?;
            match o.format {
                Format::Table => {
                    let mut text = format!(
                        "events          {}\nquantity        {}\nmismatches      {}\nkey mismatches  {}\n",
                        r.events,
                        r.quantity.normalize(),
                        r.mismatches,
                        r.key_mismatches
                    );
                    if r.archived_events > 0 {
                        text.push_str(&format!(
                            "archived        {} event(s), quantity {}\n",
                            r.archived_events,
                            r.archived_quantity.normalize()
                        ));
                    }
                    out(format_args!("{text}"))?
                }
                f => emit(f, &r)?,
            }
            if r.mismatches != 0 || r.key_mismatches != 0 {
                return Err(Failure::Runtime("rollups differ from raw events".into()));
            }
        }
        Command::Report(a) => reads::report(cli.database_url, a).await?,
        Command::Aggregate(a) => reads::aggregate(cli.database_url, a).await?,
        Command::Stats(a) => reads::stats(cli.database_url, a).await?,
        Command::Trends(a) => reads::trends(cli.database_url, a).await?,
        Command::Peaks(a) => reads::peaks(cli.database_url, a).await?,
        Command::Invoice(a) => reads::invoice(cli.database_url, a).await?,
        Command::Demo(a) => demo::demo(a).await?,
        Command::Export(a) => files::export(cli.database_url, a).await?,
        Command::Archive(a) => files::archive(cli.database_url, a).await?,
        Command::Restore { file } => files::restore(cli.database_url, file).await?,
        Command::Plan(c) => quotas::plan(cli.database_url, c).await?,
        Command::Quota(c) => quotas::quota(cli.database_url, c).await?,
        Command::Alerts(c) => quotas::alerts(cli.database_url, c).await?,
        Command::Grant(a) => {
            // Validated before connecting: a bad name is refused without a database.
            let sql = tally::app_grants(&a.role).map_err(Failure::from)?;
            if a.print {
                out(format_args!("{sql}"))?;
            } else {
                tally_for(cli.database_url)?.grant_app(&a.role).await?;
                out(format_args!(
                    "granted the application privileges to {}\n",
                    a.role
                ))?;
            }
        }
        Command::Partitions(a) => {
            let o = a.output;
            let tally = tally_for(cli.database_url)?;
            if let Some(n) = a.ensure_ahead {
                tally.ensure_partitions_ahead(n).await?;
            }
            let s = Partitions(tally.partition_status().await?);
            match o.format {
                Format::Table => out(format_args!(
                    "monthly partitions  {}\ndefault partition   {} event(s)\n",
                    s.months(),
                    s.0.default_rows
                ))?,
                f => emit(f, &s)?,
            }
        }
    }
    Ok(())
}

/// What `migrate` prints in JSON and CSV.
#[derive(Serialize)]
#[serde(transparent)]
struct Migrated(MigrateReport);

impl Tabular for Migrated {
    fn header(&self) -> &'static [&'static str] {
        &["applied", "already_applied", "distributed"]
    }

    fn rows(&self, _table: bool) -> Vec<Vec<String>> {
        let list = |v: &[i32]| v.iter().map(i32::to_string).collect::<Vec<_>>().join(" ");
        vec![vec![
            list(&self.0.applied),
            list(&self.0.already),
            self.0.distributed.join(" "),
        ]]
    }
}

/// What `partitions` prints in JSON and CSV.
#[derive(Serialize)]
#[serde(transparent)]
struct Partitions(PartitionStatus);

impl Partitions {
    fn months(&self) -> String {
        let months: Vec<String> = self
            .0
            .months
            .iter()
            .map(|m| m.format("%Y-%m").to_string())
            .collect();
        months.join(" ")
    }
}

impl Tabular for Partitions {
    fn header(&self) -> &'static [&'static str] {
        &["months", "default_rows"]
    }

    fn rows(&self, _table: bool) -> Vec<Vec<String>> {
        vec![vec![self.months(), self.0.default_rows.to_string()]]
    }
}
