//! `export`: raw usage to a CSV, JSON or XLSX file (or stdout); `archive` and
//! `restore`.

use std::{io::IsTerminal, path::PathBuf, sync::Arc};

use clap::Args;
use tally::{
    CustomerId, Service, Zone,
    chrono::Utc,
    export::{EventFilter, ExportFormat, default_file_name},
};

use crate::{Failure, bad, output::out, parse_opt, reads, tally_for};

#[derive(Args)]
pub(crate) struct ExportArgs {
    /// csv, json or xlsx.
    #[arg(long)]
    format: String,
    /// File to write (default usage_YYYYMMDD_HHMMSS.EXT); - for stdout (CSV, JSON).
    #[arg(long, short)]
    output: Option<String>,
    /// Replace the output file if it exists.
    #[arg(long)]
    force: bool,
    /// One customer; default all.
    #[arg(long)]
    customer: Option<String>,
    /// Start (RFC 3339 or YYYY-MM-DD); default the first of this month.
    #[arg(long)]
    from: Option<String>,
    /// End, exclusive; default the first of next month.
    #[arg(long)]
    to: Option<String>,
    /// Service: api, storage, bandwidth, compute, database, functions or a defined meter.
    #[arg(long)]
    service: Option<String>,
    /// Time zone of dates given as YYYY-MM-DD.
    #[arg(long, default_value = "UTC")]
    tz: String,
    /// Price book (JSON; see docs/cli.md). Default: the built-in per-unit prices.
    #[arg(long)]
    prices: Option<String>,
}

pub(crate) async fn export(url: Option<String>, a: ExportArgs) -> Result<(), Failure> {
    let format: ExportFormat = a.format.parse().map_err(bad)?;
    let zone: Zone = a.tz.parse().map_err(bad)?;
    let customer: Option<CustomerId> = parse_opt(&a.customer)?;
    let range = reads::range(&a.from, &a.to, zone)?;
    let to_stdout = a.output.as_deref() == Some("-");
    if to_stdout && format == ExportFormat::Xlsx {
        return Err(Failure::Usage(
            "invalid --output \"-\": an XLSX workbook goes to a file".into(),
        ));
    }
    let prices = reads::price_book(a.prices.as_deref())?;
    let tally = reads::with_prices(url, prices, a.prices.as_deref()).await?;
    let service: Option<Service> = reads::opt_service(&tally, &a.service).await?;
    let filter = EventFilter {
        range,
        customer,
        service,
    };
    let hint_filter = filter.clone();
    let path: Option<PathBuf> = (!to_stdout).then(|| {
        a.output
            .map(PathBuf::from)
            .unwrap_or_else(|| default_file_name(format, Utc::now()))
    });
    let bar = (std::io::stderr().is_terminal() && !to_stdout).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos} rows {per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar
    });
    let progress = bar
        .clone()
        .map(|b| Arc::new(move |n: u64| b.set_position(n)) as tally::Progress);
    // A file is written whole or not at all (never truncated under its name).
    let result = match &path {
        Some(p) => tally.export_to(format, filter, p, a.force, progress).await,
        None => {
            let stdout = Box::new(std::io::stdout());
            tally.export(format, filter, stdout, progress).await
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let report = result?;
    if report.rows == 0 {
        let archived = tally.archived_events(&hint_filter).await?;
        if archived > 0 {
            eprintln!(
                "note: {archived} event(s) matching this export are in archives covering \
                 this range, not in the database (`tally restore FILE` puts them back)"
            );
        }
    }
    match path {
        Some(p) => out(format_args!(
            "exported {} row(s) to {} (total cost {})\n",
            report.rows,
            p.display(),
            tally::serde_fmt::money_text(report.total_cost)
        )),
        None => Ok(()),
    }
}

#[derive(Args)]
pub(crate) struct ArchiveArgs {
    /// Archive raw events recorded before the UTC day that was this many days ago
    /// (cut at that day's midnight, so runs on the same day archive the same span).
    #[arg(long, default_value_t = 90)]
    older_than: u32,
    /// Directory for the archive files (created if missing).
    #[arg(long, default_value = "archive")]
    dir: PathBuf,
    /// Also drop the archived events' dedupe keys (a replay of one would then count
    /// again; see docs/archive.md).
    #[arg(long)]
    forget_keys: bool,
    #[command(flatten)]
    output: crate::OutputArg,
}

pub(crate) async fn archive(url: Option<String>, a: ArchiveArgs) -> Result<(), Failure> {
    if a.older_than > 36_500 {
        return Err(Failure::Usage(format!(
            "invalid --older-than {}: must be at most 36500 days",
            a.older_than
        )));
    }
    // Cut at the UTC midnight that starts the day N days ago, not N days ago to the
    // nanosecond: runs on the same day have the same cutoff, so a daily schedule (or a
    // rerun) writes one file per day, not a file of the few seconds between two runs.
    let cutoff = Zone::UTC.start_of_day(
        Zone::UTC.date_of(Utc::now() - tally::chrono::Duration::days(i64::from(a.older_than))),
    );
    let tally = tally_for(url).await?;
    let report = tally
        .archive(&tally::archive::ArchiveOptions {
            cutoff,
            dir: a.dir,
            forget_keys: a.forget_keys,
        })
        .await?;
    match a.output.format {
        crate::output::Format::Table => {
            let mut text = String::new();
            for m in &report.archives {
                text.push_str(&format!(
                    "archived {} event(s) of {} .. {} to {}\n",
                    m.events,
                    tally::serde_fmt::rfc3339(m.range_from),
                    tally::serde_fmt::rfc3339(m.range_to),
                    m.file
                ));
            }
            if report.archives.is_empty() {
                text.push_str("nothing to archive\n");
            }
            if report.abandoned > 0 {
                text.push_str(&format!(
                    "{} archive(s) of an interrupted run marked abandoned (their events were archived again)\n",
                    report.abandoned
                ));
            }
            out(format_args!("{text}"))
        }
        _ => out(format_args!(
            "{}\n",
            serde_json::to_string_pretty(&report)
                .map_err(|e| Failure::Runtime(format!("writing JSON: {e}")))?
        )),
    }
}

pub(crate) async fn restore(url: Option<String>, file: PathBuf) -> Result<(), Failure> {
    let tally = tally_for(url).await?;
    let r = tally.restore(&file).await?;
    if r.already_restored {
        out(format_args!(
            "archive {} was restored before: nothing to do\n",
            r.archive_id
        ))
    } else {
        out(format_args!(
            "restored {} event(s) from archive {}\n",
            r.restored, r.archive_id
        ))
    }
}
