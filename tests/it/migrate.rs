use tally::{ErrorKind, Tally};
use tally_testdb::TestDb;
use tally_tests::{
    check_quarter_hours_after_upgrade, fill_as_migration_8, migrate_by_hand_before, migrations_from,
};

#[tokio::test]
async fn applying_twice_is_a_noop() {
    let db = TestDb::empty().await.unwrap();
    let first = db.tally().migrate().await.unwrap();
    assert_eq!(first.applied, migrations_from(1));
    let second = db.tally().migrate().await.unwrap();
    assert!(second.applied.is_empty());
    assert_eq!(second.already, migrations_from(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_are_safe() {
    let db = TestDb::empty().await.unwrap();
    // Separate stores: separate pools, separate sessions, as separate processes have.
    let stores: Vec<Tally> = (0..4)
        .map(|_| Tally::builder(db.url()).pool_size(2).build_lazy().unwrap())
        .collect();
    let handles: Vec<_> = stores
        .into_iter()
        .map(|s| tokio::spawn(async move { s.migrate().await }))
        .collect();
    let mut applied = 0;
    for h in handles {
        applied += h.await.unwrap().unwrap().applied.len();
    }
    let known = db.tally().migrate().await.unwrap().already.len();
    assert_eq!(
        applied, known,
        "each migration is applied by exactly one session"
    );
    assert_eq!(db.tally().verify().await.unwrap().events, 0);
}

#[tokio::test]
async fn a_changed_migration_is_an_error() {
    let db = TestDb::new().await.unwrap();
    let client = db.client().await.unwrap();
    client
        .execute(
            "UPDATE tally_migrations SET checksum = 'tampered' WHERE version = 1",
            &[],
        )
        .await
        .unwrap();
    drop(client);
    let err = db.tally().migrate().await.unwrap_err();
    assert!(
        err.kind() == ErrorKind::Migration && err.migration_version() == Some(1),
        "{err}"
    );
    assert!(err.to_string().contains("0001_events.sql"), "{err}");
}

#[tokio::test]
async fn an_unknown_newer_migration_is_an_error() {
    let db = TestDb::new().await.unwrap();
    let client = db.client().await.unwrap();
    client.execute("INSERT INTO tally_migrations (version, name, checksum) VALUES (999, 'future.sql', 'x')", &[]).await.unwrap();
    drop(client);
    let err = db.tally().migrate().await.unwrap_err();
    assert!(
        err.kind() == ErrorKind::Migration && err.migration_version() == Some(999),
        "{err}"
    );
}

#[tokio::test]
async fn database_errors_keep_the_server_message_and_sqlstate() {
    let db = TestDb::empty().await.unwrap();
    let err = db.tally().verify().await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("SQLSTATE 42P01"), "{text}");
    assert!(text.contains("usage_events"), "{text}");
    assert_eq!(err.sqlstate(), Some("42P01"));
}

/// An installation at migration 8 with data, upgraded: 0009 fills the quarter-hour
/// detail from the raw events (and folds the all-customer lanes), after which the
/// rollups verify and quarter-hour zones read the same as before.
#[tokio::test]
async fn upgrading_to_quarter_hour_detail_fills_it_from_raw_events() {
    let db = TestDb::empty().await.unwrap();
    let client = db.client().await.unwrap();
    assert_eq!(migrate_by_hand_before(&client, "0009").await, 8);
    fill_as_migration_8(&client).await;
    let report = db.tally().migrate().await.unwrap();
    assert_eq!(report.applied, migrations_from(9));
    check_quarter_hours_after_upgrade(db.tally(), &client).await;
}
