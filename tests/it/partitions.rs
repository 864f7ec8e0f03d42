use chrono::{Datelike, Utc};
use rust_decimal::Decimal;
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

#[tokio::test]
async fn an_application_role_with_table_privileges_records_and_reports() {
    // The documented two-role setup (docs/operations.md): the owner migrates, creates
    // partitions ahead and runs `grant_app`; the application role may only read and
    // write rows, and cannot touch what would break the installation.
    let db = TestDb::new().await.unwrap();
    let owner = db.client().await.unwrap();
    let role = format!("tally_app_{}", db.name().rsplit('_').next().unwrap());
    // The wider grant an older version of the instructions gave: grant_app takes it back.
    owner
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role};
             CREATE ROLE {role} LOGIN;
             GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {role};
             GRANT USAGE ON SCHEMA public TO {role};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};",
            db = db.name()
        ))
        .await
        .unwrap();
    db.tally().grant_app(&role).await.unwrap();
    let cfg: tokio_postgres::Config = db.url().parse().unwrap();
    let url = db.url().replace(
        &format!("user={}", cfg.get_user().unwrap_or("postgres")),
        &format!("user={role}"),
    );
    let result = async {
        let app = tally::Tally::builder(&url)
            .pool_size(2)
            .build_lazy()
            .unwrap();
        // A migrate with nothing to do needs no DDL right.
        assert!(app.migrate().await.unwrap().applied.is_empty());
        // This month has a partition (made by the owner); 20 months ago has none, and
        // the application role cannot make one: the event waits in the default
        // partition.
        let now = chrono::Utc::now();
        let old = now - chrono::Duration::days(600);
        let e1 = event(1, "acme", Service::API, "2", &now.to_rfc3339());
        let e2 = event(2, "acme", Service::API, "3", &old.to_rfc3339());
        assert_eq!(app.write(&[e1, e2]).await.unwrap().inserted, 2);
        let acme: tally::CustomerId = "acme".parse().unwrap();
        let range = tally::TimeRange::new(
            old - chrono::Duration::days(1),
            now + chrono::Duration::days(1),
        )
        .unwrap();
        let s = app
            .summary(&acme, range)
            .service(&Service::API)
            .await
            .unwrap();
        assert_eq!(s.services[0].quantity, Decimal::from(5));
        assert_eq!(app.partition_status().await.unwrap().default_rows, 1);
        // Quotas and alerts are the application's: it sets a quota and evaluates it.
        let limit: tally::alerts::QuotaLimit = "2".parse().unwrap();
        app.alerts()
            .set_quota(&acme, &Service::API, limit, tally::alerts::Mode::Soft)
            .await
            .unwrap();
        // Fired by this check or by the background evaluator of the write: either way
        // recorded and listed by the application role.
        app.alerts().check_at(Some(&acme), now).await.unwrap();
        let filter = tally::alerts::AlertFilter {
            customer: Some(acme.clone()),
            ..Default::default()
        };
        let fired = app.alerts().list(&filter).await.unwrap();
        assert!(!fired.is_empty(), "this month's 2 of 2 fires");
        // Meters are the application's too: created, restarted (the old number's rows
        // removed) and deleted (its rows removed).
        let calls = tally::meters::MeterSpec::new(
            "api_calls".parse().unwrap(),
            "api".parse().unwrap(),
            tally::meters::Aggregation::Count,
            None,
        )
        .unwrap();
        assert_eq!(app.create_meter(&calls, None).await.unwrap().backfilled, 2);
        assert_eq!(
            app.restart_meter("api_calls", None)
                .await
                .unwrap()
                .backfilled,
            2
        );
        app.delete_meter("api_calls").await.unwrap();

        // What would break the installation is refused (SQLSTATE 42501).
        let (raw, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        for sql in [
            "DELETE FROM tally_migrations",
            "UPDATE usage_archives SET sha256 = 'x'",
            "UPDATE usage_archived_totals SET quantity = 0",
            "INSERT INTO tally_meters (service, unit) VALUES ('GPU-Hours', 'h')",
            "DELETE FROM usage_events",
            "UPDATE usage_event_keys SET digest = NULL",
            "DELETE FROM usage_hourly",
            "DELETE FROM usage_alerts",
        ] {
            let e = raw.batch_execute(sql).await.unwrap_err();
            assert_eq!(
                e.code(),
                Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
                "{sql}: {e}"
            );
        }
        drop(raw);

        // The owner's schedule creates partitions; the late one is then made on demand.
        db.tally()
            .write(&[event(3, "acme", Service::API, "1", &old.to_rfc3339())])
            .await
            .unwrap();
        assert_eq!(db.tally().partition_status().await.unwrap().default_rows, 0);
        assert_eq!(db.tally().verify().await.unwrap().mismatches, 0);
    }
    .await;
    // The role's sessions (and their temporary staging tables) go first; then what
    // was granted to it, then the role, which is cluster-wide.
    owner
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&role],
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    owner
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role};"))
        .await
        .unwrap();
    result
}

#[tokio::test]
async fn a_role_name_is_quoted_and_a_bad_one_refused() {
    let sql = tally::app_grants("app\"; DROP TABLE usage_events; --").unwrap();
    assert!(
        sql.contains("TO \"app\"\"; DROP TABLE usage_events; --\";"),
        "{sql}"
    );
    for bad in ["", &"r".repeat(64), "a\0b"] {
        let e = tally::app_grants(bad).unwrap_err();
        assert_eq!(e.kind(), tally::ErrorKind::Invalid);
        assert_eq!(e.field(), Some("role"));
    }
}

#[tokio::test]
async fn a_catalogue_row_tally_did_not_write_is_a_database_problem_not_input() {
    let db = TestDb::new().await.unwrap();
    db.client()
        .await
        .unwrap()
        .batch_execute("INSERT INTO tally_meters (service, unit) VALUES ('GPU-Hours', 'h')")
        .await
        .unwrap();
    let e = db.tally().service("api").await.unwrap_err();
    assert_eq!(e.kind(), tally::ErrorKind::Database, "{e}");
    assert_eq!(e.field(), None, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("tally_meters") && text.contains("GPU-Hours"),
        "{text}"
    );
}

/// A partition that cannot be made is the database's problem, never the events':
/// with its creation failing (here with SQLSTATE 23514, the class the recorder takes
/// for bad events — what a row arriving in the default partition during creation used
/// to cause), the recorder writes the events into the default partition and
/// dead-letters none of them.
#[tokio::test]
async fn a_partition_that_cannot_be_made_dead_letters_nothing() {
    let db = TestDb::new().await.unwrap();
    let owner = db.client().await.unwrap();
    owner
        .batch_execute(
            "CREATE OR REPLACE FUNCTION tally_ensure_month_partition(month date) RETURNS boolean
             LANGUAGE plpgsql AS $$ BEGIN
                 RAISE EXCEPTION 'partition constraint violated' USING ERRCODE = '23514';
             END $$",
        )
        .await
        .unwrap();
    // Thirteen months ago: inside the on-demand window, never made ahead.
    let old = (Utc::now() - chrono::Duration::days(400)).to_rfc3339();
    let rec = db
        .tally()
        .recorder_with(tally::RecorderConfig::default().batch_size(10));
    let batch: Vec<_> = (0..25)
        .map(|i| event(1000 + i, "acme", Service::API, "2", &old))
        .collect();
    rec.record_many(batch).await.unwrap();
    rec.flush_within(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let s = rec.status();
    assert_eq!(
        (s.inserted, s.dead_lettered, s.pending),
        (25, 0, 0),
        "{s:?}"
    );
    let v = db.tally().verify().await.unwrap();
    assert_eq!(
        (v.events, v.quantity, v.mismatches),
        (25, Decimal::from(50), 0)
    );
    assert_eq!(
        db.tally().partition_status().await.unwrap().default_rows,
        25
    );
    rec.close().await.unwrap();
}
