//! Pricing parity (issue 14): the amounts Lago's and OpenMeter's own test suites assert,
//! held by Tally's price models, plus the SPEC §9 table and the invariants of minimums.
//! Each peer case names the suite it comes from; Tally's tiers are continuous
//! (`up_to` inclusive), which gives the peers' integer ranges (0–10, 11–20, …) the same
//! amounts for the quantities they test.

use proptest::prelude::*;
use rust_decimal::Decimal;
use tally::pricing::{Metered, Price, PriceModel, Rounding, Tier, round_to};

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn tier(up_to: Option<&str>, unit: &str, flat: &str) -> Tier {
    Tier {
        up_to: up_to.map(d),
        unit_price: d(unit),
        flat_fee: d(flat),
    }
}

fn graduated(tiers: Vec<Tier>) -> Price {
    Price::new(PriceModel::Graduated { tiers }, Decimal::ZERO).unwrap()
}

fn volume(tiers: Vec<Tier>) -> Price {
    Price::new(PriceModel::Volume { tiers }, Decimal::ZERO).unwrap()
}

/// The exact amount (the peers assert unrounded amounts).
fn exact(p: &Price, q: &str) -> Decimal {
    p.exact_amount(d(q)).unwrap()
}

#[test]
fn lago_graduated_cases() {
    // lago-api spec/services/charge_models/graduated_service_spec.rb
    let p = graduated(vec![
        tier(Some("10"), "10", "2"),
        tier(Some("20"), "5", "3"),
        tier(None, "5", "3"),
    ]);
    for (q, want) in [
        ("0", "2"),
        ("1", "12"),
        ("10", "102"),
        ("11", "110"),
        ("12", "115"),
        ("21", "163"),
    ] {
        assert_eq!(exact(&p, q), d(want), "graduated {q}");
    }
    // "when first tier flat amount is zero": nothing at zero.
    let p = graduated(vec![
        tier(Some("0.01"), "0", "0"),
        tier(Some("10"), "10", "2"),
        tier(None, "5", "3"),
    ]);
    assert_eq!(exact(&p, "0"), Decimal::ZERO);
    // "with decimal adjacent ranges".
    let p = graduated(vec![
        tier(Some("0.1"), "10", "0"),
        tier(Some("1"), "5", "0"),
        tier(None, "2", "0"),
    ]);
    assert_eq!(exact(&p, "0.05"), d("0.5"));
    assert_eq!(exact(&p, "0.5"), d("3.0"));
}

#[test]
fn lago_volume_cases() {
    // lago-api spec/services/charge_models/volume_service_spec.rb
    let p = volume(vec![
        tier(Some("100"), "2", "10"),
        tier(Some("200"), "1", "0"),
        tier(None, "0.5", "50"),
    ]);
    for (q, want) in [
        ("0", "10"),
        ("1", "12"),
        ("100", "210"),
        ("100.5", "100.5"),
        ("101", "101"),
        ("200", "200"),
        ("300", "200"),
    ] {
        assert_eq!(exact(&p, q), d(want), "volume {q}");
    }
    let p = volume(vec![
        tier(Some("1"), "0", "0"),
        tier(Some("100"), "2", "10"),
        tier(None, "0.5", "50"),
    ]);
    assert_eq!(exact(&p, "0"), Decimal::ZERO);
}

#[test]
fn lago_percentage_cases() {
    // lago-api spec/services/charge_models/percentage_service_spec.rb, the cases without
    // free events (Tally has no free-event allowance; see docs/pricing.md).
    let pct = |rate: &str, fixed: &str, lo: Option<&str>, hi: Option<&str>| {
        Price::new(
            PriceModel::Percentage {
                rate: d(rate),
                fixed_fee: d(fixed),
                per_event_min: lo.map(d),
                per_event_max: hi.map(d),
            },
            Decimal::ZERO,
        )
        .unwrap()
    };
    let amount = |p: &Price, m: Metered| p.priced(&m, 28).unwrap().amount.normalize();
    // "when free units are not set": 800 × 1.3 % + 4 events × 2.0 = 18.4
    assert_eq!(
        amount(&pct("1.3", "2.0", None, None), Metered::new(d("800"), 4)),
        d("18.4")
    );
    // "when rate is 0": 4 × 2.0 = 8
    assert_eq!(
        amount(&pct("0", "2.0", None, None), Metered::new(d("800"), 4)),
        d("8")
    );
    // "with small units amount": 4 × 2.9 % = 0.116
    assert_eq!(
        amount(&pct("2.9", "0", None, None), Metered::new(d("4"), 4)),
        d("0.116")
    );
    // "when applying min / max amount per transaction": events 10, 80, 10 000 at
    // 2.99 %, each held in [1.75, 12]: 1.75 + 2.392 + 12 = 16.142 ...
    let each = Metered {
        quantity: d("10090"),
        events: 3,
        per_event: Some(vec![d("10"), d("80"), d("10000")]),
    };
    let bounded = pct("2.99", "0", Some("1.75"), Some("12"));
    assert_eq!(amount(&bounded, each.clone()), d("16.142"));
    // ... and with a fixed fee of 2.0 per event: 2.299 + 4.392 + 12 = 18.691.
    let bounded = pct("2.99", "2.0", Some("1.75"), Some("12"));
    assert_eq!(amount(&bounded, each.clone()), d("18.691"));
    // Without the bounds (Lago's non-premium result): 10 090 × 2.99 % = 301.691.
    assert_eq!(
        amount(&pct("2.99", "0", None, None), Metered::new(d("10090"), 3)),
        d("301.691")
    );
}

#[test]
fn graduated_percentage_is_a_graduated_price_with_unit_price_rate_over_100() {
    // Lago's graduated_percentage: 1 % up to 1 000, then 0.5 % (+ 10 flat), as a
    // graduated price with unit prices 0.01 and 0.005.
    let p = graduated(vec![
        tier(Some("1000"), "0.01", "0"),
        tier(None, "0.005", "10"),
    ]);
    assert_eq!(exact(&p, "500"), d("5"));
    assert_eq!(exact(&p, "3000"), d("10") + d("10") + d("10"));
}

fn openmeter_tiers() -> Vec<Tier> {
    // openmeter/billing/service/lineservice/pricegraduatedtiered_test.go,
    // TestTieredPriceCalculator
    vec![
        tier(Some("5"), "0", "100"),
        tier(Some("10"), "0", "50"),
        tier(Some("15"), "10", "0"),
        tier(None, "5", "0"),
    ]
}

#[test]
fn openmeter_graduated_cases() {
    let p = graduated(openmeter_tiers());
    for (q, want) in [
        ("0", "100"),
        ("3", "100"),
        ("5", "100"),
        ("5.001", "150"),
        ("7", "150"),
        ("12", "170"),
        ("22", "235"),
    ] {
        assert_eq!(exact(&p, q), d(want), "graduated {q}");
    }
}

#[test]
fn openmeter_minimum_and_maximum_spend() {
    // TestTieredGraduatedCalculation: tiers ≤5 flat 100, ≤10 flat 50, ≤15 @5, @1.
    let tiers = vec![
        tier(Some("5"), "0", "100"),
        tier(Some("10"), "0", "50"),
        tier(Some("15"), "5", "0"),
        tier(None, "1", "0"),
    ];
    // No usage, minimum 1 000: the flat fee of tier 1 (100) and a minimum-spend line of 900.
    let mut p = graduated(tiers.clone());
    p.minimum = Some(d("1000"));
    let c = p.charge(&Metered::new(Decimal::ZERO, 0), 2).unwrap();
    assert_eq!((c.line.amount, c.true_up), (d("100.00"), Some(d("900.00"))));
    // Usage 22 (100 + 50 + 5×5 + 7×1 = 182), maximum 170: 12 taken off.
    let mut p = graduated(tiers);
    p.maximum = Some(d("170"));
    let c = p.charge(&Metered::new(d("22"), 3), 2).unwrap();
    assert_eq!((c.line.amount, c.cap), (d("182.00"), Some(d("-12.00"))));
}

#[test]
fn the_old_zero_rule_is_one_option_away() {
    let mut p = graduated(openmeter_tiers());
    p.flat_fee_at_zero = false;
    assert_eq!(exact(&p, "0"), Decimal::ZERO);
    assert_eq!(exact(&p, "3"), d("100"));
    // In a price book file it is `"flat_fee_at_zero": false`.
    let json = r#"{"model": "volume", "flat_fee_at_zero": false,
        "tiers": [{"up_to": "100", "unit_price": "2", "flat_fee": "10"}, {"up_to": null, "unit_price": "1"}]}"#;
    let p: Price = serde_json::from_str(json).unwrap();
    assert_eq!(exact(&p.validated().unwrap(), "0"), Decimal::ZERO);
}

#[test]
fn spec_section_9_table() {
    let tiers = vec![
        tier(Some("100"), "1.00", "0"),
        tier(Some("200"), "0.50", "0"),
        tier(None, "0.10", "0"),
    ];
    for (q, g, v) in [
        ("100", "100.00", "100.00"),
        ("200", "150.00", "100.00"),
        ("201", "150.10", "20.10"),
        ("250", "155.00", "25.00"),
    ] {
        assert_eq!(graduated(tiers.clone()).line(d(q)).unwrap().amount, d(g));
        assert_eq!(volume(tiers.clone()).line(d(q)).unwrap().amount, d(v));
    }
    let package = Price::new(
        PriceModel::Package {
            size: d("100"),
            price: d("5.00"),
        },
        d("100"),
    )
    .unwrap();
    assert_eq!(package.line(d("201")).unwrap().amount, d("10.00"));
}

#[test]
fn per_tier_rounding_and_currency_exponents() {
    // 3 tiers of 0.333 per unit: line rounding rounds 0.999 once (1.00); per-tier
    // rounding rounds 0.333 three times (0.33 each: 0.99), as OpenMeter does.
    let tiers = vec![
        tier(Some("1"), "0.333", "0"),
        tier(Some("2"), "0.333", "0"),
        tier(None, "0.333", "0"),
    ];
    let mut p = graduated(tiers);
    assert_eq!(
        p.priced(&Metered::new(d("3"), 3), 2).unwrap().amount,
        d("1.00")
    );
    p.rounding = Rounding::PerTier;
    assert_eq!(
        p.priced(&Metered::new(d("3"), 3), 2).unwrap().amount,
        d("0.99")
    );
    // JPY has no minor unit, BHD three digits; the amount keeps exactly those places.
    let unit = Price::per_unit(d("0.0125"));
    let jpy = unit
        .priced(
            &Metered::new(d("1000"), 1),
            tally::pricing::currency_exponent("JPY"),
        )
        .unwrap();
    assert_eq!(jpy.amount.to_string(), "13");
    let bhd = unit
        .priced(
            &Metered::new(d("1000"), 1),
            tally::pricing::currency_exponent("BHD"),
        )
        .unwrap();
    assert_eq!(bhd.amount.to_string(), "12.500");
    let usd = unit
        .priced(
            &Metered::new(d("1000"), 1),
            tally::pricing::currency_exponent("USD"),
        )
        .unwrap();
    assert_eq!(usd.amount.to_string(), "12.50");
}

fn qty() -> impl Strategy<Value = Decimal> {
    (0i64..100_000_000, 0u32..=4).prop_map(|(m, s)| Decimal::new(m, s))
}

proptest! {
    #[test]
    fn a_true_up_makes_the_line_exactly_the_minimum(q in qty(), min in 0i64..10_000_000, unit in 0i64..10_000) {
        let mut p = Price::per_unit(Decimal::new(unit, 4));
        p.minimum = Some(Decimal::new(min, 2));
        let c = p.charge(&Metered::new(q, 1), 2).unwrap();
        let minimum = round_to(Decimal::new(min, 2), 2);
        match c.true_up {
            // Never more than the minimum, not by a cent.
            Some(up) => prop_assert_eq!(c.line.amount + up, minimum),
            None => prop_assert!(c.line.amount >= minimum),
        }
    }

    #[test]
    fn a_cap_makes_the_line_exactly_the_maximum(q in qty(), max in 0i64..10_000_000, unit in 0i64..10_000) {
        let mut p = Price::per_unit(Decimal::new(unit, 4));
        p.maximum = Some(Decimal::new(max, 2));
        let c = p.charge(&Metered::new(q, 1), 2).unwrap();
        let maximum = round_to(Decimal::new(max, 2), 2);
        match c.cap {
            Some(cap) => prop_assert_eq!(c.line.amount + cap, maximum),
            None => prop_assert!(c.line.amount <= maximum),
        }
    }

    #[test]
    fn per_tier_rounding_stays_within_half_a_cent_per_tier(q in qty()) {
        let tiers = vec![tier(Some("10"), "0.3333", "0.005"), tier(Some("100"), "0.1111", "0"), tier(None, "0.0123", "1")];
        let mut p = graduated(tiers);
        let line = p.priced(&Metered::new(q, 1), 2).unwrap().amount;
        p.rounding = Rounding::PerTier;
        let per_tier = p.priced(&Metered::new(q, 1), 2).unwrap().amount;
        prop_assert!((line - per_tier).abs() <= Decimal::new(2, 2), "{line} vs {per_tier}");
    }
}
