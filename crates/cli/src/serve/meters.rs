//! `/api/v1/meters` and `/api/v1/meters/{idOrSlug}`: list, create (with its
//! backfill), show, update (name and description) and delete.

use std::collections::BTreeMap;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use tally::meters::{JsonPath, MeterSpec};

use super::{App, bad_request, error_response};

fn json_body<T: for<'de> Deserialize<'de>>(
    app: &App,
    field: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Response> {
    let body = super::body(app, body)?;
    serde_json::from_slice(&body).map_err(|e| {
        let value: String = String::from_utf8_lossy(&body).chars().take(80).collect();
        bad_request(app, field, &value, &e.to_string())
    })
}

pub(super) async fn list_meters(State(app): State<App>) -> Response {
    match app.tally.meters().await {
        Ok(m) => Json(m).into_response(),
        Err(e) => error_response(&app, &e, None),
    }
}

pub(super) async fn create_meter(
    State(app): State<App>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let spec: MeterSpec = match json_body(&app, "meter", body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match app.tally.create_meter(&spec, None).await {
        Ok(m) => (StatusCode::CREATED, Json(m)).into_response(),
        Err(e) => error_response(&app, &e, None),
    }
}

pub(super) async fn show_meter(State(app): State<App>, Path(meter): Path<String>) -> Response {
    match app.tally.meter(&meter).await {
        Ok(m) => Json(m).into_response(),
        Err(e) => error_response(&app, &e, None),
    }
}

/// OpenMeter's `MeterUpdate`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MeterUpdate {
    name: Option<String>,
    description: Option<String>,
    /// Accepted as OpenMeter's clients send it; Tally keeps none.
    #[serde(default, rename = "metadata")]
    _metadata: Option<serde_json::Value>,
    group_by: Option<BTreeMap<String, JsonPath>>,
}

/// `PUT`: a new name and description. The dimensions are part of every rollup's key,
/// so a `groupBy` other than the meter's is refused (delete the meter and create it
/// again: its backfill re-counts the stored events).
pub(super) async fn update_meter(
    State(app): State<App>,
    Path(meter): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let update: MeterUpdate = match json_body(&app, "meter", body) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let current = match app.tally.meter(&meter).await {
        Ok(m) => m,
        Err(e) => return error_response(&app, &e, None),
    };
    if let Some(g) = &update.group_by {
        let now: BTreeMap<&str, &JsonPath> = current
            .spec
            .group_by
            .iter()
            .map(|d| (d.name.as_str(), &d.path))
            .collect();
        let asked: BTreeMap<&str, &JsonPath> = g.iter().map(|(k, v)| (k.as_str(), v)).collect();
        if now != asked {
            let text = serde_json::to_string(g).unwrap_or_default();
            return bad_request(
                &app,
                "groupBy",
                &text,
                "a meter's dimensions key its rollups and cannot change: delete the meter and create it again (its backfill counts the stored events)",
            );
        }
    }
    match app
        .tally
        .update_meter(&current.id, update.name, update.description)
        .await
    {
        Ok(m) => Json(m).into_response(),
        Err(e) => error_response(&app, &e, None),
    }
}

pub(super) async fn delete_meter(State(app): State<App>, Path(meter): Path<String>) -> Response {
    match app.tally.delete_meter(&meter).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error_response(&app, &e, None),
    }
}
