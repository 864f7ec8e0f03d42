//! The CLI's output, byte for byte, against files recorded from an earlier build.
//!
//! The golden files under `tests/golden/` were written by the `tally` binary of main
//! before the output moved to serde and one table trait (issue 7); this test keeps the
//! JSON of the SPEC §8 commands, and the CSV and table output with it, exactly as they
//! were. Dates relative to today are written as `<today-N>` so the files hold on any
//! day. To re-record from another binary: `TALLY_GOLDEN_BIN=/path/to/tally cargo test
//! -p tally-cli --test golden` (review the diff before committing it).

use std::{path::PathBuf, process::Command};

use tally::chrono::{Duration, Utc};
use tally_testdb::TestDb;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Relative dates become placeholders, latest first so `<today-1>` is not read as a
/// prefix of `<today-10>`.
fn normalize(text: &str) -> String {
    let today = Utc::now().date_naive();
    let mut out = text.to_owned();
    for k in (0..=10).rev() {
        let d = (today - Duration::days(k)).to_string();
        out = out.replace(&d, &format!("<today-{k}>"));
    }
    out
}

#[tokio::test]
async fn output_is_byte_identical_to_the_recorded_files() {
    let record = std::env::var("TALLY_GOLDEN_BIN").ok();
    let bin = record
        .clone()
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tally").to_owned());
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    // acme: fixed October 2024 data (far from any relative date) with sub-hour times; beta: the last days (stats,
    // trends look back from today).
    let mut lines = String::new();
    let mut id = 0u32;
    let mut push = |customer: &str, service: &str, quantity: &str, at: &str| {
        id += 1;
        lines.push_str(&format!(
            "{{\"event_id\":\"0195f000-0000-7000-8000-{id:012}\",\"customer_id\":\"{customer}\",\"service\":\"{service}\",\"quantity\":\"{quantity}\",\"recorded_at\":\"{at}\",\"metadata\":{{\"n\":{id}}}}}\n"
        ));
    };
    for (day, hour, minute, service, quantity) in [
        (1, 0, 5, "api", "1"),
        (1, 0, 45, "api", "3"),
        (1, 9, 15, "storage", "0.000000000093"),
        (1, 23, 59, "bandwidth", "1.5"),
        (2, 4, 30, "api", "250"),
        (2, 18, 0, "api", "12.25"),
        (3, 11, 10, "compute", "0.75"),
        (14, 6, 40, "api", "99999.999"),
        (14, 6, 41, "storage", "720"),
        (31, 22, 30, "api", "5"),
    ] {
        push(
            "acme",
            service,
            quantity,
            &format!("2024-10-{day:02}T{hour:02}:{minute:02}:00Z"),
        );
    }
    push("other", "api", "7", "2024-10-02T04:00:00Z");
    let today = Utc::now().date_naive();
    for (k, hour, quantity) in [(1, 3, "100"), (1, 20, "50"), (2, 7, "300"), (4, 1, "40")] {
        let day = today - Duration::days(k);
        push("beta", "api", quantity, &format!("{day}T{hour:02}:10:00Z"));
    }
    let file = dir.path().join("usage.ndjson");
    std::fs::write(&file, lines).unwrap();
    let prices = dir.path().join("prices.json");
    std::fs::write(
        &prices,
        r#"{"currency": "USD", "services": {"api": [{"effective_from": "2020-01-01T00:00:00Z",
            "model": "graduated", "included": "10", "tiers": [{"up_to": "100", "unit_price": "1.00"},
            {"up_to": "200", "unit_price": "0.50"}, {"up_to": null, "unit_price": "0.10", "flat_fee": "5"}]}]}}"#,
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let prices = prices.to_str().unwrap();

    let oct = ["--from", "2024-10-01", "--to", "2024-11-01"];
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("import", vec!["import", file, "--format", "json"]),
        ("import_again", vec!["import", file, "--format", "json"]),
        ("verify", vec!["verify", "--format", "json"]),
        (
            "report",
            [
                &["report", "--customer", "acme"][..],
                &oct,
                &["--format", "json"],
            ]
            .concat(),
        ),
        (
            "report_detailed_kolkata",
            [
                &[
                    "report",
                    "--customer",
                    "acme",
                    "--detailed",
                    "--tz",
                    "Asia/Kolkata",
                ][..],
                &oct,
                &["--format", "json"],
            ]
            .concat(),
        ),
        (
            "report_csv",
            [
                &["report", "--customer", "acme"][..],
                &oct,
                &["--format", "csv"],
            ]
            .concat(),
        ),
        (
            "report_table",
            [&["report", "--customer", "acme"][..], &oct].concat(),
        ),
        (
            "report_detailed_table",
            [&["report", "--customer", "acme", "--detailed"][..], &oct].concat(),
        ),
        (
            "aggregate_hourly",
            [
                &["aggregate", "--period", "hourly", "--customer", "acme"][..],
                &oct,
                &["--format", "json"],
            ]
            .concat(),
        ),
        (
            "aggregate_daily_all_kathmandu",
            [
                &["aggregate", "--period", "daily", "--tz", "Asia/Kathmandu"][..],
                &oct,
                &["--format", "json"],
            ]
            .concat(),
        ),
        (
            "aggregate_monthly_berlin",
            [
                &[
                    "aggregate",
                    "--period",
                    "monthly",
                    "--customer",
                    "acme",
                    "--tz",
                    "Europe/Berlin",
                ][..],
                &oct,
                &["--format", "json"],
            ]
            .concat(),
        ),
        (
            "aggregate_daily_csv",
            [
                &["aggregate", "--period", "daily", "--service", "api"][..],
                &oct,
                &["--format", "csv"],
            ]
            .concat(),
        ),
        (
            "aggregate_daily_table",
            [
                &[
                    "aggregate",
                    "--period",
                    "daily",
                    "--customer",
                    "acme",
                    "--tz",
                    "America/New_York",
                ][..],
                &oct,
            ]
            .concat(),
        ),
        (
            "stats_events",
            vec![
                "stats",
                "--customer",
                "beta",
                "--service",
                "api",
                "--days",
                "7",
                "--over",
                "events",
                "--format",
                "json",
            ],
        ),
        (
            "stats_hour",
            vec![
                "stats",
                "--customer",
                "beta",
                "--service",
                "api",
                "--days",
                "7",
                "--over",
                "hour",
                "--format",
                "json",
            ],
        ),
        (
            "stats_day_csv",
            vec![
                "stats",
                "--customer",
                "beta",
                "--service",
                "api",
                "--days",
                "7",
                "--over",
                "day",
                "--format",
                "csv",
            ],
        ),
        (
            "stats_day_table",
            vec![
                "stats",
                "--customer",
                "beta",
                "--service",
                "api",
                "--days",
                "7",
                "--over",
                "day",
            ],
        ),
        (
            "trends",
            vec![
                "trends",
                "--customer",
                "beta",
                "--days",
                "5",
                "--format",
                "json",
            ],
        ),
        (
            "trends_csv",
            vec![
                "trends",
                "--customer",
                "beta",
                "--service",
                "api",
                "--days",
                "5",
                "--format",
                "csv",
            ],
        ),
        (
            "trends_table",
            vec![
                "trends",
                "--customer",
                "beta",
                "--service",
                "api",
                "--days",
                "5",
            ],
        ),
        (
            "peaks_hour",
            vec![
                "peaks",
                "--customer",
                "acme",
                "--service",
                "api",
                "--by",
                "hour",
                "--limit",
                "3",
                "--format",
                "json",
            ],
        ),
        (
            "peaks_month",
            vec![
                "peaks",
                "--customer",
                "acme",
                "--service",
                "api",
                "--by",
                "month",
                "--format",
                "json",
            ],
        ),
        (
            "peaks_day_table",
            vec![
                "peaks",
                "--customer",
                "acme",
                "--service",
                "api",
                "--by",
                "day",
            ],
        ),
        (
            "invoice",
            vec![
                "invoice",
                "--customer",
                "acme",
                "--period",
                "2024-10",
                "--format",
                "json",
            ],
        ),
        (
            "invoice_prices",
            vec![
                "invoice",
                "--customer",
                "acme",
                "--period",
                "2024-10",
                "--prices",
                prices,
                "--format",
                "json",
            ],
        ),
        (
            "invoice_prices_csv",
            vec![
                "invoice",
                "--customer",
                "acme",
                "--period",
                "2024-10",
                "--prices",
                prices,
                "--format",
                "csv",
            ],
        ),
        (
            "invoice_prices_table",
            vec![
                "invoice",
                "--customer",
                "acme",
                "--period",
                "2024-10",
                "--prices",
                prices,
            ],
        ),
    ];

    let mut failures = Vec::new();
    for (name, args) in cases {
        let out = Command::new(&bin)
            .args(&args)
            .env("DATABASE_URL", db.url())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = normalize(&String::from_utf8(out.stdout).unwrap());
        let path = golden_dir().join(format!("{name}.out"));
        if record.is_some() {
            std::fs::create_dir_all(golden_dir()).unwrap();
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if got != want {
            failures.push(format!("{name}:\n--- want\n{want}\n--- got\n{got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
