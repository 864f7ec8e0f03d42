//! `tally-http`: what `tally serve` costs over the in-process recorder (issue 25). For
//! each client count (8 and 64 by default), clients post batches of 100 CloudEvents
//! (`POST /api/v1/events`, keep-alive loopback connections, each waiting for its `204`,
//! which follows the commit) for `--seconds`, beside the same number of in-process
//! callers handing the recorder the same events 100 at a time and waiting for their
//! commit (`Recorder::record_many_committed`), in the same run on a fresh database
//! with one SUM meter over a 12-value dimension; then 64 clients posting one event
//! each. The server is the release binary, started as a user would:
//!
//! ```text
//! cargo build --release -p tally-cli -p tally-benches
//! DATABASE_URL=postgres://postgres@127.0.0.1/postgres \
//!   target/release/tally-http --seconds 10
//! ```
//!
//! Prints one JSON line per mode and client count: events/s, the p50/p99 of a
//! request's acknowledgment (or of the in-process call), and the ratio to the
//! in-process rate. `--tally PATH` (default `target/release/tally`), `--clients 8,64`,
//! `--seconds N`, `--batch N` and `--writers N` (the server's) may be given.

use std::{
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{TimeZone, Utc};
use serde_json::{Value, json};
use tally::{
    Recorder,
    meters::{Aggregation, CloudEvent, EventType, JsonPath, MeterSlug, MeterSpec},
};
use tally_benches::percentile_ms;
use tally_testdb::TestDb;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

struct Args {
    tally: String,
    clients: Vec<usize>,
    seconds: u64,
    batch: usize,
    writers: u16,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        tally: concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/tally").to_owned(),
        clients: vec![8, 64],
        seconds: 5,
        batch: 100,
        writers: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("invalid {flag} {v:?}: not a whole number"))
        };
        match flag.as_str() {
            "--tally" => a.tally = value,
            "--clients" => {
                a.clients = value
                    .split(',')
                    .map(|v| number(v).map(|n| n as usize))
                    .collect::<Result<_, _>>()?
            }
            "--seconds" => a.seconds = number(&value)?,
            "--batch" => a.batch = number(&value)? as usize,
            "--writers" => a.writers = number(&value)? as u16,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

const MODELS: [&str; 12] = [
    "gpt-4o",
    "gpt-4o-mini",
    "o1",
    "o3",
    "claude",
    "haiku",
    "sonnet",
    "opus",
    "gemini",
    "flash",
    "llama",
    "mistral",
];

/// Event `seq` of client `client` in run `run`: unique (source, id), one of 1,000
/// customers, one of the 12 models, a fractional token count.
fn cloud_event(run: u64, client: usize, seq: u64) -> Value {
    let n = seq as usize + client * 7919;
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap()
        + chrono::Duration::milliseconds((seq as i64 * 37 + client as i64) % 2_000_000_000);
    json!({
        "specversion": "1.0",
        "id": format!("{client}-{seq}"),
        "source": format!("bench-{run}"),
        "type": "prompt",
        "subject": format!("customer-{:04}", n % 1000),
        "time": at.to_rfc3339(),
        "data": {"tokens": format!("{}.5", n % 977), "model": MODELS[n % MODELS.len()]},
    })
}

/// What a client does, request after request.
#[derive(Clone)]
enum Mode {
    /// Hands the recorder `batch` events and waits for their commit.
    InProcess(Recorder, u64),
    /// Posts `batch` events in one request (1: a single CloudEvent) and waits for 204.
    Http(Arc<str>, u64),
}

impl Mode {
    /// One client's loop until `stop`: the latencies of its calls (µs).
    async fn client(
        self,
        run: u64,
        c: usize,
        stop: Arc<AtomicBool>,
        count: Arc<AtomicU64>,
    ) -> Vec<u64> {
        let mut conn = match &self {
            Mode::Http(addr, _) => Some(Conn::open(addr).await),
            Mode::InProcess(..) => None,
        };
        let mut lat = Vec::new();
        let mut seq = 0;
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let n = match (&self, conn.as_mut()) {
                (Mode::InProcess(rec, batch), _) => {
                    let events = (seq..seq + batch)
                        .map(|s| {
                            let text = cloud_event(run, c, s).to_string();
                            let mut parsed = tally::meters::parse_events(text.as_bytes())
                                .unwrap_or_else(|e| panic!("{:?}", e.error));
                            let e: CloudEvent = parsed.remove(0);
                            e.into_usage(Utc::now()).unwrap()
                        })
                        .collect();
                    rec.record_many_committed(events).await.unwrap();
                    *batch
                }
                (Mode::Http(_, 1), Some(conn)) => {
                    let body = serde_json::to_vec(&cloud_event(run, c, seq)).unwrap();
                    conn.post("application/cloudevents+json", &body).await;
                    1
                }
                (Mode::Http(_, batch), Some(conn)) => {
                    let body: Vec<Value> =
                        (seq..seq + batch).map(|s| cloud_event(run, c, s)).collect();
                    let body = serde_json::to_vec(&body).unwrap();
                    conn.post("application/cloudevents-batch+json", &body).await;
                    *batch
                }
                (Mode::Http(..), None) => break,
            };
            lat.push(t.elapsed().as_micros() as u64);
            count.fetch_add(n, Ordering::Relaxed);
            seq += n;
        }
        lat
    }
}

/// Runs `clients` clients of `mode` for `for_`; returns events/s and the sorted
/// latencies (µs).
async fn drive(mode: &Mode, run: u64, clients: usize, for_: Duration) -> (f64, Vec<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| tokio::spawn(mode.clone().client(run, c, stop.clone(), count.clone())))
        .collect();
    tokio::time::sleep(for_).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_unstable();
    (count.load(Ordering::Relaxed) as f64 / secs, all)
}

/// A keep-alive HTTP/1.1 connection that posts bodies and reads the answers.
struct Conn {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Conn {
    async fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).await.expect("the server listens");
        s.set_nodelay(true).ok();
        let (r, w) = s.into_split();
        Conn {
            r: BufReader::new(r),
            w,
        }
    }

    async fn post(&mut self, content_type: &str, body: &[u8]) -> u16 {
        let head = format!(
            "POST /api/v1/events HTTP/1.1\r\nHost: bench\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.w.write_all(head.as_bytes()).await.expect("a request");
        self.w.write_all(body).await.expect("a request");
        let mut line = String::new();
        self.r.read_line(&mut line).await.expect("a status line");
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {line:?}"));
        let mut length = 0usize;
        loop {
            line.clear();
            self.r.read_line(&mut line).await.expect("a header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        self.r.read_exact(&mut body).await.expect("a body");
        assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));
        status
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = tally_benches::or_exit(args());
    let db = TestDb::new().await.expect("a database to load into");
    let spec = MeterSpec::new(
        "tokens".parse::<MeterSlug>().unwrap(),
        "prompt".parse::<EventType>().unwrap(),
        Aggregation::Sum,
        Some("$.tokens".parse::<JsonPath>().unwrap()),
    )
    .and_then(|s| s.dimension("model", "$.model".parse().unwrap()))
    .unwrap();
    db.tally().create_meter(&spec, None).await.unwrap();

    let mut server = tokio::process::Command::new(&a.tally)
        .args(["serve", "--listen", "127.0.0.1:0", "--writers"])
        .arg(a.writers.to_string())
        .env("DATABASE_URL", db.url())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (build it: cargo build --release -p tally-cli)",
                a.tally
            )
        });
    let mut first = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut first)
        .await
        .unwrap();
    let addr: Arc<str> = first
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("first line: {first:?}"))
        .into();

    let for_ = Duration::from_secs(a.seconds);
    let batch = a.batch as u64;
    let mut run = 0;
    for &clients in &a.clients {
        // In process: the same events, 100 a call, each call waiting for its commit.
        run += 1;
        let recorder: Recorder = db.tally().recorder();
        let mode = Mode::InProcess(recorder.clone(), batch);
        let (in_rate, in_lat) = drive(&mode, run, clients, for_).await;
        recorder.close().await.unwrap();
        // Over HTTP.
        run += 1;
        let (http_rate, http_lat) =
            drive(&Mode::Http(addr.clone(), batch), run, clients, for_).await;
        println!(
            "{}",
            json!({
                "mode": "batches",
                "clients": clients,
                "batch": batch,
                "seconds": a.seconds,
                "writers": a.writers,
                "in_process_events_per_s": in_rate.round(),
                "in_process_p50_ms": percentile_ms(&in_lat, 0.5),
                "in_process_p99_ms": percentile_ms(&in_lat, 0.99),
                "http_events_per_s": http_rate.round(),
                "http_ack_p50_ms": percentile_ms(&http_lat, 0.5),
                "http_ack_p99_ms": percentile_ms(&http_lat, 0.99),
                "http_to_in_process": (http_rate / in_rate * 1000.0).round() / 1000.0,
                "at": Utc::now().to_rfc3339(),
            })
        );
    }

    // One event a request, 64 clients.
    run += 1;
    let (single_rate, single_lat) = drive(&Mode::Http(addr.clone(), 1), run, 64, for_).await;
    let metrics = {
        let mut c = Conn::open(&addr).await;
        c.w.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        c.r.read_to_string(&mut text).await.unwrap();
        text
    };
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    println!(
        "{}",
        json!({
            "mode": "single events",
            "clients": 64,
            "seconds": a.seconds,
            "writers": a.writers,
            "http_events_per_s": single_rate.round(),
            "http_ack_p50_ms": percentile_ms(&single_lat, 0.5),
            "http_ack_p99_ms": percentile_ms(&single_lat, 0.99),
            "server_events_per_transaction": (metric("tally_events_accepted_total")
                / metric("tally_ingest_transactions_total").max(1.0) * 10.0).round() / 10.0,
            "at": Utc::now().to_rfc3339(),
        })
    );
    server.kill().await.ok();
    let v = db.tally().verify().await.unwrap();
    assert_eq!(
        (v.mismatches, v.key_mismatches),
        (0, 0),
        "rollups equal raw events"
    );
}
