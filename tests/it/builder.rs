//! The facade's builder: eager connection with errors that say where, settings from the
//! seed's environment variables.

use std::time::Duration;

use tally::{ErrorKind, Tally, TallyBuilder};
use tally_testdb::TestDb;
use tally_tests::api_events;

#[tokio::test]
async fn build_connects_eagerly_and_names_where_it_could_not() {
    // Nothing listens on port 1.
    let err = Tally::builder("postgres://alice:s3cret@127.0.0.1:1/billing")
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection);
    let msg = err.to_string();
    for part in ["127.0.0.1", "port 1", "user alice", "database billing"] {
        assert!(msg.contains(part), "{part} missing from {msg}");
    }
    assert!(!msg.contains("s3cret"), "{msg}");

    // A server that answers, a database that does not exist: the server's own words.
    let db = TestDb::new().await.unwrap();
    // (TestDb URLs are key=value strings: a later key overrides an earlier one.)
    let url = format!("{} dbname=no_such_db_tally", db.url());
    let err = Tally::builder(url).build().await.unwrap_err();
    assert_eq!(err.sqlstate(), Some("3D000"), "{err}");
    assert!(err.to_string().contains("no_such_db_tally"), "{err}");
}

#[tokio::test]
async fn the_builder_wires_recorder_settings_and_alerts() {
    let db = TestDb::new().await.unwrap();
    let env = |k: &str| match k {
        "DATABASE_URL" => Some(db.url().to_owned()),
        "USAGE_BATCH_SIZE" => Some("7".to_owned()),
        "USAGE_BATCH_TIMEOUT" => Some("3600".to_owned()),
        _ => None,
    };
    let tally = TallyBuilder::from_lookup(env)
        .unwrap()
        .zone("Asia/Kolkata".parse().unwrap())
        .build()
        .await
        .unwrap();
    assert_eq!(tally.zone().name(), "Asia/Kolkata");
    let rec = tally.recorder();
    rec.record_many(api_events(20, 0)).await.unwrap();
    // A batch of 7 goes out on its own, long before the hour-long timeout (with the
    // default batch of 10 000 nothing would). How many follow depends on group commit
    // timing, so only the first is asserted.
    for _ in 0..250 {
        if rec.status().inserted >= 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let early = rec.status().inserted;
    assert!(
        (7..20).contains(&early),
        "{early} committed before the timeout"
    );
    rec.close().await.unwrap();
    assert_eq!(tally.verify().await.unwrap().events, 20);

    let bad = |k: &str| match k {
        "DATABASE_URL" => Some(db.url().to_owned()),
        "USAGE_ALERT_WARNING" => Some("seventy".to_owned()),
        _ => None,
    };
    // Every setting from the environment is a Config error naming the variable.
    let e = TallyBuilder::from_lookup(bad).unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::Config, Some("USAGE_ALERT_WARNING"))
    );
    let e = TallyBuilder::from_lookup(|_| None).unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::Config, Some("DATABASE_URL"))
    );
    let batch = |k: &str| match k {
        "DATABASE_URL" => Some(db.url().to_owned()),
        "USAGE_BATCH_SIZE" => Some("many".to_owned()),
        _ => None,
    };
    let e = TallyBuilder::from_lookup(batch).unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::Config, Some("USAGE_BATCH_SIZE"))
    );
}
