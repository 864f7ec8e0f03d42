//! Embedding Tally in an HTTP service: the example of the main use.
//!
//! A small [axum] service that meters itself:
//!
//! - every request under `/v1/` passes through `meter`, a tower middleware
//!   (`axum::middleware::from_fn_with_state`) that reads the customer from the
//!   [`CUSTOMER_HEADER`] header, asks [`Tally::check_quota`] first and answers
//!   `429 Too Many Requests` when a hard quota blocks, and otherwise runs the request,
//!   records one `api` event (endpoint, method, status) through the batching
//!   [`Recorder`] and answers once that event is committed
//!   ([`Recorder::record_committed`]: a crash after the answer loses nothing; concurrent
//!   requests share a commit);
//! - with [`QuotaCheck::Exact`] the event is written by [`Tally::record_within_quota`]
//!   instead: check and write in one transaction under a lock of the customer, so a
//!   hard limit holds exactly however many instances serve the customer (a request
//!   that ran but would pass the limit is answered `429` and not recorded);
//! - `GET /usage/{customer}` answers the customer's priced usage summary (month to
//!   date, or `?from=…&to=…`), the report of the CLI contract as JSON;
//! - [`serve`] runs until its shutdown future completes (the binary: SIGTERM or
//!   Ctrl-C), lets requests in flight finish, then closes the recorder, which writes
//!   what is still queued.
//!
//! ```no_run
//! # async fn run() -> Result<(), tally::Error> {
//! let tally = tally::Tally::builder("postgres://postgres@127.0.0.1/app").build().await?;
//! tally.migrate().await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! let recorder = tally.recorder();
//! tally_example_axum::serve(listener, tally, recorder, tally_example_axum::shutdown_signal())
//!     .await
//! # }
//! ```
//!
//! Choices an embedding program may make differently (each is one line here):
//! a blocked request is not recorded (it was not served); when the quota cannot be
//! read (database down) the request is let through and logged; a request whose usage
//! is not committed within [`RECORD_WAIT`] is answered `503` (it was served, but is not
//! acknowledged), and the recorder keeps retrying it.

#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::future::Future;

use axum::{
    Json, Router,
    extract::{MatchedPath, Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use tally::{
    CustomerId, ErrorKind, Quantity, Recorder, Service, Tally, TimeRange, alerts::Decision,
    chrono::Utc, track,
};

/// The request header that names the customer a request is metered for.
pub const CUSTOMER_HEADER: &str = "x-customer-id";

/// The response header that carries the alert level a request reached (`warning`,
/// `critical`, `exceeded`) when it was let through near or past a soft limit.
pub const QUOTA_HEADER: &str = "x-quota-level";

/// How the metering middleware holds hard quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuotaCheck {
    /// [`Tally::check_quota`] before the request, the event through the batching
    /// recorder: exact within one process; across N instances a hard limit can be
    /// passed by what the others commit within one batch timeout (docs/alerts.md).
    #[default]
    Cached,
    /// [`Tally::record_within_quota`] after the request: exact across processes, one
    /// transaction per request; a request refused then ran but is answered `429`.
    Exact,
}

/// What the handlers share: the Tally handle, the recorder and the quota check.
#[derive(Clone)]
struct AppState {
    tally: Tally,
    recorder: Recorder,
    check: QuotaCheck,
}

/// The service's routes: metered `/v1/…` endpoints, `GET /usage/{customer}` and
/// `GET /healthz` (neither metered).
pub fn app(tally: Tally, recorder: Recorder) -> Router {
    app_with(tally, recorder, QuotaCheck::Cached)
}

/// [`app`] with a choice of quota check.
pub fn app_with(tally: Tally, recorder: Recorder, check: QuotaCheck) -> Router {
    let state = AppState {
        tally,
        recorder,
        check,
    };
    // `route_layer` runs the middleware after routing, so it sees the matched route
    // (`/v1/things/{id}`) and unknown paths get a plain 404 that is not metered.
    let metered = Router::new()
        .route("/v1/hello", get(hello))
        .route("/v1/things/{id}", get(thing))
        .route_layer(middleware::from_fn_with_state(state.clone(), meter));
    Router::new()
        .merge(metered)
        .route("/usage/{customer}", get(usage))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown` completes, then lets requests in flight
/// finish and closes `recorder`, which writes every event still queued.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tally: Tally,
    recorder: Recorder,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tally::Result<()> {
    serve_with(listener, tally, recorder, QuotaCheck::Cached, shutdown).await
}

/// [`serve`] with a choice of quota check.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    tally: Tally,
    recorder: Recorder,
    check: QuotaCheck,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tally::Result<()> {
    let served = axum::serve(listener, app_with(tally, recorder.clone(), check))
        .with_graceful_shutdown(shutdown)
        .await;
    // Close even when serving failed: what was recorded must still be written.
    let closed = recorder.close().await;
    served?;
    closed
}

/// Completes on SIGTERM (how a process manager or Kubernetes stops a service) or
/// Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests, then flushing the recorder");
}

/// The metering middleware: quota first, then the request, then one `api` event.
async fn meter(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let customer = match customer_of(request.headers()) {
        Ok(customer) => customer,
        Err(response) => return response,
    };
    // The exact check decides alone: the cached one may over-count what is in flight
    // (stricter than the limit), and would refuse a request the limit allows.
    let check = match state.check {
        QuotaCheck::Cached => {
            state
                .tally
                .check_quota(&customer, &Service::API, Quantity::ONE)
                .await
        }
        QuotaCheck::Exact => Ok(Decision::Allow),
    };
    let level = match check {
        Ok(Decision::Block { usage, limit }) => return quota_exceeded(usage, limit),
        Ok(Decision::Warn { level, .. }) => Some(level),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, customer = %customer, "quota check failed; letting the request through");
            None
        }
    };
    let method = request.method().as_str().to_owned();
    // The route, not the path: `/v1/things/{id}` keeps the metadata's cardinality low.
    let endpoint = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    let mut response = next.run(request).await;
    if let Some(level) = level
        && let Ok(value) = HeaderValue::from_str(&level.to_string())
    {
        response.headers_mut().insert(QUOTA_HEADER, value);
    }
    // Answered only once the event is committed: a crash after the answer loses
    // nothing that was acknowledged. Concurrent requests share commits (group commit).
    let usage = match track::api_request(&endpoint, &method, response.status().as_u16()) {
        Ok(usage) => usage,
        Err(e) => {
            tracing::error!(error = %e, "could not describe an api event");
            return response;
        }
    };
    let event = usage.for_customer(customer);
    let decision = match state.check {
        QuotaCheck::Exact => committed(state.tally.record_within_quota(&event))
            .await
            .map(|a| Some(a.decision)),
        QuotaCheck::Cached => committed(state.recorder.record_committed(event))
            .await
            .map(|()| None),
    };
    match decision {
        Err(refused) => return refused,
        Ok(Some(Decision::Block { usage, limit })) => return quota_exceeded(usage, limit),
        Ok(Some(Decision::Warn { level, .. })) => {
            if let Ok(value) = HeaderValue::from_str(&level.to_string()) {
                response.headers_mut().insert(QUOTA_HEADER, value);
            }
        }
        Ok(_) => {}
    }
    response
}

/// Waits up to [`RECORD_WAIT`] for `write` (a write that returns once committed); a
/// `503` when it failed or took longer.
#[allow(clippy::result_large_err)] // the error is the response itself
async fn committed<T>(write: impl Future<Output = tally::Result<T>>) -> Result<T, Response> {
    match tokio::time::timeout(RECORD_WAIT, write).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "could not record an api event");
            Err(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("usage could not be recorded: {e}"),
            ))
        }
        Err(_) => {
            tracing::error!("recording an api event took longer than {RECORD_WAIT:?}");
            Err(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "usage could not be recorded in time; it may still be".to_owned(),
            ))
        }
    }
}

/// How long a request waits for its usage to be committed (the database being down,
/// say) before it is answered `503 Service Unavailable` instead.
pub const RECORD_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The customer named by [`CUSTOMER_HEADER`], validated; a 400 naming the header when
/// it is missing or not a valid customer id.
#[allow(clippy::result_large_err)] // the error is the response itself
fn customer_of(headers: &HeaderMap) -> Result<CustomerId, Response> {
    let Some(value) = headers.get(CUSTOMER_HEADER) else {
        return Err(bad_request(format!(
            "the {CUSTOMER_HEADER} header is missing"
        )));
    };
    let text = value
        .to_str()
        .map_err(|_| bad_request(format!("the {CUSTOMER_HEADER} header is not text")))?;
    text.parse()
        .map_err(|e: tally::InvalidInput| bad_request(format!("{CUSTOMER_HEADER}: {e}")))
}

/// `429 Too Many Requests`, with the usage and limit the quota was decided on.
fn quota_exceeded(usage: impl ToString, limit: impl ToString) -> Response {
    let body = serde_json::json!({
        "error": "quota exceeded",
        "service": "api",
        "usage": usage.to_string(),
        "limit": limit.to_string(),
    });
    (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response()
}

fn bad_request(message: String) -> Response {
    error_response(StatusCode::BAD_REQUEST, message)
}

fn error_response(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// An error of Tally's as a response: bad input is the client's fault, the rest ours.
fn tally_error(e: &tally::Error) -> Response {
    let status = match e.kind() {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::Connection | ErrorKind::Timeout => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status.is_server_error() {
        tracing::error!(error = %e, "usage report failed");
    }
    error_response(status, e.to_string())
}

/// `?from=…&to=…` of `GET /usage/{customer}` (instants or dates; default: this month
/// so far).
#[derive(Debug, Deserialize)]
struct Bounds {
    from: Option<String>,
    to: Option<String>,
}

async fn usage(
    State(state): State<AppState>,
    Path(customer): Path<String>,
    Query(bounds): Query<Bounds>,
) -> Response {
    let report = async {
        let customer: CustomerId = customer.parse()?;
        let range = TimeRange::from_bounds(
            bounds.from.as_deref(),
            bounds.to.as_deref(),
            state.tally.zone(),
            Utc::now(),
        )?;
        state.tally.summary(&customer, range).await
    };
    match report.await {
        Ok(summary) => Json(summary).into_response(),
        Err(e) => tally_error(&e),
    }
}

async fn hello() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "hello": "world" }))
}

async fn thing(Path(id): Path<u64>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "id": id }))
}
