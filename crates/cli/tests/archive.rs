//! `tally archive` killed at its worst moment, then rerun (issue 10), and `tally export`
//! end to end.

use std::process::Command;

use tally_testdb::TestDb;

mod common;

use common::{json, tally};

/// 200 events spread over the 200 days before now, written through `import`.
fn usage_file(dir: &std::path::Path) -> std::path::PathBuf {
    let now = tally::chrono::Utc::now();
    let mut text = String::from("event_id,customer_id,service,quantity,recorded_at,metadata\n");
    for i in 0..200i64 {
        let t = now - tally::chrono::Duration::days(i) - tally::chrono::Duration::hours(1);
        text.push_str(&format!(
            "{},c{},api,{}.25,{},\n",
            tally::uuid::Uuid::from_u128(i as u128 + 1),
            i % 4,
            i + 1,
            tally::serde_fmt::rfc3339(t)
        ));
    }
    let path = dir.join("usage.csv");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn an_archive_killed_before_its_delete_commits_loses_nothing_and_a_rerun_finishes() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = usage_file(dir.path());
    assert!(
        tally(&db, &["import", file.to_str().unwrap()])
            .status
            .success()
    );
    let before = json(&tally(&db, &["verify", "--format", "json"]));
    assert_eq!(before["events"], 200);
    let archive_dir = dir.path().join("archive");
    let args = [
        "archive",
        "--older-than",
        "90",
        "--dir",
        archive_dir.to_str().unwrap(),
    ];

    // Killed after the first archive file is written and synced, before its commit.
    let killed = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env("DATABASE_URL", db.url())
        .env("TALLY_FAILPOINT", "archive-before-commit")
        .output()
        .unwrap();
    assert_eq!(killed.status.code(), Some(86), "{killed:?}");
    let files_after_kill: Vec<_> = std::fs::read_dir(&archive_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !files_after_kill.is_empty(),
        "the file was written before the kill"
    );
    // Nothing left the database.
    let mid = json(&tally(&db, &["verify", "--format", "json"]));
    assert_eq!(mid["events"], 200);
    assert_eq!(mid["archived_events"], 0);
    assert_eq!(mid["mismatches"], 0);

    // The rerun archives everything old enough, once; the earlier file stays.
    let rerun = json(&tally(&db, &[&args[..], &["--format", "json"]].concat()));
    assert_eq!(rerun["abandoned"], 1);
    for f in &files_after_kill {
        assert!(archive_dir.join(f).exists(), "{f:?} was removed");
    }
    let after = json(&tally(&db, &["verify", "--format", "json"]));
    let archived = after["archived_events"].as_i64().unwrap();
    assert!(archived > 100, "{after}");
    assert_eq!(after["events"].as_i64().unwrap() + archived, 200);
    assert_eq!(after["mismatches"], 0);
    assert_eq!(after["key_mismatches"], 0);

    // Every event exactly once across the database and the complete archives: restore
    // them all and compare with the start.
    for m in rerun["archives"].as_array().unwrap() {
        let path = archive_dir.join(m["file"].as_str().unwrap());
        let out = tally(&db, &["restore", path.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
    }
    let restored = json(&tally(&db, &["verify", "--format", "json"]));
    assert_eq!(restored["events"], before["events"]);
    assert_eq!(restored["quantity"], before["quantity"]);
    assert_eq!(restored["mismatches"], 0);
    // An abandoned file is not restorable: its rows never left.
    let abandoned = files_after_kill
        .iter()
        .map(|f| archive_dir.join(f))
        .find(|p| p.extension().is_some_and(|e| e == "gz"));
    if let Some(p) = abandoned {
        let out = tally(&db, &["restore", p.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
    }
}

#[tokio::test]
async fn export_writes_a_new_file_and_never_overwrites() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = usage_file(dir.path());
    assert!(
        tally(&db, &["import", file.to_str().unwrap()])
            .status
            .success()
    );
    let out = dir.path().join("u.csv");
    let from = "2000-01-01";
    let first = tally(
        &db,
        &[
            "export",
            "--format",
            "csv",
            "--from",
            from,
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert!(first.status.success(), "{first:?}");
    let mut r = csv::Reader::from_path(&out).unwrap();
    assert_eq!(r.records().count(), 200);
    let again = tally(
        &db,
        &[
            "export",
            "--format",
            "json",
            "--from",
            from,
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    let forced = tally(
        &db,
        &[
            "export",
            "--format",
            "json",
            "--from",
            from,
            "--output",
            out.to_str().unwrap(),
            "--force",
        ],
    );
    assert!(forced.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(doc["summary"]["total_events"], 200);
    let stdout = tally(
        &db,
        &["export", "--format", "csv", "--from", from, "-o", "-"],
    );
    assert!(stdout.status.success());
    assert_eq!(String::from_utf8_lossy(&stdout.stdout).lines().count(), 201);
    let bad = tally(&db, &["export", "--format", "xlsx", "-o", "-"]);
    assert_eq!(bad.status.code(), Some(2));
    let bad = tally(&db, &["export", "--format", "pdf"]);
    assert_eq!(bad.status.code(), Some(2));
}
