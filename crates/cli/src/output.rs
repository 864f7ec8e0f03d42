//! How results are printed: JSON by serde from the result types, CSV and tables
//! through one small trait.

use std::io::Write;

use clap::ValueEnum;
use serde::Serialize;
use tally::{
    VerifyReport, Zone,
    chrono::{DateTime, Utc},
    import::ImportReport,
    report::{Aggregation, Invoice, Peak, Stats, Summary, TrendDay},
    rust_decimal::Decimal,
    serde_fmt::{money_text, rfc3339},
};

use crate::{Failure, compact::format_compact};

/// Output format of every command.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub(crate) enum Format {
    /// Aligned columns for people: compact numbers (1.50M), local times.
    Table,
    /// JSON for programs: decimals as strings, times RFC 3339 UTC.
    Json,
    /// CSV (RFC 4180, one header row): exact numbers, RFC 3339 UTC times.
    Csv,
}

/// A result shown as rows: a header and one row per item. `table` asks for the
/// table style (compact numbers, local times, a total row) instead of exact CSV
/// values.
pub(crate) trait Tabular {
    /// Column names.
    fn header(&self) -> &'static [&'static str];
    /// The rows, cells in header order.
    fn rows(&self, table: bool) -> Vec<Vec<String>>;
}

/// Prints `value` in `format`.
pub(crate) fn emit<T: Serialize + Tabular>(format: Format, value: &T) -> Result<(), Failure> {
    match format {
        Format::Json => print_json(value),
        Format::Csv => print_csv(value.header(), value.rows(false)),
        Format::Table => print_table(value.header(), value.rows(true)),
    }
}

/// JSON, pretty, keys in sorted order (a `serde_json::Value` object keeps them so).
pub(crate) fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), Failure> {
    let v =
        serde_json::to_value(value).map_err(|e| Failure::Runtime(format!("writing JSON: {e}")))?;
    let text = serde_json::to_string_pretty(&v)
        .map_err(|e| Failure::Runtime(format!("writing JSON: {e}")))?;
    out(format_args!("{text}\n"))
}

/// Writes to stdout; a closed pipe (`tally … | head`) ends the program quietly.
pub(crate) fn out(args: std::fmt::Arguments<'_>) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_fmt(args)
        .and_then(|()| stdout.flush())
        .map_err(io_failure)
}

fn io_failure(e: std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Failure::Quiet
    } else {
        Failure::Runtime(format!("writing output: {e}"))
    }
}

fn print_csv(header: &[&str], rows: Vec<Vec<String>>) -> Result<(), Failure> {
    let mut w = csv::Writer::from_writer(std::io::stdout().lock());
    let err = |e: csv::Error| match e.into_kind() {
        csv::ErrorKind::Io(e) => io_failure(e),
        other => Failure::Runtime(format!("writing CSV: {other:?}")),
    };
    w.write_record(header).map_err(err)?;
    for r in rows {
        w.write_record(&r).map_err(err)?;
    }
    w.flush().map_err(io_failure)
}

fn print_table(header: &[&str], rows: Vec<Vec<String>>) -> Result<(), Failure> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        text.push_str(padded.join("  ").trim_end());
        text.push('\n');
    };
    line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for r in &rows {
        line(r);
    }
    out(format_args!("{text}"))
}

fn dec(d: Decimal) -> String {
    d.normalize().to_string()
}

fn money(d: Decimal) -> String {
    money_text(d)
}

/// Exact in CSV, compact (1.50M) in tables: for the analytics tables only. Money and
/// the quantities a bill is made of (report and invoice lines) are always exact
/// ([`dec`], [`money`]): a finance team reads them digit by digit.
fn num(table: bool, d: Decimal) -> String {
    if table { format_compact(d) } else { dec(d) }
}

/// A bucket start: RFC 3339 UTC in CSV, local time in tables.
pub(crate) fn local(t: DateTime<Utc>, zone: Zone, table: bool) -> String {
    if table {
        t.with_timezone(&zone.tz())
            .format("%Y-%m-%d %H:%M %Z")
            .to_string()
    } else {
        rfc3339(t)
    }
}

impl Tabular for Summary {
    fn header(&self) -> &'static [&'static str] {
        match self.days {
            Some(_) => &["date", "service", "quantity", "events"],
            None => &[
                "service",
                "unit",
                "quantity",
                "events",
                "unit_price",
                "amount",
            ],
        }
    }

    fn rows(&self, table: bool) -> Vec<Vec<String>> {
        if let Some(days) = &self.days {
            return days
                .iter()
                .map(|d| {
                    vec![
                        d.date.to_string(),
                        d.service.clone(),
                        dec(d.quantity),
                        d.events.to_string(),
                    ]
                })
                .collect();
        }
        let mut rows: Vec<Vec<String>> = self
            .services
            .iter()
            .map(|l| {
                vec![
                    l.service.clone(),
                    l.unit.clone(),
                    dec(l.quantity),
                    l.events.to_string(),
                    l.unit_price.map(dec).unwrap_or_default(),
                    money(l.amount),
                ]
            })
            .collect();
        if table {
            let blank = String::new;
            rows.push(vec![
                "total".into(),
                blank(),
                blank(),
                blank(),
                blank(),
                money(self.total_amount),
            ]);
        }
        rows
    }
}

impl Tabular for Aggregation {
    fn header(&self) -> &'static [&'static str] {
        &[
            "bucket",
            "customer_id",
            "service",
            "events",
            "quantity",
            "min",
            "max",
            "avg",
        ]
    }

    fn rows(&self, table: bool) -> Vec<Vec<String>> {
        self.buckets
            .iter()
            .map(|b| {
                vec![
                    local(b.bucket, self.tz, table),
                    b.customer_id.clone().unwrap_or_else(|| "*".into()),
                    b.service.clone(),
                    b.events.to_string(),
                    num(table, b.quantity),
                    num(table, b.min),
                    num(table, b.max),
                    num(table, b.avg().round_dp(6)),
                ]
            })
            .collect()
    }
}

impl Tabular for Stats {
    fn header(&self) -> &'static [&'static str] {
        &[
            "count", "total", "avg", "min", "max", "median", "p95", "p99",
        ]
    }

    fn rows(&self, table: bool) -> Vec<Vec<String>> {
        vec![vec![
            self.count.to_string(),
            num(table, self.sum),
            num(table, self.avg.round_dp(6)),
            num(table, self.min),
            num(table, self.max),
            num(table, self.median),
            num(table, self.p95),
            num(table, self.p99),
        ]]
    }
}

/// `trends` output: `{"days": [...]}`.
#[derive(Serialize)]
pub(crate) struct Trends {
    pub(crate) days: Vec<TrendDay>,
}

impl Tabular for Trends {
    fn header(&self) -> &'static [&'static str] {
        &["date", "service", "total", "previous", "change_pct"]
    }

    fn rows(&self, table: bool) -> Vec<Vec<String>> {
        self.days
            .iter()
            .map(|d| {
                // Today's total is so far, not a whole day's: a table says so.
                let date = match (table, d.partial) {
                    (true, true) => format!("{} (so far)", d.date),
                    _ => d.date.to_string(),
                };
                vec![
                    date,
                    d.service.clone(),
                    num(table, d.quantity),
                    d.previous.map(|p| num(table, p)).unwrap_or_default(),
                    d.change_pct
                        .map(|c| format!("{c:+.2}%"))
                        .unwrap_or_default(),
                ]
            })
            .collect()
    }
}

/// `peaks` output: `{"peaks": [...]}`.
#[derive(Serialize)]
pub(crate) struct Peaks {
    pub(crate) peaks: Vec<Peak>,
}

impl Tabular for Peaks {
    fn header(&self) -> &'static [&'static str] {
        &["bucket", "service", "total", "events"]
    }

    fn rows(&self, table: bool) -> Vec<Vec<String>> {
        self.peaks
            .iter()
            .map(|p| {
                vec![
                    local(p.bucket, Zone::UTC, table),
                    p.service.clone(),
                    num(table, p.quantity),
                    p.events.to_string(),
                ]
            })
            .collect()
    }
}

impl Tabular for Invoice {
    fn header(&self) -> &'static [&'static str] {
        &["service", "kind", "quantity", "billable_quantity", "amount"]
    }

    fn rows(&self, table: bool) -> Vec<Vec<String>> {
        let mut rows: Vec<Vec<String>> = self
            .lines
            .iter()
            .map(|l| {
                vec![
                    // The minimum's line names nothing.
                    if l.service.is_none() && l.meter.is_none() {
                        String::new()
                    } else {
                        l.label()
                    },
                    l.kind.to_string(),
                    dec(l.quantity),
                    dec(l.billable_quantity),
                    money(l.amount),
                ]
            })
            .collect();
        if table {
            rows.push(vec![
                "total".into(),
                String::new(),
                String::new(),
                String::new(),
                money(self.total_amount),
            ]);
        }
        rows
    }
}

impl Tabular for VerifyReport {
    fn header(&self) -> &'static [&'static str] {
        &[
            "events",
            "quantity",
            "mismatches",
            "key_mismatches",
            "archived_events",
            "archived_quantity",
        ]
    }

    fn rows(&self, _table: bool) -> Vec<Vec<String>> {
        vec![vec![
            self.events.to_string(),
            dec(self.quantity),
            self.mismatches.to_string(),
            self.key_mismatches.to_string(),
            self.archived_events.to_string(),
            dec(self.archived_quantity),
        ]]
    }
}

impl Tabular for ImportReport {
    fn header(&self) -> &'static [&'static str] {
        &["inserted", "duplicates", "rejected"]
    }

    fn rows(&self, _table: bool) -> Vec<Vec<String>> {
        vec![vec![
            self.inserted.to_string(),
            self.duplicates.to_string(),
            self.rejected.to_string(),
        ]]
    }
}
