//! Quotas, plans and alerts (issue 9) on a real database.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use rust_decimal::Decimal;
use tally::{
    CustomerId, Level, Quantity, RecorderConfig, Service, Tally, Thresholds, UsageEvent,
    alerts::{
        Alert, AlertConfig, AlertFilter, AnchorDay, BillingCycle, Decision, Delivery, Mode, Plan,
        QuotaLimit, Sink, SinkError,
    },
};
use tally_testdb::TestDb;

fn cust(s: &str) -> CustomerId {
    s.parse().unwrap()
}

fn q(s: &str) -> Quantity {
    s.parse().unwrap()
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn use_at(customer: &str, quantity: &str, t: DateTime<Utc>) -> UsageEvent {
    UsageEvent::new(cust(customer), Service::API, q(quantity)).at(t)
}

/// Writes `quantity` of api usage for `customer`, now.
async fn use_now(tally: &Tally, customer: &str, quantity: &str) {
    tally
        .write(&[use_at(customer, quantity, Utc::now())])
        .await
        .unwrap();
}

async fn limit(tally: &Tally, customer: &str, n: &str, mode: Mode) {
    tally
        .alerts()
        .set_quota(
            &cust(customer),
            &Service::API,
            QuotaLimit::Limited(dec(n)),
            mode,
        )
        .await
        .unwrap();
}

fn levels(alerts: &[Alert]) -> Vec<Level> {
    let mut l: Vec<Level> = alerts.iter().map(|a| a.level).collect();
    l.sort();
    l
}

async fn history(tally: &Tally, customer: &str) -> Vec<Alert> {
    tally
        .alerts()
        .list(&AlertFilter {
            customer: Some(cust(customer)),
            ..AlertFilter::default()
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn each_boundary_fires_its_level_once() {
    let db = TestDb::new().await.unwrap();
    let t = db.tally();
    limit(t, "acme", "10000", Mode::Soft).await;
    let acme = cust("acme");
    // Usage climbs; after each step (and an evaluation) the levels recorded so far.
    // (Writes also wake the background evaluation: whoever gets there first fires.)
    use Level::{Critical, Exceeded, Warning};
    let steps = [
        ("7499", vec![]),                            // 74.99 %
        ("1", vec![Warning]),                        // 75 %
        ("1499", vec![Warning]),                     // 89.99 %
        ("1", vec![Warning, Critical]),              // 90 %
        ("950", vec![Warning, Critical]),            // 99.5 %
        ("50", vec![Warning, Critical, Exceeded]),   // 100 %
        ("5000", vec![Warning, Critical, Exceeded]), // 150 %: nothing new this period
    ];
    for (add, expect) in steps {
        use_now(t, "acme", add).await;
        t.alerts().check(Some(&acme)).await.unwrap();
        assert_eq!(
            levels(&history(t, "acme").await),
            expect,
            "after adding {add}"
        );
    }
    let all = history(t, "acme").await;
    assert_eq!(levels(&all), Level::ALL.to_vec());
    // Each was the highest of its evaluation, so each was announced.
    assert!(all.iter().all(|a| a.notify));
    let w = all.iter().find(|a| a.level == Level::Warning).unwrap();
    assert_eq!(
        (w.usage, w.limit, w.percent),
        (dec("7500"), dec("10000"), Some(dec("75")))
    );
}

#[tokio::test]
async fn a_jump_records_every_level_passed_and_announces_the_highest() {
    let db = TestDb::new().await.unwrap();
    let t = db.tally();
    // Usage first, the quota after: the evaluation below is the first to see it.
    use_now(t, "jumpy", "9500").await;
    t.alerts().settle().await.unwrap();
    limit(t, "jumpy", "10000", Mode::Soft).await;
    let fired = t.alerts().check(None).await.unwrap();
    assert_eq!(levels(&fired), vec![Level::Warning, Level::Critical]);
    let announced: Vec<Level> = fired.iter().filter(|a| a.notify).map(|a| a.level).collect();
    assert_eq!(announced, vec![Level::Critical]);
    assert!(t.alerts().check(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn unlimited_or_no_quota_never_alerts() {
    let db = TestDb::new().await.unwrap();
    let t = db.tally();
    t.alerts()
        .set_quota(
            &cust("big"),
            &Service::API,
            QuotaLimit::Unlimited,
            Mode::Hard,
        )
        .await
        .unwrap();
    t.alerts()
        .assign_plan(&cust("ent"), &"enterprise".parse().unwrap(), None)
        .await
        .unwrap();
    for c in ["big", "ent", "nobody"] {
        use_now(t, c, "1000000000").await;
        assert_eq!(
            t.check_quota(&cust(c), &Service::API, q("1"))
                .await
                .unwrap(),
            Decision::Allow
        );
    }
    assert!(t.alerts().check(None).await.unwrap().is_empty());
    assert!(
        t.alerts()
            .list(&AlertFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_period_starts_exactly_at_local_midnight_of_the_anchor_day() {
    let db = TestDb::new().await.unwrap();
    let t = db.tally();
    for (customer, zone) in [("utc-co", "UTC"), ("kolkata-co", "Asia/Kolkata")] {
        let c = cust(customer);
        let cycle = BillingCycle {
            anchor: AnchorDay::new(1).unwrap(),
            zone: zone.parse().unwrap(),
        };
        t.alerts().set_billing_cycle(&c, cycle).await.unwrap();
        limit(t, customer, "10000", Mode::Hard).await;
        let period = cycle.period_at(Utc::now()).unwrap();
        if zone == "Asia/Kolkata" {
            // Local midnight is 18:30 UTC the day before.
            assert_eq!(period.from().format("%H:%M").to_string(), "18:30");
        }
        let before = period.from() - chrono::Duration::microseconds(1);
        t.write(&[
            use_at(customer, "7500", period.from()),
            use_at(customer, "2500", before),
        ])
        .await
        .unwrap();
        let fired = t.alerts().check(Some(&c)).await.unwrap();
        assert_eq!(levels(&fired), vec![Level::Warning], "{zone}");
        assert_eq!(fired[0].usage, dec("7500"), "{zone}");
        assert_eq!(fired[0].period_start, period.from());
        // The quota check sees the same 7 500: 2 500 more is allowed, 2 501 is not.
        assert!(matches!(
            t.check_quota(&c, &Service::API, q("2500")).await.unwrap(),
            Decision::Warn { level: Level::Exceeded, usage, .. } if usage == dec("7500")
        ));
        assert!(matches!(
            t.check_quota(&c, &Service::API, q("2501")).await.unwrap(),
            Decision::Block { .. }
        ));
    }
}

#[tokio::test]
async fn anchors_1_15_and_31_across_february_and_a_leap_year() {
    let db = TestDb::new().await.unwrap();
    let t = db.tally();
    let at = tally_tests::at;
    // (anchor, now, first instant inside the period, last instant before it)
    let cases = [
        (1, "2025-02-10T12:00:00Z", "2025-02-01T00:00:00Z"),
        (15, "2025-02-10T12:00:00Z", "2025-01-15T00:00:00Z"),
        (15, "2025-02-15T00:00:00Z", "2025-02-15T00:00:00Z"),
        (31, "2025-02-28T12:00:00Z", "2025-02-28T00:00:00Z"),
        (31, "2025-02-27T12:00:00Z", "2025-01-31T00:00:00Z"),
        (31, "2024-02-29T12:00:00Z", "2024-02-29T00:00:00Z"),
        (31, "2024-02-28T12:00:00Z", "2024-01-31T00:00:00Z"),
        (31, "2024-03-31T00:00:00Z", "2024-03-31T00:00:00Z"),
        (30, "2024-03-01T00:00:00Z", "2024-02-29T00:00:00Z"),
    ];
    for (i, (anchor, now, start)) in cases.into_iter().enumerate() {
        let customer = format!("anchor-{i}");
        let c = cust(&customer);
        let cycle = BillingCycle {
            anchor: AnchorDay::new(anchor).unwrap(),
            zone: tally::Zone::UTC,
        };
        t.alerts().set_billing_cycle(&c, cycle).await.unwrap();
        limit(t, &customer, "100", Mode::Soft).await;
        let start = at(start);
        t.write(&[
            use_at(&customer, "3", start),
            use_at(&customer, "5", start - chrono::Duration::microseconds(1)),
        ])
        .await
        .unwrap();
        let quotas = t.alerts().quotas(Some(&c)).await.unwrap();
        let usage = t.alerts().period_usage(&quotas, at(now)).await.unwrap();
        assert_eq!(usage.len(), 1);
        assert_eq!(usage[0].0.from(), start, "anchor {anchor} at {now}");
        assert_eq!(usage[0].1, Some(dec("3")), "anchor {anchor} at {now}");
    }
}

#[tokio::test]
async fn hard_mode_blocks_the_request_that_would_pass_the_limit_and_soft_mode_warns() {
    let db = TestDb::new().await.unwrap();
    let t = db.tally();
    t.alerts()
        .assign_plan(&cust("free-co"), &"free".parse().unwrap(), None)
        .await
        .unwrap();
    let free = cust("free-co");
    use_now(t, "free-co", "9999").await;
    // 9 999 + 1 reaches the limit exactly: allowed (and exceeded); + 2 passes it.
    assert!(matches!(
        t.check_quota(&free, &Service::API, q("1")).await.unwrap(),
        Decision::Warn {
            level: Level::Exceeded,
            ..
        }
    ));
    assert_eq!(
        t.check_quota(&free, &Service::API, q("2")).await.unwrap(),
        Decision::Block {
            usage: dec("9999"),
            limit: dec("10000")
        }
    );
    // Below the warning level: allowed silently.
    assert_eq!(
        t.check_quota(&free, &Service::BANDWIDTH, q("7.4999"))
            .await
            .unwrap(),
        Decision::Allow
    );
    // Soft (starter): past the limit still allowed, with a warning.
    t.alerts()
        .assign_plan(&cust("starter-co"), &"starter".parse().unwrap(), None)
        .await
        .unwrap();
    use_now(t, "starter-co", "150000").await;
    assert!(matches!(
        t.check_quota(&cust("starter-co"), &Service::API, q("1"))
            .await
            .unwrap(),
        Decision::Warn {
            level: Level::Exceeded,
            ..
        }
    ));
}

#[tokio::test]
async fn a_quota_check_counts_what_the_recorder_still_holds() {
    let db = TestDb::new().await.unwrap();
    let t = db.tally();
    limit(t, "busy", "100", Mode::Hard).await;
    let busy = cust("busy");
    // Cache the empty period first: later checks must not trust the stale read.
    assert_eq!(
        t.check_quota(&busy, &Service::API, q("1")).await.unwrap(),
        Decision::Allow
    );
    let rec = t.recorder_with(
        RecorderConfig::default()
            .batch_size(1000)
            .batch_timeout(Duration::from_secs(3600)),
    );
    for _ in 0..95 {
        rec.record(use_at("busy", "1", Utc::now())).await.unwrap();
    }
    assert_eq!(rec.status().inserted, 0, "still queued");
    assert!(matches!(
        t.check_quota(&busy, &Service::API, q("5")).await.unwrap(),
        Decision::Warn { level: Level::Exceeded, usage, .. } if usage == dec("95")
    ));
    assert!(matches!(
        t.check_quota(&busy, &Service::API, q("6")).await.unwrap(),
        Decision::Block { .. }
    ));
    // Committed now: the cached read plus the ledger still says 95, never 0 or 190.
    rec.flush().await.unwrap();
    for fresh in [false, true] {
        if fresh {
            tokio::time::sleep(Duration::from_millis(1100)).await; // past the cache
        }
        assert!(matches!(
            t.check_quota(&busy, &Service::API, q("6")).await.unwrap(),
            Decision::Block { usage, .. } if usage >= dec("95") && usage <= dec("190")
        ));
    }
    assert!(matches!(
        t.check_quota(&busy, &Service::API, q("5")).await.unwrap(),
        Decision::Warn { usage, .. } if usage == dec("95")
    ));
    rec.close().await.unwrap();
}

#[tokio::test]
async fn alerts_are_evaluated_after_every_committed_recorder_batch() {
    let db = TestDb::new().await.unwrap();
    let t = db.tally();
    limit(t, "rec", "1000", Mode::Soft).await;
    let rec = t.recorder_with(RecorderConfig::default().batch_size(10));
    for _ in 0..92 {
        rec.record(use_at("rec", "10", Utc::now())).await.unwrap();
    }
    rec.flush().await.unwrap();
    // The background task evaluates on its own; give it a moment.
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = history(t, "rec").await;
        if seen.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(levels(&seen), vec![Level::Warning, Level::Critical]);
    rec.close().await.unwrap();
    assert!(t.alerts().settle().await.unwrap().is_empty());
}

#[tokio::test]
async fn eight_concurrent_evaluators_fire_each_level_once() {
    let db = TestDb::new().await.unwrap();
    let t = db.tally();
    use_now(t, "race", "950").await;
    t.alerts().settle().await.unwrap();
    limit(t, "race", "1000", Mode::Soft).await;
    // Eight handles, eight pools: eight separate connections evaluating at once.
    let handles: Vec<Tally> = (0..8)
        .map(|_| Tally::connect_lazy(db.url()).unwrap())
        .collect();
    let fired = join_all(handles.iter().map(|h| h.alerts().check(None))).await;
    let fired: Vec<Alert> = fired.into_iter().flat_map(Result::unwrap).collect();
    assert_eq!(levels(&fired), vec![Level::Warning, Level::Critical]);
    let all = history(t, "race").await;
    assert_eq!(levels(&all), vec![Level::Warning, Level::Critical]);
    assert_eq!(all.iter().filter(|a| a.notify).count(), 1);
}

#[tokio::test]
async fn a_new_period_rearms_every_level() {
    let db = TestDb::new().await.unwrap();
    let t = db.tally();
    let c = cust("monthly");
    limit(t, "monthly", "100", Mode::Soft).await;
    let cycle = BillingCycle::default();
    let this = cycle.period_at(Utc::now()).unwrap();
    let last = cycle
        .period_at(this.from() - chrono::Duration::seconds(1))
        .unwrap();
    // Last period's alerts exist already (as a process then would have fired them).
    t.write(&[use_at("monthly", "80", last.from())])
        .await
        .unwrap();
    let quotas = t.alerts().quotas(Some(&c)).await.unwrap();
    let usage = t.alerts().period_usage(&quotas, last.from()).await.unwrap();
    assert_eq!(usage[0].1, Some(dec("80")));
    use_now(t, "monthly", "80").await;
    // The background evaluation may fire it first (the commit woke it): whichever does,
    // the level is reached once, in this period.
    t.alerts().check(Some(&c)).await.unwrap();
    let fired = history(t, "monthly").await;
    assert_eq!(levels(&fired), vec![Level::Warning]);
    assert_eq!(fired[0].period_start, this.from());
}

#[tokio::test]
async fn thresholds_come_from_the_plan_or_the_environment() {
    let db = TestDb::new().await.unwrap();
    let mut plan = Plan::new("early".parse().unwrap(), Mode::Soft)
        .limit(&Service::API, QuotaLimit::Limited(dec("100")));
    plan.thresholds = Some(Thresholds::new(dec("50"), dec("60"), dec("100")).unwrap());
    let t = db.tally();
    t.alerts().set_plan(&plan).await.unwrap();
    t.alerts()
        .assign_plan(&cust("early-co"), &plan.name, None)
        .await
        .unwrap();
    use_now(t, "early-co", "55").await;
    assert_eq!(
        levels(&t.alerts().check(None).await.unwrap()),
        vec![Level::Warning]
    );
    // USAGE_ALERT_WARNING=40 for everyone else.
    let env = |k: &str| (k == "USAGE_ALERT_WARNING").then(|| "40".to_owned());
    let t40 = Tally::builder(db.url())
        .alert_config(AlertConfig::from_lookup(env).unwrap())
        .build_lazy()
        .unwrap();
    limit(&t40, "env-co", "100", Mode::Soft).await;
    use_now(&t40, "env-co", "45").await;
    assert_eq!(
        levels(&t40.alerts().check(Some(&cust("env-co"))).await.unwrap()),
        vec![Level::Warning]
    );
    let bad = |k: &str| (k == "USAGE_ALERT_EXCEEDED").then(|| "lots".to_owned());
    let err = AlertConfig::from_lookup(bad).unwrap_err();
    assert_eq!(err.field(), Some("USAGE_ALERT_EXCEEDED"));
}

/// A sink that fails its first `fail_first` attempts, then records what it gets.
struct Flaky {
    name: String,
    fail_first: u32,
    attempts: AtomicU32,
    got: Mutex<Vec<i64>>,
}

impl Flaky {
    fn new(name: &str, fail_first: u32) -> Arc<Flaky> {
        Arc::new(Flaky {
            name: name.to_owned(),
            fail_first,
            attempts: AtomicU32::new(0),
            got: Mutex::new(Vec::new()),
        })
    }

    fn got(&self) -> Vec<i64> {
        self.got.lock().unwrap().clone()
    }
}

impl Sink for Flaky {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a self, alert: &'a Alert) -> Delivery<'a> {
        Box::pin(async move {
            if self.attempts.fetch_add(1, Ordering::SeqCst) < self.fail_first {
                return Err(SinkError::from("webhook answered 503"));
            }
            self.got.lock().unwrap().push(alert.id);
            Ok(())
        })
    }
}

/// Fires one announced alert for each of three customers; returns their ids.
async fn fire_three(t: &Tally) -> Vec<i64> {
    for c in ["a1", "a2", "a3"] {
        limit(t, c, "100", Mode::Soft).await;
        use_now(t, c, "100").await;
    }
    t.alerts().check(None).await.unwrap();
    let fired = t.alerts().list(&AlertFilter::default()).await.unwrap();
    let mut ids: Vec<i64> = fired.iter().filter(|a| a.notify).map(|a| a.id).collect();
    ids.sort();
    assert_eq!(ids.len(), 3);
    ids
}

#[tokio::test]
async fn a_failing_sink_that_recovers_gets_every_alert_exactly_once() {
    let db = TestDb::new().await.unwrap();
    let t = Tally::builder(db.url())
        .alert_config(
            AlertConfig::default()
                .retry_backoff(Duration::from_millis(10), Duration::from_millis(50)),
        )
        .build_lazy()
        .unwrap();
    let ids = fire_three(&t).await;
    let flaky = Flaky::new("webhook", 4);
    let steady = Flaky::new("steady", 0);
    t.alerts().add_sink(flaky.clone());
    t.alerts().add_sink(steady.clone());
    // The background task retries with backoff until the sink recovers.
    t.alerts().watch();
    for _ in 0..200 {
        if flaky.got().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And more passes deliver nothing twice.
    let report = t.alerts().deliver().await.unwrap();
    assert_eq!(report.delivered, 0);
    assert_eq!(flaky.got(), ids);
    assert_eq!(steady.got(), ids);
    assert!(flaky.attempts.load(Ordering::SeqCst) >= 4 + 3);
}

/// A sink that never answers (the process "dies" while delivering).
struct Hangs;

impl Sink for Hangs {
    fn name(&self) -> &str {
        "pager"
    }

    fn deliver<'a>(&'a self, _alert: &'a Alert) -> Delivery<'a> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn a_process_killed_between_firing_and_delivery_leaves_the_alerts_to_the_next() {
    let db = TestDb::new().await.unwrap();
    // The first "process" (a runtime of its own) fires, then dies in the middle of a
    // delivery: its tasks and connections go away with it, as in a kill.
    let url = db.url().to_owned();
    let ids = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let ids = rt.block_on(async {
            let first = Tally::connect_lazy(&url).unwrap();
            let ids = fire_three(&first).await;
            first.alerts().add_sink(Arc::new(Hangs));
            let a = first.alerts().clone();
            tokio::spawn(async move { a.deliver().await });
            tokio::time::sleep(Duration::from_millis(300)).await;
            ids
        });
        rt.shutdown_background();
        ids
    })
    .join()
    .unwrap();

    let next = Tally::connect_lazy(db.url()).unwrap();
    let pager = Flaky::new("pager", 0);
    next.alerts().add_sink(pager.clone());
    // The server notices the dead process's connection (and drops its claim) a moment
    // after the kill, not at once: deliver until the three are through.
    let mut delivered = 0;
    for _ in 0..250 {
        delivered += next.alerts().deliver().await.unwrap().delivered;
        if delivered >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(delivered, 3);
    assert_eq!(pager.got(), ids);
    assert_eq!(next.alerts().deliver().await.unwrap().delivered, 0);
}

#[tokio::test]
async fn two_processes_share_a_sink_name_and_deliver_each_alert_once() {
    let db = TestDb::new().await.unwrap();
    let t = db.tally();
    let ids = fire_three(t).await;
    let a = Tally::connect_lazy(db.url()).unwrap();
    let b = Tally::connect_lazy(db.url()).unwrap();
    let (sa, sb) = (Flaky::new("shared", 0), Flaky::new("shared", 0));
    a.alerts().add_sink(sa.clone());
    b.alerts().add_sink(sb.clone());
    let _ = tokio::join!(a.alerts().deliver(), b.alerts().deliver());
    let _ = tokio::join!(a.alerts().deliver(), b.alerts().deliver());
    let mut got = sa.got();
    got.extend(sb.got());
    got.sort();
    assert_eq!(got, ids);
}

#[tokio::test]
async fn the_log_file_sink_writes_one_line_per_alert() {
    let db = TestDb::new().await.unwrap();
    let t = db.tally();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerts.log");
    t.alerts()
        .add_sink(Arc::new(tally::alerts::LogFileSink::new(&path)));
    limit(t, "logged", "200", Mode::Soft).await;
    use_now(t, "logged", "150").await;
    t.alerts().check(None).await.unwrap();
    use_now(t, "logged", "50").await;
    t.alerts().check(None).await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (line, level, usage, pct) in [
        (lines[0], "WARNING", "150", "75%"),
        (lines[1], "EXCEEDED", "200", "100%"),
    ] {
        for part in [
            level,
            "customer=logged",
            "service=api",
            &format!("usage={usage}"),
            "limit=200",
            &format!("percent={pct}"),
            "period=",
        ] {
            assert!(line.contains(part), "{part} missing from {line}");
        }
        assert!(line.contains('Z'), "UTC time in {line}");
    }
}

#[tokio::test]
async fn history_covers_the_whole_window_newest_first_and_filters() {
    let db = TestDb::new().await.unwrap();
    let t = db.tally();
    for c in ["h1", "h2"] {
        limit(t, c, "100", Mode::Soft).await;
        use_now(t, c, "95").await;
        t.alerts().check(Some(&cust(c))).await.unwrap();
    }
    // Backdate one customer's alerts by 5 days (as if they fired then).
    let client = db.client().await.unwrap();
    client
        .execute(
            "UPDATE usage_alerts SET triggered_at = triggered_at - interval '5 days' WHERE customer_id = 'h1'",
            &[],
        )
        .await
        .unwrap();
    let since = |days: i64| Some(Utc::now() - chrono::Duration::days(days));
    let all = t
        .alerts()
        .list(&AlertFilter {
            since: since(7),
            ..AlertFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
    assert!(
        all.windows(2)
            .all(|w| w[0].triggered_at >= w[1].triggered_at)
    );
    assert_eq!(all[3].customer_id.as_str(), "h1");
    let one_day = t
        .alerts()
        .list(&AlertFilter {
            since: since(1),
            ..AlertFilter::default()
        })
        .await
        .unwrap();
    assert!(one_day.iter().all(|a| a.customer_id.as_str() == "h2"));
    let critical = t
        .alerts()
        .list(&AlertFilter {
            since: since(7),
            level: Some(Level::Critical),
            customer: Some(cust("h1")),
            measure: Some(Service::API.into()),
        })
        .await
        .unwrap();
    assert_eq!(critical.len(), 1);
    let by_customer: HashMap<String, usize> = all.iter().fold(HashMap::new(), |mut m, a| {
        *m.entry(a.customer_id.to_string()).or_default() += 1;
        m
    });
    assert_eq!(by_customer["h1"], 2);
}

#[tokio::test]
async fn plans_and_quotas_refuse_bad_input_and_write_nothing() {
    let db = TestDb::new().await.unwrap();
    let t = db.tally();
    let a = t.alerts();
    let err = a
        .assign_plan(&cust("x"), &"gold".parse().unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!((err.field(), err.value()), (Some("plan"), Some("gold")));
    let meter = Service::custom("gpu_minutes").unwrap();
    let err = a
        .set_quota(
            &cust("x"),
            &meter,
            QuotaLimit::Limited(dec("5")),
            Mode::Hard,
        )
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("service"));
    let plan = Plan::new("odd".parse().unwrap(), Mode::Soft).limit(&meter, QuotaLimit::Unlimited);
    assert_eq!(
        a.set_plan(&plan).await.unwrap_err().field(),
        Some("service")
    );
    assert!(a.quotas(None).await.unwrap().is_empty());
    assert_eq!(a.plans().await.unwrap().len(), 4);
    assert_eq!(
        "-1".parse::<QuotaLimit>().unwrap_err().field(),
        Some("limit")
    );
    // The default plans, in the services' units.
    let plans = a.plans().await.unwrap();
    let free = plans.iter().find(|p| p.name.as_str() == "free").unwrap();
    assert_eq!(free.mode, Mode::Hard);
    assert_eq!(free.limits["storage"], QuotaLimit::Limited(dec("720")));
    assert_eq!(free.limits["database"], QuotaLimit::Limited(dec("1000")));
    let ent = plans
        .iter()
        .find(|p| p.name.as_str() == "enterprise")
        .unwrap();
    assert!(ent.limits.values().all(|l| *l == QuotaLimit::Unlimited));
    assert_eq!(ent.limits.len(), 6);
}

#[tokio::test]
async fn quarter_hour_edges_are_exact_on_both_write_paths() {
    let db = TestDb::new().await.unwrap();
    let t = db.tally();
    let base = tally_tests::at("2026-11-14T18:00:00Z");
    // Events at every 5 minutes and on the quarter boundaries (± 1 µs), through the
    // fast path; then replays mixed with new events (the slow path).
    let mut events = Vec::new();
    let mut n = 0u128;
    for minute in (0..120).step_by(5) {
        for off_us in [-1i64, 0, 1] {
            n += 1;
            let at =
                base + chrono::Duration::minutes(minute) + chrono::Duration::microseconds(off_us);
            events.push(
                use_at("edges", &format!("{n}"), at)
                    .with_id(tally::EventId::from(uuid::Uuid::from_u128(n))),
            );
        }
    }
    let (first, second) = events.split_at(events.len() / 2);
    t.write(first).await.unwrap();
    t.write(&[first, second].concat()).await.unwrap();
    assert_eq!(t.verify().await.unwrap().mismatches, 0);
    // Every quarter-aligned range within the two hours, against a sum computed here.
    for a in (0..=8).map(|q| base + chrono::Duration::minutes(15 * q)) {
        for b in (0..=8).map(|q| base + chrono::Duration::minutes(15 * q)) {
            if a >= b {
                continue;
            }
            let range = tally::TimeRange::new(a, b).unwrap();
            let expect: Decimal = events
                .iter()
                .filter(|e| range.contains(e.recorded_at))
                .map(|e| e.quantity.value())
                .sum();
            let got = t
                .alerts()
                .usage(&cust("edges"), &Service::API, range)
                .await
                .unwrap();
            assert_eq!(got, expect, "{a} .. {b}");
        }
    }
}

/// Issue 22 #4 at the library: two handles (two pools, as two processes) admit 2.5
/// units at a time against a hard limit of 50 with no other coordination: exactly 20
/// are written, the rest refused and not stored; soft mode and no quota write always.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_within_quota_holds_a_hard_limit_exactly_across_handles() {
    let db = TestDb::new().await.unwrap();
    let one = Tally::builder(db.url()).pool_size(4).build_lazy().unwrap();
    let two = Tally::builder(db.url()).pool_size(4).build_lazy().unwrap();
    limit(&one, "race", "50", Mode::Hard).await;
    let tries = (0..60).map(|i| {
        let t = if i % 2 == 0 { one.clone() } else { two.clone() };
        async move {
            t.record_within_quota(&use_at("race", "2.5", Utc::now()))
                .await
                .unwrap()
        }
    });
    let admissions = join_all(tries).await;
    let written = admissions.iter().filter(|a| a.written.is_some()).count();
    let blocked: Vec<_> = admissions
        .iter()
        .filter(|a| matches!(a.decision, Decision::Block { .. }))
        .collect();
    assert_eq!((written, blocked.len()), (20, 40));
    assert!(blocked.iter().all(|a| a.written.is_none()
        && a.decision
            == Decision::Block {
                usage: dec("50"),
                limit: dec("50")
            }));
    let usage = one
        .alerts()
        .usage(
            &cust("race"),
            &Service::API,
            tally::TimeRange::new(
                Utc::now() - chrono::Duration::days(40),
                Utc::now() + chrono::Duration::days(1),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(usage, dec("50"));
    // Soft: past the limit it writes and warns; no quota: it writes.
    limit(&one, "soft", "1", Mode::Soft).await;
    let a = one
        .record_within_quota(&use_at("soft", "3", Utc::now()))
        .await
        .unwrap();
    assert!(a.written.is_some_and(|w| w.inserted == 1));
    assert!(matches!(
        a.decision,
        Decision::Warn {
            level: Level::Exceeded,
            ..
        }
    ));
    let a = one
        .record_within_quota(&use_at("free-roam", "3", Utc::now()))
        .await
        .unwrap();
    assert_eq!(a.decision, Decision::Allow);
    assert!(a.written.is_some_and(|w| w.inserted == 1));
}
