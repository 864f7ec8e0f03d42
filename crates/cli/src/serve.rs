//! `tally serve`: OpenMeter's metering API (`/api/v1/events`, `/api/v1/meters…`) over
//! this database, so OpenMeter's SDKs and any HTTP client meter into PostgreSQL
//! (docs/http.md). An ingest request is one transaction: `204` only once every event
//! of it is committed, and a request with one bad event stores nothing.

// A handler's early answer is the error: a Response, returned once per request, so
// boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, RawQuery, Request, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use clap::Args;
use serde_json::{Map, Value, json};
use tally::{
    CustomerId, ErrorKind, Tally, TimeRange, Zone,
    chrono::{DateTime, Duration, DurationRound, Utc},
    meters::{CloudEvent, MeterQuery, MeterSpec, Payload, WindowSize, parse_events},
};

use crate::Failure;

/// `tally serve`'s flags.
#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (HOST:PORT; port 0 picks a free one, printed on start).
    #[arg(long, default_value = "127.0.0.1:8888")]
    listen: SocketAddr,
    /// Bearer tokens, one a line; reloaded on SIGHUP. Without it only a loopback
    /// address is served, without authentication.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The largest request body accepted, in bytes (larger: 413).
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Seconds a client has to send its request body (slower: 408).
    #[arg(long, default_value_t = 30)]
    body_timeout: u64,
}

/// The largest number of windows one query may ask for.
const MAX_WINDOWS: i64 = 100_000;

#[derive(Clone)]
struct App {
    tally: Tally,
    tokens: Option<Arc<RwLock<Vec<Vec<u8>>>>>,
    requests: Arc<AtomicU64>,
    max_body: usize,
    body_timeout: std::time::Duration,
}

pub(crate) async fn serve(url: Option<String>, a: ServeArgs) -> Result<(), Failure> {
    let tokens = match &a.token_file {
        Some(path) => Some(Arc::new(RwLock::new(read_tokens(path)?))),
        None if a.listen.ip().is_loopback() => None,
        None => {
            return Err(Failure::Usage(format!(
                "--listen {}: without --token-file only a loopback address is served (anyone who can reach it could meter and read)",
                a.listen
            )));
        }
    };
    let tally = crate::tally_for(url).await?;
    // The database must answer before the port opens: a server that cannot store
    // would take events it must refuse.
    tally.meters().await?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|e| Failure::Usage(format!("--listen {}: {e}", a.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::Usage(format!("--listen {}: {e}", a.listen)))?;
    if tokens.is_none() {
        tracing::warn!("no --token-file: serving {addr} (loopback) without authentication");
    }
    crate::output::out(format_args!("listening on http://{addr}\n"))?;
    let app = App {
        tally,
        tokens: tokens.clone(),
        requests: Arc::new(AtomicU64::new(0)),
        max_body: a.max_body_bytes,
        body_timeout: std::time::Duration::from_secs(a.body_timeout),
    };
    if let (Some(tokens), Some(path)) = (tokens, a.token_file.clone()) {
        tokio::spawn(reload_on_hangup(tokens, path));
    }
    axum::serve(listener, router(app))
        .with_graceful_shutdown(terminated())
        .await
        .map_err(|e| Failure::Usage(format!("serving {addr}: {e}")))?;
    Ok(())
}

fn router(app: App) -> Router {
    Router::new()
        .route("/api/v1/events", get(not_served).post(ingest))
        .route("/api/v1/meters", get(list_meters).post(create_meter))
        .route(
            "/api/v1/meters/{meter}",
            get(show_meter).delete(delete_meter).put(not_served),
        )
        .route("/api/v1/meters/{meter}/query", get(query_meter))
        .route("/api/v1/meters/{meter}/subjects", get(subjects))
        .route(
            "/api/v1/meters/{meter}/group-by/{key}/values",
            get(group_by_values),
        )
        .fallback(fallback)
        // The token is checked before a byte of the body is read.
        .layer(middleware::from_fn_with_state(app.clone(), buffer))
        .layer(middleware::from_fn_with_state(app.clone(), authorize))
        .route("/healthz", get(health))
        .layer(DefaultBodyLimit::max(app.max_body))
        .with_state(app)
}

/// Reads the whole body, within the size limit and the time limit, before anything
/// else sees the request: a body too large is refused from its `Content-Length`
/// without reading it, and a client that sends slowly is cut off (408) rather than
/// holding a connection and its buffer.
async fn buffer(State(app): State<App>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = |app: &App| {
        problem(
            app,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than {} bytes (--max-body-bytes)",
                app.max_body
            ),
            Map::new(),
        )
    };
    if declared.is_some_and(|n| n > app.max_body as u64) {
        return too_large(&app);
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(app.body_timeout, axum::body::to_bytes(body, app.max_body)).await {
        Err(_) => problem(
            &app,
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s (--body-timeout)",
                app.body_timeout.as_secs()
            ),
            Map::new(),
        ),
        // Past the limit while streaming (no Content-Length), or the client broke off
        // (then nobody reads this answer).
        Ok(Err(_)) => too_large(&app),
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
    }
}

async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping: answering the requests in flight, then exiting");
}

fn read_tokens(path: &std::path::Path) -> Result<Vec<Vec<u8>>, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("--token-file {}: {e}", path.display())))?;
    let tokens: Vec<Vec<u8>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.as_bytes().to_vec())
        .collect();
    if tokens.is_empty() {
        return Err(Failure::Usage(format!(
            "--token-file {}: no token in it (one a line)",
            path.display()
        )));
    }
    Ok(tokens)
}

async fn reload_on_hangup(tokens: Arc<RwLock<Vec<Vec<u8>>>>, path: PathBuf) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match read_tokens(&path) {
            Ok(t) => {
                if let Ok(mut w) = tokens.write() {
                    *w = t;
                    tracing::info!("reloaded the tokens of {}", path.display());
                }
            }
            // The old tokens stay: a broken file must not lock every client out.
            Err(e) => tracing::error!("keeping the old tokens: {e:?}"),
        }
    }
}

/// Equal in time independent of where they differ (the length may show).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(app): State<App>, req: Request, next: Next) -> Response {
    let Some(tokens) = &app.tokens else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::as_bytes);
    let ok = match (given, tokens.read()) {
        (Some(g), Ok(t)) => t.iter().fold(false, |hit, t| hit | same(g, t)),
        _ => false,
    };
    if ok {
        next.run(req).await
    } else {
        problem(
            &app,
            StatusCode::UNAUTHORIZED,
            "a bearer token from the server's --token-file is required (Authorization: Bearer TOKEN)".into(),
            Map::new(),
        )
    }
}

/// An RFC 7807 problem, as OpenMeter's `UnexpectedProblemResponse`.
fn problem(
    app: &App,
    status: StatusCode,
    detail: String,
    extensions: Map<String, Value>,
) -> Response {
    let n = app.requests.fetch_add(1, Ordering::Relaxed);
    let mut body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
        "instance": format!("urn:request:tally/{n}"),
    });
    if let Value::Object(b) = &mut body
        && !extensions.is_empty()
    {
        b.insert("extensions".into(), Value::Object(extensions.clone()));
        // Also at the top, where RFC 7807 puts extension members.
        for (k, v) in extensions {
            b.entry(k).or_insert(v);
        }
    }
    let mut r = (status, Json(body)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

fn error_response(app: &App, e: &tally::Error, index: Option<usize>) -> Response {
    let status = match e.kind() {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Invalid | ErrorKind::Config => StatusCode::BAD_REQUEST,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::Busy | ErrorKind::Closed => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!("{e:?}");
    }
    let mut ext = Map::new();
    if let Some(i) = index {
        ext.insert("index".into(), json!(i));
    }
    if let Some(f) = e.field() {
        ext.insert("field".into(), json!(api_name(f)));
    }
    if let Some(v) = e.value() {
        ext.insert("value".into(), json!(v));
    }
    let detail = match index {
        Some(i) => format!("event {i}: {e}"),
        None => e.to_string(),
    };
    problem(app, status, detail, ext)
}

/// The library's name of a field as OpenMeter's API spells it.
fn api_name(field: &str) -> &str {
    match field {
        "group_by" => "groupBy",
        "filter" => "filterGroupBy",
        "window_size" => "windowSize",
        "value_property" => "valueProperty",
        "event_type" => "eventType",
        "cardinality_limit" => "cardinalityLimit",
        "event_from" => "eventFrom",
        f => f,
    }
}

fn bad_request(app: &App, field: &str, value: &str, reason: &str) -> Response {
    let mut ext = Map::new();
    ext.insert("field".into(), json!(field));
    ext.insert("value".into(), json!(value));
    problem(
        app,
        StatusCode::BAD_REQUEST,
        format!("invalid {field} {value:?}: {reason}"),
        ext,
    )
}

fn body_rejection(app: &App, r: BytesRejection) -> Response {
    problem(app, r.status(), r.body_text(), Map::new())
}

async fn health(State(app): State<App>) -> Response {
    match app.tally.meters().await {
        Ok(_) => (StatusCode::OK, Json(json!({"status": "ok"}))).into_response(),
        Err(e) => error_response(&app, &e, None),
    }
}

async fn fallback(State(app): State<App>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    if path.starts_with("/api/") {
        problem(
            &app,
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "{} {path} is part of OpenMeter's API that Tally does not serve (docs/http.md lists what it does)",
                req.method()
            ),
            Map::new(),
        )
    } else {
        problem(
            &app,
            StatusCode::NOT_FOUND,
            format!("no route {path}"),
            Map::new(),
        )
    }
}

async fn not_served(State(app): State<App>, req: Request) -> Response {
    fallback(State(app), req).await
}

async fn ingest(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(r) => return body_rejection(&app, r),
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
    let events = match parse_events(&body) {
        Ok(e) => e,
        Err(e) => return error_response(&app, &tally::Error::from(e.error), e.index),
    };
    let received = Utc::now();
    match app.tally.write_cloud_events(&events).await {
        Ok(o) if o.conflicts.is_empty() => StatusCode::NO_CONTENT.into_response(),
        // The rest of the request is committed (a retry of it is deduplicated, and
        // answers the same 409): only the conflicting events are refused.
        Ok(o) => {
            let first = o.conflicts.first().copied().unwrap_or(0);
            let id = events.get(first).map(|e| e.id.clone()).unwrap_or_default();
            let mut ext = Map::new();
            ext.insert("index".into(), json!(first));
            ext.insert("field".into(), json!("id"));
            ext.insert("value".into(), json!(id));
            ext.insert("conflicts".into(), json!(o.conflicts));
            problem(
                &app,
                StatusCode::CONFLICT,
                format!(
                    "events {:?} reuse the source and id of a stored event with a different payload: they are not stored (the request's other events are)",
                    o.conflicts
                ),
                ext,
            )
        }
        Err(e) => {
            let index = if events.len() > 1 && e.kind() == ErrorKind::Invalid {
                offending(&app.tally, &events, received, &e).await
            } else {
                None
            };
            error_response(&app, &e, index)
        }
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

async fn list_meters(State(app): State<App>) -> Response {
    match app.tally.meters().await {
        Ok(m) => Json(m).into_response(),
        Err(e) => error_response(&app, &e, None),
    }
}

async fn create_meter(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(r) => return body_rejection(&app, r),
    };
    let spec: MeterSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            let text = String::from_utf8_lossy(&body);
            let value: String = text.chars().take(80).collect();
            return bad_request(&app, "meter", &value, &e.to_string());
        }
    };
    match app.tally.create_meter(&spec, None).await {
        Ok(m) => (StatusCode::CREATED, Json(m)).into_response(),
        Err(e) => error_response(&app, &e, None),
    }
}

async fn show_meter(State(app): State<App>, Path(meter): Path<String>) -> Response {
    match app.tally.meter(&meter).await {
        Ok(m) => Json(m).into_response(),
        Err(e) => error_response(&app, &e, None),
    }
}

async fn delete_meter(State(app): State<App>, Path(meter): Path<String>) -> Response {
    match app.tally.delete_meter(&meter).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error_response(&app, &e, None),
    }
}

/// A query's parameters as OpenMeter's `queryMeter` takes them.
struct Params {
    query: MeterQuery,
    csv: bool,
}

fn params(app: &App, raw: Option<&str>, headers: &HeaderMap) -> Result<Params, Response> {
    let mut from = None;
    let mut to = None;
    let mut window = None;
    let mut zone = Zone::UTC;
    let mut subjects = Vec::new();
    let mut group_by = Vec::new();
    let mut filters: BTreeMap<String, String> = BTreeMap::new();
    let instant = |field: &str, v: &str| {
        DateTime::parse_from_rfc3339(v)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| bad_request(app, field, v, &format!("is not an RFC 3339 instant: {e}")))
    };
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "from" => from = Some(instant("from", &v)?),
            "to" => to = Some(instant("to", &v)?),
            "windowSize" => {
                window = Some(v.parse::<WindowSize>().map_err(|e| {
                    bad_request(app, "windowSize", &v, &tally::Error::from(e).to_string())
                })?)
            }
            "windowTimeZone" => {
                zone = v
                    .parse::<Zone>()
                    .map_err(|_| bad_request(app, "windowTimeZone", &v, "is not an IANA zone"))?
            }
            "subject" => subjects.push(
                CustomerId::new(v.to_string())
                    .map_err(|e| bad_request(app, "subject", &v, &e.to_string()))?,
            ),
            "groupBy" => group_by.push(v.to_string()),
            "clientId" => {}
            k => match k
                .strip_prefix("filterGroupBy[")
                .and_then(|r| r.strip_suffix(']'))
            {
                Some(dim) if !dim.is_empty() => {
                    filters.insert(dim.to_owned(), v.to_string());
                }
                _ => {
                    return Err(bad_request(
                        app,
                        "query",
                        k,
                        "is not a parameter of this query",
                    ));
                }
            },
        }
    }
    let now = Utc::now();
    // OpenMeter answers up to now, truncated to the minute, when `to` is absent.
    let to = to.unwrap_or_else(|| {
        now.duration_trunc(Duration::minutes(1)).unwrap_or(now) + Duration::minutes(1)
    });
    let from = from.unwrap_or(DateTime::UNIX_EPOCH);
    let range = TimeRange::new(from, to).map_err(|e| {
        bad_request(
            app,
            "from",
            &from.to_rfc3339(),
            &tally::Error::from(e).to_string(),
        )
    })?;
    let per = match window {
        Some(WindowSize::Minute) => Duration::minutes(1),
        Some(WindowSize::Hour) => Duration::hours(1),
        Some(WindowSize::Day) => Duration::days(1),
        _ => Duration::days(28),
    };
    if window.is_some() && (to - from).num_seconds() / per.num_seconds().max(1) > MAX_WINDOWS {
        return Err(bad_request(
            app,
            "windowSize",
            &format!("{window:?}"),
            &format!("the range would have more than {MAX_WINDOWS} windows; give a later from"),
        ));
    }
    let mut q = MeterQuery::new(range, now).in_zone(zone);
    if let Some(w) = window {
        q = q.window(w);
    }
    for s in &subjects {
        q = q.customer(s);
    }
    for g in &group_by {
        q = q.group_by(g);
    }
    for (k, v) in &filters {
        q = q.filter(k, v);
    }
    let csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    Ok(Params { query: q, csv })
}

async fn query_meter(
    State(app): State<App>,
    Path(meter): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = match params(&app, raw.as_deref(), &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let result = match app.tally.query_meter(&meter, &p.query).await {
        Ok(r) => r,
        Err(e) => return error_response(&app, &e, None),
    };
    if !p.csv {
        return match wire(&result) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => problem(
                &app,
                StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
                Map::new(),
            ),
        };
    }
    let keys: Vec<String> = p
        .query
        .group_by
        .iter()
        .filter(|g| *g != "subject")
        .cloned()
        .collect();
    let mut text = String::from("window_start,window_end,subject");
    for k in &keys {
        text.push(',');
        text.push_str(&csv_cell(k));
    }
    text.push_str(",value\n");
    for row in &result.data {
        text.push_str(&format!(
            "{},{},{}",
            row.window_start
                .to_rfc3339_opts(tally::chrono::SecondsFormat::AutoSi, true),
            row.window_end
                .to_rfc3339_opts(tally::chrono::SecondsFormat::AutoSi, true),
            csv_cell(row.subject.as_deref().unwrap_or(""))
        ));
        for k in &keys {
            text.push(',');
            text.push_str(&csv_cell(
                row.group_by
                    .get(k)
                    .cloned()
                    .flatten()
                    .as_deref()
                    .unwrap_or(""),
            ));
        }
        text.push_str(&format!(",{}\n", row.value.normalize()));
    }
    ([(header::CONTENT_TYPE, "text/csv")], text).into_response()
}

/// The result as OpenMeter's `MeterQueryResult`, whose `value` is a JSON number: the
/// exact decimal's digits are written as the number (a float would round them).
fn wire(result: &tally::meters::MeterQueryResult) -> Result<String, serde_json::Error> {
    use serde_json::value::RawValue;
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Row<'a> {
        value: Box<RawValue>,
        window_start: String,
        window_end: String,
        subject: Option<&'a str>,
        group_by: &'a BTreeMap<String, Option<String>>,
    }
    let at = |t: &DateTime<Utc>| t.to_rfc3339_opts(tally::chrono::SecondsFormat::AutoSi, true);
    let data = result
        .data
        .iter()
        .map(|r| {
            Ok(Row {
                value: RawValue::from_string(r.value.normalize().to_string())?,
                window_start: at(&r.window_start),
                window_end: at(&r.window_end),
                subject: r.subject.as_deref(),
                group_by: &r.group_by,
            })
        })
        .collect::<Result<Vec<_>, serde_json::Error>>()?;
    serde_json::to_string(&json!({
        "from": at(&result.from),
        "to": at(&result.to),
        "windowSize": result.window_size,
        "data": data,
    }))
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The distinct values of `group` in a meter's rows over all time.
async fn distinct(app: &App, meter: &str, group: &str) -> Result<Vec<String>, Response> {
    let now = Utc::now();
    let range = TimeRange::new(DateTime::UNIX_EPOCH, now + Duration::minutes(1))
        .map_err(|e| error_response(app, &tally::Error::from(e), None))?;
    let q = MeterQuery::new(range, now).group_by(group);
    let r = app
        .tally
        .query_meter(meter, &q)
        .await
        .map_err(|e| error_response(app, &e, None))?;
    let mut values: Vec<String> = r
        .data
        .into_iter()
        .filter_map(|row| {
            if group == "subject" {
                row.subject
            } else {
                row.group_by.get(group).cloned().flatten()
            }
        })
        .collect();
    values.sort();
    values.dedup();
    Ok(values)
}

async fn subjects(State(app): State<App>, Path(meter): Path<String>) -> Response {
    match distinct(&app, &meter, "subject").await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn group_by_values(
    State(app): State<App>,
    Path((meter, key)): Path<(String, String)>,
) -> Response {
    if key == "subject" {
        return bad_request(
            &app,
            "groupByKey",
            &key,
            "subject is not a group-by key; see /subjects",
        );
    }
    match distinct(&app, &meter, &key).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}
