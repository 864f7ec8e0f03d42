//! `tally`: the command-line program over the Tally library.
//!
//! Every input is validated into a typed value before anything is written; a bad one
//! is reported on stderr naming the flag and the value, with exit code 2. Failures
//! while running exit with 1. See `docs/cli.md`.

#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

mod compact;
mod demo;
mod files;
mod meters;
mod output;
mod quotas;
mod reads;
mod serve;
mod writes;

use clap::{Args, CommandFactory, Parser, Subcommand};
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
    #[command(
        after_help = "Examples:\n  tally migrate\n  DATABASE_URL=postgres://owner@db/app tally migrate --format json"
    )]
    Migrate(OutputArg),
    /// Record one usage event, exactly once.
    #[command(
        after_help = "Examples:\n  tally record --customer acme --service api --quantity 3\n  tally record --customer acme --service storage --quantity 1.5 --at 2026-11-01T10:00:00Z --event-id 0195f000-0000-7000-8000-000000000001"
    )]
    Record(writes::RecordArgs),
    /// Record usage through one of the six tracking helpers.
    Track(writes::TrackArgs),
    /// Import usage events from a CSV or NDJSON file (or - for stdin).
    #[command(
        after_help = "Examples:\n  tally import usage.csv\n  tally import usage.ndjson --strict --format json\n  cat usage.csv | tally import - --input csv"
    )]
    Import(writes::ImportArgs),
    /// Recompute the rollups from raw events and report differences.
    #[command(after_help = "Examples:\n  tally verify\n  tally verify --format json")]
    Verify(OutputArg),
    /// Show the events table's monthly partitions and the default partition's size.
    #[command(after_help = "Examples:\n  tally partitions\n  tally partitions --ensure-ahead 6")]
    Partitions(PartitionsArgs),
    /// Give an application role exactly what it needs on Tally's tables (as the schema
    /// owner, after each migrate).
    #[command(
        after_help = "Examples:\n  tally grant --role tally_app\n  tally grant --role tally_app --print"
    )]
    Grant(GrantArgs),
    /// A customer's usage and cost per service over a range.
    #[command(
        after_help = "Examples:\n  tally report --customer acme\n  tally report --customer acme --from 2026-11-01 --to 2026-12-01 --detailed --tz Europe/Berlin"
    )]
    Report(reads::ReportArgs),
    /// Usage per hour, day or month in a time zone, for a customer or all customers.
    #[command(
        after_help = "Examples:\n  tally aggregate --period daily --tz Europe/Berlin\n  tally aggregate --period hourly --customer acme --service api --from 2026-11-01 --format csv"
    )]
    Aggregate(reads::AggregateArgs),
    /// Count, total, avg, min, max, median, p95, p99 over events or hourly/daily totals.
    #[command(
        after_help = "Examples:\n  tally stats --customer acme --service api\n  tally stats --customer acme --service api --over hour --days 30"
    )]
    Stats(reads::StatsArgs),
    /// Daily totals with the change against the previous calendar day.
    #[command(
        after_help = "Examples:\n  tally trends --customer acme\n  tally trends --customer acme --service api --days 14 --tz America/New_York"
    )]
    Trends(reads::TrendsArgs),
    /// The largest hours, days or months.
    #[command(
        after_help = "Examples:\n  tally peaks --customer acme --service api\n  tally peaks --customer acme --service api --by day --limit 3"
    )]
    Peaks(reads::PeaksArgs),
    /// An invoice preview for a billing period.
    #[command(
        after_help = "Examples:\n  tally invoice --customer acme --period 2026-11\n  tally invoice --customer acme --period 2026-11 --prices prices.json --format json"
    )]
    Invoice(reads::InvoiceArgs),
    /// Run the seed's scenarios end to end on a database of its own (a throwaway
    /// PostgreSQL when DATABASE_URL is unset).
    #[command(after_help = "Examples:\n  tally demo\n  tally demo --events 100000")]
    Demo(demo::DemoArgs),
    /// Export raw usage as CSV, JSON or XLSX.
    #[command(
        after_help = "Examples:\n  tally export --format csv\n  tally export --format xlsx --customer acme --from 2026-11-01 --to 2026-12-01 -o acme.xlsx\n  tally export --format json -o - | jq .summary"
    )]
    Export(files::ExportArgs),
    /// Move raw events older than N days to archive files (rollups and keys stay).
    #[command(
        after_help = "Examples:\n  tally archive\n  tally archive --older-than 30 --dir /var/lib/tally/archive --format json"
    )]
    Archive(files::ArchiveArgs),
    /// Put an archive's raw events back (not into the rollups again).
    #[command(after_help = "Examples:\n  tally restore archive/usage_2026_08_1.ndjson.gz")]
    Restore {
        /// The archive file (usage_YYYY_MM_N.ndjson.gz).
        file: PathBuf,
    },
    /// Meters: aggregations of the events' own properties, by dimension (docs/meters.md).
    #[command(subcommand)]
    Meter(meters::MeterCommand),
    /// Serve OpenMeter's metering API over HTTP (docs/http.md).
    #[command(
        after_help = "Examples:\n  tally serve\n  tally serve --listen 0.0.0.0:8888 --token-file /etc/tally/tokens\n  curl localhost:8888/api/v1/meters\n(posting events with curl: README, \"Over HTTP\")"
    )]
    Serve(serve::ServeArgs),
    /// Plans: named sets of limits.
    #[command(subcommand)]
    Plan(quotas::PlanCommand),
    /// Quotas: a customer's limits and plan.
    #[command(subcommand)]
    Quota(quotas::QuotaCommand),
    /// Alerts: evaluate quotas now, or list the history.
    #[command(subcommand)]
    Alerts(quotas::AlertsCommand),
    /// Print a shell completion script for bash, zsh, fish, elvish or powershell.
    #[command(
        after_help = "Examples:\n  tally completions bash > /etc/bash_completion.d/tally\n  tally completions zsh > ~/.zfunc/_tally\n  tally completions fish > ~/.config/fish/completions/tally.fish"
    )]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write one page per command into a directory.
    #[command(
        after_help = "Examples:\n  tally man > tally.1 && man -l tally.1\n  tally man --dir /usr/local/share/man/man1"
    )]
    Man {
        /// Write tally.1 and a tally-COMMAND.1 page for every command here instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
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
#[derive(Debug)]
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
            | ErrorKind::Conflict
            | ErrorKind::NotFound => Failure::Usage(e.to_string()),
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
        // Colour codes only for a person at a terminal, never into a log file or pipe.
        .with_ansi(std::io::stderr().is_terminal())
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

/// A handle for a command that needs the database, connected now: a server that is
/// down fails here, naming the host, port, user and database it tried.
pub(crate) async fn tally_for(url: Option<String>) -> Result<Tally, Failure> {
    tally_builder(url)?.build().await.map_err(Failure::from)
}

/// The builder every command starts from: the URL, and alert thresholds from
/// `USAGE_ALERT_*` (the seed's variables). Only commands that need the database build
/// it, after their input is validated.
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
            let tally = tally_for(cli.database_url).await?;
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
            let tally = tally_for(cli.database_url).await?;
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
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tally", &mut script);
            out(format_args!("{}", String::from_utf8_lossy(&script)))?;
        }
        Command::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
                .map_err(|e| {
                    Failure::Runtime(format!("writing manual pages to {}: {e}", dir.display()))
                })?;
            out(format_args!(
                "wrote the manual pages to {}\n",
                dir.display()
            ))?;
        }
        Command::Man { dir: None } => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .map_err(|e| Failure::Runtime(format!("writing the manual page: {e}")))?;
            out(format_args!("{}", String::from_utf8_lossy(&page)))?;
        }
        Command::Export(a) => files::export(cli.database_url, a).await?,
        Command::Archive(a) => files::archive(cli.database_url, a).await?,
        Command::Restore { file } => files::restore(cli.database_url, file).await?,
        Command::Plan(c) => quotas::plan(cli.database_url, c).await?,
        Command::Quota(c) => quotas::quota(cli.database_url, c).await?,
        Command::Meter(c) => meters::meter(cli.database_url, c).await?,
        Command::Serve(a) => serve::serve(cli.database_url, a).await?,
        Command::Alerts(c) => quotas::alerts(cli.database_url, c).await?,
        Command::Grant(a) => {
            // Validated before connecting: a bad name is refused without a database.
            let sql = tally::app_grants(&a.role).map_err(Failure::from)?;
            if a.print {
                out(format_args!("{sql}"))?;
            } else {
                tally_for(cli.database_url)
                    .await?
                    .grant_app(&a.role)
                    .await?;
                out(format_args!(
                    "granted the application privileges to {}\n",
                    a.role
                ))?;
            }
        }
        Command::Partitions(a) => {
            let o = a.output;
            let tally = tally_for(cli.database_url).await?;
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every command and subcommand, with its path (`tally quota set`).
    fn all(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        for sub in cmd.get_subcommands() {
            let p = format!("{path} {}", sub.get_name());
            out.push((p.clone(), sub.clone()));
            all(sub, p, out);
        }
    }

    #[test]
    fn every_flag_has_help_and_every_command_an_example() {
        let cli = Cli::command();
        cli.clone().debug_assert();
        let mut cmds = Vec::new();
        all(&cli, "tally".into(), &mut cmds);
        let mut missing = Vec::new();
        for (path, cmd) in &cmds {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin
                    && arg
                        .get_help()
                        .is_none_or(|h| h.to_string().trim().is_empty())
                {
                    missing.push(format!("{path} --{}", arg.get_id()));
                }
            }
            let leaf = cmd.get_subcommands().next().is_none();
            let example = cmd
                .get_after_help()
                .is_some_and(|h| h.to_string().contains("tally "));
            if leaf && path != "tally help" && !example {
                missing.push(format!("{path}: no example in --help"));
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
