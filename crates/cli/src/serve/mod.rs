//! `tally serve`: OpenMeter's metering API (`/api/v1/events`, `/api/v1/meters…`) over
//! this database, so OpenMeter's SDKs and any HTTP client meter into PostgreSQL
//! (docs/http.md). An ingest request is one transaction: `204` only once every event
//! of it is committed, and a request with one bad event stores nothing.

// A handler's early answer is the error: a Response, returned once per request, so
// boxing it would buy nothing.
#![allow(clippy::result_large_err)]

mod commit;
mod events;
mod filters;
mod meters;
mod metrics;
mod query;

use std::{
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
    extract::{DefaultBodyLimit, Request, State, rejection::BytesRejection},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use clap::Args;
use serde_json::{Map, Value, json};
use tally::{ErrorKind, Tally};

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
    /// Seconds a client has to send a request's headers (slower: the connection is
    /// closed).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout: u64,
    /// Transactions writing events at once; concurrent requests share them (group
    /// commit), each writer holding one database connection while it writes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    writers: u16,
}

#[derive(Clone)]
struct App {
    tally: Tally,
    tokens: Option<Arc<RwLock<Vec<Vec<u8>>>>>,
    requests: Arc<AtomicU64>,
    metrics: Arc<metrics::Metrics>,
    committer: commit::Committer,
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
    let metrics = Arc::new(metrics::Metrics::default());
    let app = App {
        committer: commit::Committer::start(tally.clone(), usize::from(a.writers), metrics.clone()),
        tally,
        tokens: tokens.clone(),
        requests: Arc::new(AtomicU64::new(0)),
        metrics,
        max_body: a.max_body_bytes,
        body_timeout: std::time::Duration::from_secs(a.body_timeout),
    };
    if let (Some(tokens), Some(path)) = (tokens, a.token_file.clone()) {
        tokio::spawn(reload_on_hangup(tokens, path));
    }
    let header_timeout = std::time::Duration::from_secs(a.header_timeout);
    accept(listener, router(app), header_timeout).await;
    Ok(())
}

/// Serves connections until SIGTERM or Ctrl-C, then stops accepting and lets every
/// connection finish the request it is answering. A client gets `header_timeout` to
/// send a request's headers (then its connection is closed); the body has its own
/// limit (`buffer`).
async fn accept(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: std::time::Duration,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(terminated());
    loop {
        let stream = tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(
                TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(app.clone()),
            );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

fn router(app: App) -> Router {
    Router::new()
        .route(
            "/api/v1/events",
            get(events::list_events).post(events::ingest),
        )
        .route(
            "/api/v1/meters",
            get(meters::list_meters).post(meters::create_meter),
        )
        .route(
            "/api/v1/meters/{meter}",
            get(meters::show_meter)
                .delete(meters::delete_meter)
                .put(meters::update_meter),
        )
        .route(
            "/api/v1/meters/{meter}/query",
            get(query::query_meter).post(query::query_meter_post),
        )
        .route("/api/v1/meters/{meter}/subjects", get(query::subjects))
        .route(
            "/api/v1/meters/{meter}/group-by/{key}/values",
            get(query::group_by_values),
        )
        .fallback(fallback)
        // The token is checked before a byte of the body is read.
        .layer(middleware::from_fn_with_state(app.clone(), buffer))
        .layer(middleware::from_fn_with_state(app.clone(), authorize))
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(app.max_body))
        .layer(middleware::from_fn_with_state(app.clone(), count))
        .with_state(app)
}

/// Counts every response by status, the refusals of the layers above included.
async fn count(State(app): State<App>, req: Request, next: Next) -> Response {
    let r = next.run(req).await;
    app.metrics.responded(r.status().as_u16());
    r
}

async fn metrics(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
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
        "exclude" => "advancedMeterGroupByFilters",
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

/// The request's body, or the answer to a body that could not be read.
fn body(app: &App, body: Result<Bytes, BytesRejection>) -> Result<Bytes, Response> {
    body.map_err(|r| problem(app, r.status(), r.body_text(), Map::new()))
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
