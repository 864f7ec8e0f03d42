//! Property tests of the pricing and bucketing invariants (no database).

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use tally::{
    CustomerId, Granularity, Quantity, Zone,
    pricing::{Price, PriceModel, Tier, round_money},
};

fn qty() -> impl Strategy<Value = Decimal> {
    (0i64..1_000_000_000, 0u32..=6).prop_map(|(m, s)| Decimal::new(m, s))
}

fn tiers() -> impl Strategy<Value = Vec<Tier>> {
    // Up to four bounded tiers with increasing bounds, then an unbounded one.
    (
        prop::collection::vec((1i64..10_000, 0i64..10_000, 0i64..1_000), 0..4),
        0i64..10_000,
    )
        .prop_map(|(bounded, last)| {
            let mut up = Decimal::ZERO;
            let mut out: Vec<Tier> = bounded
                .into_iter()
                .map(|(width, price, fee)| {
                    up += Decimal::from(width);
                    Tier {
                        up_to: Some(up),
                        unit_price: Decimal::new(price, 3),
                        flat_fee: Decimal::new(fee, 2),
                    }
                })
                .collect();
            out.push(Tier::new(None, Decimal::new(last, 3)));
            out
        })
}

proptest! {
    #[test]
    fn graduated_is_monotone(t in tiers(), a in qty(), b in qty()) {
        let p = Price::new(PriceModel::Graduated { tiers: t }, Decimal::ZERO).unwrap();
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(p.exact_amount(lo).unwrap() <= p.exact_amount(hi).unwrap());
    }

    #[test]
    fn graduated_tiers_split_sums_to_whole(t in tiers(), q in qty()) {
        // Pricing each tier's slice as per-unit and adding flat fees of reached tiers
        // gives the graduated amount: the split loses and invents nothing.
        let p = Price::new(PriceModel::Graduated { tiers: t.clone() }, Decimal::ZERO).unwrap();
        let mut lower = Decimal::ZERO;
        let mut sum = Decimal::ZERO;
        let mut units = Decimal::ZERO;
        for tier in &t {
            let upper = tier.up_to.unwrap_or(q.max(lower));
            let slice = (q.min(upper) - lower).max(Decimal::ZERO);
            if slice > Decimal::ZERO {
                sum += Price::per_unit(tier.unit_price).exact_amount(slice).unwrap() + tier.flat_fee;
            }
            units += slice;
            lower = upper;
        }
        prop_assert_eq!(units, q);
        prop_assert_eq!(sum, p.exact_amount(q).unwrap());
    }

    #[test]
    fn rounding_is_idempotent(m in any::<i64>(), s in 0u32..=12) {
        let d = Decimal::new(m, s);
        prop_assert_eq!(round_money(round_money(d)), round_money(d));
    }

    #[test]
    fn bucket_of_a_bucket_start_is_itself(secs in 0i64..4_000_000_000, zone in prop::sample::select(vec![
        "UTC", "Asia/Kolkata", "Asia/Kathmandu", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago",
    ]), g in prop::sample::select(vec![Granularity::Hour, Granularity::Day, Granularity::Month])) {
        let zone: Zone = zone.parse().unwrap();
        let t = DateTime::<Utc>::UNIX_EPOCH + Duration::seconds(secs);
        let start = zone.bucket_start(t, g);
        prop_assert!(start <= t);
        prop_assert_eq!(zone.bucket_start(start, g), start);
        let next = zone.next_bucket(start, g);
        prop_assert!(next > t);
    }

    #[test]
    fn quantity_text_round_trips(m in 0i64..i64::MAX, s in 0u32..=15) {
        let d = Decimal::new(m, s);
        prop_assume!(d < Quantity::LIMIT);
        let q: Quantity = d.to_string().parse().unwrap();
        prop_assert_eq!(q.value(), d);
    }

    #[test]
    fn customer_ids_of_allowed_chars_parse(id in "[A-Za-z0-9_.:@-]{1,255}") {
        let parsed: CustomerId = id.parse().unwrap();
        prop_assert_eq!(parsed.as_str(), id.as_str());
    }
}

#[test]
fn customer_id_bad_inputs() {
    for bad in [
        "a b".to_owned(),
        String::new(),
        "x".repeat(256),
        "a'; drop table x;--".to_owned(),
        "é".to_owned(),
    ] {
        let e = bad.parse::<CustomerId>().unwrap_err();
        assert_eq!(e.field(), Some("customer_id"), "{bad}");
    }
    assert!("x".repeat(255).parse::<CustomerId>().is_ok());
}

#[test]
fn service_bad_inputs() {
    let e = "apis".parse::<tally::Service>().unwrap_err();
    assert_eq!(e.field(), Some("service"));
    assert!(e.to_string().contains("\"apis\""));
    assert!(tally::Service::custom("api").is_err());
    assert!(tally::Service::custom("GPU").is_err());
    let mut cat = tally::Catalog::default();
    assert!(cat.service("gpu_seconds").is_err());
    cat.define(tally::Meter::new("gpu_seconds", "seconds").unwrap());
    assert_eq!(cat.service("gpu_seconds").unwrap().as_str(), "gpu_seconds");
    assert_eq!(cat.service("storage").unwrap(), tally::Service::STORAGE);
}
