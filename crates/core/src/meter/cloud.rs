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
