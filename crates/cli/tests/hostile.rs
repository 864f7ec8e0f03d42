//! The hostile-input catalogue (issue 8): malformed and edge-case input through the
//! `tally` binary. Every refused case must exit with the expected code, say what was
//! wrong (a fragment of the message is checked), never panic, and write nothing; every
//! accepted edge case must store exactly what it echoes.

use std::process::{Command, Output, Stdio};

use tally_testdb::TestDb;

mod common;

struct Case {
    args: Vec<String>,
    /// Written to a file whose path replaces `{file}` in `args`.
    file: Option<Vec<u8>>,
    code: i32,
    fragment: &'static str,
}

fn case<S: AsRef<str>>(args: &[S], code: i32, fragment: &'static str) -> Case {
    Case {
        args: args.iter().map(|s| s.as_ref().to_owned()).collect(),
        file: None,
        code,
        fragment,
    }
}

fn with_file(args: &[&str], file: impl Into<Vec<u8>>, code: i32, fragment: &'static str) -> Case {
    Case {
        file: Some(file.into()),
        ..case(args, code, fragment)
    }
}

/// A valid `record` command with one flag's value replaced (or added).
fn record(flag: &str, value: &str) -> Vec<String> {
    let mut v: Vec<String> = [
        "record",
        "--customer",
        "acme",
        "--service",
        "api",
        "--quantity",
        "1",
    ]
    .map(String::from)
    .to_vec();
    match v.iter().position(|a| a == flag) {
        Some(i) => v[i + 1] = value.to_owned(),
        None => v.extend([flag.to_owned(), value.to_owned()]),
    }
    v
}

fn run(db: &TestDb, dir: &std::path::Path, n: usize, c: &Case) -> Output {
    let path = dir.join(format!("case{n}.csv"));
    if let Some(bytes) = &c.file {
        std::fs::write(&path, bytes).unwrap();
    }
    let args: Vec<String> = c
        .args
        .iter()
        .map(|a| {
            a.replace("{file}", path.to_str().unwrap())
                .replace("{dir}", dir.to_str().unwrap())
        })
        .collect();
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(&args)
        .env("DATABASE_URL", db.url())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn events(db: &TestDb) -> i64 {
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["verify", "--format", "json"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mismatches"], 0, "{v}");
    v["events"].as_i64().unwrap()
}

#[tokio::test]
async fn refused_input_exits_with_its_code_names_the_problem_and_writes_nothing() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(256);
    let big_meta = format!("{{\"a\":\"{}\"}}", "y".repeat(5000));
    let header = "customer_id,service,quantity,recorded_at\n";
    let mut cases = vec![
        // record: every flag
        case(&record("--customer", "a b"), 2, "customer_id \"a b\""),
        case(&record("--customer", ""), 2, "customer_id"),
        case(&record("--customer", &long), 2, "customer_id"),
        case(
            &record("--customer", "x';DROP TABLE usage_events;--"),
            2,
            "customer_id",
        ),
        case(&record("--customer", "ü"), 2, "customer_id"),
        case(&record("--service", "apis"), 2, "service \"apis\""),
        case(&record("--service", ""), 2, "service"),
        case(&record("--quantity", "-1"), 2, "quantity \"-1\""),
        case(&record("--quantity", "abc"), 2, "quantity"),
        case(&record("--quantity", "NaN"), 2, "quantity"),
        case(&record("--quantity", "inf"), 2, "quantity"),
        case(&record("--quantity", "1e-16"), 2, "fractional digits"),
        case(&record("--quantity", "1e13"), 2, "10^13"),
        case(&record("--quantity", "10000000000000"), 2, "10^13"),
        case(
            &record("--quantity", "0.0000000000000001"),
            2,
            "fractional digits",
        ),
        case(&record("--quantity", ""), 2, "quantity"),
        case(&record("--quantity", "1,5"), 2, "quantity"),
        case(&record("--quantity", "0x10"), 2, "quantity"),
        case(&record("--at", "2026-01-01T00:00:00"), 2, "offset"),
        case(&record("--at", "yesterday"), 2, "at \"yesterday\""),
        case(&record("--at", "1600-01-01"), 2, "supported range"),
        case(
            &record("--at", "0000-01-01T00:00:00Z"),
            2,
            "supported range",
        ),
        case(
            &record("--at", "9999-12-31T00:00:00Z"),
            2,
            "supported range",
        ),
        case(&record("--at", "+10000-01-01"), 2, "at"),
        case(&record("--at", "10000-01-01"), 2, "at"),
        case(&record("--at", "2026-02-30"), 2, "at"),
        case(&record("--at", "2026-13-01T00:00:00Z"), 2, "at"),
        case(&record("--event-id", "not-a-uuid"), 2, "event_id"),
        case(&record("--event-id", ""), 2, "event_id"),
        case(&record("--metadata", "[1]"), 2, "metadata \"[1]\""),
        case(&record("--metadata", "{"), 2, "metadata"),
        case(&record("--metadata", "null"), 2, "metadata"),
        case(&record("--metadata", r#"{"a":"\u0000"}"#), 2, "U+0000"),
        case(&record("--metadata", r#"{"\u0000":1}"#), 2, "U+0000"),
        case(&record("--metadata", &big_meta), 2, "metadata"),
        case(
            &[
                "track",
                "storage",
                "--customer",
                "acme",
                "--bytes",
                "1",
                "--hours",
                "-2",
            ],
            2,
            "hours",
        ),
        case(
            &[
                "track",
                "compute",
                "--customer",
                "acme",
                "--cpu-seconds",
                "x",
            ],
            2,
            "cpu",
        ),
        case(
            &["track", "api", "--customer", "a b", "--endpoint", "/x"],
            2,
            "customer_id",
        ),
        // reads
        case(&["report", "--customer", "a b"], 2, "customer_id"),
        case(
            &[
                "report",
                "--customer",
                "acme",
                "--from",
                "1600-01-01",
                "--to",
                "2026-01-01",
            ],
            2,
            "supported range",
        ),
        case(
            &[
                "report",
                "--customer",
                "acme",
                "--from",
                "2026-02-01",
                "--to",
                "2026-01-01",
            ],
            2,
            "must be after from",
        ),
        case(
            &["report", "--customer", "acme", "--tz", "Mars/Olympus"],
            2,
            "Mars/Olympus",
        ),
        case(
            &["report", "--customer", "acme", "--service", "nope"],
            2,
            "service \"nope\"",
        ),
        case(&["aggregate", "--period", "weekly"], 2, "period \"weekly\""),
        case(
            &[
                "aggregate",
                "--period",
                "monthly",
                "--from",
                "9999-01-01",
                "--to",
                "9999-12-31",
            ],
            2,
            "supported range",
        ),
        case(
            &["aggregate", "--period", "daily", "--from", "+10000-01-01"],
            2,
            "from",
        ),
        case(
            &["invoice", "--customer", "acme", "--period", "9999-12"],
            2,
            "supported range",
        ),
        case(
            &["invoice", "--customer", "acme", "--period", "2026-13"],
            2,
            "period",
        ),
        case(
            &["invoice", "--customer", "acme", "--period", "26-01"],
            2,
            "period",
        ),
        case(
            &["invoice", "--customer", "acme", "--period", "2026-1"],
            2,
            "period",
        ),
        case(
            &[
                "invoice",
                "--customer",
                "acme",
                "--period",
                "2026-01",
                "--prices",
                "/nonexistent.json",
            ],
            2,
            "--prices",
        ),
        with_file(
            &[
                "invoice",
                "--customer",
                "acme",
                "--period",
                "2026-01",
                "--prices",
                "{file}",
            ],
            "{not json",
            2,
            "--prices",
        ),
        with_file(
            &[
                "invoice",
                "--customer",
                "acme",
                "--period",
                "2026-01",
                "--prices",
                "{file}",
            ],
            r#"{"currency":"USD","services":{"api":[{"effective_from":"2020-01-01T00:00:00Z","model":"per_unit","unit_price":"-1"}]}}"#,
            2,
            "--prices",
        ),
        with_file(
            &[
                "invoice",
                "--customer",
                "acme",
                "--period",
                "2026-01",
                "--prices",
                "{file}",
            ],
            r#"{"currency":"USD","services":{"apis":[{"effective_from":"2020-01-01T00:00:00Z","model":"per_unit","unit_price":"1"}]}}"#,
            2,
            "apis",
        ),
        with_file(
            &[
                "invoice",
                "--customer",
                "acme",
                "--period",
                "2026-01",
                "--prices",
                "{file}",
            ],
            r#"{"currency":"USD","services":{"api":[{"effective_from":"2020-01-01T00:00:00Z","model":"per_unit","unit_price":"1","includedd":"5"}]}}"#,
            2,
            "includedd",
        ),
        with_file(
            &[
                "invoice",
                "--customer",
                "acme",
                "--period",
                "2026-01",
                "--prices",
                "{file}",
            ],
            r#"{"currency":"USD","services":{"api":[{"effective_from":"2020-01-01T00:00:00Z","model":"per_unit","unit_price":"1","minimun":"5"}]}}"#,
            2,
            "minimun",
        ),
        with_file(
            &[
                "invoice",
                "--customer",
                "acme",
                "--period",
                "2026-01",
                "--prices",
                "{file}",
            ],
            r#"{"currency":"USD","services":{"api":[{"effective_from":"2020-01-01T00:00:00Z","model":"graduated","tiers":[{"unit_price":"1","flatfee":"2"}]}]}}"#,
            2,
            "flatfee",
        ),
        with_file(
            &[
                "invoice",
                "--customer",
                "acme",
                "--period",
                "2026-01",
                "--prices",
                "{file}",
            ],
            r#"{"currency":"USD","services":{"api":[{"effective_from":"2020-01-01T00:00:00Z","model":"per_unit","unit_price":"1","unit_price":"2"}]}}"#,
            2,
            "duplicate key",
        ),
        with_file(
            &[
                "invoice",
                "--customer",
                "acme",
                "--period",
                "2026-01",
                "--prices",
                "{file}",
            ],
            r#"{"currency":"USD","services":{"api":[{"effective_from":"2020-01-01T00:00:00Z","model":"per_unit","unit_price":"1"},{"effective_from":"2020-01-01T00:00:00Z","model":"per_unit","unit_price":"2"}]}}"#,
            2,
            "same instant",
        ),
        with_file(
            &[
                "invoice",
                "--customer",
                "acme",
                "--period",
                "2026-01",
                "--prices",
                "{file}",
            ],
            r#"{"currency":"","services":{}}"#,
            2,
            "currency",
        ),
        with_file(
            &[
                "invoice",
                "--customer",
                "acme",
                "--period",
                "2026-01",
                "--prices",
                "{file}",
            ],
            r#"{"currency":"\ud83d\udcb0\n<script>","services":{}}"#,
            2,
            "currency",
        ),
        case(
            &[
                "stats",
                "--customer",
                "acme",
                "--service",
                "api",
                "--over",
                "minutes",
            ],
            2,
            "over",
        ),
        case(
            &[
                "stats",
                "--customer",
                "acme",
                "--service",
                "api",
                "--days",
                "0",
            ],
            2,
            "days",
        ),
        case(
            &[
                "stats",
                "--customer",
                "acme",
                "--service",
                "api",
                "--days",
                "99999",
            ],
            2,
            "days",
        ),
        case(&["trends", "--customer", "acme", "--days", "0"], 2, "days"),
        case(
            &[
                "peaks",
                "--customer",
                "acme",
                "--service",
                "api",
                "--limit",
                "0",
            ],
            2,
            "limit \"0\"",
        ),
        case(
            &[
                "peaks",
                "--customer",
                "acme",
                "--service",
                "api",
                "--limit",
                "-5",
            ],
            2,
            "limit \"-5\"",
        ),
        case(
            &[
                "peaks",
                "--customer",
                "acme",
                "--service",
                "api",
                "--limit",
                "10001",
            ],
            2,
            "limit",
        ),
        case(
            &[
                "peaks",
                "--customer",
                "acme",
                "--service",
                "api",
                "--by",
                "week",
            ],
            2,
            "week",
        ),
        case(
            &["peaks", "--customer", "acme", "--service", "nope"],
            2,
            "service",
        ),
        case(&["partitions", "--ensure-ahead", "1000"], 2, "months"),
        case(
            &[
                "--database-url",
                "postgres://u:secret@host:badport/db",
                "verify",
            ],
            2,
            "database_url",
        ),
        // import: the command line
        case(&["import", "usage.xml"], 2, "extension"),
        case(
            &["import", "--format", "xml", "x.csv"],
            2,
            "--format \"xml\"",
        ),
        // --format is the summary's only; the file's format is --input (issue 26).
        case(
            &["import", "--format", "ndjson", "x.csv"],
            2,
            "the file's format is --input ndjson",
        ),
        case(&["import", "{dir}"], 2, "is a directory"),
        case(&["import", "/nonexistent/usage.csv"], 2, "invalid file"),
        case(&["import", "-"], 2, "stdin"),
        with_file(
            &["import", "{file}", "--batch-size", "0"],
            header,
            2,
            "batch-size",
        ),
        // import: whole-file problems
        with_file(
            &["import", "{file}"],
            "customer_id,service,quantity\nc,api,1\n",
            2,
            "missing column(s): recorded_at",
        ),
        with_file(
            &["import", "{file}"],
            "customer_id,service,quantity,recorded_at,quantity\n",
            2,
            "twice",
        ),
        with_file(&["import", "{file}"], "", 2, "import header"),
        with_file(
            &["import", "{file}", "--strict"],
            format!("{header}c1,api,1,2026-11-01T00:00:00Z\nc1,api,x,2026-11-01T00:00:00Z\n"),
            2,
            "nothing was imported",
        ),
        with_file(
            &["import", "{file}"],
            vec![b'x'; 70_000],
            2,
            "longer than 65536 bytes",
        ),
    ];
    // Lenient imports whose every line is bad: exit 0, each line named, nothing written.
    for (content, fragment) in [
        (
            format!("{header}c1,api,-1,2026-11-01T00:00:00Z\n"),
            "quantity",
        ),
        (
            format!("{header}c1,nope,1,2026-11-01T00:00:00Z\n"),
            "service",
        ),
        (
            format!("{header}c 1,api,1,2026-11-01T00:00:00Z\n"),
            "customer_id",
        ),
        (
            format!("{header}c1,api,1,1600-01-01T00:00:00Z\n"),
            "supported range",
        ),
        (format!("{header}c1,api,1,2026-11-01\"\n"), "recorded_at"),
    ] {
        // Lenient: the line is rejected, named in the summary, and the run exits 3.
        cases.push(with_file(
            &["import", "{file}", "--input", "csv", "--format", "json"],
            content,
            3,
            fragment,
        ));
    }
    for (content, fragment) in [
        (b"{\"customer_id\":\"c\",\"service\":\"api\",\"quantity\":\"1\",\"recorded_at\":\"2026-11-01T00:00:00Z\",\"metadata\":{\"a\":\"\\u0000\"}}\n".to_vec(), "U+0000"),
        (b"{\"customer_id\":\"c\xff\",\"service\":\"api\",\"quantity\":\"1\",\"recorded_at\":\"2026-11-01T00:00:00Z\"}\n".to_vec(), "UTF-8"),
        ([b"{\"customer_id\":\"".as_slice(), &[b'c'; 70_000], b"\"}\n"].concat(), "longer than"),
        (b"{\"customer_id\":\"c\",\"service\":\"api\",\"quantity\":{},\"recorded_at\":\"2026-11-01T00:00:00Z\"}\n".to_vec(), "quantity"),
        (b"[1,2,3]\n".to_vec(), "not a usage event"),
        (b"{\"customer_id\":\"c\",\"service\":\"api\",\"quantity\":\"1\"}\n".to_vec(), "recorded_at"),
        (b"{\"customer_id\":\"c\",\"service\":\"api\",\"quantity\":1e400,\"recorded_at\":\"2026-11-01T00:00:00Z\"}\n".to_vec(), "quantity"),
    ] {
        cases.push(with_file(&["import", "{file}", "--input", "ndjson", "--format", "json"], content, 3, fragment));
    }
    // Quotas, plans and alerts (issue 9): refused before anything is written.
    fn quota<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["quota", "set", "--customer", "acme"];
        v.extend_from_slice(extra);
        v
    }
    for (args, fragment) in [
        (
            quota(&["--service", "api", "--limit", "1e400"]),
            "invalid limit",
        ),
        (
            quota(&["--service", "api", "--limit", "NaN"]),
            "invalid limit",
        ),
        (
            quota(&["--service", "api", "--limit", "unlimitedx"]),
            "invalid limit",
        ),
        (
            quota(&["--service", "api", "--limit", "-0.000001"]),
            "must not be negative",
        ),
        (
            quota(&["--service", "api", "--limit", "5", "--anchor-day", "0"]),
            "anchor_day",
        ),
        (
            quota(&[
                "--service",
                "api",
                "--limit",
                "5",
                "--anchor-day",
                "99999999999999999999",
            ]),
            "anchor_day",
        ),
        (
            quota(&["--service", "api", "--limit", "5", "--tz", "Mars/Olympus"]),
            "Mars/Olympus",
        ),
        (
            quota(&["--plan", "free'; DROP TABLE tally_plans; --"]),
            "invalid plan",
        ),
        (quota(&["--plan", ""]), "invalid plan"),
        (quota(&[]), "nothing to set"),
        (
            vec!["quota", "set", "--customer", "a b", "--plan", "free"],
            "customer_id",
        ),
        (
            vec!["quota", "remove", "--customer", "acme", "--service", "api"],
            "no quota of their own",
        ),
        (
            vec!["plan", "set", "p", "--limit", "api=-1"],
            "must not be negative",
        ),
        (
            vec!["plan", "set", "p", "--limit", "teleport=5"],
            "invalid service",
        ),
        (
            vec![
                "plan",
                "set",
                "p",
                "--warning",
                "90",
                "--critical",
                "75",
                "--exceeded",
                "100",
            ],
            "critical",
        ),
        (vec!["plan", "set", "p q"], "invalid plan"),
        (
            vec!["plan", "set", "p", "--limit", "api=5", "--limit", "api=6"],
            "more than once",
        ),
        (
            vec!["plan", "set", "p", "--limit", "api=0.0000000000000001"],
            "fractional digits",
        ),
        (
            vec![
                "quota",
                "set",
                "--customer",
                "acme",
                "--service",
                "api",
                "--limit",
                "1.0000000000000001",
            ],
            "fractional digits",
        ),
        (vec!["alerts", "list", "--days", "0"], "--days"),
        (vec!["alerts", "list", "--level", ""], "invalid level"),
        (
            vec!["alerts", "check", "--customer", "\u{202e}evil"],
            "customer_id",
        ),
        (vec!["grant", "--role", ""], "role"),
        (vec!["grant", "--role", &"r".repeat(64)], "role"),
    ] {
        cases.push(case(&args, 2, fragment));
    }
    assert!(cases.len() >= 60, "{} cases", cases.len());

    let mut failures = Vec::new();
    for (n, c) in cases.iter().enumerate() {
        let out = run(&db, dir.path(), n, c);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.code() != Some(c.code)
            || !text.contains(c.fragment)
            || text.contains("panicked")
        {
            failures.push(format!(
                "case {n} {:?}: exit {:?} (want {}), want {:?} in:\n{text}",
                c.args,
                out.status.code(),
                c.code,
                c.fragment
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(events(&db), 0, "a refused input wrote something");
    let client = db.client().await.unwrap();
    for table in ["tally_quotas", "tally_customers", "usage_alerts"] {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "a refused input wrote to {table}");
    }
    let plans: i64 = client
        .query_one("SELECT count(*) FROM tally_plans", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(plans, 4, "a refused plan was saved");
}

#[tokio::test]
async fn accepted_edge_cases_store_what_they_echo() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let json = |args: &[&str]| common::json(&common::tally(&db, args));
    // A leap second is the first instant of the next second, in the event and in every
    // rollup (it used to land in 2016's last hour in the rollups and 2017 in the table).
    let leap = json(&[
        "record",
        "--customer",
        "acme",
        "--service",
        "api",
        "--quantity",
        "1",
        "--at",
        "2016-12-31T23:59:60Z",
        "--format",
        "json",
    ]);
    assert_eq!(leap["recorded_at"], "2017-01-01T00:00:00Z");
    let r = json(&[
        "report",
        "--customer",
        "acme",
        "--from",
        "2016-12-31T23:00:00Z",
        "--to",
        "2017-01-01T00:30:00Z",
        "--format",
        "json",
    ]);
    let api = r["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "api")
        .unwrap()
        .clone();
    assert_eq!(api["events"], 1);
    // Nanoseconds: the echo is what is stored (microseconds).
    let ns = json(&[
        "record",
        "--customer",
        "acme",
        "--service",
        "api",
        "--quantity",
        "1",
        "--at",
        "2026-11-01T10:00:00.123456789Z",
        "--format",
        "json",
    ]);
    assert_eq!(ns["recorded_at"], "2026-11-01T10:00:00.123456Z");
    // NDJSON with a byte-order mark and an exponent quantity as JavaScript prints it.
    let nd = dir.path().join("bom.ndjson");
    std::fs::write(&nd, "\u{feff}{\"customer_id\":\"acme\",\"service\":\"bandwidth\",\"quantity\":9.3e-11,\"recorded_at\":\"2026-11-01T00:00:00Z\"}\n").unwrap();
    let imported = json(&["import", nd.to_str().unwrap(), "--format", "json"]);
    assert_eq!(
        (imported["inserted"].as_u64(), imported["rejected"].as_u64()),
        (Some(1), Some(0)),
        "{imported}"
    );
    // CRLF rows: the bad row is reported on its own line (3), not one too low.
    let crlf = dir.path().join("crlf.csv");
    std::fs::write(&crlf, "customer_id,service,quantity,recorded_at\r\nc1,api,1,2026-10-01T00:00:00Z\r\nc1,api,x,2026-10-01T00:00:00Z\r\n").unwrap();
    // Stored the good row, rejected the bad: exit 3, which a script can test.
    let imported = common::json_exiting(
        &common::tally(&db, &["import", crlf.to_str().unwrap(), "--format", "json"]),
        3,
    );
    assert_eq!(imported["errors"][0]["line"], 3, "{imported}");
    // Metadata numbers keep every digit (record, CSV and NDJSON; issue 22): jsonb holds
    // them exactly, and the export gives them back as written.
    let digits = r#"{"amount":1234567890.123456789,"id":123456789012345678901234567890}"#;
    let rec = common::tally(
        &db,
        &[
            "record",
            "--customer",
            "digits",
            "--service",
            "api",
            "--quantity",
            "1",
            "--at",
            "2026-11-01T10:00:00Z",
            "--metadata",
            digits,
            "--format",
            "json",
        ],
    );
    assert!(
        rec.status.success(),
        "{}",
        String::from_utf8_lossy(&rec.stderr)
    );
    let csv = dir.path().join("digits.csv");
    std::fs::write(
        &csv,
        format!(
            "customer_id,service,quantity,recorded_at,metadata\ndigits,api,1,2026-11-01T11:00:00Z,\"{}\"\n",
            digits.replace('"', "\"\"")
        ),
    )
    .unwrap();
    let nd = dir.path().join("digits.ndjson");
    std::fs::write(
        &nd,
        format!("{{\"customer_id\":\"digits\",\"service\":\"api\",\"quantity\":1,\"recorded_at\":\"2026-11-01T12:00:00Z\",\"metadata\":{digits}}}\n"),
    )
    .unwrap();
    for f in [&csv, &nd] {
        let imported = json(&["import", f.to_str().unwrap(), "--format", "json"]);
        assert_eq!(imported["inserted"], 1, "{imported}");
    }
    let client = db.client().await.unwrap();
    let stored: Vec<String> = client
        .query(
            "SELECT metadata::text FROM usage_events WHERE customer_id = 'digits'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored.len(), 3);
    for m in &stored {
        assert_eq!(
            m,
            r#"{"id": 123456789012345678901234567890, "amount": 1234567890.123456789}"#
        );
    }
    let export = dir.path().join("digits.json");
    common::tally(
        &db,
        &[
            "export",
            "--format",
            "json",
            "--customer",
            "digits",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-02",
            "--output",
            export.to_str().unwrap(),
        ],
    );
    let text = std::fs::read_to_string(&export).unwrap();
    assert_eq!(
        text.matches("123456789012345678901234567890").count(),
        3,
        "{text}"
    );
    assert_eq!(text.matches("1234567890.123456789").count(), 3, "{text}");
    let v = json(&["verify", "--format", "json"]);
    assert_eq!(
        (v["events"].as_i64(), v["mismatches"].as_i64()),
        (Some(7), Some(0)),
        "{v}"
    );
}

#[tokio::test]
async fn a_closed_stdout_ends_quietly() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.csv");
    let mut text = String::from("customer_id,service,quantity,recorded_at\n");
    for i in 0..3000 {
        text.push_str(&format!(
            "c{},api,1,2026-10-01T{:02}:00:00Z\n",
            i % 50,
            i % 24
        ));
    }
    std::fs::write(&path, text).unwrap();
    let ok = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["import", path.to_str().unwrap()])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(ok.status.success());
    // The reader goes away before the output is written.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "aggregate",
            "--period",
            "hourly",
            "--from",
            "2026-10-01",
            "--to",
            "2026-10-02",
            "--format",
            "csv",
        ])
        .env("DATABASE_URL", db.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[tokio::test]
async fn an_import_killed_midway_and_rerun_stores_every_row_once() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.csv");
    // No event ids: the ids derived from each row's content and occurrence make the
    // rerun dedupe exactly.
    let mut text = String::from("customer_id,service,quantity,recorded_at\n");
    let rows = 150_000u32;
    for i in 0..rows {
        text.push_str(&format!(
            "c{},api,0.5,2026-10-{:02}T{:02}:00:00Z\n",
            i % 97,
            1 + i % 28,
            i % 24
        ));
    }
    std::fs::write(&path, text).unwrap();
    let file = path.to_str().unwrap();
    let client = db.client().await.unwrap();
    let stored = || async {
        client
            .query_one("SELECT count(*) FROM usage_event_keys", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["import", file, "--batch-size", "5000"])
        .env("DATABASE_URL", db.url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it (SIGKILL: no cleanup at all) once some batches, not all, are committed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let n = stored().await;
        if n > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing was ever committed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = stored().await;
    assert!(
        before > 0 && before < i64::from(rows),
        "killed too late: {before}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["import", file, "--format", "json"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        r["inserted"].as_i64().unwrap() + before,
        i64::from(rows),
        "{r}"
    );
    let v = events(&db);
    assert_eq!(v, i64::from(rows));
}

/// A reused event id with another payload is a conflict (issue 22): `record` exits 2
/// naming the id, a lenient import rejects the line with the reason, a strict import
/// rejects the file; nothing of the second payload is stored.
#[tokio::test]
async fn a_reused_event_id_with_another_payload_is_a_conflict() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let id = "0195f000-0000-7000-8000-0000000000aa";
    let rec = |service: &str, quantity: &str| {
        common::tally(
            &db,
            &[
                "record",
                "--customer",
                "acme",
                "--service",
                service,
                "--quantity",
                quantity,
                "--at",
                "2026-11-01T10:00:00Z",
                "--event-id",
                id,
            ],
        )
    };
    assert!(rec("api", "5").status.success());
    // The same event again is a duplicate, counted once: exit 0.
    let again = rec("api", "5");
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let clash = rec("storage", "999");
    let err = String::from_utf8_lossy(&clash.stderr);
    assert_eq!(clash.status.code(), Some(2), "{err}");
    assert!(err.contains("conflict") && err.contains(id), "{err}");
    let header = "event_id,customer_id,service,quantity,recorded_at\n";
    let file = dir.path().join("replay.csv");
    std::fs::write(
        &file,
        format!(
            "{header}{id},acme,api,5,2026-11-01T10:00:00Z\n{id},acme,api,6,2026-11-01T10:00:00Z\n\
             0195f000-0000-7000-8000-0000000000bb,acme,api,1,2026-11-01T10:00:00Z\n"
        ),
    )
    .unwrap();
    let lenient = common::json_exiting(
        &common::tally(&db, &["import", file.to_str().unwrap(), "--format", "json"]),
        3,
    );
    assert_eq!(
        (
            &lenient["inserted"],
            &lenient["duplicates"],
            &lenient["rejected"]
        ),
        (&1.into(), &1.into(), &1.into()),
        "{lenient}"
    );
    assert_eq!(lenient["errors"][0]["line"], 3, "{lenient}");
    assert!(
        lenient["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("conflict"),
        "{lenient}"
    );
    let strict_file = dir.path().join("strict.csv");
    std::fs::write(
        &strict_file,
        format!(
            "{header}0195f000-0000-7000-8000-0000000000cc,acme,api,1,2026-11-01T10:00:00Z\n\
             {id},acme,api,7,2026-11-01T10:00:00Z\n"
        ),
    )
    .unwrap();
    let strict = common::tally(&db, &["import", strict_file.to_str().unwrap(), "--strict"]);
    let err = String::from_utf8_lossy(&strict.stderr);
    assert_eq!(strict.status.code(), Some(2), "{err}");
    assert!(err.contains("line 3") && err.contains("conflict"), "{err}");
    assert_eq!(events(&db), 2);
}
