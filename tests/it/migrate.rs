use tally::{ErrorKind, Granularity, Tally, TimeRange, Zone};
use tally_testdb::TestDb;

#[tokio::test]
async fn applying_twice_is_a_noop() {
    let db = TestDb::empty().await.unwrap();
    let first = db.tally().migrate().await.unwrap();
    assert_eq!(first.applied, vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);
    let second = db.tally().migrate().await.unwrap();
    assert!(second.applied.is_empty());
    assert_eq!(second.already, vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_are_safe() {
    let db = TestDb::empty().await.unwrap();
    // Separate stores: separate pools, separate sessions, as separate processes have.
    let stores: Vec<Tally> = (0..4)
        .map(|_| Tally::with_pool_size(db.url(), 2).unwrap())
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
    client
        .batch_execute(
            "CREATE TABLE tally_migrations (version integer PRIMARY KEY, name text NOT NULL,
                 checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|f| f.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.as_str() < "0009")
        .collect();
    files.sort();
    assert_eq!(files.len(), 8);
    for (i, name) in files.iter().enumerate() {
        let sql = std::fs::read_to_string(format!("{dir}/{name}")).unwrap();
        client.batch_execute(&sql).await.unwrap();
        client
            .execute(
                "INSERT INTO tally_migrations (version, name, checksum)
                 VALUES ($1, $2, encode(sha256(convert_to($3, 'UTF8')), 'hex'))",
                &[&(i as i32 + 1), name, &sql],
            )
            .await
            .unwrap();
    }
    // Data as migration 8's write path left it: events, rollups, two lanes.
    client
        .batch_execute(
            "SELECT tally_ensure_month_partition('2026-05-01');
             INSERT INTO usage_events
             SELECT gen_random_uuid(), CASE WHEN i % 3 = 0 THEN 'globex' ELSE 'acme' END,
                    CASE WHEN i % 2 = 0 THEN 'api' ELSE 'storage' END, (i * 37 % 101) + 0.5,
                    timestamptz '2026-05-03 00:00:00+00' + i * interval '7 minutes 13 seconds', '{}'
             FROM generate_series(0, 900) i;
             INSERT INTO usage_event_keys SELECT event_id, customer_id FROM usage_events;
             INSERT INTO usage_hourly
             SELECT customer_id, service, b, count(*), sum(quantity), min(quantity), max(quantity),
                    coalesce(sum(quantity) FILTER (WHERE recorded_at < b + interval '15 minutes'), 0),
                    coalesce(sum(quantity) FILTER (WHERE recorded_at < b + interval '30 minutes'), 0),
                    coalesce(sum(quantity) FILTER (WHERE recorded_at < b + interval '45 minutes'), 0)
             FROM (SELECT *, date_trunc('hour', recorded_at) AS b FROM usage_events) e GROUP BY 1, 2, 3;
             INSERT INTO usage_daily
             SELECT customer_id, service, date_trunc('day', recorded_at), count(*), sum(quantity),
                    min(quantity), max(quantity)
             FROM usage_events GROUP BY 1, 2, 3;
             INSERT INTO usage_hourly_total
             SELECT service, date_trunc('hour', recorded_at), (customer_id = 'acme')::int,
                    count(*), sum(quantity), min(quantity), max(quantity)
             FROM usage_events GROUP BY 1, 2, 3;",
        )
        .await
        .unwrap();
    let report = db.tally().migrate().await.unwrap();
    assert_eq!(report.applied, vec![9]);
    let v = db.tally().verify().await.unwrap();
    assert_eq!((v.events, v.mismatches), (901, 0));
    // The quarter-hour reads (rollups only) equal the raw events' answer.
    let r = TimeRange::new(
        "2026-05-03T18:30:00Z".parse().unwrap(),
        "2026-05-05T18:30:00Z".parse().unwrap(),
    )
    .unwrap();
    let zone: Zone = "Asia/Kolkata".parse().unwrap();
    let expected: Vec<(i64, String)> = client
        .query(
            "SELECT count(*), sum(quantity)::text FROM usage_events
             WHERE recorded_at >= '2026-05-03T18:30:00Z' AND recorded_at < '2026-05-05T18:30:00Z'
             GROUP BY date_trunc('day', recorded_at AT TIME ZONE 'Asia/Kolkata'), service
             ORDER BY date_trunc('day', recorded_at AT TIME ZONE 'Asia/Kolkata'), service",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    client
        .batch_execute("DELETE FROM usage_events")
        .await
        .unwrap();
    let got: Vec<(i64, String)> = db
        .tally()
        .aggregate(None, r, None, Granularity::Day, zone)
        .await
        .unwrap()
        .buckets
        .iter()
        .map(|b| (b.events, b.quantity.to_string()))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(got.len(), 4);
}
