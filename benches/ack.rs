//! `tally-ack`: what waiting for the commit costs. For 1, 16 and 256 concurrent
//! callers, each recording one event at a time, it measures events/s and the p50/p99
//! latency of `Recorder::record_committed` (returns once committed), beside the rate of
//! the same callers with `Recorder::record` (returns once queued; the run ends when
//! `close()` has committed everything), and a raw binary COPY of the same number of
//! rows into an unindexed table, all in the same run on a fresh database.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1/postgres \
//!   cargo run --release -p tally-benches --bin tally-ack -- --seconds 5
//! ```
//!
//! Prints one JSON line per caller count. `--callers 1,16,256`, `--seconds N` (each
//! mode runs for N seconds) and `--workers N` (the recorder's writers) may be given.

use std::{
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use tally::{CustomerId, EventId, Quantity, Recorder, RecorderConfig, Service, UsageEvent};
use tally_benches::percentile_ms;
use tally_testdb::TestDb;
use tokio_postgres::{NoTls, binary_copy::BinaryCopyInWriter, types::Type};

struct Args {
    callers: Vec<usize>,
    seconds: u64,
    workers: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        callers: vec![1, 16, 256],
        seconds: 5,
        workers: RecorderConfig::DEFAULT_WORKERS,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--callers" => {
                a.callers = value
                    .split(',')
                    .map(|v| {
                        v.trim()
                            .parse::<usize>()
                            .map_err(|_| format!("invalid --callers {value:?}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--seconds" => {
                a.seconds = value
                    .parse()
                    .map_err(|_| format!("invalid --seconds {value:?}: not a whole number"))?;
            }
            "--workers" => {
                a.workers = value
                    .parse()
                    .map_err(|_| format!("invalid --workers {value:?}: not a whole number"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

/// An event of caller `caller`, unique by `seq`.
fn event(caller: usize, seq: u64, run: u64) -> UsageEvent {
    let customer =
        CustomerId::new(format!("ack-{:03}", caller % 1000)).unwrap_or_else(|_| unreachable!());
    UsageEvent::new(customer, Service::API, Quantity::ONE).with_id(EventId::from(
        uuid::Uuid::from_u64_pair(run << 32 | caller as u64, seq),
    ))
}

/// `callers` tasks recording one event at a time for `for_`; returns the events
/// recorded and the latencies of each call (µs), sorted.
async fn drive(
    recorder: &Recorder,
    callers: usize,
    for_: Duration,
    run: u64,
    wait: bool,
) -> (u64, Vec<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let (recorder, stop, count) = (recorder.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    let e = event(c, seq, run);
                    let t = Instant::now();
                    let r = if wait {
                        recorder.record_committed(e).await
                    } else {
                        recorder.record(e).await
                    };
                    r.unwrap_or_else(|e| panic!("recording failed: {e}"));
                    lat.push(t.elapsed().as_micros() as u64);
                    seq += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                lat
            })
        })
        .collect();
    tokio::time::sleep(for_).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort_unstable();
    (count.load(Ordering::Relaxed), all)
}

async fn raw_copy(url: &str, n: u64) -> f64 {
    let cfg: tokio_postgres::Config = url.parse().unwrap();
    let (client, conn) = cfg.connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(
            "CREATE TABLE baseline_copy (event_id uuid, customer_id text, service text, quantity numeric(28,15), recorded_at timestamptz, metadata jsonb)",
        )
        .await
        .unwrap();
    let events: Vec<UsageEvent> = (0..n).map(|i| event((i % 256) as usize, i, 999)).collect();
    let t = Instant::now();
    let sink = client
        .copy_in("COPY baseline_copy FROM STDIN BINARY")
        .await
        .unwrap();
    let types = [
        Type::UUID,
        Type::TEXT,
        Type::TEXT,
        Type::NUMERIC,
        Type::TIMESTAMPTZ,
        Type::JSONB,
    ];
    let mut w = pin!(BinaryCopyInWriter::new(sink, &types));
    let meta = serde_json::json!({});
    for e in &events {
        w.as_mut()
            .write(&[
                &e.id.uuid(),
                &e.customer.as_str(),
                &e.service.as_str(),
                &e.quantity.value(),
                &e.recorded_at,
                &meta,
            ])
            .await
            .unwrap();
    }
    w.as_mut().finish().await.unwrap();
    let rate = n as f64 / t.elapsed().as_secs_f64();
    client
        .batch_execute("DROP TABLE baseline_copy")
        .await
        .unwrap();
    rate
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = tally_benches::or_exit(args());
    let db = TestDb::new().await.expect("a database to load into");
    let for_ = Duration::from_secs(a.seconds);
    for (run, &callers) in a.callers.iter().enumerate() {
        let run = run as u64 * 2;
        // Queued only: the rate at which the same callers get events committed when
        // nobody waits (close() commits the rest, inside the timing).
        let recorder = db
            .tally()
            .recorder_with(RecorderConfig::default().workers(a.workers));
        let t = Instant::now();
        let (queued, _) = drive(&recorder, callers, for_, run, false).await;
        recorder.close().await.unwrap();
        let queued_rate = queued as f64 / t.elapsed().as_secs_f64();

        let recorder = db
            .tally()
            .recorder_with(RecorderConfig::default().workers(a.workers));
        let t = Instant::now();
        let (committed, lat) = drive(&recorder, callers, for_, run + 1, true).await;
        let secs = t.elapsed().as_secs_f64();
        let status = recorder.status();
        recorder.close().await.unwrap();
        let committed_rate = committed as f64 / secs;
        let copy_rate = raw_copy(db.url(), committed.max(1000)).await;
        let out = serde_json::json!({
            "callers": callers,
            "workers": a.workers,
            "seconds": a.seconds,
            "committed_events": committed,
            "record_committed_events_per_s": committed_rate.round(),
            "record_committed_p50_ms": percentile_ms(&lat, 0.50),
            "record_committed_p99_ms": percentile_ms(&lat, 0.99),
            "batches": status.batches,
            "events_per_batch": (committed as f64 / status.batches.max(1) as f64).round(),
            "record_events_per_s": queued_rate.round(),
            "raw_copy_rows_per_s": copy_rate.round(),
            "committed_to_queued": (committed_rate / queued_rate * 1000.0).round() / 1000.0,
            "committed_to_raw_copy": (committed_rate / copy_rate * 1000.0).round() / 1000.0,
            "at": Utc::now().to_rfc3339(),
        });
        println!("{out}");
    }
    let v = db.tally().verify().await.unwrap();
    assert_eq!(
        (v.mismatches, v.key_mismatches),
        (0, 0),
        "rollups equal raw events"
    );
}
