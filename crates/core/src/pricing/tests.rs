//! The price models against hand computations and the peers' test cases.

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, dec};

use super::*;
use crate::Service;

fn spec_tiers() -> Vec<Tier> {
    vec![
        Tier::new(Some(dec!(100)), dec!(1.00)),
        Tier::new(Some(dec!(200)), dec!(0.50)),
        Tier::new(None, dec!(0.10)),
    ]
}

#[test]
fn spec_section_9_table() {
    let g = Price::new(
        PriceModel::Graduated {
            tiers: spec_tiers(),
        },
        Decimal::ZERO,
    )
    .unwrap();
    let v = Price::new(
        PriceModel::Volume {
            tiers: spec_tiers(),
        },
        Decimal::ZERO,
    )
    .unwrap();
    for (usage, graduated, volume) in [
        (dec!(100), dec!(100.00), dec!(100.00)),
        (dec!(200), dec!(150.00), dec!(100.00)),
        (dec!(201), dec!(150.10), dec!(20.10)),
        (dec!(250), dec!(155.00), dec!(25.00)),
    ] {
        assert_eq!(
            g.line(usage).unwrap().amount,
            graduated,
            "graduated {usage}"
        );
        assert_eq!(v.line(usage).unwrap().amount, volume, "volume {usage}");
    }
}

#[test]
fn package_after_allowance() {
    let p = Price::new(
        PriceModel::Package {
            size: dec!(100),
            price: dec!(5.00),
        },
        dec!(100),
    )
    .unwrap();
    let line = p.line(dec!(201)).unwrap();
    assert_eq!(line.billable_quantity, dec!(101));
    assert_eq!(line.amount, dec!(10.00));
    assert_eq!(p.line(dec!(100)).unwrap().amount, dec!(0));
    assert_eq!(p.line(dec!(100.5)).unwrap().amount, dec!(5.00));
}

#[test]
fn flat_fees_once_per_reached_tier() {
    let mut tiers = spec_tiers();
    tiers[0].flat_fee = dec!(10);
    tiers[1].flat_fee = dec!(20);
    let g = Price::new(
        PriceModel::Graduated {
            tiers: tiers.clone(),
        },
        Decimal::ZERO,
    )
    .unwrap();
    // At zero usage the first tier's flat fee is charged (Lago, OpenMeter)...
    assert_eq!(g.line(dec!(0)).unwrap().amount, dec!(10));
    // ...unless the price says otherwise (Tally's rule before issue 14).
    let mut old_rule = g.clone();
    old_rule.flat_fee_at_zero = false;
    assert_eq!(old_rule.line(dec!(0)).unwrap().amount, dec!(0));
    assert_eq!(old_rule.line(dec!(50)).unwrap().amount, dec!(60));
    assert_eq!(g.line(dec!(50)).unwrap().amount, dec!(60));
    assert_eq!(g.line(dec!(100)).unwrap().amount, dec!(110));
    assert_eq!(g.line(dec!(101)).unwrap().amount, dec!(130.50));
    let v = Price::new(PriceModel::Volume { tiers }, Decimal::ZERO).unwrap();
    assert_eq!(v.line(dec!(150)).unwrap().amount, dec!(95));
}

#[test]
fn fractional_units_exact_and_rounded_half_up_once() {
    let p = Price::per_unit(dec!(0.0001));
    assert_eq!(p.exact_amount(dec!(12345)).unwrap(), dec!(1.2345));
    assert_eq!(p.line(dec!(12345)).unwrap().amount, dec!(1.23));
    assert_eq!(p.line(dec!(12350)).unwrap().amount, dec!(1.24)); // 1.235 -> half-up
    let g = Price::new(
        PriceModel::Graduated {
            tiers: spec_tiers(),
        },
        Decimal::ZERO,
    )
    .unwrap();
    assert_eq!(g.exact_amount(dec!(200.05)).unwrap(), dec!(150.005));
    assert_eq!(g.line(dec!(200.05)).unwrap().amount, dec!(150.01));
}

#[test]
fn invalid_prices_are_rejected() {
    let bad = vec![
        Tier::new(Some(dec!(100)), dec!(1)),
        Tier::new(Some(dec!(50)), dec!(1)),
        Tier::new(None, dec!(1)),
    ];
    assert_eq!(
        Price::new(PriceModel::Graduated { tiers: bad }, Decimal::ZERO)
            .unwrap_err()
            .field(),
        Some("up_to")
    );
    let bounded = vec![Tier::new(Some(dec!(100)), dec!(1))];
    assert!(Price::new(PriceModel::Volume { tiers: bounded }, Decimal::ZERO).is_err());
    assert!(
        Price::new(
            PriceModel::Package {
                size: dec!(0),
                price: dec!(1)
            },
            Decimal::ZERO
        )
        .is_err()
    );
    assert!(
        Price::new(
            PriceModel::PerUnit {
                unit_price: dec!(-1)
            },
            Decimal::ZERO
        )
        .is_err()
    );
    assert!(
        Price::new(
            PriceModel::PerUnit {
                unit_price: dec!(1)
            },
            dec!(-1)
        )
        .is_err()
    );
}

#[test]
fn price_changes_apply_from_their_date() {
    let mut book = PriceBook::default();
    let change: DateTime<Utc> = "2026-06-01T00:00:00Z".parse().unwrap();
    book.set(&Service::API, change, Price::per_unit(dec!(0.0002)));
    let before: DateTime<Utc> = "2026-05-31T23:59:59Z".parse().unwrap();
    assert_eq!(
        book.price_at(&Service::API, before).unwrap().unit_price(),
        Some(dec!(0.0001))
    );
    assert_eq!(
        book.price_at(&Service::API, change).unwrap().unit_price(),
        Some(dec!(0.0002))
    );
    assert!(
        book.price_at(&Service::custom("gpu").unwrap(), change)
            .is_none()
    );
}

#[test]
fn price_book_round_trips_through_json() {
    let mut book = PriceBook::default();
    book.set(
        &Service::COMPUTE,
        DateTime::<Utc>::UNIX_EPOCH,
        Price::new(
            PriceModel::Graduated {
                tiers: spec_tiers(),
            },
            dec!(10),
        )
        .unwrap(),
    );
    let text = serde_json::to_string(&book).unwrap();
    let back: PriceBook = serde_json::from_str(&text).unwrap();
    assert_eq!(back, book);
    back.validate().unwrap();
}

#[test]
fn a_period_is_cut_where_a_version_starts_inside_it() {
    let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
    let nov = crate::TimeRange::new(t("2026-11-01T00:00:00Z"), t("2026-12-01T00:00:00Z")).unwrap();
    let mut book = PriceBook::empty();
    book.set(
        &Service::API,
        t("2020-01-01T00:00:00Z"),
        Price::per_unit(dec!(1)),
    );
    // On the period's first instant and after its end: no cut.
    book.set(
        &Service::API,
        t("2026-11-01T00:00:00Z"),
        Price::per_unit(dec!(2)),
    );
    book.set(
        &Service::API,
        t("2026-12-01T00:00:00Z"),
        Price::per_unit(dec!(9)),
    );
    book.set(
        &Service::API,
        t("2026-11-16T00:00:00Z"),
        Price::per_unit(dec!(3)),
    );
    let parts: Vec<(DateTime<Utc>, DateTime<Utc>, Option<Decimal>)> = book
        .parts(&Service::API, nov)
        .into_iter()
        .map(|(r, p)| (r.from(), r.to(), p.and_then(Price::unit_price)))
        .collect();
    assert_eq!(
        parts,
        [
            (
                t("2026-11-01T00:00:00Z"),
                t("2026-11-16T00:00:00Z"),
                Some(dec!(2))
            ),
            (
                t("2026-11-16T00:00:00Z"),
                t("2026-12-01T00:00:00Z"),
                Some(dec!(3))
            ),
        ]
    );
    // A service priced only from mid-month: unpriced before.
    book.set(
        &Service::COMPUTE,
        t("2026-11-16T00:00:00Z"),
        Price::per_unit(dec!(1)),
    );
    let compute = book.parts(&Service::COMPUTE, nov);
    assert_eq!(compute.len(), 2);
    assert!(compute[0].1.is_none() && compute[1].1.is_some());
    assert_eq!(share_of(compute[0].0, nov), dec!(0.5));
    assert_eq!(share_of(nov, nov), Decimal::ONE);
    // A minimum and a maximum prorated, the rest kept.
    let mut p = Price::per_unit(dec!(1));
    p.minimum = Some(dec!(30));
    p.maximum = Some(dec!(90));
    let half = p.for_share(dec!(0.5));
    assert_eq!(
        (half.minimum, half.maximum),
        (Some(dec!(15)), Some(dec!(45)))
    );
    assert_eq!(half.unit_price(), Some(dec!(1)));
}
