use chrono::{Datelike, Utc};
use tally::Service;
use tally_testdb::TestDb;
use tally_tests::event;

#[tokio::test]
async fn partitions_exist_ahead_and_far_events_land_in_the_default() {
    let db = TestDb::new().await.unwrap();
    let status = db.tally().partition_status().await.unwrap();
    let this_month = Utc::now().date_naive().with_day(1).unwrap();
    assert!(status.months.contains(&this_month), "{status:?}");
    assert!(
        status.months.len() >= 4,
        "current month and three ahead: {status:?}"
    );
    assert_eq!(status.default_rows, 0);

    // Far past and far future are outside the on-demand window: kept, in the default.
    let far = [
        event(1, "acme", Service::API, "1", "1990-05-01T00:00:00Z"),
        event(2, "acme", Service::API, "2", "2199-01-01T00:00:00Z"),
    ];
    assert_eq!(db.tally().write(&far).await.unwrap().inserted, 2);
    assert_eq!(db.tally().partition_status().await.unwrap().default_rows, 2);

    // A month inside the window gets its partition on first use.
    let last_year = format!("{}-03-15T12:00:00Z", Utc::now().year() - 1);
    db.tally()
        .write(&[event(3, "acme", Service::API, "3", &last_year)])
        .await
        .unwrap();
    let status = db.tally().partition_status().await.unwrap();
    assert!(
        status
            .months
            .iter()
            .any(|m| m.year() == Utc::now().year() - 1 && m.month() == 3),
        "{status:?}"
    );
    assert_eq!(status.default_rows, 2);
    let v = db.tally().verify().await.unwrap();
    assert_eq!((v.events, v.mismatches), (3, 0));
}

#[tokio::test]
async fn creating_a_partition_later_moves_rows_out_of_the_default() {
    let db = TestDb::new().await.unwrap();
    db.tally()
        .write(&[event(1, "acme", Service::API, "1", "1990-05-01T00:00:00Z")])
        .await
        .unwrap();
    let client = db.client().await.unwrap();
    let month = chrono::NaiveDate::from_ymd_opt(1990, 5, 1).unwrap();
    let created: bool = client
        .query_one("SELECT tally_ensure_month_partition($1)", &[&month])
        .await
        .unwrap()
        .get(0);
    assert!(created);
    let again: bool = client
        .query_one("SELECT tally_ensure_month_partition($1)", &[&month])
        .await
        .unwrap()
        .get(0);
    assert!(!again);
    let status = db.tally().partition_status().await.unwrap();
    assert_eq!(status.default_rows, 0);
    assert!(status.months.contains(&month));
    let n: i64 = client
        .query_one("SELECT count(*) FROM usage_events_1990_05", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    // Detaching and dropping an old month is O(1) and leaves the rollups in place.
    client.batch_execute("ALTER TABLE usage_events DETACH PARTITION usage_events_1990_05; DROP TABLE usage_events_1990_05").await.unwrap();
    let h: i64 = client
        .query_one("SELECT count(*) FROM usage_hourly", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(h, 1);
}
