//! Exports read back with real parsers (csv, serde_json, calamine) and compared with
//! what was written (issue 10).

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use calamine::{Data, Reader, Xlsx, open_workbook};
use rust_decimal::Decimal;
use tally::{
    CustomerId, Metadata, Service, TimeRange, UsageEvent,
    export::{EventFilter, ExportFormat},
};
use tally_testdb::TestDb;
use tally_tests::at;

/// A `Write` that keeps what it got, for reading back.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buffer {
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

const TRICKY: &str = r#"{"note":"comma, \"quotes\"\nnew line","ü":"ñ✓","n":1.50}"#;

/// 30 events over three days: two customers, two services, one with tricky metadata.
async fn setup() -> (TestDb, Vec<UsageEvent>) {
    let db = TestDb::new().await.unwrap();
    let mut events = Vec::new();
    for i in 0..30u32 {
        let customer: CustomerId = if i % 3 == 0 { "bob" } else { "acme" }.parse().unwrap();
        let service = if i % 2 == 0 {
            Service::API
        } else {
            Service::BANDWIDTH
        };
        let q: tally::Quantity = format!("{}.{:03}", i + 1, i).parse().unwrap();
        let mut e = UsageEvent::new(customer, service, q)
            .at(at("2026-11-10T00:00:00Z") + tally::chrono::Duration::hours(i64::from(i) * 2));
        if i == 7 {
            e = e.with_metadata(TRICKY.parse::<Metadata>().unwrap());
        }
        events.push(e);
    }
    db.tally().write(&events).await.unwrap();
    (db, events)
}

fn november() -> TimeRange {
    TimeRange::new(at("2026-11-01T00:00:00Z"), at("2026-12-01T00:00:00Z")).unwrap()
}

fn all() -> EventFilter {
    EventFilter {
        range: november(),
        customer: None,
        service: None,
    }
}

#[tokio::test]
async fn csv_has_one_header_and_every_event_exactly() {
    let (db, events) = setup().await;
    let buf = Buffer::default();
    let report = db
        .tally()
        .export(ExportFormat::Csv, all(), Box::new(buf.clone()), None)
        .await
        .unwrap();
    assert_eq!(report.rows, 30);
    let bytes = buf.bytes();
    let mut r = csv::Reader::from_reader(bytes.as_slice());
    assert_eq!(
        r.headers().unwrap().iter().collect::<Vec<_>>(),
        tally::export::COLUMNS
    );
    let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 30);
    let total: Decimal = rows.iter().map(|r| r[3].parse::<Decimal>().unwrap()).sum();
    let expect: Decimal = events.iter().map(|e| e.quantity.value()).sum();
    assert_eq!(total, expect);
    // Metadata survives byte for byte: each row's text is what the database holds
    // (PostgreSQL's jsonb text), commas, quotes, newlines and non-ASCII included.
    let client = db.client().await.unwrap();
    for row in &rows {
        let stored: String = client
            .query_one(
                "SELECT metadata::text FROM usage_events WHERE event_id = $1::text::uuid",
                &[&&row[8]],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(&row[7], stored.as_str());
    }
    let tricky = rows.iter().find(|r| r[7].contains("quotes")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&tricky[7]).unwrap();
    assert_eq!(
        v,
        serde_json::from_str::<serde_json::Value>(TRICKY).unwrap()
    );
    // Priced: api at 0.0001 per request, cost = quantity × price.
    let api = rows.iter().find(|r| &r[2] == "api").unwrap();
    assert_eq!(&api[4], "requests");
    assert_eq!(&api[5], "0.0001");
    assert_eq!(
        api[6].parse::<Decimal>().unwrap(),
        api[3].parse::<Decimal>().unwrap() * "0.0001".parse::<Decimal>().unwrap()
    );
    assert!(report.total_cost > Decimal::ZERO);
}

#[tokio::test]
async fn json_is_the_seed_document_streamed() {
    let (db, events) = setup().await;
    let buf = Buffer::default();
    let filter = EventFilter {
        customer: Some("acme".parse().unwrap()),
        ..all()
    };
    db.tally()
        .export(ExportFormat::Json, filter, Box::new(buf.clone()), None)
        .await
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&buf.bytes()).unwrap();
    assert_eq!(doc["customer_id"], "acme");
    assert_eq!(doc["period"]["start"], "2026-11-01T00:00:00Z");
    assert_eq!(doc["period"]["end"], "2026-12-01T00:00:00Z");
    assert!(doc["export_date"].as_str().unwrap().ends_with('Z'));
    let records = doc["usage_records"].as_array().unwrap();
    let acme: Vec<&UsageEvent> = events
        .iter()
        .filter(|e| e.customer.as_str() == "acme")
        .collect();
    assert_eq!(records.len(), acme.len());
    let tricky = records
        .iter()
        .find(|r| r["metadata"].get("note").is_some())
        .unwrap();
    assert_eq!(
        tricky["metadata"],
        serde_json::from_str::<serde_json::Value>(TRICKY).unwrap()
    );
    let summary = &doc["summary"];
    assert_eq!(summary["total_events"], acme.len());
    assert_eq!(summary["services"], serde_json::json!(["api", "bandwidth"]));
    let api: Decimal = acme
        .iter()
        .filter(|e| e.service == Service::API)
        .map(|e| e.quantity.value())
        .sum();
    assert_eq!(
        summary["per_service"]["api"]["quantity"]
            .as_str()
            .unwrap()
            .parse::<Decimal>()
            .unwrap(),
        api
    );
    // The summary's cost is the invoice's: the report of the same range says the same.
    let report = db
        .tally()
        .summary(&"acme".parse().unwrap(), november())
        .await
        .unwrap();
    assert_eq!(
        summary["total_cost"].as_str().unwrap(),
        tally::serde_fmt::money_text(report.total_amount)
    );
}

#[tokio::test]
async fn xlsx_has_typed_cells_rolling_sheets_a_summary_and_a_chart() {
    let (db, events) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.xlsx");
    // 12 rows per sheet: 30 rows make three usage sheets.
    let report = db
        .tally()
        .exporter()
        .rows_per_sheet(12)
        .export_to(ExportFormat::Xlsx, all(), &path, false, None)
        .await
        .unwrap();
    assert_eq!((report.rows, report.sheets), (30, 3));
    let mut wb: Xlsx<_> = open_workbook(&path).unwrap();
    assert_eq!(
        wb.sheet_names(),
        ["Usage", "Usage (2)", "Usage (3)", "Daily", "Summary"]
    );
    let mut rows = 0;
    let mut total = 0.0;
    for name in ["Usage", "Usage (2)", "Usage (3)"] {
        let range = wb.worksheet_range(name).unwrap();
        let mut it = range.rows();
        let header: Vec<String> = it.next().unwrap().iter().map(|c| c.to_string()).collect();
        assert_eq!(header, tally::export::COLUMNS);
        for row in it {
            rows += 1;
            assert!(
                matches!(row[0], Data::DateTime(_)),
                "time is a date: {:?}",
                row[0]
            );
            match row[3] {
                Data::Float(q) => total += q,
                ref other => panic!("quantity is a number, got {other:?}"),
            }
            assert!(matches!(row[5], Data::Float(_)), "unit price: {:?}", row[5]);
        }
    }
    assert_eq!(rows, 30);
    let expect: f64 = events
        .iter()
        .map(|e| e.quantity.value().to_string().parse::<f64>().unwrap())
        .sum();
    assert!((total - expect).abs() < 1e-9, "{total} vs {expect}");
    // Rows come by customer, each customer's in time order: the first row's date is
    // the first customer's first event's time.
    let first = wb.worksheet_range("Usage").unwrap();
    let Data::DateTime(d) = &first[(1, 0)] else {
        panic!()
    };
    let first_customer = events.iter().map(|e| e.customer.as_str()).min().unwrap();
    assert_eq!(first[(1, 1)].to_string(), first_customer);
    assert_eq!(
        d.as_datetime().unwrap().and_utc(),
        events
            .iter()
            .filter(|e| e.customer.as_str() == first_customer)
            .map(|e| e.recorded_at)
            .min()
            .unwrap()
    );
    let summary = wb.worksheet_range("Summary").unwrap();
    let text: Vec<String> = summary.rows().flatten().map(|c| c.to_string()).collect();
    assert!(text.contains(&"api".to_owned()) && text.contains(&"bandwidth".to_owned()));
    let daily = wb.worksheet_range("Daily").unwrap();
    assert_eq!(daily.height(), 1 + 3, "a header and three days");
    // The chart part is in the package.
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        bytes
            .windows(b"xl/charts/chart1.xml".len())
            .any(|w| w == b"xl/charts/chart1.xml"),
        "no chart in the workbook"
    );
    // An existing file is never overwritten.
    let err = db
        .tally()
        .export_to(ExportFormat::Csv, all(), &path, false, None)
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("output"));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[tokio::test]
async fn filters_and_empty_exports() {
    let (db, events) = setup().await;
    let buf = Buffer::default();
    let filter = EventFilter {
        service: Some(Service::BANDWIDTH),
        customer: Some("bob".parse().unwrap()),
        range: TimeRange::new(at("2026-11-10T00:00:00Z"), at("2026-11-11T00:00:00Z")).unwrap(),
    };
    let expect = events
        .iter()
        .filter(|e| {
            e.service == Service::BANDWIDTH
                && e.customer.as_str() == "bob"
                && filter.range.contains(e.recorded_at)
        })
        .count();
    let report = db
        .tally()
        .export(ExportFormat::Csv, filter, Box::new(buf.clone()), None)
        .await
        .unwrap();
    assert_eq!(report.rows as usize, expect);
    let empty = Buffer::default();
    let nothing = EventFilter {
        range: TimeRange::new(at("2025-01-01T00:00:00Z"), at("2025-02-01T00:00:00Z")).unwrap(),
        ..all()
    };
    db.tally()
        .export(ExportFormat::Json, nothing, Box::new(empty.clone()), None)
        .await
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&empty.bytes()).unwrap();
    assert_eq!(doc["usage_records"], serde_json::json!([]));
    assert_eq!(doc["summary"]["total_events"], 0);
}

/// The money of the JSON export: per customer and service, the rows' quantities priced
/// by the default per-unit prices and rounded once, added up per service.
fn costs_from_rows(doc: &serde_json::Value) -> std::collections::BTreeMap<String, Decimal> {
    let mut per: std::collections::BTreeMap<(String, String), Decimal> = Default::default();
    for r in doc["usage_records"].as_array().unwrap() {
        let k = (
            r["customer_id"].as_str().unwrap().to_owned(),
            r["service"].as_str().unwrap().to_owned(),
        );
        let cost: Decimal = r["cost"].as_str().unwrap().parse().unwrap();
        *per.entry(k).or_default() += cost;
    }
    let mut out = std::collections::BTreeMap::new();
    for ((_, service), c) in per {
        *out.entry(service).or_default() += tally::pricing::round_money(c);
    }
    out
}

/// One export is one snapshot, rows and totals alike (issue 22: with an import running
/// beside it, the summary priced usage its rows did not hold). Writers add events to
/// the exported range while the export streams; its summary is what its own rows add
/// up to, event counts, quantities and money.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_during_ingest_agrees_with_its_own_rows() {
    let db = TestDb::new().await.unwrap();
    let t0 = at("2026-11-10T00:00:00Z");
    let batch = move |from: u32, n: u32| -> Vec<UsageEvent> {
        (from..from + n)
            .map(|i| {
                let c: CustomerId = format!("c{:03}", i % 200).parse().unwrap();
                UsageEvent::new(c, Service::API, "3".parse().unwrap())
                    .at(t0 + tally::chrono::Duration::seconds(i64::from(i)))
            })
            .collect()
    };
    db.tally().write(&batch(0, 20_000)).await.unwrap();
    let writer = {
        let t = db.tally().clone();
        tokio::spawn(async move {
            for k in 0..40u32 {
                t.write(&batch(20_000 + k * 2_000, 2_000)).await.unwrap();
            }
        })
    };
    let buf = Buffer::default();
    let report = db
        .tally()
        .export(ExportFormat::Json, all(), Box::new(buf.clone()), None)
        .await
        .unwrap();
    writer.await.unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&buf.bytes()).unwrap();
    let rows = doc["usage_records"].as_array().unwrap().len() as u64;
    assert_eq!(report.rows, rows);
    let api = &doc["summary"]["per_service"]["api"];
    assert_eq!(api["events"].as_u64(), Some(rows));
    let quantity: Decimal = api["quantity"].as_str().unwrap().parse().unwrap();
    assert_eq!(quantity, Decimal::from(3 * rows));
    let from_rows = costs_from_rows(&doc);
    let cost: Decimal = api["cost"].as_str().unwrap().parse().unwrap();
    assert_eq!(Some(&cost), from_rows.get("api"), "{}", doc["summary"]);
    let total: Decimal = doc["summary"]["total_cost"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(total, cost);
}

/// With a price version starting mid-range, every row and the summary are priced by
/// the one rule (the price in force at the range's start), so the file agrees with
/// itself (issue 22: the rows said 300, the summary 200.00).
#[tokio::test]
async fn a_price_change_inside_the_range_prices_rows_and_summary_alike() {
    let db = TestDb::new().await.unwrap();
    let mut book = tally::pricing::PriceBook::empty();
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    book.set(
        &Service::API,
        at("2020-01-01T00:00:00Z"),
        tally::pricing::Price::per_unit(d("1")),
    );
    book.set(
        &Service::API,
        at("2026-11-16T00:00:00Z"),
        tally::pricing::Price::per_unit(d("2")),
    );
    let t = tally::Tally::builder(db.url())
        .prices(book)
        .build_lazy()
        .unwrap();
    let acme: CustomerId = "acme".parse().unwrap();
    let events = [
        ("2026-11-05T00:00:00Z", "100"),
        ("2026-11-20T00:00:00Z", "100"),
    ]
    .map(|(when, q)| UsageEvent::new(acme.clone(), Service::API, q.parse().unwrap()).at(at(when)));
    t.write(&events).await.unwrap();
    let buf = Buffer::default();
    t.export(ExportFormat::Json, all(), Box::new(buf.clone()), None)
        .await
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&buf.bytes()).unwrap();
    let from_rows = costs_from_rows(&doc);
    let total: Decimal = doc["summary"]["total_cost"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(from_rows.get("api"), Some(&total));
    // Each half of the month at its own price (issue 26): 100 × 1 + 100 × 2.
    assert_eq!(total, d("300.00"));
    // The invoice for the same range says the same, a line per part.
    let invoice = t.invoice(&acme, november()).await.unwrap();
    assert_eq!(invoice.total_amount, total);
    let parts: Vec<(String, Decimal)> = invoice
        .lines
        .iter()
        .map(|l| (l.label(), l.amount))
        .collect();
    assert_eq!(
        parts,
        [
            (
                "api [2026-11-01T00:00:00Z, 2026-11-16T00:00:00Z)".to_owned(),
                d("100.00")
            ),
            (
                "api [2026-11-16T00:00:00Z, 2026-12-01T00:00:00Z)".to_owned(),
                d("200.00")
            ),
        ]
    );
}

/// Issue 26, items 4 and 5: a price that changes inside the period splits the line at
/// that instant (each part at its own price, on its own usage; a minimum prorated by
/// the part's share), and an export's total is the sum of its customers' invoices
/// with the same book: true-up lines, a service charged only its minimum, the book's
/// minimum. Every figure below is computed by hand.
#[tokio::test]
async fn a_mid_period_price_splits_the_invoice_and_the_export_totals_the_invoices() {
    let db = TestDb::new().await.unwrap();
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    let book: tally::pricing::PriceBook = serde_json::from_value(serde_json::json!({
        "currency": "USD",
        "minimum": "100",
        "services": {
            "api": [
                {"effective_from": "2020-01-01T00:00:00Z", "model": "per_unit", "unit_price": "0.10"},
                {"effective_from": "2026-11-16T00:00:00Z", "model": "per_unit", "unit_price": "0.25", "included": "100"}
            ],
            "bandwidth": [
                {"effective_from": "2020-01-01T00:00:00Z", "model": "per_unit", "unit_price": "1", "minimum": "30"},
                {"effective_from": "2026-11-16T00:00:00Z", "model": "per_unit", "unit_price": "1", "minimum": "30"}
            ],
            "storage": [
                {"effective_from": "2020-01-01T00:00:00Z", "model": "per_unit", "unit_price": "1", "minimum": "30"}
            ]
        }
    }))
    .unwrap();
    book.validate().unwrap();
    let t = tally::Tally::builder(db.url())
        .prices(book)
        .build_lazy()
        .unwrap();
    let (acme, globex): (CustomerId, CustomerId) =
        ("acme".parse().unwrap(), "globex".parse().unwrap());
    let event = |c: &CustomerId, s: Service, when: &str, q: &str| {
        UsageEvent::new(c.clone(), s, q.parse().unwrap()).at(at(when))
    };
    t.write(&[
        event(&acme, Service::API, "2026-11-05T00:00:00Z", "100"),
        event(&acme, Service::API, "2026-11-20T00:00:00Z", "200"),
        event(&acme, Service::BANDWIDTH, "2026-11-10T00:00:00Z", "4"),
        event(&globex, Service::API, "2026-11-02T00:00:00Z", "10"),
    ])
    .await
    .unwrap();

    let invoice = t.invoice(&acme, november()).await.unwrap();
    let lines: Vec<(String, String, Decimal)> = invoice
        .lines
        .iter()
        .map(|l| (l.label(), l.kind.to_string(), l.amount))
        .collect();
    let first = "[2026-11-01T00:00:00Z, 2026-11-16T00:00:00Z)";
    let second = "[2026-11-16T00:00:00Z, 2026-12-01T00:00:00Z)";
    let line = |what: String, kind: &str, amount: &str| (what, kind.to_owned(), d(amount));
    assert_eq!(
        lines,
        [
            // 100 × 0.10; then (200 − 100 included) × 0.25.
            line(format!("api {first}"), "usage", "10.00"),
            line(format!("api {second}"), "usage", "25.00"),
            // The minimum of 30 prorated: 15 days of 30 each half. 4 used, 11 made up;
            // nothing used in the second half, 15 made up.
            line(format!("bandwidth {first}"), "usage", "4.00"),
            line(format!("bandwidth {first}"), "true_up", "11.00"),
            line(format!("bandwidth {second}"), "usage", "0.00"),
            line(format!("bandwidth {second}"), "true_up", "15.00"),
            // Not used, no change in the month: its whole minimum.
            line("storage".to_owned(), "usage", "0.00"),
            line("storage".to_owned(), "true_up", "30.00"),
            // 95 in all, below the book's 100.
            line("-".to_owned(), "minimum", "5.00"),
        ]
    );
    assert_eq!(invoice.total_amount, d("100.00"));
    // The usage summary prices the same parts (its lines have no true-up or minimum).
    let summary = t.summary(&acme, november()).await.unwrap();
    let api = summary
        .services
        .iter()
        .find(|l| l.service == "api")
        .unwrap();
    assert_eq!(
        (api.quantity, api.amount, api.unit_price),
        (d("300"), d("35.00"), None)
    );
    let globex_invoice = t.invoice(&globex, november()).await.unwrap();
    // 1.00 for api, 30 + 30 made up, 39 to the book's minimum.
    assert_eq!(globex_invoice.total_amount, d("100.00"));

    for format in [ExportFormat::Json, ExportFormat::Csv] {
        let buf = Buffer::default();
        let report = t
            .export(format, all(), Box::new(buf.clone()), None)
            .await
            .unwrap();
        assert_eq!(report.total_cost, d("200.00"), "the two invoices' totals");
        let cost = |s: &str| report.services.get(s).map(|t| t.cost);
        assert_eq!(cost("api"), Some(d("36.00")));
        assert_eq!(cost("bandwidth"), Some(d("60.00")));
        assert_eq!(cost("storage"), Some(d("60.00")));
        assert_eq!(report.minimum, d("44.00"));
        if format == ExportFormat::Json {
            let doc: serde_json::Value = serde_json::from_slice(&buf.bytes()).unwrap();
            assert_eq!(doc["summary"]["total_cost"], "200.00");
            assert_eq!(doc["summary"]["minimum"], "44.00");
            assert!(
                doc["summary"]["rounding"]
                    .as_str()
                    .unwrap()
                    .contains("rounded")
            );
        }
    }
}

/// Totals an export cannot hold exactly are refused, never rounded or kept short
/// (issue 22: `checked_add(..).unwrap_or(..)` kept the old total).
#[tokio::test]
async fn an_export_total_past_exact_arithmetic_is_refused() {
    let db = TestDb::new().await.unwrap();
    let big = "9999999999999.999999999999999";
    let events: Vec<UsageEvent> = (0..9)
        .map(|i| {
            let c: CustomerId = format!("big{i}").parse().unwrap();
            UsageEvent::new(c, Service::STORAGE, big.parse().unwrap())
                .at(at("2026-11-10T00:00:00Z"))
        })
        .collect();
    // One write each: a batch's own total is refused the same way.
    for e in &events {
        db.tally().write(std::slice::from_ref(e)).await.unwrap();
    }
    let err = db
        .tally()
        .export(ExportFormat::Csv, all(), Box::new(Buffer::default()), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("overflow"), "{err}");
}
