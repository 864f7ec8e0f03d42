//! `tally`: the command-line program over the Tally library.
//!
//! Every input is validated into a typed value before anything is written; a bad one
//! is reported on stderr naming the flag and the value, with exit code 2. Failures
//! while running exit with 1. See `docs/cli.md`.

#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::{io::IsTerminal, path::PathBuf, process::ExitCode, sync::Arc};

mod compact;
mod demo;
mod files;
mod output;
mod quotas;
mod reads;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use tally::{
    CustomerId, ErrorKind, EventId, Metadata, MigrateReport, PartitionStatus, Quantity, Tally,
    Usage, UsageEvent, Zone,
    chrono::{DateTime, Utc},
    import::{ImportFormat, ImportOptions, ImportReport},
    parse_instant,
    serde_fmt::rfc3339,
    track,
};

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
    Record(RecordArgs),
    /// Record usage through one of the six tracking helpers.
    Track(TrackArgs),
    /// Import usage events from a CSV or NDJSON file (or - for stdin).
    Import(ImportArgs),
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

#[derive(Args)]
struct EventArgs {
    /// Customer id (1-255 of A-Z a-z 0-9 _ . : @ -).
    #[arg(long)]
    customer: String,
    /// When the usage happened (RFC 3339 with offset, or YYYY-MM-DD); default now.
    #[arg(long)]
    at: Option<String>,
    /// Idempotency key (UUID); default a new UUIDv7. Recording the same id twice counts once.
    #[arg(long)]
    event_id: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Args)]
struct RecordArgs {
    #[command(flatten)]
    event: EventArgs,
    /// Service: api, storage, bandwidth, compute, database, functions or a defined meter.
    #[arg(long)]
    service: String,
    /// Quantity in the service's unit (plain decimal, ≥ 0).
    #[arg(long, allow_hyphen_values = true)]
    quantity: String,
    /// Metadata as a JSON object.
    #[arg(long)]
    metadata: Option<String>,
}

#[derive(Args)]
struct TrackArgs {
    #[command(subcommand)]
    service: TrackService,
}

#[derive(Subcommand)]
enum TrackService {
    /// One API request.
    Api {
        #[command(flatten)]
        event: EventArgs,
        #[arg(long)]
        endpoint: String,
        #[arg(long, default_value = "GET")]
        method: String,
        #[arg(long, default_value_t = 200)]
        status: u16,
    },
    /// Bytes stored for some hours (GiB-hours).
    Storage {
        #[command(flatten)]
        event: EventArgs,
        #[arg(long)]
        bytes: u64,
        #[arg(long, allow_hyphen_values = true)]
        hours: String,
    },
    /// Bytes transferred (GiB).
    Bandwidth {
        #[command(flatten)]
        event: EventArgs,
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value = "egress")]
        direction: String,
    },
    /// CPU seconds (CPU-hours).
    Compute {
        #[command(flatten)]
        event: EventArgs,
        #[arg(long, allow_hyphen_values = true)]
        cpu_seconds: String,
        /// Metadata as a JSON object.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// One database query.
    Database {
        #[command(flatten)]
        event: EventArgs,
        #[arg(long, default_value = "select")]
        kind: String,
        #[arg(long, default_value_t = 0)]
        duration_ms: u64,
    },
    /// One function invocation.
    Functions {
        #[command(flatten)]
        event: EventArgs,
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 0)]
        duration_ms: u64,
        #[arg(long, default_value_t = 0)]
        memory_mb: u64,
    },
}

#[derive(Args)]
struct ImportArgs {
    /// File to import, or - for standard input.
    file: String,
    /// csv or ndjson selects the input format (default: from the file's extension);
    /// table or json selects the summary format.
    #[arg(long)]
    format: Option<String>,
    /// Input format, when --format is used for the summary.
    #[arg(long, value_parser = ["csv", "ndjson"])]
    input: Option<String>,
    /// Reject the whole file if any line is bad.
    #[arg(long)]
    strict: bool,
    /// Events per write transaction (non-strict mode).
    #[arg(long, default_value_t = 10_000)]
    batch_size: usize,
}

/// An error with the exit code it deserves.
pub(crate) enum Failure {
    /// Bad input: exit 2.
    Usage(String),
    /// Something failed while running: exit 1.
    Runtime(String),
    /// The reader of stdout went away (`tally … | head`): stop, quietly, exit 0.
    Quiet,
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
        Command::Record(a) => {
            // Validate everything before connecting: nothing is written on bad input.
            let quantity: Quantity = a.quantity.parse().map_err(bad)?;
            let metadata = match &a.metadata {
                Some(m) => m.parse::<Metadata>().map_err(bad)?,
                None => Metadata::empty(),
            };
            let tally = tally_for(cli.database_url)?;
            let service = tally.catalog().await?.service(&a.service).map_err(bad)?;
            let usage = Usage {
                service,
                quantity,
                metadata,
            };
            write_one(&tally, usage, &a.event).await?;
        }
        Command::Track(t) => {
            let (usage, event) = match t.service {
                TrackService::Api {
                    event,
                    endpoint,
                    method,
                    status,
                } => (track::api_request(&endpoint, &method, status), event),
                TrackService::Storage {
                    event,
                    bytes,
                    hours,
                } => {
                    let hours: Quantity = hours
                        .parse()
                        .map_err(|e| Failure::Usage(format!("invalid --hours: {e}")))?;
                    (track::storage(bytes, hours), event)
                }
                TrackService::Bandwidth {
                    event,
                    bytes,
                    direction,
                } => (track::bandwidth(bytes, &direction), event),
                TrackService::Compute {
                    event,
                    cpu_seconds,
                    metadata,
                } => {
                    let secs: Quantity = cpu_seconds
                        .parse()
                        .map_err(|e| Failure::Usage(format!("invalid --cpu-seconds: {e}")))?;
                    let meta = match metadata {
                        Some(m) => m.parse::<Metadata>().map_err(bad)?,
                        None => Metadata::empty(),
                    };
                    (track::compute(secs, meta), event)
                }
                TrackService::Database {
                    event,
                    kind,
                    duration_ms,
                } => (track::database_query(&kind, duration_ms), event),
                TrackService::Functions {
                    event,
                    name,
                    duration_ms,
                    memory_mb,
                } => (track::function(&name, duration_ms, memory_mb), event),
            };
            let usage = usage.map_err(bad)?;
            let tally = tally_for(cli.database_url)?;
            write_one(&tally, usage, &event).await?;
        }
        Command::Import(a) => import(cli.database_url, a).await?,
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

async fn write_one(tally: &Tally, usage: Usage, a: &EventArgs) -> Result<(), Failure> {
    let customer: CustomerId = a.customer.parse().map_err(bad)?;
    let at: DateTime<Utc> = match &a.at {
        Some(t) => parse_instant("at", t, Zone::UTC).map_err(bad)?,
        None => Utc::now(),
    };
    let mut event = UsageEvent::new(customer, usage.service, usage.quantity)
        .at(at)
        .with_metadata(usage.metadata);
    if let Some(id) = &a.event_id {
        event = event.with_id(id.parse::<EventId>().map_err(bad)?);
    }
    let outcome = tally.write(std::slice::from_ref(&event)).await?;
    if !outcome.conflicts.is_empty() {
        return Err(Failure::Usage(format!(
            "conflict: event_id {} of customer {} is already recorded with a different payload \
             (service, quantity or metadata); nothing was recorded",
            event.id, event.customer
        )));
    }
    settle_alerts(tally).await;
    let recorded = Recorded {
        recorded_at: event.recorded_at,
        inserted: outcome.inserted == 1,
        event,
    };
    match a.format {
        Format::Table => out(format_args!(
            "{} {} {} {} for {} at {}\n",
            if recorded.inserted {
                "recorded"
            } else {
                "duplicate (already recorded)"
            },
            recorded.event.id,
            recorded.event.quantity,
            recorded.event.service,
            recorded.event.customer,
            rfc3339(recorded.recorded_at)
        )),
        f => emit(f, &recorded),
    }
}

/// Fires the alerts a write reached before the program exits, and delivers them to
/// the `USAGE_ALERT_LOG` file when set. The write has committed either way: a failure
/// here is a warning, and `tally alerts check` catches up.
async fn settle_alerts(tally: &Tally) {
    if let Some(path) = std::env::var_os("USAGE_ALERT_LOG") {
        tally
            .alerts()
            .add_sink(Arc::new(tally::alerts::LogFileSink::new(path)));
    }
    if let Err(e) = tally.alerts().settle().await {
        eprintln!("warning: evaluating alerts failed: {e} (run `tally alerts check`)");
    }
}

/// What `record` and `track` print.
struct Recorded {
    event: UsageEvent,
    recorded_at: DateTime<Utc>,
    inserted: bool,
}

impl Serialize for Recorded {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let e = &self.event;
        let mut st = s.serialize_struct("Recorded", 6)?;
        st.serialize_field("event_id", &e.id.to_string())?;
        st.serialize_field("customer_id", e.customer.as_str())?;
        st.serialize_field("service", e.service.as_str())?;
        st.serialize_field("quantity", &e.quantity.to_string())?;
        st.serialize_field("recorded_at", &rfc3339(self.recorded_at))?;
        st.serialize_field("inserted", &self.inserted)?;
        st.end()
    }
}

impl Tabular for Recorded {
    fn header(&self) -> &'static [&'static str] {
        &[
            "event_id",
            "customer_id",
            "service",
            "quantity",
            "recorded_at",
            "inserted",
        ]
    }

    fn rows(&self, _table: bool) -> Vec<Vec<String>> {
        let e = &self.event;
        vec![vec![
            e.id.to_string(),
            e.customer.to_string(),
            e.service.to_string(),
            e.quantity.to_string(),
            rfc3339(self.recorded_at),
            self.inserted.to_string(),
        ]]
    }
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

async fn import(url: Option<String>, a: ImportArgs) -> Result<(), Failure> {
    let (mut input, mut output) = (a.input.clone(), Format::Table);
    match a.format.as_deref() {
        None => {}
        Some(f @ ("csv" | "ndjson" | "jsonl")) => input = Some(f.to_owned()),
        Some("json") => output = Format::Json,
        Some("table") => output = Format::Table,
        Some(other) => {
            return Err(Failure::Usage(format!(
                "invalid --format {other:?}: expected csv or ndjson (input) or table or json (summary)"
            )));
        }
    }
    if std::path::Path::new(&a.file).is_dir() {
        return Err(Failure::Usage(format!(
            "invalid file {:?}: is a directory",
            a.file
        )));
    }
    let format = match input.as_deref() {
        Some(f) => f.parse::<ImportFormat>().map_err(Failure::from)?,
        None if a.file == "-" => {
            return Err(Failure::Usage("reading stdin: say which format with --format csv|ndjson or --input".into()));
        }
        None => ImportFormat::from_path(std::path::Path::new(&a.file)).ok_or_else(|| {
            Failure::Usage(format!(
                "invalid file {:?}: cannot tell the format from its extension; pass --format csv|ndjson",
                a.file
            ))
        })?,
    };
    if a.batch_size == 0 {
        return Err(Failure::Usage(
            "invalid --batch-size 0: must be at least 1".into(),
        ));
    }
    let (reader, size): (Box<dyn std::io::Read + Send>, Option<u64>) = if a.file == "-" {
        (Box::new(std::io::stdin()), None)
    } else {
        let path = PathBuf::from(&a.file);
        let f = std::fs::File::open(&path)
            .map_err(|e| Failure::Usage(format!("invalid file {:?}: {e}", a.file)))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let tally = tally_for(url)?;
    let bar = if std::io::stderr().is_terminal() {
        let bar = match size {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let progress = bar
        .clone()
        .map(|b| Arc::new(move |n: u64| b.set_position(n)) as tally::Progress);
    let mut options = ImportOptions::new(format);
    options.strict = a.strict;
    options.batch_size = a.batch_size;
    let result = tally.import(reader, options, progress).await;
    if result.is_ok() {
        settle_alerts(&tally).await;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let report = match result {
        Ok(r) => r,
        Err(e) => return Err(import_failure(e, output)),
    };
    match output {
        Format::Table => {
            let mut text = format!(
                "inserted    {}\nduplicates  {}\nrejected    {}\n",
                report.inserted, report.duplicates, report.rejected
            );
            for e in &report.errors {
                text.push_str(&format!("  line {}: {}\n", e.line, e.message));
            }
            out(format_args!("{text}"))
        }
        f => emit(f, &report),
    }
}

fn import_failure(e: tally::Error, output: Format) -> Failure {
    if e.kind() != ErrorKind::ImportRejected {
        return Failure::from(e);
    }
    let errors = e.line_errors().to_vec();
    let shown = match output {
        Format::Table => {
            for l in &errors {
                eprintln!("line {}: {}", l.line, l.message);
            }
            Ok(())
        }
        f => emit(
            f,
            &ImportReport {
                rejected: errors.len() as u64,
                errors,
                ..ImportReport::default()
            },
        ),
    };
    if let Err(Failure::Quiet) = shown {
        return Failure::Quiet;
    }
    Failure::Usage(format!("{e}; nothing was imported (--strict)"))
}
