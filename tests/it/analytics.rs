//! Analytics against a real database; every expected number is computed here from the
//! events themselves, not by the code under test.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use tally::{
    CustomerId, Granularity, Limit, Service, Tally, TimeRange, UsageEvent, Zone,
    pricing::{Price, PriceBook, PriceModel, Tier},
    report::Over,
};
use tally_testdb::TestDb;
use tally_tests::{at, event};

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn acme() -> CustomerId {
    "acme".parse().unwrap()
}

fn range(from: &str, to: &str) -> TimeRange {
    TimeRange::new(at(from), at(to)).unwrap()
}

/// Events every 20 minutes over four days around Berlin's spring-forward day, for two
/// customers and two services, quantities varying.
fn dst_events() -> Vec<UsageEvent> {
    let start = at("2026-03-27T00:10:00Z");
    (0..4 * 72u32)
        .map(|i| {
            let t = start + Duration::minutes(20 * i64::from(i));
            let customer = if i % 5 == 0 { "globex" } else { "acme" };
            let service = if i % 3 == 0 {
                Service::STORAGE
            } else {
                Service::API
            };
            let q = format!("{}.{}", 1 + i % 7, i % 10);
            event(u128::from(i) + 1, customer, service, &q, &t.to_rfc3339())
        })
        .collect()
}

/// Independent bucketing: chrono-tz's local calendar, truncated by hand.
fn expected_daily(
    events: &[UsageEvent],
    tz: Tz,
    customer: Option<&str>,
) -> BTreeMap<(DateTime<Utc>, String), (i64, Decimal)> {
    let mut out = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| customer.is_none_or(|c| e.customer.as_str() == c))
    {
        let local_date = e.recorded_at.with_timezone(&tz).date_naive();
        let start = tz
            .from_local_datetime(&local_date.and_time(NaiveTime::MIN))
            .earliest()
            .unwrap()
            .with_timezone(&Utc);
        let entry = out
            .entry((start, e.service.to_string()))
            .or_insert((0, Decimal::ZERO));
        entry.0 += 1;
        entry.1 += e.quantity.value();
    }
    out
}

fn expected_hourly(
    events: &[UsageEvent],
    offset_minutes: i64,
) -> BTreeMap<(DateTime<Utc>, String), (i64, Decimal)> {
    // For fixed-offset zones: a local hour starts where (t + offset) is a whole hour.
    let mut out = BTreeMap::new();
    for e in events {
        let shifted = e.recorded_at + Duration::minutes(offset_minutes);
        let local_hour = shifted - Duration::seconds(shifted.timestamp().rem_euclid(3600));
        let start = local_hour - Duration::minutes(offset_minutes);
        let entry = out
            .entry((start, e.service.to_string()))
            .or_insert((0, Decimal::ZERO));
        entry.0 += 1;
        entry.1 += e.quantity.value();
    }
    out
}

async fn got(
    a: &Tally,
    customer: Option<&CustomerId>,
    r: TimeRange,
    g: Granularity,
    zone: &str,
) -> BTreeMap<(DateTime<Utc>, String), (i64, Decimal)> {
    let zone: Zone = zone.parse().unwrap();
    let mut q = a.usage(r).by(g).in_zone(zone);
    if let Some(c) = customer {
        q = q.customer(c);
    }
    q.await
        .unwrap()
        .buckets
        .into_iter()
        .map(|b| ((b.bucket, b.service), (b.events, b.quantity)))
        .collect()
}

#[tokio::test]
async fn daily_aggregation_is_exact_in_dst_and_odd_offset_zones() {
    let db = TestDb::new().await.unwrap();
    let events = dst_events();
    // Several writes take several lanes of the all-customer rollup; reads add them up.
    for chunk in events.chunks(50) {
        db.tally().write(chunk).await.unwrap();
    }
    let client = db.client().await.unwrap();
    let lanes: i64 = client
        .query_one("SELECT count(DISTINCT lane) FROM usage_hourly_total", &[])
        .await
        .unwrap()
        .get(0);
    assert!(lanes > 1, "{lanes}");
    let a = db.tally().clone();
    let r = range("2026-03-27T00:00:00Z", "2026-03-31T00:00:00Z");
    for zone in [
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Asia/Kolkata",
        "Asia/Kathmandu",
    ] {
        let tz: Tz = zone.parse().unwrap();
        // Only events inside the range count; buckets are clipped to it.
        let inside: Vec<UsageEvent> = events
            .iter()
            .filter(|e| r.contains(e.recorded_at))
            .cloned()
            .collect();
        // A bucket is labelled by its start even where the range clips it.
        let got_acme = got(&a, Some(&acme()), r, Granularity::Day, zone).await;
        assert_eq!(
            got_acme,
            expected_daily(&inside, tz, Some("acme")),
            "{zone}"
        );
        let all = got(&a, None, r, Granularity::Day, zone).await;
        assert_eq!(
            all,
            expected_daily(&inside, tz, None),
            "{zone}, all customers"
        );
    }
}

#[tokio::test]
async fn the_berlin_spring_day_has_23_hours_and_the_fall_day_25() {
    let db = TestDb::new().await.unwrap();
    // One event per UTC hour over both DST days.
    let mut events = Vec::new();
    for (day, id0) in [
        ("2026-03-28T22:30:00Z", 0u128),
        ("2026-10-24T21:30:00Z", 100),
    ] {
        for h in 0..26 {
            let t = at(day) + Duration::hours(h);
            events.push(event(
                id0 + h as u128 + 1,
                "acme",
                Service::API,
                "1",
                &t.to_rfc3339(),
            ));
        }
    }
    db.tally().write(&events).await.unwrap();
    let a = db.tally().clone();
    let spring = got(
        &a,
        Some(&acme()),
        range("2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z"),
        Granularity::Day,
        "Europe/Berlin",
    )
    .await;
    assert_eq!(spring.values().map(|v| v.0).sum::<i64>(), 23);
    assert_eq!(spring.len(), 1);
    let fall = got(
        &a,
        Some(&acme()),
        range("2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z"),
        Granularity::Day,
        "Europe/Berlin",
    )
    .await;
    assert_eq!(fall.len(), 1);
    assert_eq!(fall.values().next().unwrap().0, 25);
    let fall_hours = got(
        &a,
        Some(&acme()),
        range("2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z"),
        Granularity::Hour,
        "Europe/Berlin",
    )
    .await;
    assert_eq!(fall_hours.len(), 25, "the repeated hour is two buckets");
}

#[tokio::test]
async fn hourly_buckets_in_half_and_quarter_hour_zones_are_exact() {
    let db = TestDb::new().await.unwrap();
    let events = dst_events();
    db.tally().write(&events).await.unwrap();
    let a = db.tally().clone();
    let r = range("2026-03-28T00:00:00Z", "2026-03-29T00:00:00Z");
    let inside: Vec<UsageEvent> = events
        .iter()
        .filter(|e| r.contains(e.recorded_at) && e.customer.as_str() == "acme")
        .cloned()
        .collect();
    for (zone, offset) in [("Asia/Kolkata", 330), ("Asia/Kathmandu", 345), ("UTC", 0)] {
        // In +05:30 and +05:45 every local hour straddles two UTC hours: all raw reads.
        let got = got(&a, Some(&acme()), r, Granularity::Hour, zone).await;
        assert_eq!(got, expected_hourly(&inside, offset), "{zone}");
    }
}

#[tokio::test]
async fn summary_prices_usage_and_reads_partial_hours_from_raw_events() {
    let db = TestDb::new().await.unwrap();
    let events = vec![
        event(1, "acme", Service::API, "1000", "2026-11-01T10:05:00Z"),
        event(2, "acme", Service::API, "2345", "2026-11-01T10:20:00Z"),
        event(3, "acme", Service::COMPUTE, "3.5", "2026-11-02T00:00:00Z"),
        event(4, "acme", Service::API, "7", "2026-11-05T23:59:59Z"),
        event(5, "acme", Service::API, "11", "2026-11-06T00:00:00Z"),
        event(6, "globex", Service::API, "99", "2026-11-02T00:00:00Z"),
    ];
    db.tally().write(&events).await.unwrap();
    let a = db.tally().clone();
    // From 10:15 (mid-hour) to the 6th at midnight (exclusive).
    let r = range("2026-11-01T10:15:00Z", "2026-11-06T00:00:00Z");
    let s = a.summary(&acme(), r).await.unwrap();
    let line = |name: &str| {
        s.services
            .iter()
            .find(|l| l.service == name)
            .unwrap()
            .clone()
    };
    let api = line("api");
    assert_eq!((api.quantity, api.events), (d("2352"), 2)); // 2345 + 7
    assert_eq!(api.amount, d("0.24")); // 2352 × 0.0001 = 0.2352 -> 0.24 half-up
    assert_eq!(line("compute").amount, d("0.18")); // 3.5 × 0.05 = 0.175 -> 0.18
    // Display: exact numbers, money with its minor units.
    let text = s.to_string();
    assert!(text.starts_with("acme 2026-"), "{text}");
    assert!(
        text.contains("  api 2352 requests (2 events) 0.24\n"),
        "{text}"
    );
    assert!(text.ends_with(&format!(
        "  total {}",
        tally::serde_fmt::money_text(s.total_amount)
    )));
    assert_eq!(line("storage").quantity, Decimal::ZERO);
    assert_eq!(s.total_amount, d("0.42"));
    // No usage: zeros, not an error.
    let nobody: CustomerId = "nobody".parse().unwrap();
    let empty = a.summary(&nobody, r).await.unwrap();
    assert!(
        empty
            .services
            .iter()
            .all(|l| l.quantity.is_zero() && l.amount.is_zero())
    );
    assert_eq!(empty.total_amount, Decimal::ZERO);
    // Detailed: per UTC day.
    let detailed = a
        .summary(&acme(), r)
        .daily()
        .in_zone(Zone::UTC)
        .await
        .unwrap();
    let days: Vec<(String, String, Decimal)> = detailed
        .days
        .unwrap()
        .into_iter()
        .map(|d| (d.date.to_string(), d.service, d.quantity))
        .collect();
    assert_eq!(
        days,
        vec![
            ("2026-11-01".into(), "api".into(), d("2345")),
            ("2026-11-02".into(), "compute".into(), d("3.5")),
            ("2026-11-05".into(), "api".into(), d("7")),
        ]
    );
}

#[tokio::test]
async fn statistics_follow_percentile_cont_over_events_and_zero_filled_buckets() {
    let db = TestDb::new().await.unwrap();
    let as_of = at("2026-11-20T12:00:00Z");
    let events: Vec<UsageEvent> = (1..=10u32)
        .map(|i| {
            event(
                u128::from(i),
                "acme",
                Service::API,
                &i.to_string(),
                &format!("2026-11-19T{:02}:10:00Z", i),
            )
        })
        .collect();
    db.tally().write(&events).await.unwrap();
    // Outside the window (today, and before it): must not count.
    db.tally()
        .write(&[
            event(50, "acme", Service::API, "1000", "2026-11-20T01:00:00Z"),
            event(51, "acme", Service::API, "1000", "2026-11-17T23:59:59Z"),
        ])
        .await
        .unwrap();
    let a = db.tally().clone();
    let s = a
        .stats(&acme(), &Service::API)
        .days(2)
        .over(Over::Events)
        .as_of(as_of)
        .await
        .unwrap();
    assert_eq!(
        (s.count, s.sum, s.min, s.max),
        (10, d("55"), d("1"), d("10"))
    );
    assert_eq!((s.median, s.p95, s.p99), (d("5.5"), d("9.55"), d("9.91")));
    assert_eq!(s.avg, d("5.5"));
    // Over hours: 48 hours in the window, 10 with usage of 1..10, 38 zeros.
    let h = a
        .stats(&acme(), &Service::API)
        .days(2)
        .over(Over::Hour)
        .as_of(as_of)
        .await
        .unwrap();
    assert_eq!(
        (h.count, h.sum, h.min, h.max),
        (48, d("55"), d("0"), d("10"))
    );
    let mut values: Vec<Decimal> = (1..=10).map(Decimal::from).collect();
    values.extend(std::iter::repeat_n(Decimal::ZERO, 38));
    values.sort();
    // percentile_cont by hand: p95 at position 0.95 × 47 = 44.65.
    let p95 = values[44] + d("0.65") * (values[45] - values[44]);
    assert_eq!(h.p95, p95);
    assert_eq!(h.median, Decimal::ZERO);
    // Over days: two days, 0 and 55.
    let dd = a
        .stats(&acme(), &Service::API)
        .days(2)
        .over(Over::Day)
        .as_of(as_of)
        .await
        .unwrap();
    assert_eq!(
        (dd.count, dd.min, dd.max, dd.median),
        (2, d("0"), d("55"), d("27.5"))
    );
}

#[tokio::test]
async fn trends_compare_with_the_previous_calendar_day() {
    let db = TestDb::new().await.unwrap();
    let as_of = at("2026-11-20T12:00:00Z");
    db.tally()
        .write(&[
            event(1, "acme", Service::API, "1000", "2026-11-15T10:00:00Z"),
            event(2, "acme", Service::API, "3000", "2026-11-16T10:00:00Z"),
            event(3, "acme", Service::API, "3600", "2026-11-17T10:00:00Z"),
            // 18th: nothing.
            event(4, "acme", Service::API, "500", "2026-11-19T10:00:00Z"),
            event(5, "acme", Service::API, "250", "2026-11-20T10:00:00Z"),
        ])
        .await
        .unwrap();
    let a = db.tally().clone();
    let t = a
        .trends(&acme())
        .service(&Service::API)
        .days(6)
        .in_zone(Zone::UTC)
        .as_of(as_of)
        .await
        .unwrap();
    // as_of's day is still running: marked, so its total is not read as a whole day's.
    let partial: Vec<bool> = t.iter().map(|d| d.partial).collect();
    assert_eq!(partial, [false, false, false, false, false, true]);
    let got: Vec<(String, Decimal, Option<Decimal>, Option<Decimal>)> = t
        .into_iter()
        .map(|x| (x.date.to_string(), x.quantity, x.previous, x.change_pct))
        .collect();
    assert_eq!(
        got,
        vec![
            ("2026-11-15".into(), d("1000"), None, None),
            (
                "2026-11-16".into(),
                d("3000"),
                Some(d("1000")),
                Some(d("200.00"))
            ),
            (
                "2026-11-17".into(),
                d("3600"),
                Some(d("3000")),
                Some(d("20.00"))
            ),
            (
                "2026-11-18".into(),
                d("0"),
                Some(d("3600")),
                Some(d("-100.00"))
            ),
            ("2026-11-19".into(), d("500"), Some(d("0")), None),
            (
                "2026-11-20".into(),
                d("250"),
                Some(d("500")),
                Some(d("-50.00"))
            ),
        ]
    );
}

#[tokio::test]
async fn peaks_rank_by_total_with_ties_to_the_earlier_bucket() {
    let db = TestDb::new().await.unwrap();
    db.tally()
        .write(&[
            event(1, "acme", Service::API, "5", "2026-11-01T10:00:00Z"),
            event(2, "acme", Service::API, "9", "2026-11-01T12:00:00Z"),
            event(3, "acme", Service::API, "9", "2026-11-01T11:00:00Z"),
            event(4, "acme", Service::API, "4", "2026-11-01T11:30:00Z"),
            event(5, "acme", Service::API, "13", "2026-11-02T09:00:00Z"),
            event(6, "acme", Service::API, "1", "2026-12-02T09:00:00Z"),
        ])
        .await
        .unwrap();
    let a = db.tally().clone();
    let hours = a
        .peaks(&acme(), &Service::API)
        .by(Granularity::Hour)
        .limit(Limit::new(3).unwrap())
        .await
        .unwrap();
    let got: Vec<(DateTime<Utc>, Decimal, i64)> = hours
        .iter()
        .map(|p| (p.bucket, p.quantity, p.events))
        .collect();
    assert_eq!(
        got,
        vec![
            (at("2026-11-01T11:00:00Z"), d("13"), 2),
            (at("2026-11-02T09:00:00Z"), d("13"), 1),
            (at("2026-11-01T12:00:00Z"), d("9"), 1),
        ]
    );
    let months = a
        .peaks(&acme(), &Service::API)
        .by(Granularity::Month)
        .limit(Limit::new(10).unwrap())
        .await
        .unwrap();
    assert_eq!(
        months
            .iter()
            .map(|p| (p.bucket, p.quantity))
            .collect::<Vec<_>>(),
        vec![
            (at("2026-11-01T00:00:00Z"), d("40")),
            (at("2026-12-01T00:00:00Z"), d("1"))
        ]
    );
    // The limit is validated once, where it enters: a bad one never reaches a query.
    for bad in [0, 10_001] {
        let e = Limit::new(bad).unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
    }
}

/// Every read takes a zone (the handle's by default): peaks and statistics over days
/// of Asia/Kolkata, and peak hours of Asia/Kathmandu (+05:45), against bucketing done
/// here by chrono-tz and by hand.
#[tokio::test]
async fn peaks_and_statistics_honour_the_zone() {
    let db = TestDb::new().await.unwrap();
    let events = dst_events();
    db.tally().write(&events).await.unwrap();
    let api: Vec<UsageEvent> = events
        .iter()
        .filter(|e| e.customer.as_str() == "acme" && e.service == Service::API)
        .cloned()
        .collect();
    let kolkata: Zone = "Asia/Kolkata".parse().unwrap();
    // The handle's own zone is what a query without in_zone uses.
    let in_kolkata = Tally::builder(db.url())
        .zone(kolkata)
        .build()
        .await
        .unwrap();
    let rank = |mut v: Vec<(DateTime<Utc>, Decimal, i64)>| {
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(3);
        v
    };
    let days: Vec<_> = expected_daily(&api, chrono_tz::Asia::Kolkata, Some("acme"))
        .into_iter()
        .map(|((start, _), (n, q))| (start, q, n))
        .collect();
    let got = |p: Vec<tally::report::Peak>| -> Vec<(DateTime<Utc>, Decimal, i64)> {
        p.into_iter()
            .map(|p| (p.bucket, p.quantity, p.events))
            .collect()
    };
    let three = Limit::new(3).unwrap();
    let peak_days = in_kolkata
        .peaks(&acme(), &Service::API)
        .by(Granularity::Day)
        .limit(three)
        .await
        .unwrap();
    assert_eq!(got(peak_days), rank(days.clone()));
    assert_ne!(
        got(db
            .tally()
            .peaks(&acme(), &Service::API)
            .by(Granularity::Day)
            .limit(three)
            .await
            .unwrap()),
        rank(days.clone()),
        "UTC days must differ from Kolkata days here, or the test proves nothing"
    );
    let hours: Vec<_> = expected_hourly(&api, 345)
        .into_iter()
        .map(|((start, _), (n, q))| (start, q, n))
        .collect();
    let peak_hours = db
        .tally()
        .peaks(&acme(), &Service::API)
        .by(Granularity::Hour)
        .limit(three)
        .in_zone("Asia/Kathmandu".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(got(peak_hours), rank(hours));

    // Statistics over the two whole Kolkata days before as_of's Kolkata day.
    let as_of = at("2026-03-29T20:00:00Z"); // 2026-03-30 01:30 in Kolkata
    let window = [
        at("2026-03-27T18:30:00Z"), // 2026-03-28 00:00 in Kolkata
        at("2026-03-28T18:30:00Z"),
    ];
    let expected: Vec<Decimal> = window
        .iter()
        .map(|start| {
            days.iter()
                .find(|(s, _, _)| s == start)
                .map_or(Decimal::ZERO, |(_, q, _)| *q)
        })
        .collect();
    let s = in_kolkata
        .stats(&acme(), &Service::API)
        .days(2)
        .over(Over::Day)
        .as_of(as_of)
        .await
        .unwrap();
    assert_eq!((s.from, s.to), (window[0], at("2026-03-29T18:30:00Z")));
    assert_eq!(s.count, 2);
    assert_eq!(s.sum, expected[0] + expected[1]);
    assert_eq!(s.max, expected[0].max(expected[1]));
}

fn spec_tiers() -> Vec<Tier> {
    vec![
        Tier::new(Some(d("100")), d("1.00")),
        Tier::new(Some(d("200")), d("0.50")),
        Tier::new(None, d("0.10")),
    ]
}

#[tokio::test]
async fn invoice_applies_the_spec_tier_table_and_dated_prices() {
    let db = TestDb::new().await.unwrap();
    let epoch = DateTime::<Utc>::UNIX_EPOCH;
    let mut book = PriceBook::empty();
    book.set(
        &Service::API,
        epoch,
        Price::new(
            PriceModel::Graduated {
                tiers: spec_tiers(),
            },
            Decimal::ZERO,
        )
        .unwrap(),
    );
    book.set(
        &Service::COMPUTE,
        epoch,
        Price::new(
            PriceModel::Volume {
                tiers: spec_tiers(),
            },
            Decimal::ZERO,
        )
        .unwrap(),
    );
    book.set(
        &Service::STORAGE,
        epoch,
        Price::new(
            PriceModel::Package {
                size: d("100"),
                price: d("5.00"),
            },
            d("100"),
        )
        .unwrap(),
    );
    // A price change from December does not rewrite November.
    book.set(
        &Service::STORAGE,
        at("2026-12-01T00:00:00Z"),
        Price::per_unit(d("1")),
    );
    let a = Tally::builder(db.url()).prices(book).build_lazy().unwrap();
    let mut id = 0u128;
    let mut events = Vec::new();
    for (usage, customer) in [
        ("100", "c100"),
        ("200", "c200"),
        ("201", "c201"),
        ("250", "c250"),
    ] {
        // Split each usage over several events and days of November.
        let q: Decimal = d(usage);
        for (part, day) in [(q - d("50"), "05"), (d("50"), "28")] {
            id += 1;
            events.push(event(
                id,
                customer,
                Service::API,
                &part.to_string(),
                &format!("2026-11-{day}T12:00:00Z"),
            ));
            id += 1;
            events.push(event(
                id,
                customer,
                Service::COMPUTE,
                &part.to_string(),
                &format!("2026-11-{day}T12:00:00Z"),
            ));
        }
    }
    id += 1;
    events.push(event(
        id,
        "c201",
        Service::STORAGE,
        "201",
        "2026-11-10T00:00:00Z",
    ));
    id += 1;
    events.push(event(
        id,
        "c201",
        Service::STORAGE,
        "201",
        "2026-12-10T00:00:00Z",
    ));
    db.tally().write(&events).await.unwrap();
    let nov = tally::parse_month("period", "2026-11").unwrap();
    for (customer, graduated, volume) in [
        ("c100", "100.00", "100.00"),
        ("c200", "150.00", "100.00"),
        ("c201", "150.10", "20.10"),
        ("c250", "155.00", "25.00"),
    ] {
        let inv = a.invoice(&customer.parse().unwrap(), nov).await.unwrap();
        let amount = |s: &str| {
            inv.lines
                .iter()
                .find(|l| l.service.as_deref() == Some(s))
                .unwrap()
                .amount
        };
        assert_eq!(amount("api"), d(graduated), "{customer} graduated");
        assert_eq!(amount("compute"), d(volume), "{customer} volume");
        let storage = if customer == "c201" {
            d("10.00")
        } else {
            Decimal::ZERO
        };
        assert_eq!(
            inv.total_amount,
            d(graduated) + d(volume) + storage,
            "{customer} total"
        );
    }
    let c201 = a.invoice(&"c201".parse().unwrap(), nov).await.unwrap();
    let storage = c201
        .lines
        .iter()
        .find(|l| l.service.as_deref() == Some("storage"))
        .unwrap();
    assert_eq!(
        (storage.quantity, storage.billable_quantity, storage.amount),
        (d("201"), d("101"), d("10.00"))
    );
    let dec = a
        .invoice(
            &"c201".parse().unwrap(),
            tally::parse_month("period", "2026-12").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(dec.total_amount, d("201.00"));
    let text = dec.to_string();
    assert!(text.starts_with("invoice "), "{text}");
    assert!(text.ends_with("  total 201.00"), "{text}");
    assert!(text.contains(" usage "), "{text}");
}

/// Count, sum, minimum and maximum per bucket and service, for fixed-offset zones.
type Full = BTreeMap<(DateTime<Utc>, String), (i64, Decimal, Decimal, Decimal)>;

fn expected_full(events: &[UsageEvent], offset_minutes: i64, day: bool) -> Full {
    let width = if day { 86_400 } else { 3600 };
    let mut out = Full::new();
    for e in events {
        let shifted = e.recorded_at + Duration::minutes(offset_minutes);
        let local = shifted - Duration::seconds(shifted.timestamp().rem_euclid(width));
        let start = local - Duration::minutes(offset_minutes);
        let q = e.quantity.value();
        let entry = out
            .entry((start, e.service.to_string()))
            .or_insert((0, Decimal::ZERO, q, q));
        entry.0 += 1;
        entry.1 += q;
        entry.2 = entry.2.min(q);
        entry.3 = entry.3.max(q);
    }
    out
}

async fn got_full(
    a: &Tally,
    customer: Option<&CustomerId>,
    r: TimeRange,
    g: Granularity,
    zone: &str,
) -> Full {
    let zone: Zone = zone.parse().unwrap();
    let mut q = a.usage(r).by(g).in_zone(zone);
    if let Some(c) = customer {
        q = q.customer(c);
    }
    q.await
        .unwrap()
        .buckets
        .into_iter()
        .map(|b| ((b.bucket, b.service), (b.events, b.quantity, b.min, b.max)))
        .collect()
}

#[tokio::test]
async fn quarter_hour_zones_read_the_rollups_not_raw_events() {
    let db = TestDb::new().await.unwrap();
    // Every 7 minutes (so every quarter of every hour gets events, unevenly), quantities
    // varying so each quarter has its own minimum and maximum.
    let start = at("2026-05-03T00:00:00Z");
    let events: Vec<UsageEvent> = (0..3 * 24 * 60 / 7u32)
        .map(|i| {
            let t =
                start + Duration::minutes(7 * i64::from(i)) + Duration::seconds(i64::from(i % 60));
            let customer = if i % 4 == 0 { "globex" } else { "acme" };
            let service = if i % 3 == 0 {
                Service::STORAGE
            } else {
                Service::API
            };
            let q = format!("{}.{}", 1 + (i * 37) % 101, i % 9);
            event(u128::from(i) + 1, customer, service, &q, &t.to_rfc3339())
        })
        .collect();
    for chunk in events.chunks(97) {
        db.tally().write(chunk).await.unwrap();
    }
    assert_eq!(db.tally().verify().await.unwrap().mismatches, 0);
    let a = db.tally().clone();
    // Whole local days inside the data, so every bucket is complete.
    let cases = [("Asia/Kolkata", 330), ("Asia/Kathmandu", 345)];
    let check = |label: &'static str| {
        let a = a.clone();
        let events = events.clone();
        async move {
            for (zone, offset) in cases {
                let r = TimeRange::new(
                    at("2026-05-04T00:00:00Z") - Duration::minutes(offset),
                    at("2026-05-05T00:00:00Z") - Duration::minutes(offset),
                )
                .unwrap();
                let inside: Vec<UsageEvent> = events
                    .iter()
                    .filter(|e| r.contains(e.recorded_at))
                    .cloned()
                    .collect();
                let acme_only: Vec<UsageEvent> = inside
                    .iter()
                    .filter(|e| e.customer.as_str() == "acme")
                    .cloned()
                    .collect();
                let hourly = got_full(&a, Some(&acme()), r, Granularity::Hour, zone).await;
                assert_eq!(
                    hourly,
                    expected_full(&acme_only, offset, false),
                    "{zone} hourly, {label}"
                );
                let daily = got_full(&a, None, r, Granularity::Day, zone).await;
                assert_eq!(
                    daily,
                    expected_full(&inside, offset, true),
                    "{zone} daily, {label}"
                );
                let all_hourly = got_full(&a, None, r, Granularity::Hour, zone).await;
                assert_eq!(
                    all_hourly,
                    expected_full(&inside, offset, false),
                    "{zone} all hourly, {label}"
                );
            }
        }
    };
    check("with raw events").await;
    // Without the raw events the rollups alone still answer: no raw read is needed.
    let client = db.client().await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE saved AS SELECT * FROM usage_events; DELETE FROM usage_events;",
        )
        .await
        .unwrap();
    check("rollups only").await;
    // A row whose detail is not known (archived before migration 0009) is read from
    // raw events, for every row of its hour.
    client
        .batch_execute(
            "INSERT INTO usage_events SELECT * FROM saved;
             UPDATE usage_hourly SET events_by_15 = NULL, events_by_30 = NULL, events_by_45 = NULL
                 WHERE bucket = '2026-05-04T12:00:00Z' AND service = 'api';
             UPDATE usage_hourly_total SET events_by_15 = NULL, events_by_30 = NULL, events_by_45 = NULL
                 WHERE bucket = '2026-05-04T18:00:00Z' AND service = 'storage';",
        )
        .await
        .unwrap();
    check("unknown detail").await;
}

/// Australia/Lord_Howe moves its clocks 30 minutes on 2026-10-04 at 02:00 local
/// (15:30Z): the event at 16:10Z is in the local hour 03:00–04:00 (16:00Z), whether
/// the range starts at local midnight or at 03:00, and every event is in exactly one
/// local clock hour, read from the rollups.
#[tokio::test]
async fn hourly_buckets_are_local_clock_hours_across_a_half_hour_shift() {
    let db = TestDb::new().await.unwrap();
    let t = db.tally();
    let times = [
        "2026-10-03T15:10:00Z",
        "2026-10-03T15:40:00Z",
        "2026-10-03T16:10:00Z",
    ];
    let events: Vec<_> = times
        .iter()
        .enumerate()
        .map(|(i, s)| event(i as u128 + 1, "acme", Service::API, "1", s))
        .collect();
    t.write(&events).await.unwrap();
    let lh: Zone = "Australia/Lord_Howe".parse().unwrap();
    for from in ["2026-10-04", "2026-10-04T03:00:00+11:00"] {
        let r = TimeRange::from_bounds(Some(from), Some("2026-10-05"), lh, Utc::now()).unwrap();
        let b = got(
            t,
            Some(&acme()),
            r,
            Granularity::Hour,
            "Australia/Lord_Howe",
        )
        .await;
        let at16 = b.get(&(at("2026-10-03T16:00:00Z"), "api".to_owned()));
        assert_eq!(at16, Some(&(1, Decimal::ONE)), "from {from}: {b:?}");
        if from == "2026-10-04" {
            // 01:00–02:00 (+10:30), 02:30–03:00 (+11), 03:00–04:00 (+11).
            let expect: BTreeMap<_, _> = [
                (at("2026-10-03T14:30:00Z"), "api".to_owned()),
                (at("2026-10-03T15:30:00Z"), "api".to_owned()),
                (at("2026-10-03T16:00:00Z"), "api".to_owned()),
            ]
            .into_iter()
            .map(|k| (k, (1, Decimal::ONE)))
            .collect();
            assert_eq!(b, expect);
        }
    }
}

/// Issue 26, item 8: what the library hands back prints as a number, not as the
/// column it was stored in (`0.9765625`, not `0.976562500000000`), and a summary names
/// its customer as a `CustomerId`.
#[tokio::test]
async fn values_read_back_print_without_the_columns_trailing_zeros() {
    let db = TestDb::new().await.unwrap();
    db.tally()
        .write(&[event(
            1,
            "acme",
            Service::BANDWIDTH,
            "0.9765625",
            "2026-11-03T10:00:00Z",
        )])
        .await
        .unwrap();
    let r = range("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z");
    let s = db.tally().summary(&acme(), r).await.unwrap();
    let customer: &CustomerId = &s.customer_id;
    assert_eq!(customer, &acme());
    let bandwidth = s
        .services
        .iter()
        .find(|l| l.service == "bandwidth")
        .unwrap();
    assert_eq!(format!("{}", bandwidth.quantity), "0.9765625");
    let usage = db
        .tally()
        .usage(r)
        .customer(&acme())
        .by(Granularity::Day)
        .await
        .unwrap();
    let printed: Vec<String> = usage
        .buckets
        .iter()
        .map(|b| format!("{} {} {}", b.quantity, b.min, b.max))
        .collect();
    assert_eq!(printed, ["0.9765625 0.9765625 0.9765625"]);
}
