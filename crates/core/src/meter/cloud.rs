//! A CloudEvent (OpenMeter's event shape) and the usage event it is stored as.

use chrono::{DateTime, Utc};

use super::EventType;
use crate::{CustomerId, EventId, Metadata, Quantity, Result, UsageEvent, time::normalize_instant};

/// One event in CloudEvents' shape: `id` and `source` (deduplicated together, as
/// OpenMeter does), `type` (which meters read it), `subject` (the customer), `time`
/// and `data` (the JSON object meters read values and dimensions from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvent {
    /// The producer's id of the event.
    pub id: String,
    /// Where it comes from.
    pub source: String,
    /// Its type.
    pub event_type: EventType,
    /// The customer.
    pub subject: CustomerId,
    /// When it happened (the receive time when absent).
    pub time: Option<DateTime<Utc>>,
    /// The payload.
    pub data: Metadata,
}

impl CloudEvent {
    /// The longest `id` or `source` accepted.
    pub const MAX_ID_LEN: usize = 256;

    /// An event with a fresh id, source `tally`, no time and no data.
    pub fn new(event_type: EventType, subject: CustomerId) -> CloudEvent {
        CloudEvent {
            id: EventId::new().to_string(),
            source: "tally".to_owned(),
            event_type,
            subject,
            time: None,
            data: Metadata::empty(),
        }
    }

    /// With this id and source (validated: 1–256 characters each).
    pub fn with_id(mut self, source: &str, id: &str) -> Result<CloudEvent> {
        for (field, v) in [("source", source), ("id", id)] {
            if v.is_empty() || v.len() > Self::MAX_ID_LEN {
                return Err(crate::Error::invalid(field, v, "is 1-256 characters"));
            }
        }
        self.id = id.to_owned();
        self.source = source.to_owned();
        Ok(self)
    }

    /// At this time.
    pub fn at(mut self, t: DateTime<Utc>) -> CloudEvent {
        self.time = Some(t);
        self
    }

    /// With this payload.
    pub fn with_data(mut self, data: Metadata) -> CloudEvent {
        self.data = data;
        self
    }

    /// The event id Tally stores it under: derived from `source` and `id`, so a retry
    /// of the same event dedupes, and the same `id` from two sources does not.
    pub fn event_id(&self) -> EventId {
        let mut key = Vec::with_capacity(self.source.len() + self.id.len() + 12);
        key.extend_from_slice(b"cloudevent\x1f");
        key.extend_from_slice(self.source.as_bytes());
        key.push(0x1f);
        key.extend_from_slice(self.id.as_bytes());
        EventId::derived(&key)
    }

    /// The usage event it is stored as: its type as the service, quantity zero (the
    /// meters carry its values), `data` as the metadata, `time` or `received`.
    pub fn into_usage(self, received: DateTime<Utc>) -> Result<UsageEvent> {
        let id = self.event_id();
        let event = UsageEvent {
            id,
            customer: self.subject,
            service: self.event_type.service(),
            quantity: Quantity::ZERO,
            recorded_at: normalize_instant(self.time.unwrap_or(received)),
            metadata: self.data,
        };
        event.check()?;
        Ok(event)
    }
}

/// Why a request's events were refused: the error, and which event of a batch (`None`
/// for the body as a whole, or a single event).
#[derive(Debug, Clone, PartialEq)]
pub struct EventsError {
    /// The event's position in the batch.
    pub index: Option<usize>,
    /// What is wrong with it, naming the field.
    pub error: crate::Error,
}

impl std::fmt::Display for EventsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(i) => write!(f, "event {i}: {}", self.error),
            None => write!(f, "{}", self.error),
        }
    }
}

impl std::error::Error for EventsError {}

/// Reads the body of an ingest request in CloudEvents' JSON format: one event (an
/// object) or a batch (an array of them; empty is refused). Each event needs `id`,
/// `source`, `specversion` (`"1.0"`), `type` and `subject`; `time` (RFC 3339) and
/// `data` (an object) may be absent or `null`; `datacontenttype`, if given, is
/// `application/json`; other attributes (CloudEvents extensions) are ignored. The
/// first bad event refuses the whole body, naming its index and field.
///
/// ```
/// use tally_core::meter::parse_events;
///
/// let one = parse_events(br#"{"id": "1", "source": "app", "specversion": "1.0",
///     "type": "prompt", "subject": "acme", "data": {"tokens": 12}}"#).unwrap();
/// assert_eq!(one[0].subject.as_str(), "acme");
/// let bad = parse_events(br#"[{"id": "1", "source": "app", "specversion": "1.0",
///     "type": "prompt", "subject": ""}]"#).unwrap_err();
/// assert_eq!((bad.index, bad.error.field()), (Some(0), Some("subject")));
/// ```
pub fn parse_events(body: &[u8]) -> std::result::Result<Vec<CloudEvent>, EventsError> {
    use serde_json::value::RawValue;
    let whole = |error| EventsError { index: None, error };
    let text = std::str::from_utf8(body)
        .map_err(|e| whole(crate::Error::invalid("body", "(not UTF-8)", e.to_string())))?;
    let short = || text.chars().take(80).collect::<String>();
    let batch = text.trim_start().starts_with('[');
    let raws: Vec<&RawValue> = if batch {
        serde_json::from_str(text).map_err(|e| {
            whole(crate::Error::invalid(
                "body",
                short(),
                format!("is not a JSON array of events: {e}"),
            ))
        })?
    } else {
        vec![serde_json::from_str(text).map_err(|e| {
            whole(crate::Error::invalid(
                "body",
                short(),
                format!("is not a JSON event: {e}"),
            ))
        })?]
    };
    if raws.is_empty() {
        return Err(whole(crate::Error::invalid(
            "body",
            "[]",
            "a batch has at least one event",
        )));
    }
    raws.into_iter()
        .enumerate()
        .map(|(i, raw)| {
            one_event(raw).map_err(|error| EventsError {
                index: batch.then_some(i),
                error,
            })
        })
        .collect()
}

fn one_event(raw: &serde_json::value::RawValue) -> Result<CloudEvent> {
    use std::collections::BTreeMap;

    use crate::Error;
    use serde_json::value::RawValue;
    let fields: BTreeMap<String, &RawValue> = serde_json::from_str(raw.get()).map_err(|e| {
        Error::invalid(
            "event",
            raw.get().chars().take(80).collect::<String>(),
            format!("is not a JSON object: {e}"),
        )
    })?;
    // A present, non-null attribute's raw JSON.
    let given = |name: &str| fields.get(name).map(|r| r.get()).filter(|t| *t != "null");
    let string = |field: &'static str, required: bool| -> Result<Option<String>> {
        match given(field) {
            None if required => Err(Error::invalid(field, "(missing)", "is required")),
            None => Ok(None),
            Some(t) => serde_json::from_str::<String>(t)
                .map(Some)
                .map_err(|_| Error::invalid(field, t, "is not a string")),
        }
    };
    let id = string("id", true)?.unwrap_or_default();
    let source = string("source", true)?.unwrap_or_default();
    let version = string("specversion", true)?.unwrap_or_default();
    if version != "1.0" {
        return Err(Error::invalid(
            "specversion",
            version,
            "only CloudEvents 1.0 is accepted",
        ));
    }
    let kind: EventType = string("type", true)?.unwrap_or_default().parse()?;
    let subject = string("subject", true)?.unwrap_or_default();
    let subject = CustomerId::new(subject.clone())
        .map_err(|e| Error::invalid("subject", subject, e.to_string()))?;
    if let Some(ct) = string("datacontenttype", false)?
        && ct != "application/json"
    {
        return Err(Error::invalid(
            "datacontenttype",
            ct,
            "only application/json data is accepted",
        ));
    }
    let mut event = CloudEvent::new(kind, subject).with_id(&source, &id)?;
    if let Some(t) = string("time", false)? {
        event.time = Some(crate::time::parse_instant("time", &t, crate::Zone::UTC)?);
    }
    if let Some(data) = given("data") {
        event.data = data
            .parse::<Metadata>()
            .map_err(|e| Error::invalid("data", data, e.to_string()))?;
    }
    Ok(event)
}
