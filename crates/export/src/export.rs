//! The three writers and what they share: rows priced as they stream, totals per
//! service and per day, and a summary priced by the analytics crate at the end.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    io::Write,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
};

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::{Decimal, prelude::ToPrimitive};
use rust_xlsxwriter::{Chart, ChartType, Format, Workbook, XlsxError};
use serde::Serialize;
use tally_analytics::Analytics;
use tally_core::{
    Catalog, CustomerId, Metered, PriceBook, Progress, Service, TimeRange, add_exact, serde_fmt,
};
use tally_store::{EventFilter, Result, StoredEvent};

/// Rows per Excel sheet: the format's 1 048 576 less the header row.
pub const XLSX_MAX_ROWS: u32 = 1_048_575;

/// The columns of the CSV and of the XLSX "Usage" sheets, in order.
pub const COLUMNS: [&str; 9] = [
    "recorded_at",
    "customer_id",
    "service",
    "quantity",
    "unit",
    "unit_price",
    "cost",
    "metadata",
    "event_id",
];

/// An export's file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExportFormat {
    /// RFC 4180 CSV with one header row.
    Csv,
    /// One JSON document: records, then a summary.
    Json,
    /// An Excel workbook: usage sheets, a summary sheet with a daily chart.
    Xlsx,
}

impl ExportFormat {
    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Json => "json",
            ExportFormat::Xlsx => "xlsx",
        }
    }
}

impl FromStr for ExportFormat {
    type Err = tally_core::Error;
    fn from_str(s: &str) -> std::result::Result<ExportFormat, tally_core::Error> {
        match s {
            "csv" => Ok(ExportFormat::Csv),
            "json" => Ok(ExportFormat::Json),
            "xlsx" => Ok(ExportFormat::Xlsx),
            _ => Err(tally_core::Error::Invalid {
                field: "format",
                value: s.chars().take(300).collect(),
                reason: "expected csv, json or xlsx".into(),
            }),
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

/// Totals of one service in an export.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceTotal {
    /// Events exported.
    pub events: u64,
    /// Their total quantity, exact.
    #[serde(serialize_with = "serde_fmt::decimal")]
    pub quantity: Decimal,
    /// The service's unit.
    pub unit: String,
    /// What it costs for the range, priced like an invoice (tiers, allowances; the
    /// price in force at the range's start) per customer from the rows exported, and
    /// added up: each customer's line is rounded once, then the lines are added.
    #[serde(serialize_with = "serde_fmt::money")]
    pub cost: Decimal,
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    /// Rows (events) written.
    pub rows: u64,
    /// Per service.
    pub services: BTreeMap<String, ServiceTotal>,
    /// Sum of the service costs.
    #[serde(serialize_with = "serde_fmt::money")]
    pub total_cost: Decimal,
    /// Usage sheets (XLSX only).
    pub sheets: u32,
}

/// Running totals while rows stream: per service, per day (for the XLSX chart), and
/// the customer being read. Rows come in customer order, so each customer's cost is
/// priced once their last row has passed, and memory holds one customer at a time
/// (plus, for a price that needs each event's quantity, that customer's quantities of
/// that service), however many customers there are.
struct Running {
    rows: u64,
    services: BTreeMap<String, ServiceTotal>,
    daily: BTreeMap<NaiveDate, BTreeMap<String, Decimal>>,
    customer: Option<String>,
    // The current customer's use per service.
    usage: BTreeMap<String, Metered>,
}

const QUANTITY: &str = "an export's quantities";
const COST: &str = "an export's costs";

impl Running {
    fn new() -> Running {
        Running {
            rows: 0,
            services: BTreeMap::new(),
            daily: BTreeMap::new(),
            customer: None,
            usage: BTreeMap::new(),
        }
    }

    /// Counts `e`; `daily` also keeps the per-day totals (for the XLSX chart).
    fn add(&mut self, e: &StoredEvent, unit: &str, daily: bool, pricer: &mut Pricer) -> Result<()> {
        if self.customer.as_deref() != Some(e.customer_id.as_str()) {
            self.close_customer(pricer)?;
            self.customer = Some(e.customer_id.clone());
        }
        let used = match self.usage.get_mut(&e.service) {
            Some(u) => u,
            None => self
                .usage
                .entry(e.service.clone())
                .or_insert_with(|| Metered {
                    per_event: pricer.needs_events(&e.service).then(Vec::new),
                    ..Metered::new(Decimal::ZERO, 0)
                }),
        };
        used.quantity = add_exact(used.quantity, e.quantity, QUANTITY)?;
        used.events += 1;
        if let Some(each) = &mut used.per_event {
            each.push(e.quantity);
        }
        self.rows += 1;
        // Look up before inserting: a row allocates only for a key seen first.
        let t = match self.services.get_mut(&e.service) {
            Some(t) => t,
            None => self
                .services
                .entry(e.service.clone())
                .or_insert_with(|| ServiceTotal {
                    unit: unit.to_owned(),
                    ..ServiceTotal::default()
                }),
        };
        t.events += 1;
        t.quantity = add_exact(t.quantity, e.quantity, QUANTITY)?;
        if daily {
            let per = self.daily.entry(e.recorded_at.date_naive()).or_default();
            let day = match per.get_mut(&e.service) {
                Some(d) => d,
                None => per.entry(e.service.clone()).or_default(),
            };
            *day = add_exact(*day, e.quantity, QUANTITY)?;
        }
        Ok(())
    }

    /// Prices the current customer's use (all its rows have passed) into the service
    /// totals.
    fn close_customer(&mut self, pricer: &mut Pricer) -> Result<()> {
        for (service, used) in std::mem::take(&mut self.usage) {
            let amount = pricer.amount(&service, &used)?;
            if let Some(t) = self.services.get_mut(&service) {
                t.cost = add_exact(t.cost, amount, COST)?;
            }
        }
        Ok(())
    }
}

/// Prices rows as they stream and customers as they end, by one rule, the invoice's:
/// the price in force at the range's start (docs/semantics.md, "Money"), so a row's
/// cost and the summary's agree whatever price versions start inside the range.
/// Models without a per-unit price (tiers, packages) leave both row price columns
/// empty: their cost exists only for a total, in the summary.
struct Pricer {
    catalog: Catalog,
    prices: PriceBook,
    at: DateTime<Utc>,
    // Per service name: the service and its unit, looked up once.
    services: HashMap<String, Option<(Service, Arc<str>)>>,
}

impl Pricer {
    fn service(&mut self, name: &str) -> Option<(Service, Arc<str>)> {
        match self.services.get(name) {
            Some(k) => k.clone(),
            None => {
                let k = self.catalog.service(name).ok().map(|s| {
                    let unit: Arc<str> = Arc::from(self.catalog.unit(&s).unwrap_or_default());
                    (s, unit)
                });
                self.services.insert(name.to_owned(), k.clone());
                k
            }
        }
    }

    /// Whether the price of `service` needs each event's quantity.
    fn needs_events(&mut self, service: &str) -> bool {
        let at = self.at;
        self.service(service)
            .and_then(|(s, _)| self.prices.price_at(&s, at).map(|p| p.needs_events()))
            .unwrap_or(false)
    }

    /// What one customer's `used` of `service` costs over the range, rounded once.
    fn amount(&mut self, service: &str, used: &Metered) -> Result<Decimal> {
        let at = self.at;
        let exponent = self.prices.exponent();
        let price = self
            .service(service)
            .and_then(|(s, _)| self.prices.price_at(&s, at).cloned());
        Ok(match price {
            Some(p) => p.priced(used, exponent)?.amount,
            None => tally_core::round_to(Decimal::ZERO, exponent),
        })
    }

    /// (unit, unit price, cost) of one row.
    fn price(&mut self, e: &StoredEvent) -> (Arc<str>, Option<Decimal>, Option<Decimal>) {
        let Some((service, unit)) = self.service(&e.service) else {
            return (Arc::from(""), None, None);
        };
        let unit_price = self
            .prices
            .price_at(&service, self.at)
            .and_then(|p| p.unit_price());
        let cost = unit_price
            .and_then(|p| p.checked_mul(e.quantity))
            .map(|c| c.normalize());
        (unit, unit_price, cost)
    }
}

fn text(d: Option<Decimal>) -> String {
    d.map(|d| d.normalize().to_string()).unwrap_or_default()
}

fn io(what: &str) -> impl Fn(std::io::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn xlsx_error(e: XlsxError) -> std::io::Error {
    std::io::Error::other(format!("writing XLSX: {e}"))
}

fn json_error(e: serde_json::Error) -> std::io::Error {
    std::io::Error::other(format!("writing JSON: {e}"))
}

/// Exports raw usage as CSV, JSON or XLSX, streaming from the database in bounded
/// chunks (memory stays flat however many rows), priced with the same price book as
/// invoices. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Exporter {
    analytics: Analytics,
    store: tally_store::Store,
    rows_per_sheet: u32,
}

/// Where an export is going and the writers' state between the row phase and the
/// summary phase.
enum Writer {
    Csv(Box<csv::Writer<Box<dyn Write + Send>>>),
    Json(Box<dyn Write + Send>),
    Xlsx {
        workbook: Box<Workbook>,
        out: Box<dyn Write + Send>,
        sheet: usize,
        row: u32,
        sheets: Vec<(usize, u32)>,
    },
}

impl Exporter {
    /// An exporter over `store`, pricing with `analytics`' price book.
    pub fn new(store: tally_store::Store, analytics: Analytics) -> Exporter {
        Exporter {
            analytics,
            store,
            rows_per_sheet: XLSX_MAX_ROWS,
        }
    }

    /// Data rows per XLSX usage sheet before the next ("Usage (2)", …) starts; at most
    /// (and by default) Excel's [`XLSX_MAX_ROWS`].
    pub fn rows_per_sheet(mut self, n: u32) -> Exporter {
        self.rows_per_sheet = n.clamp(1, XLSX_MAX_ROWS);
        self
    }

    /// Writes the events matching `filter` to the file `path` in `format`, whole or
    /// not at all: the rows go to a temporary file beside it, which is synced and then
    /// renamed to `path`, so a full disk or a crash never leaves a truncated file under
    /// that name (the temporary one is removed on failure). An existing `path` is
    /// refused, naming it (field `output`), unless `force`: then it is replaced only
    /// once the new file is complete.
    pub async fn export_to(
        &self,
        format: ExportFormat,
        filter: EventFilter,
        path: &Path,
        force: bool,
        progress: Option<Progress>,
    ) -> Result<ExportReport> {
        let pending = Pending::create(path, force)?;
        let file = pending
            .file
            .try_clone()
            .map_err(io(&format!("writing {}", path.display())))?;
        let out = Box::new(std::io::BufWriter::with_capacity(1 << 20, file));
        let report = self.export(format, filter, out, progress).await?;
        tokio::task::spawn_blocking(move || pending.commit())
            .await
            .map_err(|e| std::io::Error::other(format!("export writer: {e}")))??;
        Ok(report)
    }

    /// Writes the events matching `filter` to `out` in `format` (a stream: standard
    /// output, a socket; for a file, [`Exporter::export_to`]). `progress`, if given,
    /// hears the rows written so far now and then.
    pub async fn export(
        &self,
        format: ExportFormat,
        filter: EventFilter,
        out: Box<dyn Write + Send>,
        progress: Option<Progress>,
    ) -> Result<ExportReport> {
        let catalog = self.store.catalog().await?;
        let pricer = Pricer {
            catalog,
            prices: self.analytics.prices().clone(),
            at: filter.range.from(),
            services: HashMap::new(),
        };
        let writer = match format {
            ExportFormat::Csv => Writer::Csv(Box::new(
                csv::WriterBuilder::new()
                    .buffer_capacity(256 * 1024)
                    .from_writer(out),
            )),
            ExportFormat::Json => Writer::Json(out),
            ExportFormat::Xlsx => {
                let mut workbook = Box::new(Workbook::new());
                workbook
                    .set_tempdir(std::env::temp_dir())
                    .map_err(xlsx_error)?;
                Writer::Xlsx {
                    workbook,
                    out,
                    sheet: 0,
                    row: 0,
                    sheets: Vec::new(),
                }
            }
        };
        let rows = self.store.events(filter.clone(), 5_000);
        let rows_per_sheet = self.rows_per_sheet;
        let head = Head {
            customer: filter.customer.clone(),
            range: filter.range,
            exported_at: Utc::now(),
        };
        // Phase 1, blocking: stream the rows (one snapshot, in customer order), pricing
        // each customer as its last row passes: rows and totals from the same rows.
        let (writer, running, head) = tokio::task::spawn_blocking(move || {
            let (writer, running) =
                write_rows(writer, rows, pricer, &head, rows_per_sheet, progress)?;
            Ok::<_, tally_store::Error>((writer, running, head))
        })
        .await
        .map_err(|e| std::io::Error::other(format!("export writer: {e}")))??;
        let mut report = ExportReport {
            rows: running.rows,
            services: running.services,
            total_cost: Decimal::ZERO,
            sheets: 0,
        };
        report.total_cost = report
            .services
            .values()
            .try_fold(Decimal::ZERO, |a, t| add_exact(a, t.cost, COST))?;
        // Phase 3, blocking: the summary and the chart, then close.
        let daily = running.daily;
        let report = tokio::task::spawn_blocking(move || finish(writer, &head, report, &daily))
            .await
            .map_err(|e| std::io::Error::other(format!("export writer: {e}")))??;
        Ok(report)
    }
}

/// What the JSON document says before its records.
struct Head {
    customer: Option<CustomerId>,
    range: TimeRange,
    exported_at: DateTime<Utc>,
}

/// One JSON record (`usage_records[]`).
#[derive(Serialize)]
struct Record<'a> {
    event_id: String,
    customer_id: &'a str,
    service: &'a str,
    quantity: String,
    unit: &'a str,
    unit_price: Option<String>,
    cost: Option<String>,
    recorded_at: String,
    metadata: &'a serde_json::value::RawValue,
}

fn write_rows(
    mut writer: Writer,
    mut rows: tokio::sync::mpsc::Receiver<Result<Vec<StoredEvent>>>,
    mut pricer: Pricer,
    head: &Head,
    rows_per_sheet: u32,
    progress: Option<Progress>,
) -> Result<(Writer, Running)> {
    let mut running = Running::new();
    let date = Format::new().set_num_format("yyyy-mm-dd hh:mm:ss.000");
    let number = Format::new().set_num_format("0.############");
    let bold = Format::new().set_bold();
    match &mut writer {
        Writer::Csv(w) => w.write_record(COLUMNS).map_err(csv_error)?,
        Writer::Json(w) => {
            let start = serde_json::json!({
                "start": serde_fmt::rfc3339(head.range.from()),
                "end": serde_fmt::rfc3339(head.range.to()),
            });
            write!(
                w,
                "{{\"customer_id\":{},\"export_date\":\"{}\",\"period\":{},\"usage_records\":[",
                serde_json::to_string(&head.customer.as_ref().map(CustomerId::as_str))
                    .map_err(json_error)?,
                serde_fmt::rfc3339(head.exported_at),
                start
            )
            .map_err(io("writing JSON"))?;
        }
        Writer::Xlsx { .. } => {}
    }
    while let Some(chunk) = rows.blocking_recv() {
        for e in chunk? {
            let (unit, unit_price, cost) = pricer.price(&e);
            match &mut writer {
                Writer::Csv(w) => w
                    .write_record([
                        serde_fmt::rfc3339(e.recorded_at).as_str(),
                        &e.customer_id,
                        &e.service,
                        &e.quantity.normalize().to_string(),
                        &unit,
                        &text(unit_price),
                        &text(cost),
                        &e.metadata,
                        &e.event_id.to_string(),
                    ])
                    .map_err(csv_error)?,
                Writer::Json(w) => {
                    if running.rows > 0 {
                        w.write_all(b",").map_err(io("writing JSON"))?;
                    }
                    let metadata: &serde_json::value::RawValue =
                        serde_json::from_str(&e.metadata).map_err(json_error)?;
                    let record = Record {
                        event_id: e.event_id.to_string(),
                        customer_id: &e.customer_id,
                        service: &e.service,
                        quantity: e.quantity.normalize().to_string(),
                        unit: &unit,
                        unit_price: unit_price.map(|p| p.normalize().to_string()),
                        cost: cost.map(|c| c.normalize().to_string()),
                        recorded_at: serde_fmt::rfc3339(e.recorded_at),
                        metadata,
                    };
                    serde_json::to_writer(&mut *w, &record).map_err(json_error)?;
                }
                Writer::Xlsx {
                    workbook,
                    sheet,
                    row,
                    sheets,
                    ..
                } => {
                    if *row == 0 || *row > rows_per_sheet {
                        let name = match sheets.len() {
                            0 => "Usage".to_owned(),
                            n => format!("Usage ({})", n + 1),
                        };
                        let ws = workbook
                            .add_worksheet_with_constant_memory()
                            .map_err(xlsx_error)?;
                        ws.set_name(&name).map_err(xlsx_error)?;
                        ws.write_row_with_format(0, 0, COLUMNS, &bold)
                            .map_err(xlsx_error)?;
                        ws.set_freeze_panes(1, 0).map_err(xlsx_error)?;
                        for (col, width) in [
                            (0, 24),
                            (1, 16),
                            (2, 12),
                            (3, 16),
                            (4, 12),
                            (5, 12),
                            (6, 12),
                            (7, 40),
                            (8, 38),
                        ] {
                            ws.set_column_width(col, width).map_err(xlsx_error)?;
                        }
                        *sheet = workbook.worksheets().len() - 1;
                        sheets.push((*sheet, 0));
                        *row = 1;
                    }
                    let ws = workbook.worksheet_from_index(*sheet).map_err(xlsx_error)?;
                    let r = *row;
                    ws.write_datetime_with_format(r, 0, e.recorded_at.naive_utc(), &date)
                        .map_err(xlsx_error)?;
                    ws.write_string(r, 1, &e.customer_id).map_err(xlsx_error)?;
                    ws.write_string(r, 2, &e.service).map_err(xlsx_error)?;
                    if let Some(q) = e.quantity.to_f64() {
                        ws.write_number_with_format(r, 3, q, &number)
                            .map_err(xlsx_error)?;
                    }
                    ws.write_string(r, 4, &*unit).map_err(xlsx_error)?;
                    if let Some(p) = unit_price.and_then(|p| p.to_f64()) {
                        ws.write_number_with_format(r, 5, p, &number)
                            .map_err(xlsx_error)?;
                    }
                    if let Some(c) = cost.and_then(|c| c.to_f64()) {
                        ws.write_number_with_format(r, 6, c, &number)
                            .map_err(xlsx_error)?;
                    }
                    ws.write_string(r, 7, &e.metadata).map_err(xlsx_error)?;
                    ws.write_string(r, 8, e.event_id.to_string())
                        .map_err(xlsx_error)?;
                    if let Some(last) = sheets.last_mut() {
                        last.1 = r;
                    }
                    *row += 1;
                }
            }
            running.add(
                &e,
                &unit,
                matches!(writer, Writer::Xlsx { .. }),
                &mut pricer,
            )?;
        }
        if let Some(p) = &progress {
            p(running.rows);
        }
    }
    running.close_customer(&mut pricer)?;
    Ok((writer, running))
}

fn csv_error(e: csv::Error) -> std::io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => io("writing CSV")(e),
        other => std::io::Error::other(format!("writing CSV: {other:?}")),
    }
}

fn finish(
    writer: Writer,
    head: &Head,
    mut report: ExportReport,
    daily: &BTreeMap<NaiveDate, BTreeMap<String, Decimal>>,
) -> Result<ExportReport> {
    match writer {
        Writer::Csv(w) => {
            let mut out = w
                .into_inner()
                .map_err(|e| io("writing CSV")(std::io::Error::other(e.to_string())))?;
            out.flush().map_err(io("writing CSV"))?;
        }
        Writer::Json(mut w) => {
            let summary = serde_json::json!({
                "total_events": report.rows,
                "total_cost": serde_fmt::money_text(report.total_cost),
                "services": report.services.keys().collect::<Vec<_>>(),
                "per_service": report.services,
            });
            write!(w, "],\"summary\":{summary}}}").map_err(io("writing JSON"))?;
            w.flush().map_err(io("writing JSON"))?;
        }
        Writer::Xlsx {
            mut workbook,
            mut out,
            sheets,
            ..
        } => {
            report.sheets = u32::try_from(sheets.len()).unwrap_or(u32::MAX);
            if sheets.is_empty() {
                // No rows: still a usage sheet with its header.
                let bold = Format::new().set_bold();
                let ws = workbook.add_worksheet();
                ws.set_name("Usage").map_err(xlsx_error)?;
                ws.write_row_with_format(0, 0, COLUMNS, &bold)
                    .map_err(xlsx_error)?;
                report.sheets = 1;
            }
            for (index, last) in &sheets {
                let ws = workbook.worksheet_from_index(*index).map_err(xlsx_error)?;
                ws.autofilter(0, 0, (*last).max(1), 8).map_err(xlsx_error)?;
            }
            summary_sheets(&mut workbook, head, &report, daily)?;
            workbook.set_zip_compression_level(3);
            workbook.save_to_writer(&mut out).map_err(xlsx_error)?;
            out.flush().map_err(io("writing XLSX"))?;
        }
    }
    Ok(report)
}

fn summary_sheets(
    workbook: &mut Workbook,
    head: &Head,
    report: &ExportReport,
    daily: &BTreeMap<NaiveDate, BTreeMap<String, Decimal>>,
) -> Result<()> {
    let bold = Format::new().set_bold();
    let number = Format::new().set_num_format("0.############");
    let money = Format::new().set_num_format("#,##0.00");
    let day = Format::new().set_num_format("yyyy-mm-dd");
    let services: Vec<&String> = report.services.keys().collect();

    // Daily totals per service: the chart's data.
    let ws = workbook.add_worksheet();
    ws.set_name("Daily").map_err(xlsx_error)?;
    ws.write_string_with_format(0, 0, "date", &bold)
        .map_err(xlsx_error)?;
    for (i, s) in services.iter().enumerate() {
        let col = u16::try_from(i + 1).unwrap_or(u16::MAX);
        ws.write_string_with_format(0, col, s.as_str(), &bold)
            .map_err(xlsx_error)?;
    }
    let mut r = 0u32;
    for (date, per) in daily {
        r += 1;
        ws.write_date_with_format(r, 0, *date, &day)
            .map_err(xlsx_error)?;
        for (i, s) in services.iter().enumerate() {
            let col = u16::try_from(i + 1).unwrap_or(u16::MAX);
            let q = per.get(*s).copied().unwrap_or_default();
            ws.write_number_with_format(r, col, q.to_f64().unwrap_or_default(), &number)
                .map_err(xlsx_error)?;
        }
    }
    ws.set_column_width(0, 12).map_err(xlsx_error)?;

    let ws = workbook.add_worksheet();
    ws.set_name("Summary").map_err(xlsx_error)?;
    let who = head
        .customer
        .as_ref()
        .map_or("all customers".to_owned(), |c| c.to_string());
    ws.write_string_with_format(0, 0, "customer", &bold)
        .map_err(xlsx_error)?;
    ws.write_string(0, 1, who).map_err(xlsx_error)?;
    ws.write_string_with_format(1, 0, "period", &bold)
        .map_err(xlsx_error)?;
    ws.write_string(
        1,
        1,
        format!(
            "{} to {}",
            serde_fmt::rfc3339(head.range.from()),
            serde_fmt::rfc3339(head.range.to())
        ),
    )
    .map_err(xlsx_error)?;
    ws.write_string_with_format(2, 0, "exported", &bold)
        .map_err(xlsx_error)?;
    ws.write_string(2, 1, serde_fmt::rfc3339(head.exported_at))
        .map_err(xlsx_error)?;
    ws.write_row_with_format(
        4,
        0,
        ["service", "unit", "events", "quantity", "cost"],
        &bold,
    )
    .map_err(xlsx_error)?;
    let mut r = 4u32;
    for (name, t) in &report.services {
        r += 1;
        ws.write_string(r, 0, name.as_str()).map_err(xlsx_error)?;
        ws.write_string(r, 1, t.unit.as_str()).map_err(xlsx_error)?;
        ws.write_number(r, 2, t.events as f64).map_err(xlsx_error)?;
        ws.write_number_with_format(r, 3, t.quantity.to_f64().unwrap_or_default(), &number)
            .map_err(xlsx_error)?;
        ws.write_number_with_format(r, 4, t.cost.to_f64().unwrap_or_default(), &money)
            .map_err(xlsx_error)?;
    }
    r += 1;
    ws.write_string_with_format(r, 0, "total", &bold)
        .map_err(xlsx_error)?;
    ws.write_number_with_format(r, 2, report.rows as f64, &bold)
        .map_err(xlsx_error)?;
    ws.write_number_with_format(r, 4, report.total_cost.to_f64().unwrap_or_default(), &money)
        .map_err(xlsx_error)?;
    for (col, width) in [(0, 14), (1, 40), (2, 12), (3, 18), (4, 14)] {
        ws.set_column_width(col, width).map_err(xlsx_error)?;
    }

    // The chart: daily usage per service.
    let days = u32::try_from(daily.len()).unwrap_or(u32::MAX);
    if days > 0 {
        let mut chart = Chart::new(ChartType::Line);
        for (i, s) in services.iter().enumerate() {
            let col = u16::try_from(i + 1).unwrap_or(u16::MAX);
            chart
                .add_series()
                .set_name(s.as_str())
                .set_categories(("Daily", 1, 0, days, 0))
                .set_values(("Daily", 1, col, days, col));
        }
        chart.title().set_name("Daily usage per service");
        chart.x_axis().set_name("day");
        chart.y_axis().set_name("quantity (each service's unit)");
        ws.insert_chart(r + 2, 0, &chart).map_err(xlsx_error)?;
    }
    Ok(())
}

/// The default file name: `usage_YYYYMMDD_HHMMSS.<ext>` (UTC).
pub fn default_file_name(format: ExportFormat, now: DateTime<Utc>) -> PathBuf {
    PathBuf::from(format!(
        "usage_{}.{}",
        now.format("%Y%m%d_%H%M%S"),
        format.extension()
    ))
}

fn exists_error(path: &Path) -> tally_store::Error {
    tally_store::Error::from(tally_core::Error::Invalid {
        field: "output",
        value: path.display().to_string(),
        reason: "exists; choose another name or pass --force to replace it".into(),
    })
}

/// An export file being written: a temporary file beside its destination, removed
/// unless [`Pending::commit`] puts it in place.
struct Pending {
    file: std::fs::File,
    tmp: PathBuf,
    dest: PathBuf,
    force: bool,
    done: bool,
}

impl Pending {
    /// Refuses an existing `dest` (unless `force`) before any work, and creates the
    /// temporary file in `dest`'s directory (so the rename stays on one filesystem).
    fn create(dest: &Path, force: bool) -> Result<Pending> {
        if !force && std::fs::symlink_metadata(dest).is_ok() {
            return Err(exists_error(dest));
        }
        let name = dest.file_name().ok_or_else(|| {
            tally_store::Error::from(tally_core::Error::Invalid {
                field: "output",
                value: dest.display().to_string(),
                reason: "is not a file name".into(),
            })
        })?;
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let mut attempt = 0u32;
        loop {
            let tmp = dir.join(format!(
                ".{}.{}-{stamp}-{attempt}.partial",
                name.to_string_lossy(),
                std::process::id()
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
            {
                Ok(file) => {
                    return Ok(Pending {
                        file,
                        tmp,
                        dest: dest.to_owned(),
                        force,
                        done: false,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(e) => return Err(io(&format!("creating {}", tmp.display()))(e).into()),
            }
        }
    }

    /// Syncs the complete file and gives it its name: a rename over the old file
    /// with `force`, else a link that fails if a file appeared meanwhile (never a
    /// clobber); then syncs the directory so the name survives a crash.
    fn commit(mut self) -> Result<()> {
        let ctx = format!("writing {}", self.dest.display());
        self.file.sync_all().map_err(io(&ctx))?;
        if self.force {
            std::fs::rename(&self.tmp, &self.dest).map_err(io(&ctx))?;
        } else {
            match std::fs::hard_link(&self.tmp, &self.dest) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(exists_error(&self.dest));
                }
                // A filesystem without hard links: check, then rename (a narrow race).
                Err(_) if std::fs::symlink_metadata(&self.dest).is_err() => {
                    std::fs::rename(&self.tmp, &self.dest).map_err(io(&ctx))?;
                }
                Err(e) => return Err(io(&ctx)(e).into()),
            }
            let _ = std::fs::remove_file(&self.tmp);
        }
        self.done = true;
        if let Some(dir) = self.dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&ctx))?;
        }
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
