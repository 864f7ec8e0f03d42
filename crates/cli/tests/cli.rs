//! The `tally` binary end to end, against a real database.

use std::process::{Command, Output};

use rust_decimal::Decimal;
use tally_testdb::TestDb;

fn tally(db: &TestDb, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn import_then_verify_shows_exact_totals() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.csv");
    // 3 000 rows; quantities 0.000000000001 × i computed here, independently of Tally.
    let mut text = String::from("event_id,customer_id,service,quantity,recorded_at,metadata\n");
    let mut total = Decimal::ZERO;
    for i in 1..=3000u32 {
        let q = Decimal::new(i64::from(i), 12);
        total += q;
        text.push_str(&format!(
            ",cust-{},{},{},2026-11-{:02}T{:02}:{:02}:00Z,\"{{\"\"i\"\":{i}}}\"\n",
            i % 17,
            ["api", "storage", "bandwidth"][(i % 3) as usize],
            q,
            1 + i % 28,
            i % 24,
            i % 60
        ));
    }
    std::fs::write(&path, text).unwrap();
    let file = path.to_str().unwrap();
    let imported = json(&tally(&db, &["import", file, "--format", "json"]));
    assert_eq!(
        imported,
        serde_json::json!({"inserted": 3000, "duplicates": 0, "rejected": 0, "errors": []})
    );
    let again = json(&tally(
        &db,
        &["import", "--input", "csv", "--format", "json", file],
    ));
    assert_eq!(again["duplicates"], 3000);
    let v = json(&tally(&db, &["verify", "--format", "json"]));
    assert_eq!(v["events"], 3000);
    assert_eq!(v["mismatches"], 0);
    assert_eq!(
        v["quantity"].as_str().unwrap().parse::<Decimal>().unwrap(),
        total
    );
}

#[tokio::test]
async fn bad_input_names_the_field_exits_2_and_writes_nothing() {
    let db = TestDb::new().await.unwrap();
    for (args, needle) in [
        (
            &[
                "record",
                "--customer",
                "a b",
                "--service",
                "api",
                "--quantity",
                "1",
            ][..],
            "customer_id \"a b\"",
        ),
        (
            &[
                "record",
                "--customer",
                "a",
                "--service",
                "apis",
                "--quantity",
                "1",
            ],
            "service \"apis\"",
        ),
        (
            &[
                "record",
                "--customer",
                "a",
                "--service",
                "api",
                "--quantity",
                "-1",
            ],
            "quantity \"-1\"",
        ),
        (
            &[
                "record",
                "--customer",
                "a",
                "--service",
                "api",
                "--quantity",
                "1",
                "--at",
                "2026-01-01T00:00:00",
            ],
            "at \"2026-01-01T00:00:00\"",
        ),
        (
            &[
                "record",
                "--customer",
                "a",
                "--service",
                "api",
                "--quantity",
                "1",
                "--metadata",
                "[1]",
            ],
            "metadata \"[1]\"",
        ),
        (&["import", "--format", "xml", "x.csv"], "--format \"xml\""),
    ] {
        let out = tally(&db, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let v = json(&tally(&db, &["verify", "--format", "json"]));
    assert_eq!(v["events"], 0);
}

#[tokio::test]
async fn record_and_track_write_exactly_once() {
    let db = TestDb::new().await.unwrap();
    let id = "0195f000-0000-7000-8000-0000000000aa";
    let args = [
        "record",
        "--customer",
        "acme",
        "--service",
        "api",
        "--quantity",
        "2",
        "--event-id",
        id,
        "--format",
        "json",
    ];
    assert_eq!(json(&tally(&db, &args))["inserted"], true);
    assert_eq!(json(&tally(&db, &args))["inserted"], false);
    let t = json(&tally(
        &db,
        &[
            "track",
            "bandwidth",
            "--customer",
            "acme",
            "--bytes",
            "100",
            "--format",
            "json",
        ],
    ));
    assert_eq!(t["quantity"], "0.000000093132257");
    let v = json(&tally(&db, &["verify", "--format", "json"]));
    assert_eq!(v["events"], 2);
    assert_eq!(v["quantity"], "2.000000093132257");
}
