//! Tally on a Citus cluster (issue 12): the same schema distributed by `migrate`, the
//! same write path exactly once, the same answers as one PostgreSQL. These tests run
//! when `TALLY_CITUS_URL` names a cluster's coordinator (`.ci/run` starts one with
//! `../shared/citus/cluster.sh` and sets it, with `TALLY_CITUS_REQUIRED` so that they
//! cannot skip there); without it they have nothing to run against and say so.

use std::time::Duration;

use tally::{
    CustomerId, Granularity, Limit, Service, Tally, TimeRange, UsageEvent, Zone,
    alerts::{AlertFilter, Mode},
    report::Over,
};
use tally_testdb::{CitusDb, TestDb};
use tally_tests::{
    at, check_quarter_hours_after_upgrade, event, fill_as_migration_8, migrate_by_hand_before,
    migrations_from,
};

async fn citus() -> Option<CitusDb> {
    let db = CitusDb::new().await.unwrap();
    if db.is_none() {
        // CI sets TALLY_CITUS_REQUIRED with the cluster: there a missing URL is a
        // failure, not a skip.
        assert!(
            std::env::var_os("TALLY_CITUS_REQUIRED").is_none(),
            "TALLY_CITUS_REQUIRED is set but TALLY_CITUS_URL is not"
        );
        eprintln!("TALLY_CITUS_URL is not set: no Citus cluster to test against");
    }
    db
}

/// 3 000 events of 30 customers over three days of November 2026, on the hour, the
/// quarter hours and in between, with decimal quantities.
fn workload() -> Vec<UsageEvent> {
    let services = [Service::API, Service::STORAGE, Service::COMPUTE];
    (0..3000u32)
        .map(|i| {
            let t = at("2026-11-02T00:00:00Z")
                + tally::chrono::Duration::seconds(i64::from(i) * 86 + i64::from(i % 7) * 13);
            let customer = format!("cust-{:02}", (i * 7 + i / 100) % 30);
            let service = services[(i % 3) as usize].clone();
            let quantity = format!("{}.{:03}", i % 17 + 1, (i * 37) % 1000);
            event(
                u128::from(i) + 1,
                &customer,
                service,
                &quantity,
                &t.to_rfc3339(),
            )
        })
        .collect()
}

/// Records `events` through four recorders at once, each taking an overlapping half
/// of them, so every event is sent twice, by writers racing each other.
async fn record_racing(tally: &Tally, events: &[UsageEvent]) {
    let n = events.len();
    let mut tasks = Vec::new();
    for w in 0..4usize {
        let start = w * n / 4;
        let chunk: Vec<UsageEvent> = (0..n / 2)
            .map(|k| events[(start + k) % n].clone())
            .collect();
        let recorder = tally.recorder_with(
            tally::RecorderConfig::default()
                .batch_size(250)
                .batch_timeout(Duration::from_millis(20)),
        );
        tasks.push(tokio::spawn(async move {
            recorder.record_many(chunk).await.unwrap();
            recorder.close().await.unwrap();
            recorder.status()
        }));
    }
    for t in tasks {
        let status = t.await.unwrap();
        assert_eq!(status.dead_lettered, 0, "{status:?}");
    }
}

#[tokio::test]
async fn migrate_distributes_the_schema_once() {
    let Some(db) = citus().await else { return };
    let first = db.migrated();
    assert_eq!(first.applied, migrations_from(1), "{first:?}");
    for table in [
        "usage_events",
        "usage_event_keys",
        "usage_hourly",
        "usage_daily",
        "usage_hourly_total",
        "tally_plans",
        "usage_alerts",
    ] {
        assert!(
            first.distributed.iter().any(|t| t == table),
            "{table} not distributed: {first:?}"
        );
    }
    let again = db.tally().migrate().await.unwrap();
    assert!(
        again.applied.is_empty() && again.distributed.is_empty(),
        "{again:?}"
    );
    assert_eq!(again.already, migrations_from(1));
}

#[tokio::test]
async fn racing_writers_store_each_event_once_and_reads_match_one_node() {
    let Some(cdb) = citus().await else { return };
    let one = TestDb::new().await.unwrap();
    let events = workload();
    let (c, s) = (cdb.tally(), one.tally());
    tokio::join!(record_racing(c, &events), record_racing(s, &events));
    // A late event (its month, long past, gets its partition on demand — on Citus a
    // distributed one), and replays of stored ones, written directly.
    let late = event(9001, "cust-03", Service::API, "2.5", "2025-06-15T18:40:00Z");
    let replay: Vec<UsageEvent> = events[..50].iter().cloned().chain([late]).collect();
    for t in [c, s] {
        let w = t.write(&replay).await.unwrap();
        assert_eq!((w.inserted, w.duplicates), (1, 50));
    }

    // An all-or-nothing import in small batches (each staged, applied at the end in
    // one transaction), with lines repeated inside the file and lines already stored.
    let mut csv = String::from("event_id,customer_id,service,quantity,recorded_at\n");
    for e in &events[2990..3000] {
        let (id, q, t) = (e.id.uuid(), e.quantity.value(), e.recorded_at.to_rfc3339());
        csv.push_str(&format!("{id},{},{},{q},{t}\n", e.customer, e.service));
    }
    for i in (100_001..=100_010u128).chain(100_006..=100_010) {
        let id = uuid::Uuid::from_u128(i);
        csv.push_str(&format!(
            "{id},cust-29,storage,0.125,2026-11-04T23:{:02}:00Z\n",
            i % 60
        ));
    }
    for t in [c, s] {
        let mut options = tally::import::ImportOptions::new(tally::import::ImportFormat::Csv);
        options.strict = true;
        options.batch_size = 4;
        let r = t
            .import(std::io::Cursor::new(csv.clone()), options, None)
            .await
            .unwrap();
        assert_eq!((r.inserted, r.duplicates, r.rejected), (10, 15, 0), "{r:?}");
    }

    let (vc, vs) = (c.verify().await.unwrap(), s.verify().await.unwrap());
    assert_eq!(vc, vs);
    assert_eq!((vc.events, vc.mismatches, vc.key_mismatches), (3011, 0, 0));

    // Every read, compared value by value.
    let month = tally::parse_month("period", "2026-11").unwrap();
    let days = TimeRange::new(at("2026-11-01T00:00:00Z"), at("2026-11-06T00:00:00Z")).unwrap();
    let kolkata: Zone = "Asia/Kolkata".parse().unwrap();
    let as_of = at("2026-11-05T00:00:00Z");
    let june = tally::parse_month("period", "2025-06").unwrap();
    let cust03: CustomerId = "cust-03".parse().unwrap();
    let late_month = c.summary(&cust03, june).await.unwrap();
    assert_eq!(late_month.services.iter().map(|l| l.events).sum::<i64>(), 1);
    assert_eq!(late_month, s.summary(&cust03, june).await.unwrap());
    assert_eq!(
        c.partition_status().await.unwrap().months,
        s.partition_status().await.unwrap().months
    );
    for customer in ["cust-00", "cust-03", "cust-17"] {
        let customer: CustomerId = customer.parse().unwrap();
        assert_eq!(
            c.summary(&customer, month)
                .daily()
                .in_zone(kolkata)
                .await
                .unwrap(),
            s.summary(&customer, month)
                .daily()
                .in_zone(kolkata)
                .await
                .unwrap()
        );
        assert_eq!(
            c.invoice(&customer, month).await.unwrap(),
            s.invoice(&customer, month).await.unwrap()
        );
        for zone in [Zone::UTC, kolkata] {
            let hourly = |t: &Tally| {
                let t = t.clone();
                let customer = customer.clone();
                async move {
                    t.usage(days)
                        .customer(&customer)
                        .by(Granularity::Hour)
                        .in_zone(zone)
                        .await
                        .unwrap()
                }
            };
            assert_eq!(hourly(c).await, hourly(s).await);
            assert_eq!(
                c.trends(&customer)
                    .days(4)
                    .in_zone(zone)
                    .as_of(as_of)
                    .await
                    .unwrap(),
                s.trends(&customer)
                    .days(4)
                    .in_zone(zone)
                    .as_of(as_of)
                    .await
                    .unwrap()
            );
        }
        for over in [Over::Events, Over::Hour, Over::Day] {
            assert_eq!(
                c.stats(&customer, &Service::STORAGE)
                    .days(5)
                    .over(over)
                    .as_of(as_of)
                    .await
                    .unwrap(),
                s.stats(&customer, &Service::STORAGE)
                    .days(5)
                    .over(over)
                    .as_of(as_of)
                    .await
                    .unwrap()
            );
        }
        let top = Limit::new(5).unwrap();
        assert_eq!(
            c.peaks(&customer, &Service::API)
                .by(Granularity::Hour)
                .limit(top)
                .await
                .unwrap(),
            s.peaks(&customer, &Service::API)
                .by(Granularity::Hour)
                .limit(top)
                .await
                .unwrap()
        );
    }
    for zone in [Zone::UTC, kolkata] {
        for g in [Granularity::Hour, Granularity::Day, Granularity::Month] {
            assert_eq!(
                c.usage(days).by(g).in_zone(zone).await.unwrap(),
                s.usage(days).by(g).in_zone(zone).await.unwrap(),
                "all customers, {g:?}, {zone:?}"
            );
        }
    }

    // Quotas and alerts: the same decisions and the same alerts fired.
    let acme: CustomerId = "cust-03".parse().unwrap();
    for t in [c, s] {
        t.alerts()
            .set_quota(&acme, &Service::API, "40".parse().unwrap(), Mode::Hard)
            .await
            .unwrap();
        t.alerts()
            .assign_plan(&"cust-04".parse().unwrap(), &"free".parse().unwrap(), None)
            .await
            .unwrap();
    }
    let one_more = "1".parse().unwrap();
    assert_eq!(
        c.check_quota(&acme, &Service::API, one_more).await.unwrap(),
        s.check_quota(&acme, &Service::API, one_more).await.unwrap()
    );
    let fired = |alerts: Vec<tally::alerts::Alert>| {
        let mut v: Vec<String> = alerts
            .iter()
            .map(|a| format!("{} {} {}", a.customer_id, a.measure, a.level))
            .collect();
        v.sort();
        v
    };
    // Fired by the check or by the evaluation behind the writes: compare what is
    // recorded, which must not be nothing.
    // The workload's period (November 2026), whatever today is.
    let november = at("2026-11-15T00:00:00Z");
    for t in [c, s] {
        t.alerts().check_at(None, november).await.unwrap();
    }
    let all = AlertFilter::default();
    let (ac, as_) = (
        fired(c.alerts().list(&all).await.unwrap()),
        fired(s.alerts().list(&all).await.unwrap()),
    );
    assert_eq!(ac, as_);
    assert_eq!(ac.len(), 6, "{ac:?}"); // cust-03 api (own quota), cust-04 compute (free plan)

    // The export of the month: the same rows.
    let out = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (t, name) in [(c, "citus.csv"), (s, "one.csv")] {
        let path = out.path().join(name);
        let filter = tally::export::EventFilter {
            range: month,
            customer: None,
            service: None,
        };
        let r = t
            .export_to(tally::export::ExportFormat::Csv, filter, &path, false, None)
            .await
            .unwrap();
        assert_eq!(r.rows, 3010);
        // Rows come in storage order (docs/archive.md), which differs between shards
        // and one table: compare them sorted, the header first.
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines[1..].sort_unstable();
        files.push(lines);
    }
    assert_eq!(files[0].len(), 3011);
    assert!(files[0] == files[1], "the exports differ");

    // Archive the late month whole (its partition detached and dropped) and restore
    // it: the same on both.
    let dir = tempfile::tempdir().unwrap();
    for (t, sub) in [(c, "citus"), (s, "one")] {
        let archived = t
            .archive(&tally::archive::ArchiveOptions {
                cutoff: at("2025-07-01T00:00:00Z"),
                dir: dir.path().join(sub),
                forget_keys: false,
            })
            .await
            .unwrap();
        assert_eq!(archived.archives.len(), 1);
        assert_eq!(archived.archives[0].events, 1);
        let v = t.verify().await.unwrap();
        assert_eq!((v.events, v.archived_events, v.mismatches), (3010, 1, 0));
        let file = dir.path().join(sub).join(&archived.archives[0].file);
        assert_eq!(t.restore(&file).await.unwrap().restored, 1);
    }
    assert_eq!(c.verify().await.unwrap(), s.verify().await.unwrap());

    // Part of a month, forgetting keys: the rows are deleted, totalled and their keys
    // dropped in one statement (docs/archive.md), the same on both.
    let mut counts = Vec::new();
    for (t, sub) in [(c, "citus-part"), (s, "one-part")] {
        let archived = t
            .archive(&tally::archive::ArchiveOptions {
                cutoff: at("2026-11-03T00:00:00Z"),
                dir: dir.path().join(sub),
                forget_keys: true,
            })
            .await
            .unwrap();
        let v = t.verify().await.unwrap();
        assert_eq!((v.mismatches, v.key_mismatches), (0, 0), "{v:?}");
        counts.push((
            archived
                .archives
                .iter()
                .map(|m| (m.events, m.quantity, m.services.clone()))
                .collect::<Vec<_>>(),
            v,
        ));
    }
    assert!(
        counts[0].0.iter().map(|a| a.0).sum::<i64>() > 1,
        "{:?}",
        counts[0]
    );
    assert_eq!(counts[0], counts[1]);
}

#[tokio::test]
async fn a_single_node_database_moves_onto_citus_with_its_data() {
    let Some(mut db) = CitusDb::without_citus().await.unwrap() else {
        return;
    };
    // Tally on one PostgreSQL: migrated, written to, a quota and its alerts.
    let t = db.tally().clone();
    let plain = t.migrate().await.unwrap();
    assert_eq!(
        (plain.applied, plain.distributed.len()),
        (migrations_from(1), 0)
    );
    let events = workload();
    t.write(&events[..1000]).await.unwrap();
    let cust: CustomerId = "cust-05".parse().unwrap();
    t.alerts()
        .set_quota(&cust, &Service::API, "3".parse().unwrap(), Mode::Soft)
        .await
        .unwrap();
    // Fired by this check or by the evaluation behind the write's commit, in the
    // workload's period (November 2026), whatever today is.
    let november = at("2026-11-15T00:00:00Z");
    t.alerts().check_at(None, november).await.unwrap();
    let all = AlertFilter::default();
    let alerts = t.alerts().list(&all).await.unwrap();
    assert_eq!(alerts.len(), 3, "{alerts:?}");
    let month = tally::parse_month("period", "2026-11").unwrap();
    let before = (
        t.verify().await.unwrap(),
        t.summary(&cust, month).await.unwrap(),
        t.invoice(&cust, month).await.unwrap(),
    );

    // The move: the extension and the workers, then `migrate` again.
    db.enable_citus().await.unwrap();
    let t = Tally::connect_lazy(db.url()).unwrap();
    let moved = t.migrate().await.unwrap();
    assert!(moved.applied.is_empty());
    assert_eq!(moved.distributed.len(), 24, "{moved:?}");
    let after = (
        t.verify().await.unwrap(),
        t.summary(&cust, month).await.unwrap(),
        t.invoice(&cust, month).await.unwrap(),
    );
    assert_eq!(after, before);
    assert_eq!(after.0.mismatches, 0);
    // It goes on working, exactly once: the rest, with replays of what moved.
    let w = t.write(&events[500..]).await.unwrap();
    assert_eq!((w.inserted, w.duplicates), (2000, 500));
    let v = t.verify().await.unwrap();
    assert_eq!((v.events, v.mismatches, v.key_mismatches), (3000, 0, 0));
    // The alerts that fired before are still known: none fires twice.
    assert!(
        t.alerts()
            .check_at(None, november)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(t.alerts().list(&all).await.unwrap(), alerts);
}

/// An installation distributed before migration 9 (the quarter-hour detail), with
/// data, upgraded by `migrate`: 0009 fills the detail on the distributed tables, and
/// the zone reads are exact. Sent as one string, 0009 failed here (a worker refused a
/// multi-statement command, 42601).
#[tokio::test]
async fn a_distributed_installation_upgrades_to_quarter_hour_detail() {
    let Some(mut db) = CitusDb::without_citus().await.unwrap() else {
        return;
    };
    db.enable_citus().await.unwrap();
    let client = db.client().await.unwrap();
    assert_eq!(migrate_by_hand_before(&client, "0009").await, 8);
    // Distributed as `migrate` did at migration 8 (its layout then, in its order).
    for table in [
        "tally_meters",
        "tally_plans",
        "tally_plan_limits",
        "usage_archives",
    ] {
        client
            .execute(
                "SELECT create_reference_table($1::text::regclass)",
                &[&table],
            )
            .await
            .unwrap();
    }
    for table in [
        "usage_events",
        "usage_event_keys",
        "usage_hourly",
        "usage_daily",
        "usage_dead_letters",
        "tally_customers",
        "tally_quotas",
        "usage_alerts",
        "usage_alert_deliveries",
        "usage_archived_totals",
    ] {
        client
            .execute(
                "SELECT create_distributed_table($1::text::regclass, 'customer_id',
                     colocate_with => CASE WHEN $1 = 'usage_events' THEN 'default' ELSE 'usage_events' END)",
                &[&table],
            )
            .await
            .unwrap();
    }
    client
        .execute(
            "SELECT create_distributed_table('usage_hourly_total', 'service', colocate_with => 'none')",
            &[],
        )
        .await
        .unwrap();
    fill_as_migration_8(&client).await;

    let t = Tally::connect_lazy(db.url()).unwrap();
    let report = t.migrate().await.unwrap();
    assert_eq!(report.applied, migrations_from(9));
    // Only the tables of the migrations applied now (12: meters) are distributed now.
    assert!(
        report
            .distributed
            .iter()
            .all(|t| t.starts_with("tally_meter_")),
        "{report:?}"
    );
    check_quarter_hours_after_upgrade(&t, &client).await;
}

/// A replay with another payload is a conflict on the cluster too: the writer that
/// cannot claim the key reads the digest stored on the worker (lenient and strict).
#[tokio::test]
async fn a_reused_key_with_another_payload_is_a_conflict_on_citus() {
    let Some(db) = citus().await else {
        return;
    };
    let t = "2026-11-01T10:00:00Z";
    let first = db
        .tally()
        .write(&[event(1, "acme", Service::API, "5", t)])
        .await
        .unwrap();
    assert_eq!(first.inserted, 1);
    let o = db
        .tally()
        .write(&[
            event(1, "acme", Service::API, "5.0", t),
            event(2, "acme", Service::API, "1", t),
            event(1, "acme", Service::STORAGE, "9", t),
        ])
        .await
        .unwrap();
    assert_eq!((o.inserted, o.duplicates, o.conflicts), (1, 1, vec![2]));
    let csv = format!(
        "event_id,customer_id,service,quantity,recorded_at\n{},acme,api,1,{t}\n{},acme,api,6,{t}\n",
        uuid::Uuid::from_u128(3),
        uuid::Uuid::from_u128(1)
    );
    let mut opts = tally::import::ImportOptions::new(tally::import::ImportFormat::Csv);
    opts.strict = true;
    let err = db
        .tally()
        .import(std::io::Cursor::new(csv.into_bytes()), opts, None)
        .await
        .unwrap_err();
    assert_eq!(err.line_errors().first().map(|l| l.line), Some(3), "{err}");
    let v = db.tally().verify().await.unwrap();
    assert_eq!((v.events, v.quantity, v.mismatches), (2, 6.into(), 0));
}

/// `record_within_quota` on the cluster: the advisory lock is the coordinator's, and the
/// usage read under it sees every admitted write before it (two handles racing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_quota_admits_exactly_on_citus() {
    let Some(db) = citus().await else {
        return;
    };
    let one = db.tally().clone();
    let two = Tally::builder(db.url()).pool_size(4).build_lazy().unwrap();
    let race: CustomerId = "race".parse().unwrap();
    one.alerts()
        .set_quota(&race, &Service::API, "10".parse().unwrap(), Mode::Hard)
        .await
        .unwrap();
    let now = tally::chrono::Utc::now();
    let tries = (0..30u128).map(|i| {
        let t = if i % 2 == 0 { one.clone() } else { two.clone() };
        let e = event(i + 1, "race", Service::API, "1", &now.to_rfc3339());
        async move { t.record_within_quota(&e).await.unwrap() }
    });
    let admitted = futures_util::future::join_all(tries)
        .await
        .iter()
        .filter(|a| a.written.is_some())
        .count();
    assert_eq!(admitted, 10);
    assert_eq!(one.verify().await.unwrap().events, 10);
}

/// A hard quota on a meter's unique count on the cluster: the meter is read before and
/// after each write inside the admitting transaction, under the coordinator's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_unique_count_quota_admits_exactly_on_citus() {
    use tally::meters::{Aggregation, CloudEvent, MeterSpec};
    let Some(db) = citus().await else {
        return;
    };
    let one = db.tally().clone();
    let two = Tally::builder(db.url()).pool_size(4).build_lazy().unwrap();
    let spec = MeterSpec::new(
        "models".parse().unwrap(),
        "prompt".parse().unwrap(),
        Aggregation::UniqueCount,
        Some("$.model".parse().unwrap()),
    )
    .unwrap();
    one.create_meter(&spec, None).await.unwrap();
    let race: CustomerId = "race".parse().unwrap();
    let models: tally::alerts::MeterSlug = "models".parse().unwrap();
    one.alerts()
        .set_quota(&race, &models, "3".parse().unwrap(), Mode::Hard)
        .await
        .unwrap();
    let now = tally::chrono::Utc::now();
    let tries = (0..12u32).map(|i| {
        let t = if i % 2 == 0 { one.clone() } else { two.clone() };
        let e = CloudEvent::new("prompt".parse().unwrap(), race.clone())
            .with_id("citus", &i.to_string())
            .unwrap()
            .at(now)
            .with_data(format!(r#"{{"model": "m{}"}}"#, i % 6).parse().unwrap())
            .into_usage(now)
            .unwrap();
        async move { (i % 6, t.record_within_quota(&e).await.unwrap()) }
    });
    let admitted: std::collections::BTreeSet<u32> = futures_util::future::join_all(tries)
        .await
        .into_iter()
        .filter(|(_, a)| a.written.is_some())
        .map(|(m, _)| m)
        .collect();
    assert_eq!(admitted.len(), 3, "{admitted:?}");
    assert_eq!(one.verify().await.unwrap().mismatches, 0);
}

#[tokio::test]
async fn meters_are_maintained_backfilled_and_queried_on_citus() {
    use tally::meters::{Aggregation, CloudEvent, MeterQuery, MeterSpec};
    let Some(db) = citus().await else {
        return;
    };
    let t0: tally::chrono::DateTime<tally::chrono::Utc> = "2026-11-01T10:00:00Z".parse().unwrap();
    let ev = |id: u32, customer: &str, model: &str, tokens: u32| {
        CloudEvent::new("prompt".parse().unwrap(), customer.parse().unwrap())
            .with_id("citus", &id.to_string())
            .unwrap()
            .at(t0 + tally::chrono::Duration::minutes(i64::from(id)))
            .with_data(
                format!(r#"{{"model": "{model}", "tokens": {tokens}}}"#)
                    .parse()
                    .unwrap(),
            )
    };
    let tally = db.tally();
    let spec = |slug: &str, agg| {
        MeterSpec::new(
            slug.parse().unwrap(),
            "prompt".parse().unwrap(),
            agg,
            (agg != Aggregation::Count).then(|| "$.tokens".parse().unwrap()),
        )
        .unwrap()
        .dimension("model", "$.model".parse().unwrap())
        .unwrap()
    };
    // One meter before the events (the write path), one after (the backfill).
    tally
        .create_meter(&spec("tokens", Aggregation::Sum), None)
        .await
        .unwrap();
    tally
        .write_cloud_events(&[
            ev(1, "acme", "a", 5),
            ev(2, "globex", "b", 7),
            ev(3, "acme", "b", 1),
        ])
        .await
        .unwrap();
    let m = tally
        .create_meter(&spec("prompts", Aggregation::Count), None)
        .await
        .unwrap();
    assert_eq!(m.backfilled, 3);
    let range = TimeRange::new(t0, t0 + tally::chrono::Duration::days(1)).unwrap();
    let q = MeterQuery::new(range, t0).group_by("model");
    let values = |r: tally::meters::MeterQueryResult| -> Vec<String> {
        r.data.iter().map(|r| r.value.to_string()).collect()
    };
    assert_eq!(
        values(tally.query_meter("tokens", &q).await.unwrap()),
        ["5", "8"]
    );
    assert_eq!(
        values(tally.query_meter("prompts", &q).await.unwrap()),
        ["1", "2"]
    );
    // One customer, local days in Asia/Kolkata: each piece an index range on the
    // customer's shard, the day read as the UTC day minus the quarters after 18:30.
    let kolkata = TimeRange::new(
        "2026-10-31T18:30:00Z".parse().unwrap(),
        "2026-11-02T18:30:00Z".parse().unwrap(),
    )
    .unwrap();
    let acme: CustomerId = "acme".parse().unwrap();
    let q = MeterQuery::new(kolkata, t0 + tally::chrono::Duration::days(2))
        .customer(&acme)
        .window(tally::meters::WindowSize::Day)
        .in_zone("Asia/Kolkata".parse().unwrap())
        .group_by("model");
    let rows = |r: tally::meters::MeterQueryResult| -> Vec<(String, String)> {
        r.data
            .iter()
            .map(|r| (r.window_start.to_rfc3339(), r.value.to_string()))
            .collect()
    };
    let first = "2026-10-31T18:30:00+00:00".to_owned();
    assert_eq!(
        rows(tally.query_meter("tokens", &q).await.unwrap()),
        [
            (first.clone(), "5".to_owned()),
            (first.clone(), "1".to_owned())
        ]
    );
    assert_eq!(
        rows(tally.query_meter("prompts", &q).await.unwrap()),
        [
            (first.clone(), "1".to_owned()),
            (first.clone(), "1".to_owned())
        ]
    );
    // Customers on different shards (what a quota evaluation asks for a cycle).
    let q = q.customer(&"globex".parse().unwrap());
    assert_eq!(
        rows(tally.query_meter("tokens", &q).await.unwrap()),
        [(first.clone(), "5".to_owned()), (first, "8".to_owned())]
    );
    // A backfill left interrupted (as by a killed process) is restarted under a new
    // number of the reference table's identity, and counts the same.
    db.client()
        .await
        .unwrap()
        .execute(
            "UPDATE tally_meter_defs SET state = 'backfilling' WHERE slug = 'prompts'",
            &[],
        )
        .await
        .unwrap();
    let restarted = tally.restart_meter("prompts", None).await.unwrap();
    assert_eq!((restarted.backfilled, &restarted.id), (3, &m.id));
    let q = MeterQuery::new(range, t0).group_by("model");
    assert_eq!(
        values(tally.query_meter("prompts", &q).await.unwrap()),
        ["1", "2"]
    );
}
