//! `tally plan`, `quota` and `alerts` end to end on a fresh database.

use tally_testdb::TestDb;

mod common;

use common::{json, tally};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn plans_quotas_and_alerts_from_a_fresh_database() {
    let db = TestDb::empty().await.unwrap();
    assert!(tally(&db, &["migrate"]).status.success());

    // The default plans are there, in the services' units.
    let plans = json(&tally(&db, &["plan", "list", "--format", "json"]));
    let names: Vec<&str> = plans["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["enterprise", "free", "pro", "starter"]);
    let free = &plans["plans"][1];
    assert_eq!(free["mode"], "hard");
    assert_eq!(free["limits"]["storage"], "720");
    assert_eq!(plans["plans"][0]["limits"]["api"], "unlimited");

    // A plan of our own, a customer on it, and an override that beats it.
    let ok = tally(
        &db,
        &[
            "plan",
            "set",
            "team",
            "--mode",
            "soft",
            "--limit",
            "api=1000",
            "--limit",
            "bandwidth=unlimited",
        ],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    for args in [
        &[
            "quota",
            "set",
            "--customer",
            "acme",
            "--plan",
            "team",
            "--anchor-day",
            "31",
        ][..],
        &[
            "quota",
            "set",
            "--customer",
            "acme",
            "--service",
            "api",
            "--limit",
            "100",
            "--mode",
            "hard",
        ],
    ] {
        let out = tally(&db, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    let q = json(&tally(
        &db,
        &["quota", "list", "--customer", "acme", "--format", "json"],
    ));
    let rows = q["quotas"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (&rows[0]["service"], &rows[0]["limit"], &rows[0]["mode"]),
        (&"api".into(), &"100".into(), &"hard".into())
    );
    assert_eq!(rows[0]["source"]["kind"], "customer");
    assert_eq!(rows[1]["source"]["plan"], "team");
    assert_eq!(rows[1]["limit"], "unlimited");
    assert!(rows[0]["period_start"].as_str().unwrap().ends_with('Z'));

    // 80 of 100: `record` fires the warning; `alerts check` delivers it to stderr once.
    let rec = tally(
        &db,
        &[
            "record",
            "--customer",
            "acme",
            "--service",
            "api",
            "--quantity",
            "80",
        ],
    );
    assert!(rec.status.success(), "{}", stderr(&rec));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("alerts.log");
    let check = tally(
        &db,
        &[
            "alerts",
            "check",
            "--format",
            "json",
            "--log",
            log.to_str().unwrap(),
        ],
    );
    let fired = json(&check);
    assert_eq!(
        fired["fired"],
        serde_json::json!([]),
        "record fired it already"
    );
    let err = stderr(&check);
    assert!(
        err.contains("ALERT WARNING customer=acme service=api usage=80 limit=100 percent=80%"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1);
    let again = tally(&db, &["alerts", "check", "--log", log.to_str().unwrap()]);
    assert!(!stderr(&again).contains("ALERT"), "delivered once");
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1);

    // 95 of 100: critical.
    let rec = tally(
        &db,
        &[
            "record",
            "--customer",
            "acme",
            "--service",
            "api",
            "--quantity",
            "15",
        ],
    );
    assert!(rec.status.success());
    let list = json(&tally(
        &db,
        &["alerts", "list", "--days", "7", "--format", "json"],
    ));
    let alerts = list["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 2);
    assert_eq!(alerts[0]["level"], "critical");
    assert_eq!(alerts[0]["percent"], "95");
    for key in [
        "customer_id",
        "service",
        "level",
        "usage",
        "limit",
        "percent",
        "period_start",
        "triggered_at",
    ] {
        assert!(alerts[0].get(key).is_some(), "{key} missing");
    }
    let only = json(&tally(
        &db,
        &[
            "alerts",
            "list",
            "--level",
            "warning",
            "--service",
            "api",
            "--customer",
            "acme",
            "--format",
            "json",
        ],
    ));
    assert_eq!(only["alerts"].as_array().unwrap().len(), 1);

    // Removing the override: the plan's 1 000 applies again.
    assert!(
        tally(
            &db,
            &["quota", "remove", "--customer", "acme", "--service", "api"]
        )
        .status
        .success()
    );
    let q = json(&tally(&db, &["quota", "list", "--format", "json"]));
    assert_eq!(q["quotas"][0]["limit"], "1000");
    assert_eq!(q["quotas"][0]["percent"], "9.5");
}

#[tokio::test]
async fn bad_quota_input_is_refused_naming_it_and_writes_nothing() {
    let db = TestDb::new().await.unwrap();
    let cases: [(&[&str], &str); 8] = [
        (
            &[
                "quota",
                "set",
                "--customer",
                "c",
                "--service",
                "teleport",
                "--limit",
                "5",
            ],
            "invalid service \"teleport\"",
        ),
        (
            &[
                "quota",
                "set",
                "--customer",
                "c",
                "--service",
                "api",
                "--limit",
                "-5",
            ],
            "invalid limit \"-5\": must not be negative",
        ),
        (
            &["quota", "set", "--customer", "c", "--plan", "gold"],
            "invalid plan \"gold\": no such plan",
        ),
        (
            &[
                "quota",
                "set",
                "--customer",
                "c",
                "--service",
                "api",
                "--limit",
                "lots",
            ],
            "invalid limit \"lots\"",
        ),
        (
            &[
                "quota",
                "set",
                "--customer",
                "c",
                "--plan",
                "free",
                "--anchor-day",
                "32",
            ],
            "invalid anchor_day \"32\"",
        ),
        (
            &[
                "quota",
                "set",
                "--customer",
                "c",
                "--service",
                "api",
                "--limit",
                "5",
                "--mode",
                "firm",
            ],
            "invalid mode \"firm\"",
        ),
        (
            &["plan", "set", "p", "--limit", "api"],
            "invalid --limit \"api\"",
        ),
        (
            &["alerts", "list", "--level", "fatal"],
            "invalid level \"fatal\"",
        ),
    ];
    for (args, message) in cases {
        let out = tally(&db, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
    let q = json(&tally(&db, &["quota", "list", "--format", "json"]));
    assert_eq!(q["quotas"], serde_json::json!([]));
    let plans = json(&tally(&db, &["plan", "list", "--format", "json"]));
    assert_eq!(plans["plans"].as_array().unwrap().len(), 4);
}

/// `tally args…` run in `dir`.
fn tally_in(db: &TestDb, dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env("DATABASE_URL", db.url())
        .current_dir(dir)
        .output()
        .unwrap()
}

#[tokio::test]
async fn one_log_file_gets_each_alert_once_however_its_path_is_spelled_and_a_failed_delivery_fails()
{
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for args in [
        &[
            "quota",
            "set",
            "--customer",
            "acme",
            "--service",
            "api",
            "--limit",
            "100",
        ][..],
        &[
            "record",
            "--customer",
            "acme",
            "--service",
            "api",
            "--quantity",
            "95",
        ],
    ] {
        let out = tally_in(&db, d, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    let absolute = d.join("race.log");
    std::fs::create_dir(d.join("sub")).unwrap();
    for spelled in [
        "race.log".to_owned(),
        "./race.log".to_owned(),
        "sub/../race.log".to_owned(),
        absolute.to_str().unwrap().to_owned(),
    ] {
        let out = tally_in(&db, d, &["alerts", "check", "--log", &spelled]);
        assert!(out.status.success(), "{spelled}: {}", stderr(&out));
    }
    let lines = std::fs::read_to_string(&absolute).unwrap();
    assert_eq!(
        lines.lines().count(),
        1,
        "the critical alert, once:\n{lines}"
    );

    // A sink that cannot take the alerts: they stay pending, and the command says so.
    let out = tally_in(&db, d, &["alerts", "check", "--log", "/nonexistent/x.log"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/nonexistent/x.log"),
        "{}",
        stderr(&out)
    );
}

/// The values of `keys` in `v`, in order.
fn pick(v: &serde_json::Value, keys: &[&str]) -> serde_json::Value {
    keys.iter().map(|k| v[*k].clone()).collect()
}

/// A quota on a meter from the command line: set for a customer and in a plan, listed
/// with the meter's value over the period, alerted, refused when the meter is unknown,
/// removed.
#[tokio::test]
async fn a_quota_on_a_meter_from_the_command_line() {
    let db = TestDb::new().await.unwrap();
    let ok = |args: &[&str]| {
        let out = tally(&db, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&[
        "meter",
        "create",
        "users",
        "--type",
        "api",
        "--aggregation",
        "unique_count",
        "--value",
        "$.user",
    ]);
    ok(&["plan", "set", "team", "--meter-limit", "users=10"]);
    let plans = json(&tally(&db, &["plan", "list", "--format", "json"]));
    let team = plans["plans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "team")
        .unwrap();
    assert_eq!(team["meters"]["users"], "10", "{team}");
    assert!(ok(&["plan", "list"]).contains("meter:users"));
    ok(&["quota", "set", "--customer", "acme", "--plan", "team"]);
    ok(&[
        "quota",
        "set",
        "--customer",
        "acme",
        "--meter",
        "users",
        "--limit",
        "4",
        "--mode",
        "hard",
    ]);
    for user in ["ann", "bob", "ann", "cat"] {
        ok(&[
            "record",
            "--customer",
            "acme",
            "--service",
            "api",
            "--quantity",
            "1",
            "--metadata",
            &format!(r#"{{"user": "{user}"}}"#),
        ]);
    }
    let q = json(&tally(
        &db,
        &["quota", "list", "--customer", "acme", "--format", "json"],
    ));
    let rows = q["quotas"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{q}");
    assert_eq!(
        pick(
            &rows[0],
            &["service", "meter", "limit", "mode", "usage", "percent"]
        ),
        serde_json::json!([null, "users", "4", "hard", "3", "75"]),
        "{q}"
    );
    assert_eq!(rows[0]["source"]["kind"], "customer");
    // The third user reached 75 %: `record` evaluated the meter's quota after its commit.
    let listed = json(&tally(
        &db,
        &["alerts", "list", "--meter", "users", "--format", "json"],
    ));
    let alerts = listed["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{listed}");
    assert_eq!(
        pick(&alerts[0], &["service", "meter", "level", "usage"]),
        serde_json::json!([null, "users", "warning", "3"]),
        "{listed}"
    );
    let api = json(&tally(
        &db,
        &["alerts", "list", "--service", "api", "--format", "json"],
    ));
    assert_eq!(api["alerts"].as_array().unwrap().len(), 0, "{api}");

    // Refused at the edge, naming the field; exit 2, nothing written.
    for (args, says) in [
        (
            &[
                "quota",
                "set",
                "--customer",
                "acme",
                "--meter",
                "nope",
                "--limit",
                "1",
            ][..],
            "meter",
        ),
        (
            &[
                "quota",
                "set",
                "--customer",
                "acme",
                "--meter",
                "Bad Slug",
                "--limit",
                "1",
            ],
            "slug",
        ),
        (
            &["plan", "set", "team", "--meter-limit", "users"],
            "--meter-limit",
        ),
        (
            &[
                "quota",
                "set",
                "--customer",
                "acme",
                "--service",
                "api",
                "--meter",
                "users",
                "--limit",
                "1",
            ],
            "cannot be used with",
        ),
    ] {
        let out = tally(&db, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    ok(&["quota", "remove", "--customer", "acme", "--meter", "users"]);
    let q = json(&tally(
        &db,
        &["quota", "list", "--customer", "acme", "--format", "json"],
    ));
    // The plan's limit applies again.
    assert_eq!(q["quotas"][0]["limit"], "10", "{q}");
    assert_eq!(q["quotas"][0]["source"]["plan"], "team", "{q}");
}
