//! `export`: raw usage to a CSV, JSON or XLSX file (or stdout).

use std::{io::IsTerminal, path::PathBuf, sync::Arc};

use clap::Args;
use tally::{
    CustomerId, Service, TimeRange, Zone,
    chrono::Utc,
    export::{EventFilter, ExportFormat, create_output, default_file_name},
};

use crate::{Failure, bad, output::out, reads, tally_for};

#[derive(Args)]
pub(crate) struct ExportArgs {
    /// csv, json or xlsx.
    #[arg(long)]
    format: String,
    /// File to write (default usage_YYYYMMDD_HHMMSS.<ext>); - for stdout (CSV, JSON).
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
    let customer: Option<CustomerId> = a
        .customer
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(bad)?;
    let range = TimeRange::from_bounds(a.from.as_deref(), a.to.as_deref(), zone, Utc::now())
        .map_err(bad)?;
    let to_stdout = a.output.as_deref() == Some("-");
    if to_stdout && format == ExportFormat::Xlsx {
        return Err(Failure::Usage(
            "invalid --output \"-\": an XLSX workbook goes to a file".into(),
        ));
    }
    let prices = reads::price_book(a.prices.as_deref())?;
    let tally = tally_for(url)?;
    let tally = match prices {
        Some(p) => tally.with_prices(p),
        None => tally,
    };
    let service: Option<Service> = match &a.service {
        Some(s) => Some(tally.catalog().await?.service(s).map_err(bad)?),
        None => None,
    };
    let filter = EventFilter {
        range,
        customer,
        service,
    };
    let (sink, path): (Box<dyn std::io::Write + Send>, Option<PathBuf>) = if to_stdout {
        (Box::new(std::io::stdout()), None)
    } else {
        let path = a
            .output
            .map(PathBuf::from)
            .unwrap_or_else(|| default_file_name(format, Utc::now()));
        let file = create_output(&path, a.force)?;
        (
            Box::new(std::io::BufWriter::with_capacity(1 << 20, file)),
            Some(path),
        )
    };
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
        .map(|b| Arc::new(move |n: u64| b.set_position(n)) as tally::export::Progress);
    let result = tally.export(format, filter, sink, progress).await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let report = result?;
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
