//! `tally archive` killed at its worst moment, then rerun (issue 10), and `tally export`
//! end to end.

use std::process::Command;

use tally_testdb::TestDb;

mod common;

use common::{json, tally};

/// 200 events spread over the 200 days before now, written through `import`.
fn usage_file(dir: &std::path::Path) -> std::path::PathBuf {
    usage_file_of(dir, 200)
}

/// `n` events, one a day back from now, cycling over 200 days.
fn usage_file_of(dir: &std::path::Path, n: i64) -> std::path::PathBuf {
    let now = tally::chrono::Utc::now();
    let mut text = String::from("event_id,customer_id,service,quantity,recorded_at,metadata\n");
    for i in 0..n {
        let t = now
            - tally::chrono::Duration::days(i % 200)
            - tally::chrono::Duration::hours(1)
            - tally::chrono::Duration::seconds(i / 200);
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
    // A character device exists, and is a fine destination: streamed into, not replaced.
    let null = tally(
        &db,
        &[
            "export",
            "--format",
            "xlsx",
            "--from",
            from,
            "-o",
            "/dev/null",
        ],
    );
    assert!(null.status.success(), "{null:?}");
    assert!(
        String::from_utf8_lossy(&null.stdout).contains("exported 200 row(s) to /dev/null"),
        "{null:?}"
    );
}

/// Runs `tally args…` to its end (killed after `limit`), sampling its peak resident
/// memory (VmHWM) as it runs: (exit code, stderr, peak bytes, whether it was killed).
fn run_measured(
    db: &TestDb,
    args: &[&str],
    limit: std::time::Duration,
) -> (Option<i32>, String, u64, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env("DATABASE_URL", db.url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let started = std::time::Instant::now();
    let mut peak = 0u64;
    let mut killed = false;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            let kib = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            if let Some(k) = kib {
                peak = peak.max(k * 1024);
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            killed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        peak,
        killed,
    )
}

fn sh(script: &str) {
    let st = Command::new("sh").args(["-c", script]).status().unwrap();
    assert!(st.success(), "{script}");
}

#[tokio::test]
async fn restore_refuses_what_is_not_its_archive_in_bounded_memory_without_hanging() {
    const MIB: u64 = 1 << 20;
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = usage_file(dir.path());
    assert!(
        tally(&db, &["import", file.to_str().unwrap()])
            .status
            .success()
    );
    let archives = dir.path().join("a");
    let report = json(&tally(
        &db,
        &[
            "archive",
            "--older-than",
            "90",
            "--dir",
            archives.to_str().unwrap(),
            "--format",
            "json",
        ],
    ));
    let names: Vec<String> = report["archives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["file"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.len() >= 2, "{report}");
    let real = archives.join(&names[0]);
    let kept = dir.path().join("kept.gz");
    std::fs::copy(&real, &kept).unwrap();
    let path = real.to_str().unwrap();
    let quick = std::time::Duration::from_secs(20);

    // A missing file is the caller's mistake, as import's is.
    let missing = archives.join("usage_2020_01_999.ndjson.gz");
    let (code, err, _, _) = run_measured(&db, &["restore", missing.to_str().unwrap()], quick);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no such file"), "{err}");

    // A FIFO under the archive's name: refused at once, the lock never taken.
    std::fs::remove_file(&real).unwrap();
    sh(&format!("mkfifo '{path}'"));
    let (code, err, _, killed) = run_measured(&db, &["restore", path], quick);
    assert!(!killed, "restore of a FIFO hung");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a regular file"), "{err}");

    // A huge file under its name: refused by a streamed checksum, not read whole.
    std::fs::remove_file(&real).unwrap();
    std::fs::File::create(&real)
        .unwrap()
        .set_len(700 * MIB)
        .unwrap();
    let (code, err, peak, _) =
        run_measured(&db, &["restore", path], std::time::Duration::from_secs(120));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("checksum"), "{err}");
    assert!(
        peak < 200 * MIB,
        "peak {} MiB restoring a 700 MiB file",
        peak / MIB
    );

    // Another database's archive of the same name is named as such, not as "changed".
    let other = TestDb::new().await.unwrap();
    assert!(
        tally(&other, &["import", file.to_str().unwrap()])
            .status
            .success()
    );
    let first_day = tally::chrono::Utc::now()
        - tally::chrono::Duration::days(199)
        - tally::chrono::Duration::hours(1);
    let rec = tally(
        &other,
        &[
            "record",
            "--customer",
            "extra",
            "--service",
            "api",
            "--quantity",
            "1",
            "--at",
            &tally::serde_fmt::rfc3339(first_day),
        ],
    );
    assert!(rec.status.success(), "{rec:?}");
    let theirs = dir.path().join("b");
    json(&tally(
        &other,
        &[
            "archive",
            "--older-than",
            "90",
            "--dir",
            theirs.to_str().unwrap(),
            "--format",
            "json",
        ],
    ));
    let (code, err, _, _) = run_measured(
        &db,
        &["restore", theirs.join(&names[0]).to_str().unwrap()],
        quick,
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("another database"), "{err}");

    // The archive itself still restores (nothing was left locked or half-written).
    std::fs::remove_file(&real).unwrap();
    std::fs::copy(&kept, &real).unwrap();
    let out = tally(&db, &["restore", path]);
    assert!(out.status.success(), "{out:?}");

    // A gzip bomb whose checksum the ledger was made to match: stopped at its first
    // over-long line, in bounded memory.
    let bomb = archives.join(&names[1]);
    let bomb_path = bomb.to_str().unwrap();
    sh(&format!("head -c 600M /dev/zero | gzip -1 > '{bomb_path}'"));
    let sum = Command::new("sha256sum").arg(&bomb).output().unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    db.client()
        .await
        .unwrap()
        .execute(
            "UPDATE usage_archives SET sha256 = $1 WHERE file_name = $2",
            &[&sum, &names[1]],
        )
        .await
        .unwrap();
    let (code, err, peak, _) = run_measured(
        &db,
        &["restore", bomb_path],
        std::time::Duration::from_secs(120),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("longer than"), "{err}");
    assert!(
        peak < 200 * MIB,
        "peak {} MiB restoring a gzip bomb",
        peak / MIB
    );
    let verify = json(&tally(&db, &["verify", "--format", "json"]));
    assert_eq!(verify["mismatches"], 0);
}

/// What is in `dir` besides `keep`: the export left nothing else behind.
fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `tally export` into `dir` with writes failing past `limit_blocks` × 512 bytes
/// (a file size limit: the write fails as on a full disk, with EFBIG).
fn export_limited(
    db: &TestDb,
    dir: &std::path::Path,
    format: &str,
    name: &str,
    force: bool,
) -> std::process::Output {
    let mut args = vec![
        "-c".to_owned(),
        r#"ulimit -f 16; trap "" XFSZ; exec "$0" "$@""#.to_owned(),
        env!("CARGO_BIN_EXE_tally").to_owned(),
        "export".to_owned(),
        "--format".to_owned(),
        format.to_owned(),
        "--from".to_owned(),
        "2000-01-01".to_owned(),
        "--output".to_owned(),
        dir.join(name).to_str().unwrap().to_owned(),
    ];
    if force {
        args.push("--force".to_owned());
    }
    Command::new("sh")
        .args(&args)
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap()
}

#[tokio::test]
async fn an_export_that_cannot_finish_leaves_no_truncated_file_under_its_name() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = usage_file_of(dir.path(), 4000);
    assert!(
        tally(&db, &["import", file.to_str().unwrap()])
            .status
            .success()
    );
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for (format, name) in [("csv", "u.csv"), ("json", "u.json"), ("xlsx", "u.xlsx")] {
        let r = export_limited(&db, &out, format, name, false);
        assert_eq!(r.status.code(), Some(1), "{format}: {r:?}");
        assert_eq!(
            entries(&out),
            Vec::<String>::new(),
            "{format}: nothing left behind"
        );
        // With --force, the file it would replace is kept whole.
        std::fs::write(out.join(name), "old").unwrap();
        let r = export_limited(&db, &out, format, name, true);
        assert_eq!(r.status.code(), Some(1), "{format}: {r:?}");
        assert_eq!(entries(&out), [name.to_owned()]);
        assert_eq!(std::fs::read_to_string(out.join(name)).unwrap(), "old");
        std::fs::remove_file(out.join(name)).unwrap();
    }

    // A real full disk where this machine lets the test mount one (root): a 64 KiB
    // tmpfs.
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=64k",
            "tmpfs",
            full.to_str().unwrap(),
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if mounted {
        let target = full.join("u.csv");
        let r = tally(
            &db,
            &[
                "export",
                "--format",
                "csv",
                "--from",
                "2000-01-01",
                "--output",
                target.to_str().unwrap(),
            ],
        );
        let left = entries(&full);
        let _ = Command::new("umount").arg(&full).status();
        assert_eq!(r.status.code(), Some(1), "{r:?}");
        assert!(
            String::from_utf8_lossy(&r.stderr).contains("No space left"),
            "{r:?}"
        );
        assert_eq!(left, Vec::<String>::new(), "nothing left on the full disk");
    }
    // And with room, the same export lands whole.
    let r = tally(
        &db,
        &[
            "export",
            "--format",
            "csv",
            "--from",
            "2000-01-01",
            "--output",
            out.join("u.csv").to_str().unwrap(),
        ],
    );
    assert!(r.status.success(), "{r:?}");
    assert_eq!(entries(&out), ["u.csv"]);
    let mut rows = csv::Reader::from_path(out.join("u.csv")).unwrap();
    assert_eq!(rows.records().count(), 4000);
}

/// `--older-than N` cuts at the UTC midnight starting the day N days ago: a second run on
/// the same day archives nothing more (no file of the seconds between two runs), and the
/// span a run archives ends on a midnight.
#[tokio::test]
async fn archive_runs_on_the_same_day_cut_at_the_same_midnight() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // One event a minute over the 10 minutes around "91 days ago", and older ones.
    let now = tally::chrono::Utc::now();
    let mut text = String::from("event_id,customer_id,service,quantity,recorded_at,metadata\n");
    for i in 0..40i64 {
        let t = now - tally::chrono::Duration::days(91) + tally::chrono::Duration::minutes(i - 20)
            - tally::chrono::Duration::days(i % 3);
        text.push_str(&format!(
            "{},c1,api,1,{},\n",
            tally::uuid::Uuid::from_u128(i as u128 + 1),
            tally::serde_fmt::rfc3339(t)
        ));
    }
    let file = dir.path().join("usage.csv");
    std::fs::write(&file, text).unwrap();
    assert!(
        tally(&db, &["import", file.to_str().unwrap()])
            .status
            .success()
    );
    let archive_dir = dir.path().join("archive");
    let run = || {
        json(&tally(
            &db,
            &[
                "archive",
                "--older-than",
                "90",
                "--dir",
                archive_dir.to_str().unwrap(),
                "--format",
                "json",
            ],
        ))
    };
    let midnight = |v: &serde_json::Value| {
        let to: tally::chrono::DateTime<tally::chrono::Utc> =
            v["range_to"].as_str().unwrap().parse().unwrap();
        assert_eq!(to.timestamp() % 86_400, 0, "{v}");
        to
    };
    let first = run();
    let firsts: Vec<_> = first["archives"]
        .as_array()
        .unwrap()
        .iter()
        .map(midnight)
        .collect();
    assert!(!firsts.is_empty(), "{first}");
    // Exporting the archived span finds no rows, and says where they went.
    let cutoff = tally::serde_fmt::rfc3339(*firsts.iter().max().unwrap());
    let export = tally(
        &db,
        &[
            "export",
            "--format",
            "csv",
            "--from",
            "2000-01-01",
            "--to",
            &cutoff,
            "-o",
            "-",
        ],
    );
    assert!(export.status.success(), "{export:?}");
    assert_eq!(String::from_utf8_lossy(&export.stdout).lines().count(), 1);
    let note = String::from_utf8_lossy(&export.stderr);
    assert!(note.contains("in archives covering this range"), "{note}");
    let second = run();
    let seconds: Vec<_> = second["archives"]
        .as_array()
        .unwrap()
        .iter()
        .map(midnight)
        .collect();
    // Only a run that crossed a UTC midnight since the first one archives more, and
    // then up to the next midnight.
    assert!(
        seconds.is_empty()
            || seconds
                .iter()
                .all(|t| *t == *firsts.iter().max().unwrap() + tally::chrono::Duration::days(1)),
        "first {first}\nsecond {second}"
    );
}
