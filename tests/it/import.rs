use std::io::Cursor;

use rust_decimal::Decimal;
use tally::{
    ErrorKind,
    import::{ImportFormat, ImportOptions},
};
use tally_testdb::TestDb;

fn csv_opts() -> ImportOptions {
    ImportOptions::new(ImportFormat::Csv)
}

const CSV: &str = "customer_id,service,quantity,recorded_at,metadata
acme,api,1,2026-11-01T10:00:00Z,
acme,api,1,2026-11-01T10:00:00Z,
acme,storage,2.5,2026-11-01T10:30:00+01:00,\"{\"\"path\"\":\"\"a,b\"\"}\"
globex,compute,0.000000000093,2026-11-02T00:00:00Z,{}
";

#[tokio::test]
async fn importing_the_same_file_twice_leaves_totals_unchanged() {
    let db = TestDb::new().await.unwrap();
    let first = db
        .tally()
        .import(Cursor::new(CSV), csv_opts(), None)
        .await
        .unwrap();
    // Two identical rows without ids are two events (occurrence counts in the id).
    assert_eq!(
        (first.inserted, first.duplicates, first.rejected),
        (4, 0, 0)
    );
    let again = db
        .tally()
        .import(Cursor::new(CSV), csv_opts(), None)
        .await
        .unwrap();
    assert_eq!(
        (again.inserted, again.duplicates, again.rejected),
        (0, 4, 0)
    );
    let v = db.tally().verify().await.unwrap();
    assert_eq!(
        (v.events, v.quantity, v.mismatches),
        (4, "4.500000000093".parse::<Decimal>().unwrap(), 0)
    );
    // A file that grew since: only the new line counts.
    let grown = format!("{CSV}acme,api,1,2026-11-01T10:00:00Z,\n");
    let third = db
        .tally()
        .import(Cursor::new(grown), csv_opts(), None)
        .await
        .unwrap();
    assert_eq!((third.inserted, third.duplicates), (1, 4));
}

#[tokio::test]
async fn ndjson_keeps_exact_numbers_and_objects() {
    let db = TestDb::new().await.unwrap();
    let text = r#"{"event_id":"0195f000-0000-7000-8000-00000000000a","customer_id":"acme","service":"bandwidth","quantity":0.000000000093,"recorded_at":"2026-11-01T10:00:00Z","metadata":{"q":"he said \"hi\"\n","u":"ü"}}
{"customer_id":"acme","service":"api","quantity":"12.5","recorded_at":"2026-11-01T11:00:00Z"}

{"customer_id":"acme","service":"api","quantity":1e-16,"recorded_at":"2026-11-01T11:00:00Z"}
{"customer_id":"acme","service":"api","quantity":9.3e-11,"recorded_at":"2026-11-01T12:00:00Z"}
{"customer_id":"acme","service":"api","quantity":-1,"recorded_at":"2026-11-01T11:00:00Z"}
not json
{"customer_id":"acme","service":"api","quantity":"1","recorded_at":"2026-11-01T11:00:00"}
"#;
    let r = db
        .tally()
        .import(
            Cursor::new(text),
            ImportOptions::new(ImportFormat::Ndjson),
            None,
        )
        .await
        .unwrap();
    // 9.3e-11 (as JavaScript prints it) is exact at 15 digits: accepted; 1e-16 is not.
    assert_eq!((r.inserted, r.rejected), (3, 4), "{r:?}");
    let lines: Vec<u64> = r.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![4, 6, 7, 8]);
    assert!(
        r.errors[0].message.contains("quantity") && r.errors[0].message.contains("1e-16"),
        "{:?}",
        r.errors[0]
    );
    assert!(r.errors[3].message.contains("offset"), "{:?}", r.errors[3]);
    let client = db.client().await.unwrap();
    let row = client
        .query_one(
            "SELECT quantity, metadata->>'q' FROM usage_events WHERE service = 'bandwidth'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Decimal>(0), Decimal::new(93, 12));
    assert_eq!(row.get::<_, String>(1), "he said \"hi\"\n");
}

#[tokio::test]
async fn bad_csv_lines_are_reported_by_line_and_good_ones_import() {
    let db = TestDb::new().await.unwrap();
    let text = "event_id,customer_id,service,quantity,recorded_at,metadata
,acme,api,1,2026-11-01T10:00:00Z,\"{\"\"multi\"\":
\"\"line\"\"}\"
,a b,api,1,2026-11-01T10:00:00Z,
,acme,apis,1,2026-11-01T10:00:00Z,
not-a-uuid,acme,api,1,2026-11-01T10:00:00Z,
,acme,api,NaN,2026-11-01T10:00:00Z,
,acme,api,1,2026-11-01T10:00:00Z,[1]
,acme,api,2,2026-11-01T10:00:00Z,
";
    let r = db
        .tally()
        .import(Cursor::new(text), csv_opts(), None)
        .await
        .unwrap();
    assert_eq!((r.inserted, r.rejected), (2, 5), "{r:?}");
    let got: Vec<(u64, &str)> = r
        .errors
        .iter()
        .map(|e| (e.line, e.message.as_str()))
        .collect();
    let fields = ["customer_id", "service", "event_id", "quantity", "metadata"];
    for ((line, msg), (want_line, field)) in
        got.iter().zip([4u64, 5, 6, 7, 8].into_iter().zip(fields))
    {
        assert_eq!(*line, want_line, "{msg}");
        assert!(msg.contains(field), "line {line}: {msg}");
    }
}

#[tokio::test]
async fn strict_import_of_a_file_with_a_bad_line_leaves_nothing() {
    let db = TestDb::new().await.unwrap();
    // More lines than one batch, the bad one last, so batches were written before it.
    let mut text = String::from("customer_id,service,quantity,recorded_at\n");
    for i in 0..2500 {
        text.push_str(&format!(
            "c{},api,1,2026-11-01T10:{:02}:00Z\n",
            i % 10,
            i % 60
        ));
    }
    text.push_str("c1,api,-5,2026-11-01T10:00:00Z\n");
    let mut opts = csv_opts();
    opts.strict = true;
    opts.batch_size = 1000;
    let err = db
        .tally()
        .import(Cursor::new(text.clone()), opts.clone(), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ImportRejected, "{err}");
    assert_eq!(err.line_errors()[0].line, 2502);
    let v = db.tally().verify().await.unwrap();
    assert_eq!((v.events, v.mismatches), (0, 0));
    let client = db.client().await.unwrap();
    let rollups: i64 = client
        .query_one("SELECT count(*) FROM usage_hourly", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rollups, 0);
    // Without the bad line the same strict import commits everything at once.
    let good = text.lines().take(2501).collect::<Vec<_>>().join("\n");
    let r = db
        .tally()
        .import(Cursor::new(good), opts, None)
        .await
        .unwrap();
    assert_eq!(r.inserted, 2500);
}

#[tokio::test]
async fn a_header_without_required_columns_is_an_error() {
    let db = TestDb::new().await.unwrap();
    let err = db
        .tally()
        .import(
            Cursor::new("customer,service\nacme,api\n"),
            csv_opts(),
            None,
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("quantity") && text.contains("recorded_at") && text.contains("customer_id"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_and_lenient_imports_run_side_by_side_without_deadlock() {
    // Eight imports at once over the same customers, services and hours (so the same
    // rollup rows), four of them all-or-nothing. A strict import stages its whole file
    // and applies it in one ordered statement, so it holds no row lock while others
    // take theirs in the global order.
    let db = TestDb::new().await.unwrap();
    let file = |k: u32| {
        let mut text = String::from("event_id,customer_id,service,quantity,recorded_at\n");
        for i in 0..3000u32 {
            // Files 0-3 and 4-7 share their events (ids), so imports also race on keys.
            text.push_str(&format!(
                "00000000-0000-7000-8000-{:06}{:06},c{},{},1,2026-11-01T{:02}:{:02}:00Z\n",
                k % 4,
                i,
                i % 5,
                ["api", "storage"][(i % 2) as usize],
                i % 24,
                i % 60
            ));
        }
        text
    };
    let mut handles = Vec::new();
    for k in 0..8u32 {
        let tally = db.tally().clone();
        let text = file(k);
        handles.push(tokio::spawn(async move {
            let mut opts = csv_opts();
            opts.strict = k < 4;
            opts.batch_size = 500;
            tally.import(Cursor::new(text), opts, None).await
        }));
    }
    let mut inserted = 0;
    for h in handles {
        let r = h.await.unwrap().unwrap();
        assert_eq!(r.inserted + r.duplicates, 3000);
        inserted += r.inserted;
    }
    // Four distinct files of 3 000 events each, every event stored once.
    assert_eq!(inserted, 12_000);
    let v = db.tally().verify().await.unwrap();
    assert_eq!((v.events, v.mismatches, v.key_mismatches), (12_000, 0, 0));
    assert_eq!(v.quantity, Decimal::from(12_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lenient_import_rides_out_a_dropped_connection() {
    // The connection to PostgreSQL is cut while the import is writing (a restart or a
    // network fault looks the same to the client) and comes back 1.5 s later: the
    // import retries the batch (dedupe makes that safe even if it had committed) and
    // finishes with every row stored exactly once.
    let db = TestDb::new().await.unwrap();
    let proxy = std::sync::Arc::new(tally_tests::Proxy::start(db.url()).await);
    let tally = tally::Tally::builder(proxy.url(db.url()))
        .pool_size(2)
        .build_lazy()
        .unwrap();
    let text = tally_tests::numbered_csv(60_000);
    let p = proxy.clone();
    let (progress, cut) = tally_tests::fault_at_a_third(text.len() as u64, move || {
        p.down();
        let p = p.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(1500));
            p.up();
        });
    });
    let mut opts = csv_opts();
    opts.batch_size = 2_000;
    let r = tally
        .import(Cursor::new(text), opts, Some(progress))
        .await
        .unwrap();
    assert!(
        cut.load(std::sync::atomic::Ordering::SeqCst),
        "the fault never happened"
    );
    assert_eq!(r.inserted + r.duplicates, 60_000, "{r:?}");
    let v = db.tally().verify().await.unwrap();
    assert_eq!((v.events, v.mismatches, v.key_mismatches), (60_000, 0, 0));
}

#[tokio::test]
async fn bad_lines_do_not_cut_batches_short() {
    // 20 000 good rows interleaved with 20 000 bad ones, batches of 10 000: two write
    // transactions, not one per bad line (which made such a file 80 times slower).
    let db = TestDb::new().await.unwrap();
    let mut text = String::from("customer_id,service,quantity,recorded_at\n");
    for i in 0..20_000u32 {
        text.push_str(&format!(
            "c{},api,1,2026-11-01T{:02}:00:00Z\n",
            i % 7,
            i % 24
        ));
        text.push_str("c1,api,not-a-number,2026-11-01T00:00:00Z\n");
    }
    let r = db
        .tally()
        .import(Cursor::new(text), csv_opts(), None)
        .await
        .unwrap();
    assert_eq!(
        (r.inserted, r.rejected, r.batches),
        (20_000, 20_000, 2),
        "{:?}",
        (r.inserted, r.rejected, r.batches)
    );
    assert_eq!(r.errors.len(), 1_000, "the first 1 000 are kept");
    assert_eq!(r.errors[0].line, 3);
}
