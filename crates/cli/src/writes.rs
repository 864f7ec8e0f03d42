//! The write commands: `record`, `track` and `import`, and what they print.

use std::{io::IsTerminal, path::PathBuf, sync::Arc};

use clap::{Args, Subcommand};
use serde::Serialize;
use tally::{
    CustomerId, ErrorKind, EventId, Metadata, Quantity, Tally, Usage, UsageEvent, Zone,
    chrono::{DateTime, Utc},
    import::{ImportFormat, ImportOptions, ImportReport},
    parse_instant,
    serde_fmt::rfc3339,
    track,
};

use crate::{
    Failure, bad,
    output::{Format, Tabular, emit, out},
    tally_for,
};

#[derive(Args)]
pub(crate) struct EventArgs {
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
pub(crate) struct RecordArgs {
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
pub(crate) struct TrackArgs {
    #[command(subcommand)]
    service: TrackService,
}

#[derive(Subcommand)]
enum TrackService {
    /// One API request.
    #[command(
        after_help = "Examples:\n  tally track api --customer acme --endpoint /v1/things/{id} --method POST --status 201"
    )]
    Api {
        #[command(flatten)]
        event: EventArgs,
        /// The route called, ideally its pattern (/v1/things/{id}) to keep cardinality low.
        #[arg(long)]
        endpoint: String,
        /// HTTP method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// HTTP status code of the response.
        #[arg(long, default_value_t = 200)]
        status: u16,
    },
    /// Bytes stored for some hours (GiB-hours).
    #[command(
        after_help = "Examples:\n  tally track storage --customer acme --bytes 1073741824 --hours 24"
    )]
    Storage {
        #[command(flatten)]
        event: EventArgs,
        /// Bytes (converted to GiB: 2^30 bytes).
        #[arg(long)]
        bytes: u64,
        /// Hours the bytes were held (plain decimal, ≥ 0).
        #[arg(long, allow_hyphen_values = true)]
        hours: String,
    },
    /// Bytes transferred (GiB).
    #[command(
        after_help = "Examples:\n  tally track bandwidth --customer acme --bytes 1048576 --direction egress"
    )]
    Bandwidth {
        #[command(flatten)]
        event: EventArgs,
        /// Bytes (converted to GiB: 2^30 bytes).
        #[arg(long)]
        bytes: u64,
        /// ingress or egress (kept in the metadata).
        #[arg(long, default_value = "egress")]
        direction: String,
    },
    /// CPU seconds (CPU-hours).
    #[command(after_help = "Examples:\n  tally track compute --customer acme --cpu-seconds 3600")]
    Compute {
        #[command(flatten)]
        event: EventArgs,
        /// CPU seconds used (plain decimal, ≥ 0; recorded as CPU-hours).
        #[arg(long, allow_hyphen_values = true)]
        cpu_seconds: String,
        /// Metadata as a JSON object.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// One database query.
    #[command(
        after_help = "Examples:\n  tally track database --customer acme --kind select --duration-ms 12"
    )]
    Database {
        #[command(flatten)]
        event: EventArgs,
        /// Kind of query (select, insert, ...; kept in the metadata).
        #[arg(long, default_value = "select")]
        kind: String,
        /// How long it took, in milliseconds (kept in the metadata).
        #[arg(long, default_value_t = 0)]
        duration_ms: u64,
    },
    /// One function invocation.
    #[command(
        after_help = "Examples:\n  tally track functions --customer acme --name resize --duration-ms 250 --memory-mb 512"
    )]
    Functions {
        #[command(flatten)]
        event: EventArgs,
        /// Function name (kept in the metadata).
        #[arg(long)]
        name: String,
        /// How long it took, in milliseconds (kept in the metadata).
        #[arg(long, default_value_t = 0)]
        duration_ms: u64,
        /// Memory it ran with, in MB (kept in the metadata).
        #[arg(long, default_value_t = 0)]
        memory_mb: u64,
    },
}

#[derive(Args)]
pub(crate) struct ImportArgs {
    /// File to import, or - for standard input.
    file: String,
    /// Format of the summary printed: table or json.
    #[arg(long)]
    format: Option<String>,
    /// Format of the file: csv or ndjson (default: from the file's extension; required
    /// for standard input).
    #[arg(long, value_parser = ["csv", "ndjson"])]
    input: Option<String>,
    /// Reject the whole file if any line is bad.
    #[arg(long)]
    strict: bool,
    /// Events per write transaction (non-strict mode).
    #[arg(long, default_value_t = 10_000)]
    batch_size: usize,
}

/// `tally record`: validates everything before connecting, so nothing is written on
/// bad input.
pub(crate) async fn record(url: Option<String>, a: RecordArgs) -> Result<(), Failure> {
    // Validate everything before connecting: nothing is written on bad input.
    let quantity: Quantity = a.quantity.parse().map_err(bad)?;
    let metadata = match &a.metadata {
        Some(m) => m.parse::<Metadata>().map_err(bad)?,
        None => Metadata::empty(),
    };
    let tally = tally_for(url).await?;
    let service = tally.catalog().await?.service(&a.service).map_err(bad)?;
    let usage = Usage {
        service,
        quantity,
        metadata,
    };
    write_one(&tally, usage, &a.event).await?;
    Ok(())
}

/// `tally track SERVICE`: the typed helpers of `tally::track`.
pub(crate) async fn track(url: Option<String>, t: TrackArgs) -> Result<(), Failure> {
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
    let tally = tally_for(url).await?;
    write_one(&tally, usage, &event).await?;
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

pub(crate) async fn import(url: Option<String>, a: ImportArgs) -> Result<(), Failure> {
    // --format is the summary's, --input the file's: one meaning per flag.
    let output = match a.format.as_deref() {
        None | Some("table") => Format::Table,
        Some("json") => Format::Json,
        Some(f @ ("csv" | "ndjson" | "jsonl")) => {
            return Err(Failure::Usage(format!(
                "invalid --format {f:?}: --format is the summary's (table or json); the file's format is --input {f}"
            )));
        }
        Some(other) => {
            return Err(Failure::Usage(format!(
                "invalid --format {other:?}: expected table or json (the summary; the file's format is --input csv|ndjson)"
            )));
        }
    };
    let input = a.input.clone();
    if std::path::Path::new(&a.file).is_dir() {
        return Err(Failure::Usage(format!(
            "invalid file {:?}: is a directory",
            a.file
        )));
    }
    let format = match input.as_deref() {
        Some(f) => f.parse::<ImportFormat>().map_err(Failure::from)?,
        None if a.file == "-" => {
            return Err(Failure::Usage("reading stdin: say which format with --input csv|ndjson".into()));
        }
        None => ImportFormat::from_path(std::path::Path::new(&a.file)).ok_or_else(|| {
            Failure::Usage(format!(
                "invalid file {:?}: cannot tell the format from its extension; pass --input csv|ndjson",
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
    let tally = tally_for(url).await?;
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
            out(format_args!("{text}"))?;
        }
        f => emit(f, &report)?,
    }
    // Imported, but not every line: a script can tell (exit 3, docs/cli.md).
    if report.rejected > 0 {
        return Err(Failure::Partial);
    }
    Ok(())
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
