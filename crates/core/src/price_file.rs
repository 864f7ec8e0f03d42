//! Reading a price book from JSON strictly: a typo must not change a bill silently, so
//! a key the format does not know, a key given twice and two versions of one service
//! from the same instant are refused, naming the key and where it is.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::{Error, PriceBook, Result};

/// Keys of the book itself.
const BOOK: &[&str] = &["currency", "minor_units", "minimum", "services", "meters"];
/// Keys a meter's price has besides a version's.
const METER_PRICE: &[&str] = &["meter", "where"];
/// Keys every version has, whatever its model.
const VERSION: &[&str] = &[
    "effective_from",
    "model",
    "included",
    "flat_fee_at_zero",
    "minimum",
    "maximum",
    "rounding",
];
const TIER: &[&str] = &["up_to", "unit_price", "flat_fee"];

/// The keys of one model, or `None` for a model that does not exist (serde then
/// names the known ones).
fn model_keys(model: &str) -> Option<&'static [&'static str]> {
    Some(match model {
        "per_unit" => &["unit_price"],
        "package" => &["size", "price"],
        "graduated" | "volume" => &["tiers"],
        "percentage" => &["rate", "fixed_fee", "per_event_min", "per_event_max"],
        _ => return None,
    })
}

impl PriceBook {
    /// Reads a price book from its JSON text and validates it ([`PriceBook::validate`]).
    ///
    /// Stricter than deserializing: an unknown key (`"includedd"`), a key repeated in
    /// one object and two versions of a service with one `effective_from` are errors
    /// naming the key and its place, as is a currency that is not an ISO 4217 code.
    /// Whether each service exists is for [`PriceBook::check_services`], which needs
    /// the catalogue.
    ///
    /// ```
    /// use tally_core::PriceBook;
    ///
    /// let ok = r#"{"currency": "EUR", "services": {"api": [
    ///     {"effective_from": "2026-01-01T00:00:00Z", "model": "per_unit", "unit_price": "0.01"}]}}"#;
    /// assert_eq!(PriceBook::from_json(ok).unwrap().currency, "EUR");
    /// let typo = ok.replace("unit_price", "unit_prise");
    /// let err = PriceBook::from_json(&typo).unwrap_err();
    /// assert!(err.to_string().contains("unit_prise"), "{err}");
    /// ```
    pub fn from_json(text: &str) -> Result<PriceBook> {
        let Unique(value) = serde_json::from_str(text).map_err(|e| {
            let reason = e.to_string();
            Error::invalid("price book", short(text), reason)
        })?;
        known_keys(&value)?;
        let book: PriceBook = serde_json::from_value(value)
            .map_err(|e| Error::invalid("price book", short(text), e.to_string()))?;
        book.validate()?;
        Ok(book)
    }
}

fn short(text: &str) -> String {
    text.chars().take(60).collect()
}

fn unknown(key: &str, place: &str, known: &[&str]) -> Error {
    Error::invalid(
        "price book key",
        key,
        format!("unknown in {place} (known: {})", known.join(", ")),
    )
}

fn object<'a>(v: &'a Value, place: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| Error::invalid("price book", v, format!("{place} must be an object")))
}

/// Refuses any key the format does not define, at any depth.
fn known_keys(book: &Value) -> Result<()> {
    let top = object(book, "the book")?;
    for key in top.keys() {
        if !BOOK.contains(&key.as_str()) {
            return Err(unknown(key, "the book", BOOK));
        }
    }
    if let Some(services) = top.get("services").and_then(Value::as_object) {
        for (service, versions) in services {
            let Some(versions) = versions.as_array() else {
                continue; // serde names what is mistyped
            };
            for (i, version) in versions.iter().enumerate() {
                version_keys(version, &format!("services.{service}[{i}]"), &[])?;
            }
        }
    }
    if let Some(meters) = top.get("meters").and_then(Value::as_array) {
        for (i, price) in meters.iter().enumerate() {
            version_keys(price, &format!("meters[{i}]"), METER_PRICE)?;
        }
    }
    Ok(())
}

/// Refuses a key that a price version (with `extra` keys) of its model does not have.
fn version_keys(version: &Value, place: &str, extra: &[&str]) -> Result<()> {
    let v = object(version, place)?;
    let Some(model) = v.get("model").and_then(Value::as_str) else {
        return Ok(());
    };
    let Some(own) = model_keys(model) else {
        return Ok(());
    };
    for key in v.keys() {
        let k = key.as_str();
        if !VERSION.contains(&k) && !own.contains(&k) && !extra.contains(&k) {
            let known: Vec<&str> = VERSION.iter().chain(extra).chain(own).copied().collect();
            return Err(unknown(key, place, &known));
        }
    }
    let tiers = v.get("tiers").and_then(Value::as_array);
    for (t, tier) in tiers.into_iter().flatten().enumerate() {
        let place = format!("{place}.tiers[{t}]");
        for key in object(tier, &place)?.keys() {
            if !TIER.contains(&key.as_str()) {
                return Err(unknown(key, &place, TIER));
            }
        }
    }
    Ok(())
}

/// A JSON value in which no object repeats a key (serde_json keeps the last silently).
struct Unique(Value);

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Unique, D::Error> {
        d.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        Unique::deserialize(d).map(|u| u.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Unique(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let mut seen = BTreeSet::new();
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let Unique(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const V: &str =
        r#""effective_from": "2026-01-01T00:00:00Z", "model": "per_unit", "unit_price": "1""#;

    fn book(version: &str) -> String {
        format!(r#"{{"currency": "USD", "services": {{"api": [{{{version}}}]}}}}"#)
    }

    fn refused(text: &str, needle: &str) {
        let err = PriceBook::from_json(text).expect_err(text);
        assert!(err.to_string().contains(needle), "{err}");
    }

    #[test]
    fn typos_are_refused_naming_the_key() {
        refused(&book(&format!(r#"{V}, "includedd": "5""#)), "includedd");
        refused(&book(&format!(r#"{V}, "minimun": "5""#)), "minimun");
        refused(&book(&format!(r#"{V}, "flatfee": "5""#)), "flatfee");
        refused(r#"{"curency": "USD", "services": {}}"#, "curency");
        // A key of another model is unknown in this one.
        refused(&book(&format!(r#"{V}, "size": "5""#)), "size");
        let tiers = r#""effective_from": "2026-01-01T00:00:00Z", "model": "graduated",
            "tiers": [{"up_to": "10", "unit_price": "1", "flatfee": "2"}]"#;
        refused(&book(tiers), "flatfee");
    }

    #[test]
    fn repeated_keys_and_instants_are_refused() {
        refused(
            &book(&format!(r#"{V}, "unit_price": "2""#)),
            "duplicate key",
        );
        let twice = format!(r#"{{"services": {{"api": [{{{V}}}], "api": [{{{V}}}]}}}}"#);
        refused(&twice, "duplicate key \"api\"");
        refused(
            &format!(r#"{{"services": {{"api": [{{{V}}}, {{{V}}}]}}}}"#),
            "effective_from",
        );
    }

    #[test]
    fn a_currency_is_an_iso_4217_code() {
        for bad in ["", "usd", "US", "XYZ", "💰\n<script>"] {
            let text = format!(r#"{{"currency": {}, "services": {{}}}}"#, Value::from(bad));
            refused(&text, "currency");
        }
        for good in ["USD", "JPY", "BHD", "EUR", "CHF"] {
            let text = format!(r#"{{"currency": "{good}", "services": {{}}}}"#);
            assert_eq!(PriceBook::from_json(&text).unwrap().currency, good);
        }
    }

    #[test]
    fn a_valid_book_reads_as_serde_would() {
        let text = book(V);
        let strict = PriceBook::from_json(&text).unwrap();
        let plain: PriceBook = serde_json::from_str(&text).unwrap();
        assert_eq!(strict, plain);
        let round = serde_json::to_string(&PriceBook::default()).unwrap();
        assert_eq!(PriceBook::from_json(&round).unwrap(), PriceBook::default());
    }

    #[test]
    fn meter_prices_are_read_strictly_and_resolved_per_combination() {
        let text = r#"{"services": {}, "meters": [
            {"meter": "tokens", "where": {"model": "gpt-4o"}, "model": "per_unit", "unit_price": "0.000005"},
            {"meter": "tokens", "where": {"model": "gpt-4o"}, "effective_from": "2026-06-01T00:00:00Z",
             "model": "per_unit", "unit_price": "0.000004"},
            {"meter": "tokens", "where": {"model": "mini"}, "model": "per_unit", "unit_price": "0.000001"},
            {"meter": "tokens", "model": "per_unit", "unit_price": "0.000002"}]}"#;
        let book = PriceBook::from_json(text).unwrap();
        let at = |t: &str| t.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
        let may = book.meter_prices_at(at("2026-05-01T00:00:00Z"));
        let june = book.meter_prices_at(at("2026-06-01T00:00:00Z"));
        assert_eq!(may.len(), 1);
        assert_eq!(may[0].meter, "tokens");
        let unit = |p: &crate::Price| match &p.model {
            crate::PriceModel::PerUnit { unit_price } => unit_price.to_string(),
            _ => String::new(),
        };
        let prices = |m: &crate::MeterPrices<'_>| -> Vec<(String, String)> {
            m.combinations
                .iter()
                .map(|(w, p)| (w["model"].clone(), unit(p)))
                .collect()
        };
        assert_eq!(
            prices(&may[0]),
            [
                ("gpt-4o".into(), "0.000005".into()),
                ("mini".into(), "0.000001".into())
            ]
        );
        assert_eq!(prices(&june[0])[0].1, "0.000004");
        assert_eq!(may[0].fallback.map(unit).as_deref(), Some("0.000002"));
        // The round trip keeps them.
        let again = PriceBook::from_json(&serde_json::to_string(&book).unwrap()).unwrap();
        assert_eq!(again, book);

        let entry = |extra: &str| {
            format!(
                r#"{{"services": {{}}, "meters": [{{"meter": "tokens", "model": "per_unit", "unit_price": "1"{extra}}}]}}"#
            )
        };
        refused(&entry(r#", "wher": {"model": "x"}"#), "wher");
        refused(&entry(r#", "size": "1""#), "size");
        refused(
            r#"{"services": {}, "meters": [{"meter": "Not A Slug!", "model": "per_unit", "unit_price": "1"}]}"#,
            "Not A Slug!",
        );
        refused(
            &entry(r#", "model": "percentage", "rate": "1", "per_event_min": "1""#)
                .replace(r#""model": "per_unit", "unit_price": "1", "#, ""),
            "per-event",
        );
        // Two entries that both price the same events, and entries that name different
        // dimensions (an event could match two), are refused.
        let two = r#"{"services": {}, "meters": [
            {"meter": "t", "where": {"model": "a"}, "model": "per_unit", "unit_price": "1"},
            {"meter": "t", "where": {"model": "a"}, "model": "per_unit", "unit_price": "2"}]}"#;
        refused(two, "same instant");
        let mixed = r#"{"services": {}, "meters": [
            {"meter": "t", "where": {"model": "a"}, "model": "per_unit", "unit_price": "1"},
            {"meter": "t", "where": {"region": "eu"}, "model": "per_unit", "unit_price": "2"}]}"#;
        refused(mixed, "same dimensions");
    }

    proptest! {
        #[test]
        fn reading_any_text_never_panics(text in ".{0,200}") {
            let _ = PriceBook::from_json(&text);
        }

        #[test]
        fn reading_any_json_never_panics(text in r#"[{}\[\]":,a-z0-9 ]{0,120}"#) {
            let _ = PriceBook::from_json(&text);
        }
    }
}
