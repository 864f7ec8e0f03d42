//! Meters (issue 24): every aggregation checked against a brute force over the raw
//! events (random events, duplicates, late arrivals, windows in random zones), the
//! backfill under concurrent ingest, and the refusals.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use tally::{
    CustomerId, ErrorKind, Metadata, Service, TimeRange, Zone,
    meters::{Aggregation, CloudEvent, MeterQuery, MeterSpec, WindowSize},
};
use tally_testdb::TestDb;

fn t0() -> DateTime<Utc> {
    "2026-03-30T00:00:00Z".parse().unwrap()
}

fn spec(slug: &str, agg: Aggregation) -> MeterSpec {
    let value = match agg {
        Aggregation::Count => None,
        Aggregation::UniqueCount => Some("$.user".parse().unwrap()),
        _ => Some("$.tokens".parse().unwrap()),
    };
    MeterSpec::new(slug.parse().unwrap(), "prompt".parse().unwrap(), agg, value)
        .unwrap()
        .dimension("model", "$.model".parse().unwrap())
        .unwrap()
}

/// One generated event: (id, customer, minute offset, model, tokens, user).
type Gen = (u32, u8, i64, u8, i64, u8);

fn cloud(g: &Gen) -> CloudEvent {
    let (id, customer, minute, model, tokens, user) = *g;
    let data: Metadata = format!(
        r#"{{"model": "m{model}", "tokens": {}, "user": "u{user}"}}"#,
        Decimal::new(tokens, 2)
    )
    .parse()
    .unwrap();
    CloudEvent::new(
        "prompt".parse().unwrap(),
        format!("c{customer}").parse().unwrap(),
    )
    .with_id("test", &id.to_string())
    .unwrap()
    .at(t0() + Duration::minutes(minute))
    .with_data(data)
}

/// A result row's key: window start, subject, model.
type Key = (DateTime<Utc>, Option<String>, Option<String>);

/// The brute force: each distinct event once, grouped and aggregated directly.
fn brute(
    agg: Aggregation,
    events: &[Gen],
    windows: &[TimeRange],
    by_subject: bool,
    by_model: bool,
    (only_model, excluded): (Option<u8>, Option<u8>),
    until: DateTime<Utc>,
) -> BTreeMap<Key, Decimal> {
    let mut unique: BTreeMap<u32, Gen> = BTreeMap::new();
    for e in events {
        unique.entry(e.0).or_insert(*e);
    }
    let value = |g: &Gen| Decimal::new(g.4, 2);
    let key = |w: &TimeRange, g: &Gen| {
        (
            w.from(),
            by_subject.then(|| format!("c{}", g.1)),
            by_model.then(|| format!("m{}", g.3)),
        )
    };
    let mut out = BTreeMap::new();
    let at = |g: &Gen| t0() + Duration::minutes(g.2);
    let kept: Vec<&Gen> = unique
        .values()
        .filter(|g| only_model.is_none_or(|m| m == g.3) && excluded.is_none_or(|m| m != g.3))
        .collect();
    for w in windows {
        let mut groups: BTreeMap<_, Vec<&Gen>> = BTreeMap::new();
        for g in &kept {
            if agg == Aggregation::TimeWeighted || w.contains(at(g)) {
                groups.entry(key(w, g)).or_default().push(g);
            }
        }
        for (k, gs) in groups {
            let v = match agg {
                Aggregation::Sum => Some(gs.iter().map(|g| value(g)).sum()),
                Aggregation::Count => Some(Decimal::from(gs.len())),
                Aggregation::UniqueCount => Some(Decimal::from(
                    gs.iter()
                        .map(|g| g.5)
                        .collect::<std::collections::BTreeSet<_>>()
                        .len(),
                )),
                Aggregation::Avg => {
                    Some(gs.iter().map(|g| value(g)).sum::<Decimal>() / Decimal::from(gs.len()))
                }
                Aggregation::Min => gs.iter().map(|g| value(g)).min(),
                Aggregation::Max => gs.iter().map(|g| value(g)).max(),
                Aggregation::Latest => gs
                    .iter()
                    .max_by_key(|g| (at(g), cloud(g).event_id().uuid()))
                    .map(|g| value(g)),
                Aggregation::TimeWeighted => {
                    // Minute by minute: each series (customer, model) holds its latest
                    // sample; the group sums its series.
                    let mut series: BTreeMap<(u8, u8), Vec<&Gen>> = BTreeMap::new();
                    for g in &gs {
                        series.entry((g.1, g.3)).or_default().push(g);
                    }
                    let mut total = Decimal::ZERO;
                    let mut covered = false;
                    let mut t = w.from();
                    while t < w.to().min(until) {
                        for s in series.values() {
                            if let Some(g) = s
                                .iter()
                                .filter(|g| at(g) <= t)
                                .max_by_key(|g| (at(g), cloud(g).event_id().uuid()))
                            {
                                total += value(g);
                                covered = true;
                            }
                        }
                        t += Duration::minutes(1);
                    }
                    covered.then(|| total / Decimal::from(60))
                }
            };
            if let Some(v) = v {
                out.insert(k, v);
            }
        }
    }
    out
}

fn zones() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "UTC",
        "Asia/Kolkata",
        "America/New_York",
        "Asia/Kathmandu",
    ])
}

fn windows_sizes() -> impl Strategy<Value = Option<WindowSize>> {
    prop::sample::select(vec![
        None,
        Some(WindowSize::Hour),
        Some(WindowSize::Day),
        Some(WindowSize::Month),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn every_aggregation_matches_a_brute_force_over_the_raw_events(
        events in prop::collection::vec((0u32..400, 0u8..3, 0i64..(3 * 24 * 60), 0u8..3, -500i64..100_000, 0u8..20), 1..120),
        repeats in prop::collection::vec(0usize..120, 0..20),
        split in 0usize..120,
        zone in zones(),
        window in windows_sizes(),
        from_min in 0i64..(24 * 60),
        len_min in 1i64..(3 * 24 * 60),
        by_subject in any::<bool>(),
        by_model in any::<bool>(),
        only_model in prop::option::of(0u8..3),
        excluded in prop::option::of(0u8..3),
    ) {
        // Same id, same payload: a replay. Keep the first of a reused id only.
        let mut seen = BTreeMap::new();
        let mut events: Vec<Gen> = events.into_iter().filter(|e| seen.insert(e.0, ()).is_none()).collect();
        for r in repeats {
            if let Some(e) = events.get(r % events.len()).copied() {
                events.push(e);
            }
        }
        let zone: Zone = zone.parse().unwrap();
        let range = TimeRange::new(t0() + Duration::minutes(from_min), t0() + Duration::minutes(from_min + len_min)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let db = TestDb::new().await.unwrap();
            let tally = db.tally();
            // Half the meters exist before the events (the write path meters them),
            // half are made after (the backfill does); late and repeated events come
            // in a second batch.
            let (first, second) = events.split_at(split.min(events.len()));
            let aggs = Aggregation::ALL;
            for a in aggs.iter().step_by(2) {
                tally.create_meter(&spec(&a.name().to_lowercase(), *a), None).await.unwrap();
            }
            let mut first: Vec<CloudEvent> = first.iter().map(cloud).collect();
            first.reverse();
            tally.write_cloud_events(&first).await.unwrap();
            for a in aggs.iter().skip(1).step_by(2) {
                tally.create_meter(&spec(&a.name().to_lowercase(), *a), None).await.unwrap();
            }
            let second: Vec<CloudEvent> = second.iter().map(cloud).collect();
            tally.write_cloud_events(&second).await.unwrap();
            // Every meter's rollups agree with a recomputation from the raw events.
            assert_eq!(tally.verify().await.unwrap().mismatches, 0);
            let windows = tally::meters::MeterQuery::new(range, t0());
            let wins = tally_core_windows(range, window, zone);
            for a in aggs {
                let mut q = windows.clone().in_zone(zone);
                if let Some(w) = window {
                    q = q.window(w);
                }
                q.now = t0() + Duration::days(30);
                if by_subject { q = q.group_by("subject"); }
                if by_model { q = q.group_by("model"); }
                if let Some(m) = only_model { q = q.filter("model", &format!("m{m}")); }
                if let Some(m) = excluded {
                    q = q.exclude(&BTreeMap::from([("model".to_owned(), format!("m{m}"))]));
                }
                let got = tally.query_meter(&a.name().to_lowercase(), &q).await.unwrap();
                let got: BTreeMap<_, _> = got.data.into_iter().map(|r| {
                    ((r.window_start, r.subject, r.group_by.get("model").cloned().flatten()), r.value.normalize())
                }).collect();
                let want: BTreeMap<_, _> = brute(a, &events, &wins, by_subject, by_model, (only_model, excluded), q.now)
                    .into_iter().map(|(k, v)| (k, v.normalize())).collect();
                assert_eq!(got, want, "{a} in {zone} by {window:?}");
            }
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]
    /// A service is a built-in SUM meter: the one query answers its name from the
    /// service rollups, equal to a brute force over the events (replays once).
    #[test]
    fn a_service_is_a_built_in_sum_meter_of_the_one_query(
        events in prop::collection::vec((0u32..300, 0u8..3, 0i64..(3 * 24 * 60), 0i64..100_000), 1..100),
        repeats in prop::collection::vec(0usize..100, 0..10),
        zone in zones(),
        window in prop::sample::select(vec![None, Some(WindowSize::Minute), Some(WindowSize::Hour), Some(WindowSize::Day), Some(WindowSize::Month)]),
        from_min in 0i64..(24 * 60),
        len_min in 1i64..(3 * 24 * 60),
        by_subject in any::<bool>(),
        customers in prop::collection::btree_set(0u8..4, 0..3),
    ) {
        let mut seen = BTreeMap::new();
        let mut events: Vec<(u32, u8, i64, i64)> =
            events.into_iter().filter(|e| seen.insert(e.0, ()).is_none()).collect();
        let replays: Vec<(u32, u8, i64, i64)> =
            repeats.iter().filter_map(|r| events.get(r % events.len()).copied()).collect();
        let zone: Zone = zone.parse().unwrap();
        // MINUTE covers at most a day.
        let len_min = if window == Some(WindowSize::Minute) { len_min.min(24 * 60) } else { len_min };
        let range = TimeRange::new(t0() + Duration::minutes(from_min), t0() + Duration::minutes(from_min + len_min)).unwrap();
        let usage = |e: &(u32, u8, i64, i64)| {
            tally::UsageEvent::new(format!("c{}", e.1).parse().unwrap(), Service::API, Decimal::new(e.3, 2).to_string().parse().unwrap())
                .at(t0() + Duration::minutes(e.2))
                .with_id(tally::EventId::from(uuid::Uuid::from_u128(u128::from(e.0) + 1)))
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let db = TestDb::new().await.unwrap();
            let tally = db.tally();
            tally.write(&events.iter().map(usage).collect::<Vec<_>>()).await.unwrap();
            tally.write(&replays.iter().map(usage).collect::<Vec<_>>()).await.unwrap();
            events.sort();
            let mut q = MeterQuery::new(range, t0()).in_zone(zone);
            if let Some(w) = window {
                q = q.window(w);
            }
            if by_subject {
                q = q.group_by("subject");
            }
            for c in &customers {
                q = q.customer(&format!("c{c}").parse().unwrap());
            }
            let got: BTreeMap<(DateTime<Utc>, Option<String>), Decimal> = tally
                .query_meter("api", &q)
                .await
                .unwrap()
                .data
                .into_iter()
                .map(|r| ((r.window_start, r.subject), r.value.normalize()))
                .collect();
            let wins: Vec<TimeRange> = match window {
                // Every zone's minutes are UTC minutes, clipped to the range.
                Some(WindowSize::Minute) => (0..=len_min)
                    .filter_map(|m| {
                        let lo = t0() + Duration::minutes(from_min + m);
                        TimeRange::new(lo, (lo + Duration::minutes(1)).min(range.to())).ok()
                    })
                    .collect(),
                _ => tally_core_windows(range, window, zone),
            };
            let mut want: BTreeMap<(DateTime<Utc>, Option<String>), Decimal> = BTreeMap::new();
            for e in &events {
                let at = t0() + Duration::minutes(e.2);
                if !customers.is_empty() && !customers.contains(&e.1) {
                    continue;
                }
                if let Some(w) = wins.iter().find(|w| w.contains(at)) {
                    *want.entry((w.from(), by_subject.then(|| format!("c{}", e.1)))).or_default() += Decimal::new(e.3, 2);
                }
            }
            let want: BTreeMap<_, _> = want.into_iter().map(|(k, v)| (k, v.normalize())).collect();
            assert_eq!(got, want, "api in {zone} by {window:?}");
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]
    /// A unique count over whole UTC months reads the month buckets; where each group
    /// is one customer and one combination it only counts their rows. Both ways match
    /// the brute force (users repeat across days, models and customers).
    #[test]
    fn a_unique_count_over_whole_months_matches_a_brute_force(
        events in prop::collection::vec((0u32..300, 0u8..3, 0i64..(3 * 24 * 60), 0u8..3, 0i64..10, 0u8..6), 1..80),
        monthly in any::<bool>(),
        by_subject in any::<bool>(),
        by_model in any::<bool>(),
        one_customer in any::<bool>(),
        only_model in prop::option::of(0u8..3),
    ) {
        // One payload per id (a reused id with another payload is a conflict).
        let mut seen = BTreeMap::new();
        let events: Vec<Gen> = events.into_iter().filter(|e| seen.insert(e.0, ()).is_none()).collect();
        let range = TimeRange::new("2026-03-01T00:00:00Z".parse().unwrap(), "2026-05-01T00:00:00Z".parse().unwrap()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let db = TestDb::new().await.unwrap();
            let tally = db.tally();
            tally.create_meter(&spec("users", Aggregation::UniqueCount), None).await.unwrap();
            tally.write_cloud_events(&events.iter().map(cloud).collect::<Vec<_>>()).await.unwrap();
            let mut q = MeterQuery::new(range, t0());
            let wins = if monthly {
                q = q.window(WindowSize::Month);
                tally_core_windows(range, Some(WindowSize::Month), Zone::UTC)
            } else {
                vec![range]
            };
            if by_subject { q = q.group_by("subject"); }
            if by_model { q = q.group_by("model"); }
            if let Some(m) = only_model { q = q.filter("model", &format!("m{m}")); }
            let mut kept = events.clone();
            if one_customer {
                q = q.customer(&"c1".parse().unwrap());
                kept.retain(|e| e.1 == 1);
            }
            let got: BTreeMap<_, _> = tally.query_meter("users", &q).await.unwrap().data.into_iter().map(|r| {
                ((r.window_start, r.subject, r.group_by.get("model").cloned().flatten()), r.value)
            }).collect();
            let want = brute(Aggregation::UniqueCount, &kept, &wins, by_subject, by_model, (only_model, None), t0());
            assert_eq!(got, want);
        });
    }
}

fn tally_core_windows(range: TimeRange, size: Option<WindowSize>, zone: Zone) -> Vec<TimeRange> {
    let g = match size {
        None => return vec![range],
        Some(WindowSize::Hour) => tally::Granularity::Hour,
        Some(WindowSize::Day) => tally::Granularity::Day,
        Some(WindowSize::Month) => tally::Granularity::Month,
        Some(WindowSize::Minute) => unreachable!(),
    };
    zone.buckets(range, g).into_iter().map(|(_, r)| r).collect()
}

#[tokio::test]
async fn a_meter_created_during_ingest_counts_every_event_once() {
    let db = TestDb::new().await.unwrap();
    let tally = db.tally().clone();
    let writer = tokio::spawn({
        let tally = tally.clone();
        async move {
            let mut n = 0u32;
            for batch in 0..60u32 {
                let events: Vec<CloudEvent> = (0..50u32)
                    .map(|i| {
                        cloud(&(
                            (batch * 50 + i),
                            (i % 3) as u8,
                            i64::from(batch),
                            (i % 2) as u8,
                            100,
                            1,
                        ))
                    })
                    .collect();
                n += tally.write_cloud_events(&events).await.unwrap().inserted as u32;
                tokio::task::yield_now().await;
            }
            n
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let m = tally
        .create_meter(&spec("count", Aggregation::Count), None)
        .await
        .unwrap();
    assert_eq!(m.state, tally::meters::MeterState::Ready);
    let written = writer.await.unwrap();
    assert_eq!(written, 3000);
    let range = TimeRange::new(t0(), t0() + Duration::days(1)).unwrap();
    let got = tally
        .query_meter("count", &MeterQuery::new(range, t0()))
        .await
        .unwrap();
    assert_eq!(got.data.len(), 1);
    assert_eq!(got.data[0].value, Decimal::from(3000));
    // The events also count as events of their type in the service rollups.
    assert_eq!(tally.verify().await.unwrap().mismatches, 0);
}

#[tokio::test]
async fn what_a_meter_cannot_read_is_refused_whole_and_named() {
    let db = TestDb::new().await.unwrap();
    let tally = db.tally();
    tally
        .create_meter(&spec("tokens", Aggregation::Sum), None)
        .await
        .unwrap();
    let good = cloud(&(1, 0, 0, 0, 100, 1));
    let bad = good
        .clone()
        .with_id("test", "2")
        .unwrap()
        .with_data(r#"{"model": "m0", "tokens": "lots"}"#.parse().unwrap());
    let e = tally
        .write_cloud_events(&[good.clone(), bad])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert_eq!(e.field(), Some("data"));
    assert!(
        e.to_string().contains("tokens") && e.to_string().contains("not a number"),
        "{e}"
    );
    assert_eq!(
        tally.verify().await.unwrap().events,
        0,
        "nothing of the call is stored"
    );
    let missing = good
        .clone()
        .with_data(r#"{"model": "m0"}"#.parse().unwrap());
    let e = tally.write_cloud_events(&[missing]).await.unwrap_err();
    assert!(e.to_string().contains("no value there"), "{e}");

    // A cardinality limit of two models: the third is refused, the known ones pass.
    let mut limited = spec("limited", Aggregation::Count);
    limited.cardinality_limit = 2;
    tally.create_meter(&limited, None).await.unwrap();
    let ev = |id: u32, model: u8| cloud(&(id, 0, 0, model, 100, 1));
    tally
        .write_cloud_events(&[ev(10, 0), ev(11, 1)])
        .await
        .unwrap();
    let e = tally.write_cloud_events(&[ev(12, 2)]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert!(e.to_string().contains("cardinality limit of 2"), "{e}");
    tally.write_cloud_events(&[ev(13, 1)]).await.unwrap();

    // The recorder dead-letters the refused event with the reason, and keeps the rest.
    let recorder = tally.recorder();
    recorder
        .record(ev(14, 2).into_usage(Utc::now()).unwrap())
        .await
        .unwrap();
    recorder
        .record(ev(15, 0).into_usage(Utc::now()).unwrap())
        .await
        .unwrap();
    recorder.close().await.unwrap();
    let client = db.client().await.unwrap();
    let dead: Vec<String> = client
        .query("SELECT error FROM usage_dead_letters", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].contains("cardinality limit"), "{dead:?}");

    // Unknown meters and dimensions are named.
    let range = TimeRange::new(t0(), t0() + Duration::days(1)).unwrap();
    let e = tally
        .query_meter("nope", &MeterQuery::new(range, t0()))
        .await
        .unwrap_err();
    assert_eq!(e.field(), Some("meter"));
    let e = tally
        .query_meter("tokens", &MeterQuery::new(range, t0()).group_by("region"))
        .await
        .unwrap_err();
    assert_eq!(e.field(), Some("group_by"));
    // A slug in use is refused; deleted, it is free again.
    let e = tally
        .create_meter(&spec("tokens", Aggregation::Max), None)
        .await
        .unwrap_err();
    assert_eq!(e.field(), Some("slug"));
    tally.delete_meter("tokens").await.unwrap();
    tally
        .create_meter(&spec("tokens", Aggregation::Max), None)
        .await
        .unwrap();
    assert_eq!(tally.meters().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_meter_reads_the_built_in_services_metadata_and_leaves_their_totals_alone() {
    let db = TestDb::new().await.unwrap();
    let tally = db.tally();
    let acme: CustomerId = "acme".parse().unwrap();
    let events: Vec<tally::UsageEvent> = ["/a", "/b", "/a"]
        .iter()
        .enumerate()
        .map(|(i, ep)| {
            tally::UsageEvent::new(acme.clone(), Service::API, "2".parse().unwrap())
                .at(t0() + Duration::minutes(i as i64))
                .with_metadata(format!(r#"{{"endpoint": "{ep}"}}"#).parse().unwrap())
        })
        .collect();
    tally.write(&events).await.unwrap();
    let by_endpoint = MeterSpec::new(
        "api_by_endpoint".parse().unwrap(),
        "api".parse().unwrap(),
        Aggregation::Count,
        None,
    )
    .unwrap()
    .dimension("endpoint", "$.endpoint".parse().unwrap())
    .unwrap();
    let m = tally.create_meter(&by_endpoint, None).await.unwrap();
    assert_eq!(m.backfilled, 3);
    let range = TimeRange::new(t0(), t0() + Duration::days(1)).unwrap();
    let got = tally
        .query_meter(
            "api_by_endpoint",
            &MeterQuery::new(range, t0()).group_by("endpoint"),
        )
        .await
        .unwrap();
    let counts: Vec<(Option<String>, Decimal)> = got
        .data
        .iter()
        .map(|r| (r.group_by["endpoint"].clone(), r.value))
        .collect();
    assert_eq!(
        counts,
        vec![
            (Some("/a".into()), Decimal::from(2)),
            (Some("/b".into()), Decimal::from(1))
        ]
    );
    let s = tally
        .summary(&acme, range)
        .service(&Service::API)
        .await
        .unwrap();
    assert_eq!(s.services[0].quantity, Decimal::from(6));
}

#[tokio::test]
async fn a_strict_import_feeds_the_meters_of_its_types() {
    use tally::import::{ImportFormat, ImportOptions};
    let db = TestDb::new().await.unwrap();
    let tally = db.tally();
    let by_endpoint = MeterSpec::new(
        "api_by_endpoint".parse().unwrap(),
        "api".parse().unwrap(),
        Aggregation::Count,
        None,
    )
    .unwrap()
    .dimension("endpoint", "$.endpoint".parse().unwrap())
    .unwrap();
    tally.create_meter(&by_endpoint, None).await.unwrap();
    // All or nothing: the staged path's one statement, which returns the inserted
    // events of the metered types for the meter step (a repeated line counts once).
    let line = |id: u32, ep: &str| {
        format!(
            r#"{{"event_id":"0195f000-0000-7000-8000-{id:012}","customer_id":"acme","service":"api","quantity":"1","recorded_at":"2026-03-30T10:00:00Z","metadata":{{"endpoint":"{ep}"}}}}"#
        )
    };
    let text = [line(1, "/a"), line(2, "/b"), line(3, "/a"), line(3, "/a")].join("\n");
    let mut opts = ImportOptions::new(ImportFormat::Ndjson);
    opts.strict = true;
    let r = tally
        .import(std::io::Cursor::new(text), opts, None)
        .await
        .unwrap();
    assert_eq!(r.inserted, 3, "{r:?}");
    let range = TimeRange::new(t0(), t0() + Duration::days(1)).unwrap();
    let got = tally
        .query_meter(
            "api_by_endpoint",
            &MeterQuery::new(range, t0()).group_by("endpoint"),
        )
        .await
        .unwrap();
    let counts: Vec<(Option<String>, Decimal)> = got
        .data
        .iter()
        .map(|r| (r.group_by["endpoint"].clone(), r.value))
        .collect();
    assert_eq!(
        counts,
        vec![
            (Some("/a".into()), Decimal::from(2)),
            (Some("/b".into()), Decimal::from(1))
        ]
    );
}

/// Prices per dimension (issue 24 §6): gpt-4o at its own price, the other models at
/// the fallback's, a UNIQUE_COUNT priced whole; checked against a hand computation.
#[tokio::test]
async fn an_invoice_prices_each_combination_and_the_rest() {
    let db = TestDb::new().await.unwrap();
    let book = tally::pricing::PriceBook::from_json(
        r#"{"currency": "USD", "services": {},
            "meters": [
              {"meter": "tokens", "where": {"model": "gpt-4o"}, "model": "per_unit", "unit_price": "0.000005"},
              {"meter": "tokens", "where": {"model": "o1"}, "model": "per_unit", "unit_price": "0.00006"},
              {"meter": "tokens", "model": "per_unit", "unit_price": "0.000001"},
              {"meter": "users", "model": "graduated", "tiers": [
                 {"up_to": "2", "unit_price": "0"}, {"unit_price": "1.50"}]}
            ]}"#,
    )
    .unwrap();
    let tally = tally::Tally::builder(db.url())
        .prices(book)
        .build()
        .await
        .unwrap();
    let tokens = MeterSpec::new(
        "tokens".parse().unwrap(),
        "prompt".parse().unwrap(),
        Aggregation::Sum,
        Some("$.tokens".parse().unwrap()),
    )
    .unwrap()
    .dimension("model", "$.model".parse().unwrap())
    .unwrap();
    let users = MeterSpec::new(
        "users".parse().unwrap(),
        "prompt".parse().unwrap(),
        Aggregation::UniqueCount,
        Some("$.user".parse().unwrap()),
    )
    .unwrap();
    tally.create_meter(&tokens, None).await.unwrap();
    tally.create_meter(&users, None).await.unwrap();
    let event = |id: u32, customer: &str, model: Option<&str>, tokens: u32, user: &str| {
        let model = model.map_or(String::new(), |m| format!(r#""model": "{m}", "#));
        CloudEvent::new("prompt".parse().unwrap(), customer.parse().unwrap())
            .with_id("test", &id.to_string())
            .unwrap()
            .at(t0() + Duration::hours(i64::from(id)))
            .with_data(
                format!(r#"{{{model}"tokens": {tokens}, "user": "{user}"}}"#)
                    .parse()
                    .unwrap(),
            )
    };
    tally
        .write_cloud_events(&[
            event(1, "acme", Some("gpt-4o"), 200_000, "ann"),
            event(2, "acme", Some("gpt-4o"), 100_000, "bob"),
            event(3, "acme", Some("mini"), 1_000_000, "cat"),
            // No model at all: the rest's, not gpt-4o's.
            event(4, "acme", None, 500_000, "ann"),
            event(5, "other", Some("o1"), 1_000, "dan"),
        ])
        .await
        .unwrap();
    let march = TimeRange::new(
        "2026-03-01T00:00:00Z".parse().unwrap(),
        "2026-04-01T00:00:00Z".parse().unwrap(),
    )
    .unwrap();
    let inv = tally
        .invoice(&"acme".parse().unwrap(), march)
        .await
        .unwrap();
    let lines_of = |inv: &tally::report::Invoice| -> Vec<(String, String, String)> {
        inv.lines
            .iter()
            .map(|l| {
                (
                    l.label(),
                    l.quantity.normalize().to_string(),
                    l.amount.to_string(),
                )
            })
            .collect()
    };
    let lines = lines_of(&inv);
    let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    // gpt-4o 300k × 0.000005 = 1.50; rest 1.5M × 0.000001 = 1.50; o1 unused by acme
    // (no line); 3 users, 2 free, 1 × 1.50.
    assert_eq!(
        lines,
        vec![
            s("tokens[model=gpt-4o]", "300000", "1.50"),
            s("tokens[rest]", "1500000", "1.50"),
            s("users", "3", "1.50"),
        ]
    );
    assert_eq!(inv.total_amount.to_string(), "4.50");
    let json = serde_json::to_value(&inv.lines[0]).unwrap();
    assert_eq!(json["meter"], "tokens");
    assert_eq!(json["where"]["model"], "gpt-4o");
    assert!(json["service"].is_null());
    assert_eq!(serde_json::to_value(&inv.lines[1]).unwrap()["rest"], true);

    // gpt-4o's price doubles at 02:00 on the 30th (between acme's two gpt-4o events):
    // its line splits there; the rest, o1 and users keep one line each (their prices
    // did not change, and a unique count over two parts would count a user twice).
    let changed = tally::pricing::PriceBook::from_json(
        r#"{"currency": "USD", "services": {},
            "meters": [
              {"meter": "tokens", "where": {"model": "gpt-4o"}, "model": "per_unit", "unit_price": "0.000005"},
              {"meter": "tokens", "where": {"model": "gpt-4o"}, "model": "per_unit", "unit_price": "0.00001",
               "effective_from": "2026-03-30T02:00:00Z"},
              {"meter": "tokens", "where": {"model": "o1"}, "model": "per_unit", "unit_price": "0.00006"},
              {"meter": "tokens", "model": "per_unit", "unit_price": "0.000001"},
              {"meter": "users", "model": "graduated", "tiers": [
                 {"up_to": "2", "unit_price": "0"}, {"unit_price": "1.50"}]}
            ]}"#,
    )
    .unwrap();
    let t3 = tally::Tally::builder(db.url())
        .prices(changed)
        .build()
        .await
        .unwrap();
    let inv = t3.invoice(&"acme".parse().unwrap(), march).await.unwrap();
    let lines = lines_of(&inv);
    assert_eq!(
        lines,
        vec![
            // 200k × 0.000005, then 100k × 0.00001.
            s(
                "tokens[model=gpt-4o] [2026-03-01T00:00:00Z, 2026-03-30T02:00:00Z)",
                "200000",
                "1.00"
            ),
            s(
                "tokens[model=gpt-4o] [2026-03-30T02:00:00Z, 2026-04-01T00:00:00Z)",
                "100000",
                "1.00"
            ),
            s("tokens[rest]", "1500000", "1.50"),
            s("users", "3", "1.50"),
        ]
    );
    assert_eq!(inv.total_amount.to_string(), "5.00");

    // A price book naming a meter that does not exist is refused, naming it.
    let bad = tally::pricing::PriceBook::from_json(
        r#"{"currency": "USD", "services": {},
            "meters": [{"meter": "tokens_typo", "model": "per_unit", "unit_price": "1"}]}"#,
    )
    .unwrap();
    let t2 = tally::Tally::builder(db.url())
        .prices(bad)
        .build()
        .await
        .unwrap();
    let err = t2
        .invoice(&"acme".parse().unwrap(), march)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("tokens_typo"), "{err}");
}

/// `verify` recomputes every meter's rollups from the raw events: a row changed,
/// removed or added in any of the meter tables is a mismatch.
#[tokio::test]
async fn verify_finds_a_changed_row_in_every_meter_table() {
    let db = TestDb::new().await.unwrap();
    let tally = db.tally();
    for a in Aggregation::ALL {
        tally
            .create_meter(&spec(&a.name().to_lowercase(), a), None)
            .await
            .unwrap();
    }
    let events: Vec<CloudEvent> = (0..40u32)
        .map(|i| {
            cloud(&(
                i,
                (i % 3) as u8,
                i64::from(i) * 37,
                (i % 2) as u8,
                i64::from(i) * 10,
                (i % 5) as u8,
            ))
        })
        .collect();
    tally.write_cloud_events(&events).await.unwrap();
    assert_eq!(tally.verify().await.unwrap().mismatches, 0);
    let client = db.client().await.unwrap();
    for (sql, n) in [
        (
            "UPDATE tally_meter_quarters SET total = total + 1 WHERE ctid = (SELECT min(ctid) FROM tally_meter_quarters)",
            1,
        ),
        (
            "UPDATE tally_meter_days SET latest_value = latest_value + 1 WHERE ctid = (SELECT min(ctid) FROM tally_meter_days)",
            2,
        ),
        (
            "DELETE FROM tally_meter_distinct_months WHERE ctid = (SELECT min(ctid) FROM tally_meter_distinct_months)",
            3,
        ),
        (
            "INSERT INTO tally_meter_distinct_days SELECT meter, customer_id, bucket, dims, 'nobody' FROM tally_meter_distinct_days LIMIT 1",
            4,
        ),
        (
            "UPDATE tally_meter_samples SET value = value * 2 + 1 WHERE ctid = (SELECT min(ctid) FROM tally_meter_samples)",
            5,
        ),
    ] {
        assert_eq!(client.execute(sql, &[]).await.unwrap(), 1, "{sql}");
        assert_eq!(tally.verify().await.unwrap().mismatches, n, "{sql}");
    }
}

// Peer cases, each named by its source file and case; the events and expectations
// are the peer's, the differences in definition are stated where they apply
// (docs/meters.md, "How the peers define them").

fn peer_event(kind: &str, subject: &str, id: &str, at: &str, data: &str) -> CloudEvent {
    CloudEvent::new(kind.parse().unwrap(), subject.parse().unwrap())
        .with_id("peer", id)
        .unwrap()
        .at(at.parse().unwrap())
        .with_data(data.parse().unwrap())
}

fn peer_meter(slug: &str, kind: &str, agg: Aggregation, value: Option<&str>) -> MeterSpec {
    MeterSpec::new(
        slug.parse().unwrap(),
        kind.parse().unwrap(),
        agg,
        value.map(|v| v.parse().unwrap()),
    )
    .unwrap()
}

fn range(from: &str, to: &str) -> TimeRange {
    TimeRange::new(from.parse().unwrap(), to.parse().unwrap()).unwrap()
}

/// Rows as (window start, subject, value) for short assertions.
fn rows(r: &tally::meters::MeterQueryResult) -> Vec<(String, Option<String>, String)> {
    r.data
        .iter()
        .map(|row| {
            (
                row.window_start.to_rfc3339(),
                row.subject.clone(),
                row.value.normalize().to_string(),
            )
        })
        .collect()
}

/// OpenMeter `e2e/e2e_test.go` `TestQuery` (Total, WindowSize Minute/Hour/Day,
/// Subject) and `TestDedupe`. OpenMeter's unwindowed row spans the events (first
/// minute to last minute + 1); Tally's spans the query's range.
#[tokio::test]
async fn openmeter_e2e_test_query_and_test_dedupe() {
    let db = TestDb::new().await.unwrap();
    let tally = db.tally();
    tally
        .create_meter(
            &peer_meter("query", "query", Aggregation::Sum, Some("$.duration_ms")),
            None,
        )
        .await
        .unwrap();
    // 5 customers, each an event of 100 ms at t, t + 1 min, t + 1 h and t + 1 day.
    let t = "2023-05-06T00:00:00Z";
    let mut events = Vec::new();
    for (k, at) in [
        t,
        "2023-05-06T00:01:00Z",
        "2023-05-06T01:00:00Z",
        "2023-05-07T00:00:00Z",
    ]
    .iter()
    .enumerate()
    {
        for c in 1..=5 {
            events.push(peer_event(
                "query",
                &format!("customer-{c}"),
                &format!("{k}-{c}"),
                at,
                r#"{"duration_ms": "100", "method": "GET", "path": "/"}"#,
            ));
        }
    }
    tally.write_cloud_events(&events).await.unwrap();
    let two_days = range(t, "2023-05-08T00:00:00Z");
    let q = MeterQuery::new(two_days, two_days.to());
    let s = |w: &str, v: &str| (w.to_owned(), None, v.to_owned());
    // Total: customerCount * 4 * 100.
    assert_eq!(
        rows(&tally.query_meter("query", &q).await.unwrap()),
        vec![s("2023-05-06T00:00:00+00:00", "2000")]
    );
    // Minute: each minute with events, customerCount * 100.
    let minute =
        MeterQuery::new(range(t, "2023-05-07T00:00:00Z"), two_days.to()).window(WindowSize::Minute);
    assert_eq!(
        rows(&tally.query_meter("query", &minute).await.unwrap()),
        vec![
            s("2023-05-06T00:00:00+00:00", "500"),
            s("2023-05-06T00:01:00+00:00", "500"),
            s("2023-05-06T01:00:00+00:00", "500"),
        ]
    );
    // (OpenMeter's Minute case also has the next day's minute; a MINUTE query covers
    // at most a day in Tally.)
    let minute_next = MeterQuery::new(
        range("2023-05-07T00:00:00Z", "2023-05-08T00:00:00Z"),
        two_days.to(),
    )
    .window(WindowSize::Minute);
    assert_eq!(
        rows(&tally.query_meter("query", &minute_next).await.unwrap()),
        vec![s("2023-05-07T00:00:00+00:00", "500")]
    );
    // Hour: customerCount * 2 * 100, then customerCount * 100 twice.
    assert_eq!(
        rows(
            &tally
                .query_meter("query", &q.clone().window(WindowSize::Hour))
                .await
                .unwrap()
        ),
        vec![
            s("2023-05-06T00:00:00+00:00", "1000"),
            s("2023-05-06T01:00:00+00:00", "500"),
            s("2023-05-07T00:00:00+00:00", "500"),
        ]
    );
    // Day: customerCount * 3 * 100, then customerCount * 100.
    assert_eq!(
        rows(
            &tally
                .query_meter("query", &q.clone().window(WindowSize::Day))
                .await
                .unwrap()
        ),
        vec![
            s("2023-05-06T00:00:00+00:00", "1500"),
            s("2023-05-07T00:00:00+00:00", "500"),
        ]
    );
    // Subject: customer-1 and customer-2, 4 * 100 each, a row per subject.
    let subjects = q
        .clone()
        .customer(&"customer-1".parse().unwrap())
        .customer(&"customer-2".parse().unwrap())
        .group_by("subject");
    let got = rows(&tally.query_meter("query", &subjects).await.unwrap());
    let sub = |c: &str| {
        (
            "2023-05-06T00:00:00+00:00".to_owned(),
            Some(c.to_owned()),
            "400".to_owned(),
        )
    };
    assert_eq!(got, vec![sub("customer-1"), sub("customer-2")]);

    // TestDedupe: one id sent 1000 times (OpenMeter sends each at a random time;
    // Tally's id is (source, id), so a replay at another time is a conflict, not a
    // second event: here the same event is replayed) counts once.
    tally
        .create_meter(
            &peer_meter("dedupe", "dedupe", Aggregation::Count, None),
            None,
        )
        .await
        .unwrap();
    let one = peer_event(
        "dedupe",
        "customer-1",
        "52f44f66-020f-4fa9-a733-102a8ef6f515",
        t,
        "{}",
    );
    for _ in 0..10 {
        tally
            .write_cloud_events(&vec![one.clone(); 100])
            .await
            .unwrap();
    }
    assert_eq!(
        rows(&tally.query_meter("dedupe", &q).await.unwrap()),
        vec![s("2023-05-06T00:00:00+00:00", "1")]
    );
}

/// Lago `spec/services/billable_metrics/aggregations/weighted_sum_service_spec.rb`:
/// "aggregates the events" (0.02218), "when using presentation_by" (eu 1.00269, us
/// 2.99597) and "with a single event" (1000.0), over August 2023 (31 days). Lago's
/// events are increments and its result the time-weighted average over the period;
/// Tally's gauge takes each running total as a sample and reports value-hours, so
/// Lago's figure is Tally's divided by the period's 744 hours.
#[tokio::test]
async fn lago_weighted_sum_spec() {
    let db = TestDb::new().await.unwrap();
    let tally = db.tally();
    let gauge = peer_meter("gauge", "gauge", Aggregation::TimeWeighted, Some("$.value"))
        .dimension("region", "$.region".parse().unwrap())
        .unwrap();
    tally.create_meter(&gauge, None).await.unwrap();
    let running = |customer: &str, region: Option<&str>, increments: &[(&str, i64)]| {
        let mut total = 0;
        increments
            .iter()
            .enumerate()
            .map(|(i, (at, by))| {
                total += by;
                let field = region.map_or(String::new(), |r| format!(r#", "region": "{r}""#));
                let region = region.unwrap_or("-");
                peer_event(
                    "gauge",
                    customer,
                    &format!("{customer}-{region}-{i}"),
                    &format!("2023-08-01T{at}Z"),
                    &format!(r#"{{"value": {total}{field}}}"#),
                )
            })
            .collect::<Vec<_>>()
    };
    let mut events = running(
        "base",
        None,
        &[
            ("00:00:00", 2),
            ("01:00:00", 3),
            ("01:30:00", 1),
            ("02:00:00", -4),
            ("04:00:00", -2),
            ("05:00:00", 10),
            ("05:30:00", -10),
        ],
    );
    events.extend(running(
        "presented",
        Some("eu"),
        &[("00:00:00", 2), ("02:00:00", -1)],
    ));
    events.extend(running("presented", Some("us"), &[("01:00:00", 3)]));
    events.extend(running("single", None, &[("00:00:00", 1000)]));
    tally.write_cloud_events(&events).await.unwrap();
    let august = range("2023-08-01T00:00:00Z", "2023-09-01T00:00:00Z");
    let hours = Decimal::from(31 * 24);
    let lago = |customer: &str, by_region: bool| {
        let mut q = MeterQuery::new(august, august.to()).customer(&customer.parse().unwrap());
        if by_region {
            q = q.group_by("region");
        }
        async move {
            tally
                .query_meter("gauge", &q)
                .await
                .unwrap()
                .data
                .iter()
                .map(|r| {
                    (
                        r.group_by.get("region").cloned().flatten(),
                        (r.value / hours).round_dp(5).normalize().to_string(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        lago("base", false).await,
        vec![(None, "0.02218".to_owned())]
    );
    assert_eq!(
        lago("presented", true).await,
        vec![
            (Some("eu".to_owned()), "1.00269".to_owned()),
            (Some("us".to_owned()), "2.99597".to_owned())
        ]
    );
    assert_eq!(lago("single", false).await, vec![(None, "1000".to_owned())]);
}

/// Lago `spec/services/billable_metrics/aggregations/latest_service_spec.rb`:
/// "aggregates the events" (14, count 5), "when filters are given" (8, count 2),
/// "returns a grouped aggregations" (5 groups of 12, one without the key) and "when
/// properties is negative", where Lago answers 0 and Tally the value itself (-5:
/// a latest value is not clamped).
#[tokio::test]
async fn lago_latest_spec() {
    let db = TestDb::new().await.unwrap();
    let tally = db.tally();
    for (slug, agg, value) in [
        ("latest", Aggregation::Latest, Some("$.total_count")),
        ("count", Aggregation::Count, None),
    ] {
        let spec = peer_meter(slug, "latest", agg, value)
            .dimension("region", "$.region".parse().unwrap())
            .unwrap()
            .dimension("agent_name", "$.agent_name".parse().unwrap())
            .unwrap();
        tally.create_meter(&spec, None).await.unwrap();
    }
    let mut events = Vec::new();
    for i in 0..4 {
        events.push(peer_event(
            "latest",
            "plain",
            &format!("p{i}"),
            "2023-08-10T00:00:00Z",
            r#"{"total_count": 18}"#,
        ));
    }
    events.push(peer_event(
        "latest",
        "plain",
        "p4",
        "2023-08-11T00:00:00Z",
        r#"{"total_count": 14}"#,
    ));
    events.push(peer_event(
        "latest",
        "filtered",
        "f0",
        "2023-08-11T23:59:58Z",
        r#"{"total_count": 12, "region": "europe"}"#,
    ));
    events.push(peer_event(
        "latest",
        "filtered",
        "f1",
        "2023-08-11T23:59:59Z",
        r#"{"total_count": 8, "region": "europe"}"#,
    ));
    events.push(peer_event(
        "latest",
        "filtered",
        "f2",
        "2023-08-11T23:59:59Z",
        r#"{"total_count": 12, "region": "africa"}"#,
    ));
    for (i, agent) in ["aragorn", "frodo", "gimli", "legolas"].iter().enumerate() {
        events.push(peer_event(
            "latest",
            "grouped",
            &format!("g{i}"),
            "2023-08-11T00:00:00Z",
            &format!(r#"{{"total_count": 12, "agent_name": "{agent}"}}"#),
        ));
    }
    events.push(peer_event(
        "latest",
        "grouped",
        "g4",
        "2023-08-11T00:00:00Z",
        r#"{"total_count": 12}"#,
    ));
    events.push(peer_event(
        "latest",
        "negative",
        "n0",
        "2023-08-11T00:00:00Z",
        r#"{"total_count": -5}"#,
    ));
    tally.write_cloud_events(&events).await.unwrap();
    let month = range("2023-08-01T00:00:00Z", "2023-09-01T00:00:00Z");
    let value = |slug: &'static str, customer: &'static str, region: Option<&'static str>| {
        let mut q = MeterQuery::new(month, month.to()).customer(&customer.parse().unwrap());
        if let Some(r) = region {
            q = q.filter("region", r);
        }
        async move {
            tally
                .query_meter(slug, &q)
                .await
                .unwrap()
                .data
                .first()
                .map(|r| r.value.normalize().to_string())
        }
    };
    assert_eq!(value("latest", "plain", None).await.as_deref(), Some("14"));
    assert_eq!(value("count", "plain", None).await.as_deref(), Some("5"));
    assert_eq!(
        value("latest", "filtered", Some("europe")).await.as_deref(),
        Some("8")
    );
    assert_eq!(
        value("count", "filtered", Some("europe")).await.as_deref(),
        Some("2")
    );
    assert_eq!(
        value("latest", "negative", None).await.as_deref(),
        Some("-5")
    );
    let grouped = tally
        .query_meter(
            "latest",
            &MeterQuery::new(month, month.to())
                .customer(&"grouped".parse().unwrap())
                .group_by("agent_name"),
        )
        .await
        .unwrap();
    let groups: Vec<(Option<String>, String)> = grouped
        .data
        .iter()
        .map(|r| (r.group_by["agent_name"].clone(), r.value.to_string()))
        .collect();
    assert_eq!(groups.len(), 5);
    assert!(groups.iter().all(|(_, v)| v == "12"));
    assert_eq!(groups.iter().filter(|(a, _)| a.is_none()).count(), 1);
}

#[tokio::test]
async fn a_built_in_meter_has_no_dimensions_and_its_name_is_taken() {
    let db = TestDb::new().await.unwrap();
    let tally = db.tally();
    let range = TimeRange::new(t0(), t0() + Duration::days(1)).unwrap();
    let q = MeterQuery::new(range, t0());
    for (q, field, value) in [
        (q.clone().group_by("model"), "group_by", "model"),
        (q.clone().filter("model", "m1"), "filter", "model"),
        (
            q.clone()
                .exclude(&BTreeMap::from([("model".to_owned(), "m1".to_owned())])),
            "exclude",
            "model",
        ),
    ] {
        let e = tally.query_meter("storage", &q).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
        assert_eq!((e.field(), e.value()), (Some(field), Some(value)), "{e}");
        assert!(e.to_string().contains("built-in meter storage"), "{e}");
    }
    // Nothing used: no rows, as for any meter.
    assert!(
        tally
            .query_meter("storage", &q)
            .await
            .unwrap()
            .data
            .is_empty()
    );
    let e = tally.query_meter("no_such", &q).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // A defined meter may not take a service's name (it would hide the built-in).
    let mut spec = spec("storage", Aggregation::Sum);
    let e = tally.create_meter(&spec, None).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::Invalid, Some("slug")),
        "{e}"
    );
    spec.slug = "storage_gib".parse().unwrap();
    tally.create_meter(&spec, None).await.unwrap();
    // Nor may a service take a meter's slug.
    let e = tally
        .define_meter(&tally::Meter::new("storage_gib", "GiB").unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::Invalid, Some("service")),
        "{e}"
    );
    tally
        .define_meter(&tally::Meter::new("gpu_seconds", "s").unwrap())
        .await
        .unwrap();
    assert!(
        tally
            .query_meter("gpu_seconds", &q)
            .await
            .unwrap()
            .data
            .is_empty()
    );
}

/// A process killed mid-backfill leaves its meter `backfilling`; a restart counts
/// every stored event once, with what was written meanwhile, under the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_backfill_is_restarted_and_counts_each_event_once() {
    use std::sync::{Arc, mpsc};
    let db = TestDb::new().await.unwrap();
    let tally = db.tally().clone();
    // More than one backfill chunk (20 000 events) of the type.
    let gens: Vec<Gen> = (0..26_000u32)
        .map(|i| {
            (
                i,
                (i % 3) as u8,
                i64::from(i % 4000),
                (i % 3) as u8,
                i64::from(i % 97),
                0,
            )
        })
        .collect();
    for chunk in gens.chunks(6_500) {
        tally
            .write_cloud_events(&chunk.iter().map(cloud).collect::<Vec<_>>())
            .await
            .unwrap();
    }
    // The first chunk merged, the backfill is cancelled at its next step (its progress
    // callback holds it until the abort is asked for).
    let (chunked, wait_chunk) = mpsc::channel::<()>();
    let (aborted, wait_abort) = mpsc::channel::<()>();
    let wait_abort = std::sync::Mutex::new(wait_abort);
    let progress: tally::Progress = Arc::new(move |_| {
        let _ = chunked.send(());
        let _ = wait_abort.lock().unwrap().recv();
    });
    let t = tally.clone();
    let task = tokio::spawn(async move {
        t.create_meter(&spec("sum", Aggregation::Sum), Some(progress))
            .await
    });
    tokio::task::spawn_blocking(move || wait_chunk.recv().unwrap())
        .await
        .unwrap();
    task.abort();
    let _ = aborted.send(());
    assert!(task.await.unwrap_err().is_cancelled());
    let stuck = tally.meter("sum").await.unwrap();
    assert_eq!(stuck.state, tally::meters::MeterState::Backfilling);
    let range = TimeRange::new(t0(), t0() + Duration::days(5)).unwrap();
    let q = MeterQuery::new(range, t0())
        .group_by("subject")
        .group_by("model");
    let e = tally.query_meter("sum", &q).await.unwrap_err();
    assert!(e.to_string().contains("restart"), "{e}");
    // Written while it is stuck: metered by the write path.
    let late: Vec<Gen> = (26_000..26_500u32)
        .map(|i| (i, (i % 3) as u8, i64::from(i % 4000), 1, 5, 0))
        .collect();
    tally
        .write_cloud_events(&late.iter().map(cloud).collect::<Vec<_>>())
        .await
        .unwrap();
    let ready = tally.restart_meter("sum", None).await.unwrap();
    assert_eq!(
        (ready.state, &ready.id, ready.backfilled),
        (tally::meters::MeterState::Ready, &stuck.id, 26_500)
    );
    let all: Vec<Gen> = gens.into_iter().chain(late).collect();
    let got = sums(&tally, &q).await;
    let want = brute(
        Aggregation::Sum,
        &all,
        &[range],
        true,
        true,
        (None, None),
        t0(),
    );
    assert_eq!(got, want);
    assert_eq!(tally.verify().await.unwrap().mismatches, 0);
    // A ready meter restarted counts the same.
    let again = tally.restart_meter("sum", None).await.unwrap();
    assert_eq!((again.backfilled, &again.id), (26_500, &stuck.id));
    let same = sums(&tally, &q).await;
    assert_eq!(same, got);
    let e = tally.restart_meter("nope", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // What the old numbers held is gone; deleted, the meter leaves no row behind.
    assert_eq!(meter_rows(&db, false).await, 0);
    assert!(meter_rows(&db, true).await > 0);
    tally.delete_meter("sum").await.unwrap();
    assert_eq!(meter_rows(&db, true).await, 0);
}

/// The `sum` meter's values by window, subject and model.
async fn sums(tally: &tally::Tally, q: &MeterQuery) -> BTreeMap<Key, Decimal> {
    tally
        .query_meter("sum", q)
        .await
        .unwrap()
        .data
        .into_iter()
        .map(|r| {
            (
                (r.window_start, r.subject, r.group_by["model"].clone()),
                r.value,
            )
        })
        .collect()
}

/// Rows of the meter tables: all of them, or only those of no live meter.
async fn meter_rows(db: &TestDb, all: bool) -> i64 {
    let client = db.client().await.unwrap();
    let mut n = 0;
    for table in [
        "tally_meter_quarters",
        "tally_meter_days",
        "tally_meter_distinct_quarters",
        "tally_meter_distinct_days",
        "tally_meter_distinct_months",
        "tally_meter_samples",
        "tally_meter_dimensions",
        "tally_meter_cardinality",
    ] {
        let live = if all {
            "true"
        } else {
            "meter NOT IN (SELECT meter FROM tally_meter_defs WHERE deleted_at IS NULL)"
        };
        let c: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table} WHERE {live}"), &[])
            .await
            .unwrap()
            .get(0);
        n += c;
    }
    n
}
