//! Archive and restore keep exactly-once and the rollups (issue 10).

use rust_decimal::Decimal;
use tally::{
    Service, TimeRange, UsageEvent,
    archive::ArchiveOptions,
    chrono::Duration,
    meters::{Aggregation, MeterQuery, MeterSpec, WindowSize},
};
use tally_testdb::TestDb;
use tally_tests::{at, event};

/// 90 events: June and July 2026 whole, and the first half of August, three customers.
fn events() -> Vec<UsageEvent> {
    (0..90u32)
        .map(|i| {
            let t = at("2026-06-01T00:00:00Z") + Duration::hours(i64::from(i) * 17);
            let customer = ["acme", "bob", "cleo"][(i % 3) as usize];
            let service = if i % 2 == 0 {
                Service::API
            } else {
                Service::STORAGE
            };
            event(
                u128::from(i) + 1,
                customer,
                service,
                &format!("{}.5", i + 1),
                &t.to_rfc3339(),
            )
        })
        .collect()
}

fn month(m: &str) -> TimeRange {
    tally::parse_month("period", m).unwrap()
}

#[tokio::test]
async fn archive_keeps_reports_and_keys_and_restore_brings_back_the_original() {
    let db = TestDb::new().await.unwrap();
    // The months' partitions, as the owner's schedule would make them: on demand they
    // are made only within a window around today, which this test must not depend on.
    db.client()
        .await
        .unwrap()
        .batch_execute(
            "SELECT tally_ensure_month_partition(m::date)
             FROM generate_series(date '2026-06-01', date '2026-08-01', interval '1 month') m",
        )
        .await
        .unwrap();
    let t = db.tally();
    // A meter (issue 24): its rollups stay, its raw events go and come back, and
    // verify compares it where no archive took events.
    let calls = MeterSpec::new(
        "api_calls".parse().unwrap(),
        "api".parse().unwrap(),
        Aggregation::Count,
        None,
    )
    .unwrap();
    t.create_meter(&calls, None).await.unwrap();
    let all = events();
    t.write(&all).await.unwrap();
    let before = t.verify().await.unwrap();
    assert_eq!((before.events, before.mismatches), (90, 0));
    let acme = "acme".parse().unwrap();
    let july = t.summary(&acme, month("2026-07")).await.unwrap();
    let invoice = t.invoice(&acme, month("2026-07")).await.unwrap();
    let by_day = MeterQuery::new(month("2026-07"), at("2026-08-01T00:00:00Z"))
        .window(WindowSize::Day)
        .group_by("subject");
    let meter_july = t.query_meter("api_calls", &by_day).await.unwrap();
    assert!(!meter_july.data.is_empty());

    let dir = tempfile::tempdir().unwrap();
    let cutoff = at("2026-08-15T00:00:00Z");
    let report = t
        .archive(&ArchiveOptions {
            cutoff,
            dir: dir.path().to_owned(),
            forget_keys: false,
        })
        .await
        .unwrap();
    // June and July whole (their partitions dropped), August up to the cutoff.
    assert_eq!(report.archives.len(), 3);
    let archived: i64 = report.archives.iter().map(|m| m.events).sum();
    let expect = all.iter().filter(|e| e.recorded_at < cutoff).count() as i64;
    assert_eq!(archived, expect);
    for m in &report.archives {
        assert!(dir.path().join(&m.file).exists());
        assert!(
            dir.path()
                .join(format!("{}.manifest.json", m.file))
                .exists()
        );
    }
    let months = t.partition_status().await.unwrap().months;
    assert!(!months.iter().any(|m| m.to_string() == "2026-06-01"));
    assert!(months.iter().any(|m| m.to_string() == "2026-08-01"));

    // Raw and archived add up; the rollups still agree; reports are unchanged.
    let after = t.verify().await.unwrap();
    assert_eq!(after.events, 90 - archived);
    assert_eq!(after.archived_events, archived);
    assert_eq!(after.quantity + after.archived_quantity, before.quantity);
    assert_eq!((after.mismatches, after.key_mismatches), (0, 0));
    assert_eq!(t.summary(&acme, month("2026-07")).await.unwrap(), july);
    assert_eq!(t.invoice(&acme, month("2026-07")).await.unwrap(), invoice);
    assert_eq!(
        t.query_meter("api_calls", &by_day).await.unwrap(),
        meter_july
    );

    // A meter made now cannot count the archived events (their raw events are in the
    // files): it says how many it did not count.
    let late = MeterSpec::new(
        "api_calls_late".parse().unwrap(),
        "api".parse().unwrap(),
        Aggregation::Count,
        None,
    )
    .unwrap();
    let api = |e: &&UsageEvent| e.service == Service::API;
    let api_archived = all
        .iter()
        .filter(api)
        .filter(|e| e.recorded_at < cutoff)
        .count() as u64;
    let made = t.create_meter(&late, None).await.unwrap();
    assert_eq!(
        (made.archived, made.backfilled),
        (
            api_archived,
            all.iter().filter(api).count() as u64 - api_archived
        )
    );
    assert!(
        t.query_meter("api_calls_late", &by_day)
            .await
            .unwrap()
            .data
            .is_empty()
    );

    // A retried event that has been archived is still counted once.
    let replay = t.write(&all[..5]).await.unwrap();
    assert_eq!((replay.inserted, replay.duplicates), (0, 5));

    // A second run has nothing left before the cutoff and leaves the files alone.
    let again = t
        .archive(&ArchiveOptions {
            cutoff,
            dir: dir.path().to_owned(),
            forget_keys: false,
        })
        .await
        .unwrap();
    assert!(again.archives.is_empty());

    // Restore: raw events back, rollups untouched, verify as at the start.
    for m in &report.archives {
        let r = t.restore(&dir.path().join(&m.file)).await.unwrap();
        assert_eq!(r.restored, m.events as u64);
    }
    // The late meter has not counted the restored events: verify finds it, and a
    // restart counts them.
    assert!(t.verify().await.unwrap().mismatches > 0);
    let recounted = t.restart_meter("api_calls_late", None).await.unwrap();
    assert_eq!(
        (recounted.archived, recounted.backfilled, &recounted.id),
        (0, all.iter().filter(api).count() as u64, &made.id)
    );
    let mut late_july = t.query_meter("api_calls_late", &by_day).await.unwrap();
    late_july
        .data
        .sort_by(|a, b| (a.window_start, &a.subject).cmp(&(b.window_start, &b.subject)));
    assert_eq!(late_july, meter_july);
    let restored = t.verify().await.unwrap();
    assert_eq!(restored.events, before.events);
    assert_eq!(restored.quantity, before.quantity);
    assert_eq!((restored.mismatches, restored.key_mismatches), (0, 0));
    assert_eq!(restored.archived_events, 0);
    assert_eq!(
        t.query_meter("api_calls", &by_day).await.unwrap(),
        meter_july
    );
    // Twice adds nothing.
    let twice = t
        .restore(&dir.path().join(&report.archives[0].file))
        .await
        .unwrap();
    assert!(twice.already_restored);
    assert_eq!(t.verify().await.unwrap(), restored);
}

#[tokio::test]
async fn a_changed_or_foreign_file_is_refused() {
    let db = TestDb::new().await.unwrap();
    let t = db.tally();
    t.write(&events()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = t
        .archive(&ArchiveOptions {
            cutoff: at("2026-07-01T00:00:00Z"),
            dir: dir.path().to_owned(),
            forget_keys: false,
        })
        .await
        .unwrap();
    let path = dir.path().join(&report.archives[0].file);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = t.restore(&path).await.unwrap_err();
    assert_eq!(err.field(), Some("file"));
    assert!(err.to_string().contains("checksum"), "{err}");
    let foreign = dir.path().join("usage_2020_01_999.ndjson.gz");
    std::fs::write(&foreign, b"x").unwrap();
    assert_eq!(t.restore(&foreign).await.unwrap_err().field(), Some("file"));
    assert_eq!(t.verify().await.unwrap().mismatches, 0);
}

#[tokio::test]
async fn forgetting_keys_is_explicit_and_then_a_replay_counts_again() {
    let db = TestDb::new().await.unwrap();
    let t = db.tally();
    let all = events();
    t.write(&all).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = t
        .archive(&ArchiveOptions {
            cutoff: at("2026-07-01T00:00:00Z"),
            dir: dir.path().to_owned(),
            forget_keys: true,
        })
        .await
        .unwrap();
    assert_eq!(report.archives.len(), 1);
    let v = t.verify().await.unwrap();
    assert_eq!((v.mismatches, v.key_mismatches), (0, 0));
    // The trade: an archived event replayed now is new again.
    let replay = t.write(&all[..1]).await.unwrap();
    assert_eq!(replay.inserted, 1);
    let v = t.verify().await.unwrap();
    assert_eq!((v.mismatches, v.key_mismatches), (0, 0));
    assert_eq!(
        v.quantity + v.archived_quantity,
        all.iter().map(|e| e.quantity.value()).sum::<Decimal>() + all[0].quantity.value()
    );
}

#[tokio::test]
async fn verify_after_overlapping_archives_and_a_cut_hour_still_sees_a_changed_rollup() {
    let db = TestDb::new().await.unwrap();
    let t = db.tally();
    let mut all = events();
    // Two events in the hour the first cutoff cuts, one on each side of it.
    all.push(event(
        1001,
        "acme",
        Service::API,
        "2",
        "2026-08-15T00:10:00Z",
    ));
    all.push(event(
        1002,
        "acme",
        Service::API,
        "3",
        "2026-08-15T00:50:00Z",
    ));
    t.write(&all).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = |cutoff: &str| ArchiveOptions {
        cutoff: at(cutoff),
        dir: dir.path().to_owned(),
        forget_keys: false,
    };
    t.archive(&options("2026-08-15T00:30:00Z")).await.unwrap();
    let v = t.verify().await.unwrap();
    assert_eq!((v.mismatches, v.key_mismatches), (0, 0), "{v:?}");

    // A late event for an archived month is raw again, beside the archived totals.
    let late = event(
        1003,
        "bob",
        Service::STORAGE,
        "1.25",
        "2026-07-04T12:20:00Z",
    );
    t.write(&[late]).await.unwrap();
    assert_eq!(t.verify().await.unwrap().mismatches, 0);
    // A second run: July again (the late event), and August from its first day, which
    // overlaps the first run's August archive.
    let second = t.archive(&options("2026-08-20T00:00:00Z")).await.unwrap();
    assert_eq!(second.archives.len(), 2, "{second:?}");
    let v = t.verify().await.unwrap();
    assert_eq!(v.events + v.archived_events, 93);
    assert_eq!((v.mismatches, v.key_mismatches), (0, 0), "{v:?}");

    // Every kind of change to a rollup row of the archived span is seen, in each
    // rollup table; undone, verify is clean again.
    let client = db.client().await.unwrap();
    let june = "bucket >= '2026-06-01' AND bucket < '2026-07-01'";
    let changes = [
        (
            "usage_hourly",
            "quantity = quantity + 1",
            "quantity = quantity - 1",
        ),
        ("usage_hourly", "events = events + 1", "events = events - 1"),
        (
            "usage_hourly",
            "quantity_by_30 = quantity_by_30 + 1",
            "quantity_by_30 = quantity_by_30 - 1",
        ),
        (
            "usage_daily",
            "quantity = quantity + 1",
            "quantity = quantity - 1",
        ),
        (
            "usage_daily",
            "min_quantity = min_quantity - 1",
            "min_quantity = min_quantity + 1",
        ),
        (
            "usage_hourly_total",
            "events = events + 1",
            "events = events - 1",
        ),
    ];
    for (table, change, undo) in changes {
        let one = format!(
            "ctid = (SELECT ctid FROM {table} WHERE {june} AND service = 'api' ORDER BY bucket LIMIT 1)"
        );
        let n = client
            .execute(&format!("UPDATE {table} SET {change} WHERE {one}"), &[])
            .await
            .unwrap();
        assert_eq!(n, 1, "{table}: {change}");
        let v = t.verify().await.unwrap();
        assert_eq!(v.mismatches, 1, "{table}: {change} not seen");
        client
            .execute(&format!("UPDATE {table} SET {undo} WHERE {one}"), &[])
            .await
            .unwrap();
        assert_eq!(t.verify().await.unwrap().mismatches, 0, "{table}: {undo}");
    }
    // A rollup row that goes missing is seen too.
    client
        .execute(
            &format!("DELETE FROM usage_hourly WHERE {june} AND customer_id = 'cleo'"),
            &[],
        )
        .await
        .unwrap();
    assert!(t.verify().await.unwrap().mismatches >= 1);
}

/// While another run holds the archive lock, a second archive is refused as `Busy`
/// (transient: the same call succeeds once the first ends), and it wrote nothing.
#[tokio::test]
async fn an_archive_while_another_runs_is_busy_and_then_succeeds() {
    let db = TestDb::new().await.unwrap();
    let holder = db.client().await.unwrap();
    // The key archive.rs locks ("archive" in ASCII).
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&0x0061_7263_6869_7665_i64])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = ArchiveOptions {
        cutoff: at("2026-08-01T00:00:00Z"),
        dir: dir.path().to_owned(),
        forget_keys: false,
    };
    let e = db.tally().archive(&options).await.unwrap_err();
    assert_eq!(e.kind(), tally::ErrorKind::Busy, "{e}");
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("another archive or restore"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    holder
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&0x0061_7263_6869_7665_i64],
        )
        .await
        .unwrap();
    db.tally().archive(&options).await.unwrap();
}
