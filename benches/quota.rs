//! `check_quota` (issue 9: ≤ 1 ms p50, ≤ 3 ms p99 on a database of 10M events), on the
//! database of `TALLY_BENCH_URL` filled by `tally-load --events 10000000 --shape
//! backfill --keep`. Without it, a fresh database gets a small backfill of its own
//! (200 000 events; 2 000 in test mode), so the bench always runs.
//!
//! Besides criterion's means it prints per-call p50 / p99 (what the target is about)
//! next to the same figures for `SELECT 1` on the same server, the floor of any call
//! that reads the database.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tally::{
    CustomerId, Quantity, Service, Tally,
    alerts::{AlertConfig, AnchorDay, BillingCycle},
};
use tally_benches::{bench_database, test_mode};
use tokio_postgres::NoTls;

fn percentiles(mut d: Vec<Duration>) -> (f64, f64) {
    d.sort();
    let at = |p: f64| {
        let i = ((d.len() as f64 - 1.0) * p).round() as usize;
        d[i].as_secs_f64() * 1e6
    };
    (at(0.50), at(0.99))
}

fn quota(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_db, url) = rt.block_on(bench_database("quota"));
    let cached = Tally::connect_lazy(&url).unwrap();
    let uncached = Tally::builder(&url)
        .alert_config(AlertConfig::default().cache_ttl(Duration::ZERO))
        .build_lazy()
        .unwrap();
    // cust-0000 sends ~6 % of all events, cust-0300 a typical share; cust-0301's
    // periods start at midnight in Kolkata (18:30 UTC), so its read has raw edges.
    let top: CustomerId = "cust-0000".parse().unwrap();
    let typical: CustomerId = "cust-0300".parse().unwrap();
    let kolkata: CustomerId = "cust-0301".parse().unwrap();
    rt.block_on(async {
        let pro = "pro".parse().unwrap();
        for cust in [&top, &typical] {
            cached.alerts().assign_plan(cust, &pro, None).await.unwrap();
        }
        let cycle = BillingCycle {
            anchor: AnchorDay::new(15).unwrap(),
            zone: "Asia/Kolkata".parse().unwrap(),
        };
        cached
            .alerts()
            .assign_plan(&kolkata, &pro, Some(cycle))
            .await
            .unwrap();
    });
    let one: Quantity = "1".parse().unwrap();
    let (client, conn) = rt.block_on(tokio_postgres::connect(&url, NoTls)).unwrap();
    rt.spawn(conn);

    let mut g = c.benchmark_group("check_quota");
    g.sample_size(50).measurement_time(Duration::from_secs(3));
    g.bench_function("select_1_baseline", |b| {
        b.to_async(&rt).iter(|| client.simple_query("SELECT 1"))
    });
    let cases: [(&str, &Tally, &CustomerId); 5] = [
        ("uncached/top", &uncached, &top),
        ("uncached/typical", &uncached, &typical),
        ("uncached/kolkata", &uncached, &kolkata),
        ("cached/top", &cached, &top),
        ("cached/typical", &cached, &typical),
    ];
    for (name, t, cust) in cases {
        g.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| t.check_quota(cust, &Service::API, one))
        });
    }
    g.finish();

    if test_mode() {
        return;
    }
    // Per-call latency distribution, 5 000 calls each.
    let calls = 5_000;
    let base = rt.block_on(async {
        let mut d = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t0 = Instant::now();
            client.simple_query("SELECT 1").await.unwrap();
            d.push(t0.elapsed());
        }
        percentiles(d)
    });
    println!(
        "{{\"case\":\"select_1_baseline\",\"p50_us\":{:.1},\"p99_us\":{:.1}}}",
        base.0, base.1
    );
    for (name, t, cust) in cases {
        let (p50, p99) = rt.block_on(async {
            let mut d = Vec::with_capacity(calls);
            for _ in 0..calls {
                let t0 = Instant::now();
                t.check_quota(cust, &Service::API, one).await.unwrap();
                d.push(t0.elapsed());
            }
            percentiles(d)
        });
        println!(
            "{{\"case\":\"{name}\",\"p50_us\":{p50:.1},\"p99_us\":{p99:.1},\"p50_vs_select_1\":{:.3},\"p99_vs_select_1\":{:.3}}}",
            p50 / base.0,
            p99 / base.1
        );
    }
}

criterion_group!(benches, quota);
criterion_main!(benches);
