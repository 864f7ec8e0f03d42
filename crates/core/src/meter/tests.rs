use chrono::Duration;
use rust_decimal::Decimal;
use uuid::Uuid;

use super::*;

fn spec(agg: Aggregation, value: Option<&str>) -> MeterSpec {
    MeterSpec::new(
        "tokens_total".parse().unwrap(),
        "prompt".parse().unwrap(),
        agg,
        value.map(|v| v.parse().unwrap()),
    )
    .unwrap()
    .dimension("model", "$.model".parse().unwrap())
    .unwrap()
}

fn t0() -> DateTime<Utc> {
    "2026-05-01T00:00:00Z".parse().unwrap()
}

#[test]
fn a_meter_reads_its_value_and_dimensions_exactly() {
    let m = spec(Aggregation::Sum, Some("$.tokens"));
    let data: Metadata = r#"{"tokens": 12345678901234567.123456789, "model": "gpt-4o"}"#
        .parse()
        .unwrap();
    let r = m.read(&Payload::of(&data), t0()).unwrap().unwrap();
    assert_eq!(
        r.value,
        Value::Number("12345678901234567.123456789".parse().unwrap())
    );
    assert_eq!(r.dims, vec![Some("gpt-4o".to_owned())]);
    // A number in a string, a missing dimension.
    let data: Metadata = r#"{"tokens": "7.5"}"#.parse().unwrap();
    let r = m.read(&Payload::of(&data), t0()).unwrap().unwrap();
    assert_eq!(r.value.number(), Some("7.5".parse().unwrap()));
    assert_eq!(r.dims, vec![None]);
}

#[test]
fn a_missing_or_non_numeric_value_is_refused_with_the_reason() {
    let m = spec(Aggregation::Sum, Some("$.tokens"));
    for (data, says) in [
        (r#"{"model": "x"}"#, "no value there"),
        (r#"{"tokens": "many"}"#, "not a number"),
        (r#"{"tokens": true}"#, "not a number"),
        (r#"{"tokens": null}"#, "not a number"),
        (r#"{"tokens": [1]}"#, "not a number"),
        (r#"{"tokens": 1, "model": {"a": 1}}"#, "object or array"),
    ] {
        let data: Metadata = data.parse().unwrap();
        let e = m.read(&Payload::of(&data), t0()).unwrap_err();
        assert_eq!(e.field(), Some("data"));
        assert!(e.to_string().contains(says), "{e}");
        assert!(e.to_string().contains("tokens_total"), "{e}");
    }
}

#[test]
fn specs_are_validated() {
    let s = |a, v: Option<&str>| {
        MeterSpec::new(
            "m".parse().unwrap(),
            "t".parse().unwrap(),
            a,
            v.map(|v| v.parse().unwrap()),
        )
    };
    assert!(s(Aggregation::Count, None).is_ok());
    assert_eq!(
        s(Aggregation::Count, Some("$.a")).unwrap_err().field(),
        Some("value_property")
    );
    assert_eq!(
        s(Aggregation::Sum, None).unwrap_err().field(),
        Some("value_property")
    );
    let mut m = s(Aggregation::Count, None).unwrap();
    for i in 0..8 {
        m = m
            .dimension(&format!("d{i}"), "$.a".parse().unwrap())
            .unwrap();
    }
    assert!(m.dimension("d9", "$.a".parse().unwrap()).is_err());
    assert!(Dimension::new("subject", "$.a".parse().unwrap()).is_err());
    for bad in ["", "A", "a__b", "_a", "a_", "a-b"] {
        assert_eq!(bad.parse::<MeterSlug>().unwrap_err().field(), Some("slug"));
    }
    let json = r#"{"slug":"tokens","eventType":"prompt","aggregation":"UNIQUE_COUNT","valueProperty":"$.user","groupBy":{"model":"$.model"}}"#;
    let m: MeterSpec = serde_json::from_str(json).unwrap();
    assert_eq!(m.aggregation, Aggregation::UniqueCount);
    assert_eq!(m.cardinality_limit, DEFAULT_CARDINALITY_LIMIT);
    assert_eq!(m.dimension_index("model"), Some(0));
}

#[test]
fn latest_breaks_ties_by_event_id_and_merges_in_any_order() {
    let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let mut x = Acc::of(t0(), b, Some(Decimal::ONE));
    x.merge(&Acc::of(t0(), a, Some(Decimal::TWO))).unwrap();
    let mut y = Acc::of(t0(), a, Some(Decimal::TWO));
    y.merge(&Acc::of(t0(), b, Some(Decimal::ONE))).unwrap();
    assert_eq!(x, y);
    assert_eq!(x.value(Aggregation::Latest), Some(Decimal::ONE));
    assert_eq!(Acc::default().value(Aggregation::Sum), None);
}

#[test]
fn a_gauge_holds_until_the_next_sample_and_is_clipped_at_window_edges() {
    let s = |min: i64, v: i64| Sample {
        at: t0() + Duration::minutes(min),
        id: Uuid::from_u128(min as u128),
        value: Decimal::from(v),
    };
    // 10 from 00:00, 4 from 00:30; until 02:00.
    let samples = [s(30, 4), s(0, 10)];
    let h = |a: i64, b: i64| (t0() + Duration::minutes(a), t0() + Duration::minutes(b));
    let got: Vec<Option<Decimal>> = time_weighted(
        &samples,
        &[h(0, 60), h(60, 120), h(120, 180)],
        t0() + Duration::hours(2),
    )
    .unwrap()
    .into_iter()
    .map(|v| v.map(value_hours))
    .collect();
    assert_eq!(
        got,
        vec![Some(Decimal::from(7)), Some(Decimal::from(4)), None]
    );
}

/// The gauge's brute force: minute by minute, the latest sample at or before it.
fn gauge_by_minutes(samples: &[Sample], lo: DateTime<Utc>, hi: DateTime<Utc>) -> Option<Decimal> {
    let mut total = Decimal::ZERO;
    let mut covered = false;
    let mut t = lo;
    while t < hi {
        if let Some(s) = samples.iter().filter(|s| s.at <= t).max() {
            total += s.value;
            covered = true;
        }
        t += Duration::minutes(1);
    }
    covered.then(|| total / Decimal::from(60))
}

proptest::proptest! {
    #[test]
    fn the_gauge_matches_a_minute_by_minute_brute_force(
        samples in proptest::collection::vec((0i64..600, 0i64..1000), 0..12),
        cuts in proptest::collection::btree_set(0i64..700, 1..6),
    ) {
        let samples: Vec<Sample> = samples.iter().enumerate().map(|(i, (m, v))| Sample {
            at: t0() + Duration::minutes(*m),
            id: Uuid::from_u128(i as u128),
            value: Decimal::from(*v),
        }).collect();
        let cuts: Vec<i64> = cuts.into_iter().collect();
        let windows: Vec<(DateTime<Utc>, DateTime<Utc>)> = cuts.windows(2)
            .map(|w| (t0() + Duration::minutes(w[0]), t0() + Duration::minutes(w[1]))).collect();
        let until = t0() + Duration::minutes(650);
        let got = time_weighted(&samples, &windows, until).unwrap();
        for (w, g) in windows.iter().zip(got) {
            let g = g.map(value_hours);
            let want = gauge_by_minutes(&samples, w.0, w.1.min(until));
            proptest::prop_assert_eq!(g.map(|d| d.normalize()), want.map(|d| d.normalize()));
        }
    }

    #[test]
    fn reading_never_panics(data in "\\PC{0,80}", path in "\\$(\\.[a-z]{1,2}|\\[[0-2]\\]){0,3}") {
        if let Ok(data) = data.parse::<Metadata>() {
            let m = MeterSpec::new("m".parse().unwrap(), "t".parse().unwrap(), Aggregation::Max, Some(path.parse().unwrap())).unwrap()
                .dimension("d", path.parse().unwrap()).unwrap();
            let _ = m.read(&Payload::of(&data), t0());
        }
    }
}

proptest::proptest! {
    /// The ingest body parser never panics, on bytes or on near-events.
    #[test]
    fn parsing_a_request_body_never_panics(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        fields in proptest::collection::vec(
            (proptest::sample::select(vec!["id", "source", "specversion", "type", "subject", "time", "data", "datacontenttype", "x"]),
             proptest::sample::select(vec!["null", "1", "\"\"", "\"1.0\"", "\"acme\"", "{}", "[]", "{\"a\":1}", "\"2026-01-01T00:00:00Z\"", "\"application/json\"", "\"not a time\""])),
            0..10),
        batch in proptest::prelude::any::<bool>(),
    ) {
        let _ = super::parse_events(&bytes);
        let object = format!(
            "{{{}}}",
            fields.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect::<Vec<_>>().join(", ")
        );
        let body = if batch { format!("[{object}, {object}]") } else { object };
        let _ = super::parse_events(body.as_bytes());
    }
}

#[test]
fn a_request_body_is_one_event_or_a_batch_and_a_bad_one_is_named() {
    let ok = r#"{"id": "e1", "source": "app", "specversion": "1.0", "type": "prompt",
        "subject": "acme", "time": "2026-03-30T10:00:00+02:00", "data": {"tokens": 12.50},
        "datacontenttype": "application/json", "traceparent": "ignored"}"#;
    let one = super::parse_events(ok.as_bytes()).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(
        one[0].time.unwrap().to_rfc3339(),
        "2026-03-30T08:00:00+00:00"
    );
    assert_eq!(one[0].data.as_str(), r#"{"tokens":12.50}"#);
    let two =
        super::parse_events(format!("[{ok}, {}]", ok.replace("e1", "e2")).as_bytes()).unwrap();
    assert_eq!(two.len(), 2);
    for (body, index, field) in [
        ("[]".to_owned(), None, "body"),
        ("{".to_owned(), None, "body"),
        (
            format!("[{ok}, {}]", ok.replace(r#""subject": "acme","#, "")),
            Some(1),
            "subject",
        ),
        (ok.replace(r#""1.0""#, r#""0.3""#), None, "specversion"),
        (
            ok.replace(r#""type": "prompt""#, r#""type": 7"#),
            None,
            "type",
        ),
        (
            ok.replace("2026-03-30T10:00:00+02:00", "yesterday"),
            None,
            "time",
        ),
        (ok.replace(r#"{"tokens": 12.50}"#, "[1]"), None, "data"),
        (
            ok.replace(r#""application/json""#, r#""text/xml""#),
            None,
            "datacontenttype",
        ),
        (ok.replace(r#""id": "e1""#, r#""id": """#), None, "id"),
    ] {
        let e = super::parse_events(body.as_bytes()).unwrap_err();
        assert_eq!(
            (e.index, e.error.field()),
            (index, Some(field)),
            "{body}: {e}"
        );
    }
}
