//! Pure pricing and bucketing costs (no database).

use std::hint::black_box;

use chrono::{DateTime, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use rust_decimal::Decimal;
use tally::{
    Granularity, Zone,
    pricing::{Price, PriceModel, Tier},
};

fn pricing(c: &mut Criterion) {
    let tiers = vec![
        Tier::new(Some(Decimal::from(100)), Decimal::ONE),
        Tier::new(Some(Decimal::from(200)), Decimal::new(5, 1)),
        Tier::new(None, Decimal::new(1, 1)),
    ];
    let graduated = Price::new(
        PriceModel::Graduated {
            tiers: tiers.clone(),
        },
        Decimal::from(10),
    )
    .unwrap();
    let volume = Price::new(PriceModel::Volume { tiers }, Decimal::ZERO).unwrap();
    let q = Decimal::new(250_123_456, 6);
    c.bench_function("graduated_line", |b| {
        b.iter(|| graduated.line(black_box(q)).unwrap())
    });
    c.bench_function("volume_line", |b| {
        b.iter(|| volume.line(black_box(q)).unwrap())
    });
    let t: DateTime<Utc> = "2026-10-25T01:30:00Z".parse().unwrap();
    let berlin: Zone = "Europe/Berlin".parse().unwrap();
    let kathmandu: Zone = "Asia/Kathmandu".parse().unwrap();
    c.bench_function("day_bucket_berlin", |b| {
        b.iter(|| berlin.bucket_start(black_box(t), Granularity::Day))
    });
    c.bench_function("hour_bucket_kathmandu", |b| {
        b.iter(|| kathmandu.bucket_start(black_box(t), Granularity::Hour))
    });
}

criterion_group!(benches, pricing);
criterion_main!(benches);
