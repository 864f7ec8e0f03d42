//! The analytics targets of issue 4, on a database of `TALLY_BENCH_URL` filled by
//! `tally-load --events 10000000 --shape backfill --keep` (1 000 customers, 6 services,
//! 30 days). Without it, a fresh database gets a small backfill of its own (200 000
//! events; 2 000 in test mode), so the bench always runs.

use std::future::IntoFuture;
use std::time::Duration;

use chrono::{DateTime, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use tally::{CustomerId, Granularity, Service, Tally, TimeRange, Zone, report::Over};
use tally_benches::bench_database;

fn analytics(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_db, url) = rt.block_on(bench_database("analytics"));
    let a = Tally::connect_lazy(&url).unwrap();
    // The month: the 30 whole UTC days ending with the last day that has data.
    let end: DateTime<Utc> = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let last: DateTime<Utc> = client
            .query_one("SELECT max(bucket) FROM usage_daily", &[])
            .await
            .unwrap()
            .get(0);
        last + chrono::Duration::days(1)
    });
    let month = TimeRange::new(end - chrono::Duration::days(30), end).unwrap();
    // cust-0000 has the largest share (~6 % of all events); cust-0300 is a typical one.
    let top: CustomerId = "cust-0000".parse().unwrap();
    let typical: CustomerId = "cust-0300".parse().unwrap();

    let mut g = c.benchmark_group("analytics");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    for (name, customer) in [("top", &top), ("typical", &typical)] {
        g.bench_function(format!("customer_month_summary/{name}"), |b| {
            b.to_async(&rt)
                .iter(|| a.summary(customer, month).into_future())
        });
        g.bench_function(format!("customer_month_hourly_series/{name}"), |b| {
            b.to_async(&rt).iter(|| {
                a.usage(month)
                    .customer(customer)
                    .by(Granularity::Hour)
                    .in_zone(Zone::UTC)
                    .into_future()
            })
        });
        g.bench_function(format!("customer_month_hourly_percentiles/{name}"), |b| {
            b.to_async(&rt).iter(|| {
                a.stats(customer, &Service::API)
                    .days(30)
                    .over(Over::Hour)
                    .as_of(end)
                    .into_future()
            })
        });
    }
    g.bench_function("all_customers_daily_month", |b| {
        b.to_async(&rt).iter(|| {
            a.usage(month)
                .by(Granularity::Day)
                .in_zone(Zone::UTC)
                .into_future()
        })
    });
    let berlin: Zone = "Europe/Berlin".parse().unwrap();
    g.bench_function("all_customers_daily_month_berlin", |b| {
        b.to_async(&rt).iter(|| {
            a.usage(month)
                .by(Granularity::Day)
                .in_zone(berlin)
                .into_future()
        })
    });
    g.finish();

    // Half- and quarter-hour zones (issue 11): their bucket edges fall inside UTC hours,
    // on a quarter hour; the hourly rollups' quarter detail answers them.
    let mut g = c.benchmark_group("analytics_zones");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    for name in ["Asia/Kolkata", "Asia/Kathmandu"] {
        let zone: Zone = name.parse().unwrap();
        let short = name.rsplit('/').next().unwrap_or(name).to_lowercase();
        g.bench_function(format!("all_customers_daily_month/{short}"), |b| {
            b.to_async(&rt).iter(|| {
                a.usage(month)
                    .by(Granularity::Day)
                    .in_zone(zone)
                    .into_future()
            })
        });
        g.bench_function(format!("customer_month_hourly_series/top/{short}"), |b| {
            b.to_async(&rt).iter(|| {
                a.usage(month)
                    .customer(&top)
                    .by(Granularity::Hour)
                    .in_zone(zone)
                    .into_future()
            })
        });
    }
    g.finish();

    // Percentiles over single events read the raw events (issue 11: `stats --over
    // events`); slow, so few samples.
    let mut g = c.benchmark_group("analytics_raw");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("customer_month_event_percentiles/top", |b| {
        b.to_async(&rt).iter(|| {
            a.stats(&top, &Service::API)
                .days(30)
                .over(Over::Events)
                .as_of(end)
                .into_future()
        })
    });
    g.finish();
}

criterion_group!(benches, analytics);
criterion_main!(benches);
