//! Meters (issue 24): ingest of CloudEvents of a type feeding three meters (SUM with 2
//! dimensions, COUNT, UNIQUE_COUNT) against the same events with no meter (the
//! single-service path, the same-run baseline), and the reads: a customer-month grouped
//! by 2 dimensions with DAY windows in UTC and in Asia/Kolkata, and a month's
//! UNIQUE_COUNT of one customer, and of one with 100 000 distinct values (the whole
//! month, and the month cut on minutes). Events: 1,000 customers, 12 models × 2 types.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tally::{
    Metadata, TimeRange, Zone,
    meters::{Aggregation, CloudEvent, MeterQuery, MeterSpec, WindowSize},
};
use tally_benches::test_mode;
use tally_testdb::TestDb;

fn month() -> TimeRange {
    let from: DateTime<Utc> = "2026-10-01T00:00:00Z".parse().unwrap();
    let to: DateTime<Utc> = "2026-11-01T00:00:00Z".parse().unwrap();
    TimeRange::new(from, to).unwrap()
}

/// `n` events from `seed`, spread over the month, `users` distinct users.
fn events(kind: &str, n: u64, seed: u64, users: u64) -> Vec<CloudEvent> {
    let span = (month().to() - month().from()).num_seconds() as u64;
    (0..n)
        .map(|i| {
            let k = seed * 1_000_003 + i;
            let h = k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let data: Metadata = format!(
                r#"{{"model": "m{}", "type": "t{}", "tokens": {}, "user": "u{}"}}"#,
                h % 12,
                (h >> 8) % 2,
                (h >> 16) % 5000,
                (h >> 24) % users
            )
            .parse()
            .unwrap();
            let customer = if (h >> 40).is_multiple_of(4) {
                0
            } else {
                (h >> 32) % 1000
            };
            CloudEvent::new(
                kind.parse().unwrap(),
                format!("c{customer}").parse().unwrap(),
            )
            .with_id("bench", &k.to_string())
            .unwrap()
            .at(month().from() + chrono::Duration::seconds(((h >> 20) % span) as i64))
            .with_data(data)
        })
        .collect()
}

fn spec(slug: &str, agg: Aggregation, value: Option<&str>) -> MeterSpec {
    MeterSpec::new(
        slug.parse().unwrap(),
        "prompt".parse().unwrap(),
        agg,
        value.map(|v| v.parse().unwrap()),
    )
    .unwrap()
}

fn meters(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db = rt
        .block_on(TestDb::new())
        .expect("the meters bench needs PostgreSQL");
    let tally = db.tally().clone();
    rt.block_on(async {
        let tokens = spec("tokens", Aggregation::Sum, Some("$.tokens"))
            .dimension("model", "$.model".parse().unwrap())
            .unwrap()
            .dimension("type", "$.type".parse().unwrap())
            .unwrap();
        tally.create_meter(&tokens, None).await.unwrap();
        tally
            .create_meter(&spec("prompts", Aggregation::Count, None), None)
            .await
            .unwrap();
        tally
            .create_meter(
                &spec("users", Aggregation::UniqueCount, Some("$.user")),
                None,
            )
            .await
            .unwrap();
    });
    let batch = if test_mode() { 200 } else { 5_000 };
    let mut group = c.benchmark_group("meter_ingest");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(batch));
    // "prompt" feeds the three meters; "plain" (no meter) is the same path without them.
    for kind in ["plain", "prompt"] {
        let mut seed = if kind == "plain" { 1_000_000 } else { 0 };
        group.bench_with_input(BenchmarkId::new(kind, batch), &kind, |b, kind| {
            b.to_async(&rt).iter_custom(|iters| {
                let tally = tally.clone();
                seed += iters;
                let first = seed;
                let kind = kind.to_string();
                async move {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        let ev = events(&kind, batch, first + i, 100_000);
                        let t = Instant::now();
                        tally.write_cloud_events(&ev).await.unwrap();
                        total += t.elapsed();
                    }
                    total
                }
            })
        });
    }
    group.finish();

    let customer: tally::CustomerId = "c0".parse().unwrap();
    let kolkata: Zone = "Asia/Kolkata".parse().unwrap();
    let mut group = c.benchmark_group("meter_query");
    group.sample_size(20);
    for (name, zone) in [("utc", Zone::UTC), ("kolkata", kolkata)] {
        let q = MeterQuery::new(month(), Utc::now())
            .customer(&customer)
            .window(WindowSize::Day)
            .in_zone(zone)
            .group_by("model")
            .group_by("type");
        group.bench_function(
            BenchmarkId::new("customer_month_day_by_2_dims", name),
            |b| {
                b.to_async(&rt)
                    .iter(|| async { tally.query_meter("tokens", &q).await.unwrap() })
            },
        );
    }
    let q = MeterQuery::new(month(), Utc::now()).customer(&customer);
    group.bench_function("unique_count_customer_month", |b| {
        b.to_async(&rt)
            .iter(|| async { tally.query_meter("users", &q).await.unwrap() })
    });
    // The issue's size: one customer with 100 000 distinct users in the month (each
    // user once, spread over the month; a mid-month range also reads day and quarter
    // buckets and raw edges).
    let top: tally::CustomerId = "top".parse().unwrap();
    let distinct: u64 = if test_mode() { 500 } else { 100_000 };
    let span = (month().to() - month().from()).num_seconds() as u64;
    rt.block_on(async {
        let all: Vec<CloudEvent> = (0..distinct)
            .map(|i| {
                CloudEvent::new("prompt".parse().unwrap(), top.clone())
                    .with_id("bench-top", &i.to_string())
                    .unwrap()
                    .at(month().from() + chrono::Duration::seconds(((i * 7919) % span) as i64))
                    .with_data(
                        format!(r#"{{"model": "m0", "type": "t0", "tokens": 1, "user": "v{i}"}}"#)
                            .parse()
                            .unwrap(),
                    )
            })
            .collect();
        for chunk in all.chunks(5_000) {
            tally.write_cloud_events(chunk).await.unwrap();
        }
    });
    let whole = MeterQuery::new(month(), Utc::now()).customer(&top);
    let cut = MeterQuery::new(
        TimeRange::new(
            month().from() + chrono::Duration::minutes(7),
            month().to() - chrono::Duration::minutes(7),
        )
        .unwrap(),
        Utc::now(),
    )
    .customer(&top);
    for (name, q) in [("month", whole), ("month_cut_on_minutes", cut)] {
        group.bench_function(BenchmarkId::new("unique_count_100k_distinct", name), |b| {
            b.to_async(&rt)
                .iter(|| async { tally.query_meter("users", &q).await.unwrap() })
        });
    }
    group.finish();
}

criterion_group!(benches, meters);
criterion_main!(benches);
