//! `/api/v1/events`: `POST` stores one CloudEvent or a batch in one transaction and
//! answers `204` once committed; `GET` lists the newest stored events (debugging).

use std::time::Instant;

use axum::{
    Json,
    body::Bytes,
    extract::{RawQuery, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value, json};
use tally::{
    ErrorKind, Tally, TimeRange,
    chrono::{DateTime, Duration, Utc},
    export::RecentFilter,
    meters::{CloudEvent, Payload, parse_events},
};

use super::{App, bad_request, commit::Failed, error_response, problem, query};

/// Subtracts from the in-flight gauge when the request is answered, however.
struct InFlight<'a>(&'a App, i64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .metrics
            .in_flight
            .fetch_sub(self.1, std::sync::atomic::Ordering::Relaxed);
    }
}

pub(super) async fn ingest(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let body = match super::body(&app, body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = kind.split(';').next().unwrap_or("").trim();
    if !matches!(
        media,
        "application/json" | "application/cloudevents+json" | "application/cloudevents-batch+json"
    ) {
        return problem(
            &app,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content type {media:?}: send application/cloudevents+json (one event), application/cloudevents-batch+json (an array) or application/json"
            ),
            Map::new(),
        );
    }
    let count = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    let events = match parse_events(&body) {
        Ok(e) => e,
        Err(e) => {
            app.metrics.refused.fetch_add(1, Relaxed);
            return error_response(&app, &tally::Error::from(e.error), e.index);
        }
    };
    let received = Utc::now();
    let usage = match events
        .iter()
        .map(|e| e.clone().into_usage(received))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(u) => u,
        Err(e) => {
            app.metrics.refused.fetch_add(count(events.len()), Relaxed);
            return error_response(&app, &tally::Error::from(e), None);
        }
    };
    let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
    app.metrics.in_flight.fetch_add(n, Relaxed);
    let _gauge = InFlight(&app, n);
    let started = Instant::now();
    match app.committer.write(usage).await {
        Ok(conflicts) => {
            app.metrics.committed(started.elapsed());
            app.metrics
                .refused
                .fetch_add(count(conflicts.len()), Relaxed);
            if conflicts.is_empty() {
                return StatusCode::NO_CONTENT.into_response();
            }
            // The rest of the request is committed (a retry of it is deduplicated,
            // and answers the same 409): only the conflicting events are refused.
            let first = conflicts.first().copied().unwrap_or(0);
            let id = events.get(first).map(|e| e.id.clone()).unwrap_or_default();
            let mut ext = Map::new();
            ext.insert("index".into(), json!(first));
            ext.insert("field".into(), json!("id"));
            ext.insert("value".into(), json!(id));
            ext.insert("conflicts".into(), json!(conflicts));
            problem(
                &app,
                StatusCode::CONFLICT,
                format!(
                    "events {conflicts:?} reuse the source and id of a stored event with a different payload: they are not stored (the request's other events are)"
                ),
                ext,
            )
        }
        Err(Failed::Write(e)) => {
            app.metrics.refused.fetch_add(count(events.len()), Relaxed);
            let index = if events.len() > 1 && e.kind() == ErrorKind::Invalid {
                offending(&app.tally, &events, received, &e).await
            } else {
                None
            };
            error_response(&app, &e, index)
        }
        Err(Failed::Stopped) => problem(
            &app,
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is stopping: send the request again".into(),
            Map::new(),
        ),
    }
}

/// Which event of a refused batch the write's error is about (it names the field and
/// value, not the position): the first a meter of its type cannot read, or the first
/// whose dimension values are the combination refused past a cardinality limit.
async fn offending(
    tally: &Tally,
    events: &[CloudEvent],
    received: DateTime<Utc>,
    error: &tally::Error,
) -> Option<usize> {
    let meters = tally.meters().await.ok()?;
    let combination: Option<Value> = error.value().and_then(|v| serde_json::from_str(v).ok());
    let read = |e: &CloudEvent, unreadable: bool| {
        let payload = Payload::of(&e.data);
        meters.iter().any(|m| {
            m.spec.event_type == e.event_type
                && match m.spec.read(&payload, e.time.unwrap_or(received)) {
                    Err(_) => unreadable,
                    Ok(Some(r)) => !unreadable && combination == serde_json::to_value(&r.dims).ok(),
                    Ok(None) => false,
                }
        })
    };
    events
        .iter()
        .position(|e| read(e, true))
        .or_else(|| events.iter().position(|e| read(e, false)))
}

/// The most events `GET /api/v1/events` answers with (OpenMeter's limit).
const MAX_LIST: u32 = 100;

/// `GET /api/v1/events`: the newest stored events, as OpenMeter's `IngestedEvent`s.
/// `from` defaults to 72 hours ago and `to` to now (both inclusive, as OpenMeter's);
/// `subject` and `id` match a part; `customerId` is a Tally customer (its subject).
pub(super) async fn list_events(State(app): State<App>, RawQuery(raw): RawQuery) -> Response {
    let now = Utc::now();
    let mut from = now - Duration::hours(72);
    let mut to = now;
    let (mut subject, mut id, mut customers, mut limit) = (None, None, Vec::new(), MAX_LIST);
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let instant = |field: &str| query::instant(field, &v).map_err(|r| r.answer(&app));
        let parsed = match k.as_ref() {
            "from" => instant("from").map(|t| from = t),
            "to" => instant("to").map(|t| to = t),
            "subject" => {
                subject = Some(v.to_string());
                Ok(())
            }
            "customerId" => match tally::CustomerId::new(v.to_string()) {
                Ok(c) => {
                    customers.push(c.as_str().to_owned());
                    Ok(())
                }
                Err(e) => Err(bad_request(&app, "customerId", &v, &e.to_string())),
            },
            "id" => {
                id = Some(v.to_string());
                Ok(())
            }
            "limit" => match v.parse::<u32>() {
                Ok(n) if (1..=MAX_LIST).contains(&n) => {
                    limit = n;
                    Ok(())
                }
                _ => Err(bad_request(
                    &app,
                    "limit",
                    &v,
                    "is a whole number from 1 to 100",
                )),
            },
            "clientId" => Ok(()),
            f @ ("ingestedAtFrom" | "ingestedAtTo") => Err(bad_request(
                &app,
                f,
                &v,
                "Tally does not keep when an event arrived, only when it happened: use from and to",
            )),
            k => Err(bad_request(
                &app,
                "query",
                k,
                "is not a parameter of this request",
            )),
        };
        if let Err(r) = parsed {
            return r;
        }
    }
    // Both ends inclusive: the range ends a microsecond (PostgreSQL's tick) after `to`.
    let range = match TimeRange::new(from, to + Duration::microseconds(1)) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(
                &app,
                "from",
                &from.to_rfc3339(),
                &tally::Error::from(e).to_string(),
            );
        }
    };
    let filter = RecentFilter {
        range,
        customer_contains: subject,
        id_contains: id,
        customers,
        limit,
    };
    let events = match app.tally.recent_events(&filter).await {
        Ok(e) => e,
        Err(e) => return error_response(&app, &e, None),
    };
    let at = |t: &DateTime<Utc>| t.to_rfc3339_opts(tally::chrono::SecondsFormat::AutoSi, true);
    let out: Vec<Value> = events
        .iter()
        .map(|e| {
            let data: Value = serde_json::from_str(&e.metadata).unwrap_or(Value::Null);
            json!({
                "event": {
                    "id": e.event_id.to_string(),
                    "source": "tally",
                    "specversion": "1.0",
                    "type": e.service,
                    "subject": e.customer_id,
                    "time": at(&e.recorded_at),
                    "data": data,
                },
                "customerId": e.customer_id,
                "ingestedAt": at(&e.recorded_at),
                "storedAt": at(&e.recorded_at),
            })
        })
        .collect();
    Json(out).into_response()
}
