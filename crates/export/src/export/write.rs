//! The three writers: CSV records, the JSON document (head, records, summary) and the
//! XLSX workbook (usage sheets of at most XLSX_MAX_ROWS rows, then summary sheets and a
//! chart), fed on a blocking thread.

use std::{collections::BTreeMap, io::Write};

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::{Decimal, prelude::ToPrimitive};
use rust_xlsxwriter::{Chart, ChartType, Format, Workbook};
use serde::Serialize;
use tally_core::{CustomerId, Progress, TimeRange, serde_fmt};
use tally_store::{Result, StoredEvent};

use super::totals::{Pricer, Running};
use super::{COLUMNS, ExportReport, Writer, io, json_error, text, xlsx_error};

/// What the JSON document says before its records.
pub(super) struct Head {
    pub(super) customer: Option<CustomerId>,
    pub(super) range: TimeRange,
    pub(super) exported_at: DateTime<Utc>,
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

pub(super) fn write_rows(
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
            let row = pricer.price(&e);
            let (unit, unit_price, cost) = (&*row.unit, row.unit_price, row.cost);
            match &mut writer {
                Writer::Csv(w) => w
                    .write_record([
                        serde_fmt::rfc3339(e.recorded_at).as_str(),
                        &e.customer_id,
                        &e.service,
                        &e.quantity.normalize().to_string(),
                        unit,
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
                        unit,
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
                    ws.write_string(r, 4, unit).map_err(xlsx_error)?;
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
            running.add(&e, &row, matches!(writer, Writer::Xlsx { .. }), &mut pricer)?;
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

/// How an export's costs add up, said where they are shown.
const ROUNDING: &str = "costs are each customer's invoice for the range (each part of it at the price in force then), rounded to the currency's minor unit, then added";

pub(super) fn finish(
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
                "minimum": serde_fmt::money_text(report.minimum),
                "services": report.services.keys().collect::<Vec<_>>(),
                "per_service": report.services,
                "rounding": ROUNDING,
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
    if !report.minimum.is_zero() {
        r += 1;
        ws.write_string(r, 0, "minimum").map_err(xlsx_error)?;
        ws.write_string(r, 1, "price book minimum, for customers below it")
            .map_err(xlsx_error)?;
        ws.write_number_with_format(r, 4, report.minimum.to_f64().unwrap_or_default(), &money)
            .map_err(xlsx_error)?;
    }
    r += 1;
    ws.write_string_with_format(r, 0, "total", &bold)
        .map_err(xlsx_error)?;
    ws.write_number_with_format(r, 2, report.rows as f64, &bold)
        .map_err(xlsx_error)?;
    ws.write_number_with_format(r, 4, report.total_cost.to_f64().unwrap_or_default(), &money)
        .map_err(xlsx_error)?;
    r += 1;
    ws.write_string(r, 0, ROUNDING).map_err(xlsx_error)?;
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
