use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, value::RawValue};
use uuid::Uuid;

use crate::{CustomerId, Error, Quantity, Result, Service, time::normalize_instant};

/// An event's id: a UUID, v7 (time-ordered) when Tally makes it.
///
/// Together with the customer it is the dedupe key: the same `(customer, id)` counts once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventId(Uuid);

impl EventId {
    /// A new time-ordered id (UUIDv7).
    pub fn new() -> EventId {
        EventId(Uuid::now_v7())
    }

    /// A deterministic id derived from `bytes` (UUIDv8 over SHA-256), for sources such
    /// as import files whose rows carry no id but must dedupe when replayed.
    pub fn derived(bytes: &[u8]) -> EventId {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(bytes);
        let mut b = [0u8; 16];
        if let Some(first) = digest.first_chunk::<16>() {
            b = *first;
        }
        EventId(uuid::Builder::from_custom_bytes(b).into_uuid())
    }

    /// The UUID.
    pub fn uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        EventId::new()
    }
}

impl From<Uuid> for EventId {
    fn from(u: Uuid) -> EventId {
        EventId(u)
    }
}

impl FromStr for EventId {
    type Err = Error;
    fn from_str(s: &str) -> Result<EventId> {
        Uuid::parse_str(s.trim())
            .map(EventId)
            .map_err(|_| Error::invalid("event_id", s, "is not a UUID"))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// An event's metadata: a JSON object of at most [`Metadata::MAX_BYTES`] serialized.
///
/// Kept serialized: it is written to the database as is, so an event never pays for a
/// second serialization.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Metadata(Box<str>);

impl Metadata {
    /// The largest serialized metadata accepted.
    pub const MAX_BYTES: usize = 4096;

    /// `{}`.
    pub fn empty() -> Metadata {
        Metadata(Box::from("{}"))
    }

    /// From a JSON object. (Numbers are as `serde_json` holds them: a float keeps 17
    /// significant digits. To keep a number's every digit, parse the text instead.)
    pub fn from_map(map: Map<String, Value>) -> Result<Metadata> {
        let text = Value::Object(map).to_string();
        text.parse()
    }

    /// The serialized JSON object.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The object, parsed. Numbers become `serde_json` numbers: one with more digits
    /// than an `f64` holds is rounded here (the stored text keeps them).
    pub fn to_map(&self) -> Map<String, Value> {
        match serde_json::from_str(&self.0) {
            Ok(Value::Object(m)) => m,
            // Metadata is only ever made from an object; nothing else can be here.
            _ => Map::new(),
        }
    }

    /// With `key` set to `value` (text), replacing what was there.
    pub fn with(&self, key: &str, value: &str) -> Result<Metadata> {
        let mut map: std::collections::BTreeMap<String, &RawValue> =
            serde_json::from_str(&self.0).unwrap_or_default();
        let text = serde_json::to_string(value)
            .map_err(|e| Error::invalid("metadata", value, e.to_string()))?;
        let raw = RawValue::from_string(text)
            .map_err(|e| Error::invalid("metadata", value, e.to_string()))?;
        map.insert(key.to_owned(), &raw);
        let text = serde_json::to_string(&map)
            .map_err(|e| Error::invalid("metadata", key, e.to_string()))?;
        text.parse()
    }

    fn checked(text: String) -> Result<Metadata> {
        if text.len() > Self::MAX_BYTES {
            return Err(Error::invalid(
                "metadata",
                &text,
                format!(
                    "is {} bytes serialized, at most {} are allowed",
                    text.len(),
                    Self::MAX_BYTES
                ),
            ));
        }
        Ok(Metadata(text.into_boxed_str()))
    }
}

/// Writes the JSON value `raw` compactly to `out`, object keys sorted (the last of a
/// repeated key wins, as in `jsonb`) and numbers exactly as written: every digit of
/// `1234567890.123456789` or of a 30-digit id reaches PostgreSQL, whose `jsonb` keeps
/// them (a round trip through `f64` would not). `Err` names what is wrong.
fn canonical(raw: &RawValue, out: &mut String) -> std::result::Result<(), String> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'{') => {
            let map: std::collections::BTreeMap<String, &RawValue> =
                serde_json::from_str(text).map_err(|e| e.to_string())?;
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                string(k, out)?;
                out.push(':');
                canonical(v, out)?;
            }
            out.push('}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| e.to_string())?;
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out)?;
            }
            out.push(']');
        }
        Some(b'"') => {
            let s: String = serde_json::from_str(text).map_err(|e| e.to_string())?;
            string(&s, out)?;
        }
        // A number, true, false or null, already checked by the parser: as written.
        _ => out.push_str(text),
    }
    Ok(())
}

/// A JSON string, escaped; U+0000 is refused (PostgreSQL's `jsonb` cannot store it,
/// 22P05, so an event carrying it could never be written).
fn string(s: &str, out: &mut String) -> std::result::Result<(), String> {
    if s.contains('\0') {
        return Err(
            "contains the character U+0000 (\\u0000), which PostgreSQL cannot store".to_owned(),
        );
    }
    out.push_str(&serde_json::to_string(s).map_err(|e| e.to_string())?);
    Ok(())
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata::empty()
    }
}

impl FromStr for Metadata {
    type Err = Error;
    /// Parses JSON text; anything but an object is rejected. The text is re-serialized
    /// compactly with sorted keys, so equal objects are equal text, and numbers keep
    /// every digit as written.
    fn from_str(s: &str) -> Result<Metadata> {
        let raw: &RawValue = serde_json::from_str(s)
            .map_err(|e| Error::invalid("metadata", s, format!("is not valid JSON: {e}")))?;
        if !raw.get().starts_with('{') {
            return Err(Error::invalid("metadata", s, "must be a JSON object"));
        }
        let mut text = String::with_capacity(raw.get().len());
        canonical(raw, &mut text).map_err(|reason| Error::invalid("metadata", s, reason))?;
        Metadata::checked(text)
    }
}

impl Serialize for Metadata {
    /// The stored text as it is (to JSON: every digit of its numbers).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match RawValue::from_string(self.0.to_string()) {
            Ok(raw) => raw.serialize(s),
            Err(_) => self.to_map().serialize(s),
        }
    }
}

/// One usage event: who used how much of what, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageEvent {
    /// The dedupe id.
    pub id: EventId,
    /// Who.
    pub customer: CustomerId,
    /// What.
    pub service: Service,
    /// How much, in the service's unit.
    pub quantity: Quantity,
    /// When the usage happened (UTC).
    pub recorded_at: DateTime<Utc>,
    /// Free-form context.
    pub metadata: Metadata,
}

impl UsageEvent {
    /// An event happening now, with a fresh UUIDv7 id and no metadata.
    pub fn new(customer: CustomerId, service: Service, quantity: Quantity) -> UsageEvent {
        UsageEvent {
            id: EventId::new(),
            customer,
            service,
            quantity,
            recorded_at: normalize_instant(Utc::now()),
            metadata: Metadata::empty(),
        }
    }

    /// Checks what a caller may have set by hand (the fields are public): the time must
    /// be normalized and in the supported range ([`crate::check_instant`]).
    pub fn check(&self) -> Result<()> {
        let t = crate::check_instant("recorded_at", self.recorded_at)?;
        if t != self.recorded_at {
            return Err(Error::invalid(
                "recorded_at",
                self.recorded_at
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                "is not normalized: a leap second or sub-microsecond digits (use UsageEvent::at)",
            ));
        }
        Ok(())
    }

    /// A stable 64-bit digest of what the event measured: service, quantity (as a
    /// number: `5` and `5.0` are the same) and metadata (its canonical text). Stored
    /// with the event's key, so a replay of the key with a different payload is told
    /// from a plain replay (a conflict, not a duplicate). The time is left out: it is
    /// often the receiver's clock (`tally record` without `--at`, a CloudEvent without
    /// `time`), so a retry carries another one; the first stored wins. The first 8
    /// bytes of a SHA-256: the same in every build and on every machine.
    pub fn digest(&self) -> i64 {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.service.as_str().as_bytes());
        h.update([0x1f]);
        h.update(self.quantity.to_string().as_bytes());
        h.update([0x1f]);
        h.update(self.metadata.as_str().as_bytes());
        let d = h.finalize();
        d.first_chunk::<8>().map_or(0, |b| i64::from_le_bytes(*b))
    }

    /// Sets when the usage happened (normalized: a leap second becomes the next second's start, sub-microsecond
    /// digits are dropped — what PostgreSQL stores).
    pub fn at(mut self, t: DateTime<Utc>) -> UsageEvent {
        self.recorded_at = normalize_instant(t);
        self
    }

    /// Sets the id (for callers that retry with their own idempotency key).
    pub fn with_id(mut self, id: EventId) -> UsageEvent {
        self.id = id;
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> UsageEvent {
        self.metadata = metadata;
        self
    }
}

/// What a tracking helper measured: a service, a quantity and its metadata, not yet
/// bound to a customer or a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The service.
    pub service: Service,
    /// The converted quantity.
    pub quantity: Quantity,
    /// The helper's metadata.
    pub metadata: Metadata,
}

impl Usage {
    /// Binds the usage to a customer, now, with a fresh id.
    pub fn for_customer(self, customer: CustomerId) -> UsageEvent {
        UsageEvent::new(customer, self.service, self.quantity).with_metadata(self.metadata)
    }
}

/// The seed's six tracking helpers. Each converts raw input to the service's unit and
/// builds its metadata as a JSON object, so any text (quotes, commas, newlines) is
/// escaped by the JSON encoder, never by hand.
pub mod track {
    use serde_json::{Map, Value, json};

    use super::{Metadata, Usage};
    use crate::{Quantity, Result, Service, convert};

    fn meta(pairs: Value) -> Result<Metadata> {
        match pairs {
            Value::Object(m) => Metadata::from_map(m),
            _ => Metadata::from_map(Map::new()),
        }
    }

    /// One API request.
    pub fn api_request(endpoint: &str, method: &str, status: u16) -> Result<Usage> {
        Ok(Usage {
            service: Service::API,
            quantity: Quantity::ONE,
            metadata: meta(json!({"endpoint": endpoint, "method": method, "status": status}))?,
        })
    }

    /// `bytes` held for `hours`, as GiB-hours.
    pub fn storage(bytes: u64, hours: Quantity) -> Result<Usage> {
        Ok(Usage {
            service: Service::STORAGE,
            quantity: convert::gib_hours(bytes, hours)?,
            metadata: meta(json!({"bytes": bytes, "hours": hours.value().to_string()}))?,
        })
    }

    /// `bytes` transferred in `direction` (e.g. `"egress"`), as GiB.
    pub fn bandwidth(bytes: u64, direction: &str) -> Result<Usage> {
        Ok(Usage {
            service: Service::BANDWIDTH,
            quantity: convert::bytes_to_gib(bytes)?,
            metadata: meta(json!({"bytes": bytes, "direction": direction}))?,
        })
    }

    /// `cpu_seconds` of CPU time, as CPU-hours, with the caller's metadata.
    pub fn compute(cpu_seconds: Quantity, metadata: Metadata) -> Result<Usage> {
        Ok(Usage {
            service: Service::COMPUTE,
            quantity: convert::cpu_hours(cpu_seconds)?,
            metadata: metadata.with("cpu_seconds", &cpu_seconds.value().to_string())?,
        })
    }

    /// One database query of `kind` (e.g. `"select"`) taking `duration_ms`.
    pub fn database_query(kind: &str, duration_ms: u64) -> Result<Usage> {
        Ok(Usage {
            service: Service::DATABASE,
            quantity: Quantity::ONE,
            metadata: meta(json!({"kind": kind, "duration_ms": duration_ms}))?,
        })
    }

    /// One invocation of function `name`.
    pub fn function(name: &str, duration_ms: u64, memory_mb: u64) -> Result<Usage> {
        Ok(Usage {
            service: Service::FUNCTIONS,
            quantity: Quantity::ONE,
            metadata: meta(
                json!({"function": name, "duration_ms": duration_ms, "memory_mb": memory_mb}),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_must_be_an_object_and_capped() {
        assert!("[1]".parse::<Metadata>().is_err());
        assert!("{bad".parse::<Metadata>().is_err());
        assert_eq!(
            "{ \"a\" : 1 }".parse::<Metadata>().unwrap().as_str(),
            r#"{"a":1}"#
        );
        let big = format!(r#"{{"x":"{}"}}"#, "y".repeat(5000));
        assert_eq!(
            big.parse::<Metadata>().unwrap_err().field(),
            Some("metadata")
        );
    }

    #[test]
    fn metadata_keeps_every_digit_of_its_numbers() {
        let m: Metadata = r#"{ "id": 123456789012345678901234567890, "amount":1234567890.123456789,
            "n": [1e400, -0.0, {"b": 1, "a": 2.50}] }"#
            .parse()
            .unwrap();
        assert_eq!(
            m.as_str(),
            r#"{"amount":1234567890.123456789,"id":123456789012345678901234567890,"n":[1e400,-0.0,{"a":2.50,"b":1}]}"#
        );
        assert_eq!(serde_json::to_string(&m).unwrap(), m.as_str());
        // Escapes are normalised; a repeated key keeps its last value (as jsonb does).
        let e: Metadata = r#"{"k":"\u00e9\/","k":"last","\u0041":1}"#.parse().unwrap();
        assert_eq!(e.as_str(), r#"{"A":1,"k":"last"}"#);
        let nul = r#"{"a":{"b":"x\u0000"}}"#.parse::<Metadata>().unwrap_err();
        assert!(nul.to_string().contains("U+0000"), "{nul}");
        let c = track::compute("36".parse().unwrap(), m).unwrap();
        assert!(
            c.metadata
                .as_str()
                .contains("123456789012345678901234567890")
        );
        assert!(
            c.metadata.as_str().contains(r#""cpu_seconds":"36.0""#),
            "{}",
            c.metadata.as_str()
        );
    }

    #[test]
    fn helpers_escape_metadata() {
        let u = track::api_request("/a,\"b\"\n→", "GET", 200).unwrap();
        let m = u.metadata.to_map();
        assert_eq!(m["endpoint"], "/a,\"b\"\n→");
        assert_eq!(u.quantity, Quantity::ONE);
        let b = track::bandwidth(100, "egress").unwrap();
        assert!(!b.quantity.is_zero());
        let c = track::compute("7200".parse().unwrap(), r#"{"job":"x"}"#.parse().unwrap()).unwrap();
        assert_eq!(c.quantity.value(), 2.into());
        assert_eq!(c.metadata.to_map()["job"], "x");
    }

    #[test]
    fn a_digest_is_stable_and_tells_payloads_apart() {
        let c = CustomerId::new("acme").unwrap();
        let t = DateTime::from_timestamp(1_800_000_000, 123_000).unwrap();
        let e = UsageEvent::new(c, Service::API, "5".parse().unwrap()).at(t);
        // Pinned: a digest is stored, so it must never change between builds.
        assert_eq!(e.digest(), e.clone().with_id(EventId::new()).digest());
        let same = UsageEvent {
            quantity: "5.000".parse().unwrap(),
            ..e.clone()
        };
        assert_eq!(same.digest(), e.digest());
        // A retry stamped later by its receiver is the same event.
        let later = e.clone().at(t + chrono::Duration::seconds(3));
        assert_eq!(later.digest(), e.digest());
        for other in [
            UsageEvent {
                quantity: "6".parse().unwrap(),
                ..e.clone()
            },
            UsageEvent {
                service: Service::STORAGE,
                ..e.clone()
            },
            e.clone().with_metadata(r#"{"a":1}"#.parse().unwrap()),
        ] {
            assert_ne!(other.digest(), e.digest(), "{other:?}");
        }
        assert_eq!(e.digest(), -2_063_722_036_318_961_062);
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        assert_eq!(EventId::derived(b"a"), EventId::derived(b"a"));
        assert_ne!(EventId::derived(b"a"), EventId::derived(b"b"));
        assert_eq!(
            "not-a-uuid".parse::<EventId>().unwrap_err().field(),
            Some("event_id")
        );
    }
}
