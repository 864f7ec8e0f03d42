//! Meters as OpenMeter defines them: a slug, the event type it reads, an aggregation,
//! a value read from the event's JSON payload and up to eight dimensions read the same
//! way. This module holds the model, the validation, what a meter reads from one event
//! ([`MeterSpec::read`]) and the exact arithmetic of every aggregation ([`Acc`],
//! [`time_weighted`]); the store keeps the rollups. See docs/meters.md.

mod acc;
mod cloud;
mod path;
mod window;

use std::{borrow::Cow, fmt, str::FromStr};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use acc::{Acc, Latest, Sample, time_weighted, value_hours};
pub use cloud::{CloudEvent, EventsError, parse_events};
pub use path::JsonPath;
pub use window::{MeterPieces, WindowSize, meter_pieces, windows};

use crate::{Error, Metadata, Result, Service};

/// A meter's slug: 1–64 characters, lowercase letters and digits in words joined by
/// single underscores (OpenMeter's `^[a-z0-9]+(?:_[a-z0-9]+)*$`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct MeterSlug(String);

impl MeterSlug {
    /// The slug.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for MeterSlug {
    type Err = Error;
    fn from_str(s: &str) -> Result<MeterSlug> {
        let words_ok = s.split('_').all(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        });
        if s.is_empty() || s.len() > 64 || !words_ok {
            return Err(Error::invalid(
                "slug",
                s,
                "a meter slug is 1-64 characters: a-z and 0-9 in words joined by single _ (e.g. tokens_total)",
            ));
        }
        Ok(MeterSlug(s.to_owned()))
    }
}

impl fmt::Display for MeterSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MeterSlug {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// An event type (CloudEvents' `type`): 1–63 characters of letters, digits, `.`, `_`,
/// `-`, `:` and `/`. It is stored as the event's service, so an event of type `api`
/// is an `api` event like any other, and a type that names no service is still
/// stored and counted (a meter may be defined for it later).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct EventType(String);

impl EventType {
    /// The longest type accepted (the length of a service name).
    pub const MAX_LEN: usize = Service::MAX_LEN;

    /// The type.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The service an event of this type is stored as.
    pub fn service(&self) -> Service {
        Service::of_event_type(&self.0)
    }
}

impl FromStr for EventType {
    type Err = Error;
    fn from_str(s: &str) -> Result<EventType> {
        let ok = s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'));
        if s.is_empty() || s.len() > Self::MAX_LEN || !ok {
            return Err(Error::invalid(
                "type",
                s,
                "an event type is 1-63 characters of letters, digits, '.', '_', '-', ':' and '/'",
            ));
        }
        Ok(EventType(s.to_owned()))
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// How a meter aggregates the values it reads (OpenMeter's names, and Tally's own
/// `TIME_WEIGHTED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Aggregation {
    /// The sum of the values.
    Sum,
    /// The number of events (no value is read).
    Count,
    /// The number of distinct values.
    UniqueCount,
    /// The sum of the values over their number.
    Avg,
    /// The least value.
    Min,
    /// The greatest value.
    Max,
    /// The value of the latest event (by time, then event id).
    Latest,
    /// A gauge: each value holds until the next one for the same customer and
    /// dimensions; reported as value × hours (e.g. GiB-hours).
    TimeWeighted,
}

impl Aggregation {
    /// Every aggregation.
    pub const ALL: [Aggregation; 8] = [
        Aggregation::Sum,
        Aggregation::Count,
        Aggregation::UniqueCount,
        Aggregation::Avg,
        Aggregation::Min,
        Aggregation::Max,
        Aggregation::Latest,
        Aggregation::TimeWeighted,
    ];

    /// The name, as OpenMeter writes it (`UNIQUE_COUNT`).
    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Sum => "SUM",
            Aggregation::Count => "COUNT",
            Aggregation::UniqueCount => "UNIQUE_COUNT",
            Aggregation::Avg => "AVG",
            Aggregation::Min => "MIN",
            Aggregation::Max => "MAX",
            Aggregation::Latest => "LATEST",
            Aggregation::TimeWeighted => "TIME_WEIGHTED",
        }
    }

    /// Whether the value read is a number (all but `COUNT`, which reads none, and
    /// `UNIQUE_COUNT`, which reads a text).
    pub fn reads_number(self) -> bool {
        !matches!(self, Aggregation::Count | Aggregation::UniqueCount)
    }
}

impl FromStr for Aggregation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Aggregation> {
        let up = s.to_ascii_uppercase().replace('-', "_");
        Aggregation::ALL
            .into_iter()
            .find(|a| a.name() == up)
            .ok_or_else(|| {
                Error::invalid(
                    "aggregation",
                    s,
                    "expected SUM, COUNT, UNIQUE_COUNT, AVG, MIN, MAX, LATEST or TIME_WEIGHTED",
                )
            })
    }
}

impl fmt::Display for Aggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A dimension: a name (1–64 of `[A-Za-z0-9_]`, not `subject`) and where its value is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dimension {
    /// The name queries group and filter by.
    pub name: String,
    /// Where in the payload the value is.
    pub path: JsonPath,
}

impl Dimension {
    /// Validates the name.
    pub fn new(name: &str, path: JsonPath) -> Result<Dimension> {
        let ok = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if name.is_empty() || name.len() > 64 || !ok {
            return Err(Error::invalid(
                "group_by",
                name,
                "a dimension's name is 1-64 characters of letters, digits and _",
            ));
        }
        if name == "subject" || name == "customer" {
            return Err(Error::invalid(
                "group_by",
                name,
                "is reserved: queries group by the customer (the event's subject) under that name",
            ));
        }
        Ok(Dimension {
            name: name.to_owned(),
            path,
        })
    }
}

/// The most dimensions a meter may have.
pub const MAX_DIMENSIONS: usize = 8;

/// The longest dimension value accepted, in bytes.
pub const MAX_DIMENSION_VALUE: usize = 256;

/// How many distinct combinations of dimension values a meter accepts by default
/// before it refuses events that would add one.
pub const DEFAULT_CARDINALITY_LIMIT: u32 = 10_000;

/// What a meter is: everything but the id and times the store gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterSpec {
    /// The unique slug.
    pub slug: MeterSlug,
    /// A display name (the slug when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The event type the meter reads.
    pub event_type: EventType,
    /// The aggregation.
    pub aggregation: Aggregation,
    /// Where the value is (none for `COUNT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_property: Option<JsonPath>,
    /// The dimensions, by name (the order of a rollup key's values).
    #[serde(default, with = "group_by")]
    pub group_by: Vec<Dimension>,
    /// Events before this instant are not metered (OpenMeter's `eventFrom`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_from: Option<DateTime<Utc>>,
    /// The most distinct dimension combinations accepted.
    #[serde(default = "default_limit")]
    pub cardinality_limit: u32,
}

fn default_limit() -> u32 {
    DEFAULT_CARDINALITY_LIMIT
}

mod group_by {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Dimension, JsonPath};

    pub(super) fn serialize<S: Serializer>(dims: &[Dimension], s: S) -> Result<S::Ok, S::Error> {
        let map: BTreeMap<&str, &JsonPath> =
            dims.iter().map(|d| (d.name.as_str(), &d.path)).collect();
        map.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Dimension>, D::Error> {
        let map = BTreeMap::<String, JsonPath>::deserialize(d)?;
        map.into_iter()
            .map(|(name, path)| Dimension::new(&name, path).map_err(serde::de::Error::custom))
            .collect()
    }
}

impl MeterSpec {
    /// A meter of `aggregation` over events of `event_type`, no dimensions yet.
    pub fn new(
        slug: MeterSlug,
        event_type: EventType,
        aggregation: Aggregation,
        value_property: Option<JsonPath>,
    ) -> Result<MeterSpec> {
        let spec = MeterSpec {
            slug,
            name: None,
            description: None,
            event_type,
            aggregation,
            value_property,
            group_by: Vec::new(),
            event_from: None,
            cardinality_limit: DEFAULT_CARDINALITY_LIMIT,
        };
        spec.check()?;
        Ok(spec)
    }

    /// With a dimension added (kept sorted by name).
    pub fn dimension(mut self, name: &str, path: JsonPath) -> Result<MeterSpec> {
        self.group_by.push(Dimension::new(name, path)?);
        self.group_by.sort_by(|a, b| a.name.cmp(&b.name));
        self.check()?;
        Ok(self)
    }

    /// Checks what a caller may have set by hand (the fields are public).
    pub fn check(&self) -> Result<()> {
        match (&self.value_property, self.aggregation) {
            (Some(p), Aggregation::Count) => {
                return Err(Error::invalid(
                    "value_property",
                    p,
                    "COUNT counts events and reads no value; leave the value property out",
                ));
            }
            (None, a) if a != Aggregation::Count => {
                return Err(Error::invalid(
                    "value_property",
                    "",
                    format!("{a} needs a value property (e.g. $.tokens)"),
                ));
            }
            _ => {}
        }
        if self.group_by.len() > MAX_DIMENSIONS {
            return Err(Error::invalid(
                "group_by",
                self.group_by.len(),
                "a meter has at most 8 dimensions",
            ));
        }
        for pair in self.group_by.windows(2) {
            if let [a, b] = pair
                && a.name >= b.name
            {
                return Err(Error::invalid(
                    "group_by",
                    &b.name,
                    "dimension names are unique (and kept sorted)",
                ));
            }
        }
        if let Some(name) = &self.name
            && (name.is_empty() || name.chars().count() > 256)
        {
            return Err(Error::invalid("name", name, "is 1-256 characters"));
        }
        if let Some(d) = &self.description
            && d.chars().count() > 1024
        {
            return Err(Error::invalid(
                "description",
                d,
                "is at most 1024 characters",
            ));
        }
        if self.cardinality_limit == 0 {
            return Err(Error::invalid("cardinality_limit", 0, "must be at least 1"));
        }
        Ok(())
    }

    /// The position of dimension `name` in the rollup key.
    pub fn dimension_index(&self, name: &str) -> Option<usize> {
        self.group_by.iter().position(|d| d.name == name)
    }

    /// What the meter reads from an event's payload. `Ok(None)` for an event before
    /// [`MeterSpec::event_from`]; an error, naming the meter, the path and why, for a
    /// value that is missing or of the wrong kind, or a dimension value that is an
    /// object, an array or too long.
    pub fn read(&self, payload: &Payload<'_>, at: DateTime<Utc>) -> Result<Option<Reading>> {
        if self.event_from.is_some_and(|f| at < f) {
            return Ok(None);
        }
        let value = match &self.value_property {
            None => Value::None,
            Some(path) => {
                let raw = payload.find(path).ok_or_else(|| {
                    self.refused(path, "the event's data has no value there".to_owned())
                })?;
                if self.aggregation.reads_number() {
                    Value::Number(number(raw).map_err(|r| self.refused(path, r))?)
                } else {
                    Value::Text(text(raw).map_err(|r| self.refused(path, r))?)
                }
            }
        };
        let mut dims = Vec::with_capacity(self.group_by.len());
        for d in &self.group_by {
            dims.push(match payload.find(&d.path) {
                None => None,
                Some(raw) if raw.get() == "null" => None,
                Some(raw) => Some(
                    text(raw)
                        .map_err(|r| self.refused(&d.path, format!("dimension {}: {r}", d.name)))?,
                ),
            });
        }
        Ok(Some(Reading { value, dims }))
    }

    fn refused(&self, path: &JsonPath, reason: String) -> Error {
        Error::invalid(
            "data",
            path,
            format!("meter {} ({}): {reason}", self.slug, self.aggregation),
        )
    }
}

/// An event's payload, its top level parsed once for every meter that reads it.
pub struct Payload<'a> {
    top: Vec<(Cow<'a, str>, &'a RawValue)>,
    whole: Option<&'a RawValue>,
}

impl<'a> Payload<'a> {
    /// The payload of an event (its metadata: a JSON object, by construction).
    pub fn of(metadata: &'a Metadata) -> Payload<'a> {
        let whole: Option<&RawValue> = serde_json::from_str(metadata.as_str()).ok();
        let top = serde_json::from_str::<path::KeyValues<'a>>(metadata.as_str())
            .map(|kv| kv.0)
            .unwrap_or_default();
        Payload { top, whole }
    }

    /// The value at `path`.
    pub fn find(&self, path: &JsonPath) -> Option<&'a RawValue> {
        match path.first_key() {
            Some((key, rest)) => {
                let v = self.top.iter().rev().find(|(k, _)| k == key)?.1;
                JsonPath::find_from(rest, v)
            }
            None => path.find(self.whole?),
        }
    }
}

/// What a meter read from one event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reading {
    /// The value.
    pub value: Value,
    /// Each dimension's value, in the meter's order (`None`: absent or `null`).
    pub dims: Vec<Option<String>>,
}

/// A value read by a meter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// None is read (`COUNT`).
    None,
    /// A number (every aggregation but `COUNT` and `UNIQUE_COUNT`).
    Number(Decimal),
    /// A text (`UNIQUE_COUNT`).
    Text(String),
}

impl Value {
    /// The number, if it is one.
    pub fn number(&self) -> Option<Decimal> {
        match self {
            Value::Number(d) => Some(*d),
            _ => None,
        }
    }
}

/// A JSON number, or a string holding one, exactly (no float on the way).
fn number(raw: &RawValue) -> std::result::Result<Decimal, String> {
    let text = raw.get();
    let digits: Cow<'_, str> = if text.starts_with('"') {
        Cow::Owned(serde_json::from_str::<String>(text).map_err(|e| e.to_string())?)
    } else {
        Cow::Borrowed(text)
    };
    let d = digits.trim();
    let looks_numeric = d
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E'))
        && d.chars().any(|c| c.is_ascii_digit());
    if !looks_numeric {
        return Err(format!("{text} is not a number"));
    }
    let parsed = if d.contains(['e', 'E']) {
        Decimal::from_scientific(d)
    } else {
        Decimal::from_str_exact(d)
    };
    parsed.map_err(|_| {
        format!("{text} is not a number Tally can hold exactly (at most 28 significant digits)")
    })
}

/// A string as itself; a number or boolean as written; anything else refused.
fn text(raw: &RawValue) -> std::result::Result<String, String> {
    let t = raw.get();
    let s = match t.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(t).map_err(|e| e.to_string())?,
        Some(b'{') | Some(b'[') => return Err("an object or array is not a value".to_owned()),
        Some(b'n') => return Err("null is not a value".to_owned()),
        _ => t.to_owned(),
    };
    if s.len() > MAX_DIMENSION_VALUE {
        return Err(format!(
            "a value is at most {MAX_DIMENSION_VALUE} bytes, this is {}",
            s.len()
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests;
