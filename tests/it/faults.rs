//! Fault tests (issue 8): PostgreSQL restarted under a recorder, the database down when
//! a recorder starts. Each is bounded well under a minute.

use std::time::Duration;

use tally::{RecorderConfig, Tally};
use tally_testdb::{Cluster, TestDb};
use tally_tests::{Proxy, api_events as events};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_a_recorder_loses_and_doubles_nothing() {
    // A server of this test's own, restarted (fast shutdown: every session is ended
    // with 57P01) while the recorder streams events and flushes. Everything flush()
    // acknowledged before, and everything recorded after, is stored exactly once.
    let cluster = Cluster::private().unwrap();
    let db = TestDb::new_on(&cluster).await.unwrap();
    let rec = db.tally().recorder_with(
        RecorderConfig::default()
            .batch_size(500)
            .batch_timeout(Duration::from_millis(20))
            .retry_backoff(Duration::from_millis(20), Duration::from_millis(300)),
    );
    let mut acknowledged = 0u128;
    for round in 0..20u128 {
        rec.record_many(events(1_000, round * 1_000)).await.unwrap();
        if round == 8 {
            // Restart from another thread while batches are in flight.
            let c = &cluster;
            std::thread::scope(|s| {
                s.spawn(|| c.restart().unwrap());
            });
        }
        rec.flush_within(Duration::from_secs(40)).await.unwrap();
        acknowledged = (round + 1) * 1_000;
    }
    rec.close().await.unwrap();
    let s = rec.status();
    assert!(s.failed_attempts > 0, "the restart was never felt: {s:?}");
    assert_eq!(s.dead_lettered, 0, "{s:?}");
    let v = db.tally().verify().await.unwrap();
    assert_eq!(
        (v.events as u128, v.mismatches, v.key_mismatches),
        (acknowledged, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorder_started_while_the_database_is_down_waits_then_commits_everything() {
    let db = TestDb::new().await.unwrap();
    let proxy = Proxy::start(db.url()).await;
    proxy.down();
    let tally = Tally::builder(proxy.url(db.url()))
        .pool_size(2)
        .build_lazy()
        .unwrap();
    let rec = tally.recorder_with(
        RecorderConfig::default()
            .batch_size(50)
            .queue_capacity(200)
            .batch_timeout(Duration::from_millis(20))
            .retry_backoff(Duration::from_millis(20), Duration::from_millis(200)),
    );
    rec.record_many(events(200, 0)).await.unwrap();
    // Memory stays bounded: the queue is full, so the next record waits.
    let blocked = tokio::time::timeout(
        Duration::from_millis(300),
        rec.record(events(1, 500).remove(0)),
    )
    .await;
    assert!(
        blocked.is_err(),
        "record should wait while the queue is full"
    );
    assert!(rec.flush_within(Duration::from_millis(300)).await.is_err());
    assert_eq!(rec.status().pending, 200);
    proxy.up();
    rec.flush_within(Duration::from_secs(30)).await.unwrap();
    rec.close().await.unwrap();
    let v = db.tally().verify().await.unwrap();
    assert_eq!((v.events, v.mismatches), (200, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_rides_out_a_postgres_restart() {
    // The server is restarted (57P01 to every session) a third of the way through a
    // lenient import: the batch in flight is retried and the import completes, every
    // row stored once.
    let cluster = std::sync::Arc::new(Cluster::private().unwrap());
    let db = TestDb::new_on(&cluster).await.unwrap();
    let text = tally_tests::numbered_csv(60_000);
    let c = cluster.clone();
    let (progress, restarted) =
        tally_tests::fault_at_a_third(text.len() as u64, move || c.restart().unwrap());
    let mut opts = tally::import::ImportOptions::new(tally::import::ImportFormat::Csv);
    opts.batch_size = 2_000;
    let report = db
        .tally()
        .import(std::io::Cursor::new(text), opts, Some(progress))
        .await
        .unwrap();
    assert!(restarted.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(report.inserted + report.duplicates, 60_000, "{report:?}");
    let v = db.tally().verify().await.unwrap();
    assert_eq!((v.events, v.mismatches, v.key_mismatches), (60_000, 0, 0));
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_holds_the_events_instead_of_dead_lettering_them() {
    // A permanent failure that is about the database, not the events (25006): nothing
    // is dead-lettered; the events wait, and commit once writes are allowed again.
    let db = TestDb::new().await.unwrap();
    let admin = db.client().await.unwrap();
    let set = |on: bool| {
        format!(
            "ALTER DATABASE {} SET default_transaction_read_only = {}",
            db.name(),
            if on { "on" } else { "off" }
        )
    };
    admin.batch_execute(&set(true)).await.unwrap();
    let tally = Tally::builder(db.url()).pool_size(2).build_lazy().unwrap();
    let rec = tally.recorder_with(
        RecorderConfig::default()
            .batch_size(50)
            .batch_timeout(Duration::from_millis(20))
            .retry_backoff(Duration::from_millis(20), Duration::from_millis(100)),
    );
    rec.record_many(events(100, 0)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while rec.status().consecutive_failures == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "failure never reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = rec.status();
    assert_eq!((s.dead_lettered, s.pending), (0, 100), "{s:?}");
    assert!(s.last_error.unwrap().1.contains("25006"));
    admin.batch_execute(&set(false)).await.unwrap();
    rec.flush_within(Duration::from_secs(30)).await.unwrap();
    rec.close().await.unwrap();
    assert_eq!(rec.status().dead_lettered, 0);
    let v = db.tally().verify().await.unwrap();
    assert_eq!((v.events, v.mismatches), (100, 0));
}
