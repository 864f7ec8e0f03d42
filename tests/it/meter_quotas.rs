//! Quotas on meters (issue 24): a limit of any meter's value per billing period — a
//! hard unique count held exactly across handles, alerts of a plan's meter limit, the
//! check, and the refusals.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use futures_util::future::join_all;
use rust_decimal::Decimal;
use tally::{
    CustomerId, ErrorKind, Level, Service, Tally, TimeRange,
    alerts::{AlertFilter, Decision, Measure, MeterSlug, Mode, Plan, QuotaLimit},
    meters::{Aggregation, CloudEvent, MeterQuery, MeterSpec},
};
use tally_testdb::TestDb;

fn cust(s: &str) -> CustomerId {
    s.parse().unwrap()
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn limited(n: &str) -> QuotaLimit {
    QuotaLimit::Limited(dec(n))
}

fn slug(s: &str) -> MeterSlug {
    s.parse().unwrap()
}

fn meter(name: &str, agg: Aggregation, value: Option<&str>) -> MeterSpec {
    MeterSpec::new(
        name.parse().unwrap(),
        "prompt".parse().unwrap(),
        agg,
        value.map(|v| v.parse().unwrap()),
    )
    .unwrap()
}

fn prompt(id: &str, customer: &str, user: &str, tokens: u32, at: DateTime<Utc>) -> CloudEvent {
    CloudEvent::new("prompt".parse().unwrap(), customer.parse().unwrap())
        .with_id("test", id)
        .unwrap()
        .at(at)
        .with_data(
            format!(r#"{{"user": "{user}", "tokens": {tokens}}}"#)
                .parse()
                .unwrap(),
        )
}

/// `users`: the distinct values of `$.user` of `prompt` events.
async fn create_users(tally: &Tally) {
    tally
        .create_meter(
            &meter("users", Aggregation::UniqueCount, Some("$.user")),
            None,
        )
        .await
        .unwrap();
}

/// This month and the next, wide enough for any "now" of the test's run.
fn around_now() -> TimeRange {
    TimeRange::new(
        Utc::now() - Duration::days(40),
        Utc::now() + Duration::days(1),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_unique_count_quota_admits_exactly_its_limit_of_values_across_handles() {
    let db = TestDb::new().await.unwrap();
    let one = Tally::builder(db.url()).pool_size(4).build_lazy().unwrap();
    let two = Tally::builder(db.url()).pool_size(4).build_lazy().unwrap();
    create_users(&one).await;
    one.alerts()
        .set_quota(&cust("acme"), &slug("users"), limited("5"), Mode::Hard)
        .await
        .unwrap();
    // 10 users, each 4 times, from two handles at once.
    let tries = (0..40).map(|i| {
        let t = if i % 2 == 0 { one.clone() } else { two.clone() };
        let user = format!("u{}", i % 10);
        async move {
            let e = prompt(&i.to_string(), "acme", &user, 1, Utc::now());
            let a = t
                .record_within_quota(&e.into_usage(Utc::now()).unwrap())
                .await
                .unwrap();
            (user, a)
        }
    });
    let admissions = join_all(tries).await;
    let admitted: BTreeSet<&str> = admissions
        .iter()
        .filter(|(_, a)| a.written.is_some())
        .map(|(u, _)| u.as_str())
        .collect();
    assert_eq!(admitted.len(), 5, "{admitted:?}");
    for (user, a) in &admissions {
        // A value already counted passes at the limit; a new one past it is blocked,
        // and nothing of it is written.
        if admitted.contains(user.as_str()) {
            assert!(a.written.as_ref().is_some_and(|w| w.inserted == 1), "{a:?}");
        } else {
            assert_eq!(
                a.decision,
                Decision::Block {
                    usage: dec("5"),
                    limit: dec("5")
                }
            );
            assert!(a.written.is_none());
        }
    }
    let q = MeterQuery::new(around_now(), Utc::now()).customer(&cust("acme"));
    let value = one.query_meter("users", &q).await.unwrap();
    assert_eq!(value.data.first().map(|r| r.value), Some(dec("5")));
    // Exactly the admitted events were stored: 4 of each admitted user.
    let count = meter("events", Aggregation::Count, None);
    one.create_meter(&count, None).await.unwrap();
    let stored = one.query_meter("events", &q).await.unwrap();
    assert_eq!(stored.data.first().map(|r| r.value), Some(dec("20")));
}

#[tokio::test]
async fn a_plans_meter_limit_fires_alerts_once_per_level_and_period() {
    let db = TestDb::new().await.unwrap();
    let tally = Tally::builder(db.url()).build().await.unwrap();
    tally
        .create_meter(&meter("tokens", Aggregation::Sum, Some("$.tokens")), None)
        .await
        .unwrap();
    create_users(&tally).await;
    let plan = Plan::new("team".parse().unwrap(), Mode::Soft)
        .limit(&Service::API, limited("10"))
        .meter_limit(&slug("tokens"), limited("1000"))
        .meter_limit(&slug("users"), QuotaLimit::Unlimited);
    tally.alerts().set_plan(&plan).await.unwrap();
    assert_eq!(
        tally
            .alerts()
            .plans()
            .await
            .unwrap()
            .iter()
            .find(|p| p.name == plan.name),
        Some(&plan),
        "a plan's meter limits read back as set"
    );
    let acme = cust("acme");
    tally
        .alerts()
        .assign_plan(&acme, &"team".parse().unwrap(), None)
        .await
        .unwrap();
    // March 2026, a clock of the test's own: 760 tokens is past 75 %.
    let t0: DateTime<Utc> = "2026-03-10T12:00:00Z".parse().unwrap();
    tally
        .write_cloud_events(&[
            prompt("1", "acme", "ann", 500, t0),
            prompt("2", "acme", "bob", 260, t0 + Duration::hours(1)),
            prompt("3", "other", "cat", 5000, t0),
        ])
        .await
        .unwrap();
    let fired = tally
        .alerts()
        .check_at(Some(&acme), t0 + Duration::days(1))
        .await
        .unwrap();
    let got: Vec<(String, Level)> = fired
        .iter()
        .map(|a| (a.measure.to_string(), a.level))
        .collect();
    assert_eq!(got, [("meter:tokens".to_owned(), Level::Warning)]);
    let alert = &fired[0];
    assert_eq!((alert.usage, alert.limit), (dec("760"), dec("1000")));
    assert_eq!(
        alert.period_start,
        "2026-03-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
    );
    let json = serde_json::to_value(alert).unwrap();
    assert_eq!(
        (&json["service"], &json["meter"]),
        (&serde_json::Value::Null, &serde_json::json!("tokens"))
    );
    assert!(
        alert.line().contains("service=meter:tokens"),
        "{}",
        alert.line()
    );
    // Past the limit: critical and exceeded, the highest announced; each level once.
    tally
        .write_cloud_events(&[prompt("4", "acme", "ann", 300, t0 + Duration::hours(2))])
        .await
        .unwrap();
    let fired = tally
        .alerts()
        .check_at(Some(&acme), t0 + Duration::days(1))
        .await
        .unwrap();
    let mut levels: Vec<(Level, bool)> = fired.iter().map(|a| (a.level, a.notify)).collect();
    levels.sort();
    assert_eq!(levels, [(Level::Critical, false), (Level::Exceeded, true)]);
    assert!(
        tally
            .alerts()
            .check_at(Some(&acme), t0 + Duration::days(1))
            .await
            .unwrap()
            .is_empty()
    );
    let listed = tally
        .alerts()
        .list(&AlertFilter {
            measure: Some(Measure::Meter(slug("tokens"))),
            ..AlertFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
    // The quota list reads each meter's value over the customer's period.
    let quotas = tally.alerts().quotas(Some(&acme)).await.unwrap();
    let usage = tally
        .alerts()
        .period_usage(&quotas, t0 + Duration::days(1))
        .await
        .unwrap();
    let shown: Vec<(String, Option<Decimal>)> = quotas
        .iter()
        .zip(&usage)
        .map(|(q, (_, u))| (q.measure.to_string(), *u))
        .collect();
    // Ordered by customer and key: meters (stored with a leading `#`) before services.
    assert_eq!(
        shown,
        [
            ("meter:tokens".to_owned(), Some(dec("1060"))),
            ("meter:users".to_owned(), Some(dec("2"))),
            ("api".to_owned(), Some(dec("0"))),
        ]
    );
}

#[tokio::test]
async fn a_meter_quota_is_checked_refused_when_unknown_and_idle_when_its_meter_is_gone() {
    let db = TestDb::new().await.unwrap();
    let tally = Tally::builder(db.url()).build().await.unwrap();
    let acme = cust("acme");
    let alerts = tally.alerts();
    // Unknown meters are refused, naming the field; nothing is written.
    let e = alerts
        .set_quota(&acme, &slug("nope"), limited("1"), Mode::Hard)
        .await
        .unwrap_err();
    assert_eq!((e.kind(), e.field()), (ErrorKind::Invalid, Some("meter")));
    let plan =
        Plan::new("team".parse().unwrap(), Mode::Hard).meter_limit(&slug("nope"), limited("1"));
    let e = alerts.set_plan(&plan).await.unwrap_err();
    assert_eq!((e.kind(), e.field()), (ErrorKind::Invalid, Some("meter")));
    assert!(alerts.quotas(None).await.unwrap().is_empty());
    assert!(
        alerts
            .plans()
            .await
            .unwrap()
            .iter()
            .all(|p| p.name != plan.name)
    );

    create_users(&tally).await;
    alerts
        .set_quota(&acme, &slug("users"), limited("2"), Mode::Hard)
        .await
        .unwrap();
    let now = Utc::now();
    tally
        .write_cloud_events(&[
            prompt("1", "acme", "ann", 1, now),
            prompt("2", "acme", "bob", 1, now),
        ])
        .await
        .unwrap();
    // The check: one more value would pass the limit; none more reaches it.
    let fresh = Tally::builder(db.url()).build().await.unwrap();
    let one = "1".parse().unwrap();
    assert_eq!(
        fresh.check_quota(&acme, &slug("users"), one).await.unwrap(),
        Decision::Block {
            usage: dec("2"),
            limit: dec("2")
        }
    );
    assert!(matches!(
        fresh
            .check_quota(&acme, &slug("users"), "0".parse().unwrap())
            .await
            .unwrap(),
        Decision::Warn {
            level: Level::Exceeded,
            ..
        }
    ));
    // The meter deleted: its quota stays (a meter created again with the slug takes
    // it up) but is not evaluated, and holds nothing back.
    tally.delete_meter("users").await.unwrap();
    let quotas = alerts.quotas(Some(&acme)).await.unwrap();
    let usage = alerts.period_usage(&quotas, Utc::now()).await.unwrap();
    assert_eq!(usage.iter().map(|(_, u)| *u).collect::<Vec<_>>(), [None]);
    assert!(alerts.check(Some(&acme)).await.unwrap().is_empty());
    let a = tally
        .record_within_quota(&prompt("3", "acme", "cat", 1, now).into_usage(now).unwrap())
        .await
        .unwrap();
    assert!(a.written.is_some_and(|w| w.inserted == 1));
    assert!(alerts.remove_quota(&acme, &slug("users")).await.unwrap());
    assert!(!alerts.remove_quota(&acme, &slug("users")).await.unwrap());
}
