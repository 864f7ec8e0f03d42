//! How Tally writes values in JSON: decimals as exact strings without trailing zeros,
//! money with its minor-unit places, instants as RFC 3339 UTC. Used as
//! `#[serde(serialize_with = "…")]` on the result types, so every program that
//! serializes them gets the same text.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::Serializer;

/// An exact decimal as a string, trailing zeros dropped (`"1000"`, `"0.5"`).
pub fn decimal<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&d.normalize())
}

/// An optional decimal: a string or `null`.
pub fn opt_decimal<S: Serializer>(d: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => decimal(d, s),
        None => s.serialize_none(),
    }
}

/// Money as rounded: with the currency's minor-unit places (`"0.10"` in USD, `"1500"`
/// in JPY). Every amount is rescaled to those places at its one rounding point
/// ([`crate::round_to`]), so its own scale is the one to show.
pub fn money<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&money_text(*d))
}

/// The text of an amount (see [`money`]).
pub fn money_text(d: Decimal) -> String {
    d.to_string()
}

/// An optional value with two places (percentages), or `null`.
pub fn opt_fixed2<S: Serializer>(d: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.collect_str(&format_args!("{d:.2}")),
        None => s.serialize_none(),
    }
}

/// An instant as RFC 3339 in UTC (`2026-11-01T00:00:00Z`).
pub fn instant<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&rfc3339(*t))
}

/// An optional instant as RFC 3339 in UTC (with `skip_serializing_if = "Option::is_none"`).
pub fn opt_instant<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => instant(t, s),
        None => s.serialize_none(),
    }
}

/// A month as `YYYY-MM`.
pub fn months<S: Serializer>(months: &[NaiveDate], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(months.iter().map(|m| m.format("%Y-%m").to_string()))
}

/// A value by its `Display` (zones, granularities).
pub fn display<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// RFC 3339 in UTC with as many fractional digits as the instant has.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}
