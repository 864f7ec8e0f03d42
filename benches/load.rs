//! `tally-load`: sustained ingest through the Recorder, measured against a raw binary
//! COPY of the same rows into an unindexed table in the same run.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1/postgres \
//!   cargo run --release -p tally-benches --bin tally-load -- --events 10000000 --shape live
//! ```
//!
//! It creates a fresh database (see `tally-testdb`), generates the workload in memory
//! (not timed), then times: (1) one binary COPY of all rows into an unindexed table,
//! (2) recording every event through a `Recorder` until `close()` returns, i.e. until
//! everything is committed with its dedupe keys and rollups. It then verifies the
//! rollups and prints one JSON line of results. With `--keep` the database is kept and
//! its URL printed, for `TALLY_BENCH_URL=… cargo bench --bench analytics`. `--end T`
//! (RFC 3339) ends the workload at T instead of now. `--citus` loads into a fresh
//! database on the Citus cluster `TALLY_CITUS_URL` names (its baseline COPY goes into
//! a distributed table). `--batch-size`, `--max-batch-size`, `--queue-capacity` and
//! `--workers` set the recorder's (the defaults otherwise). `--meters` (issue 24) makes
//! every event a CloudEvent of type `prompt` (12 models × 2 types, 100 000 users) feeding
//! three meters (SUM of tokens by model and type, COUNT, UNIQUE_COUNT of users), then
//! times the backfill of a fourth meter (MAX of tokens by model) over the stored events.

use std::{pin::pin, time::Instant};

use chrono::Utc;
use std::str::FromStr;

use tally::{
    RecorderConfig,
    meters::{Aggregation, EventType, MeterSpec},
};
use tally_benches::{Shape, duplicates, generate};
use tally_testdb::{CitusDb, TestDb};

/// Where the load goes: one PostgreSQL, or a Citus cluster (`--citus`).
enum Db {
    One(Box<TestDb>),
    Citus(Box<CitusDb>),
}

impl Db {
    fn url(&self) -> &str {
        match self {
            Db::One(d) => d.url(),
            Db::Citus(d) => d.url(),
        }
    }

    fn tally(&self) -> &tally::Tally {
        match self {
            Db::One(d) => d.tally(),
            Db::Citus(d) => d.tally(),
        }
    }
}
use tokio_postgres::{NoTls, binary_copy::BinaryCopyInWriter, types::Type};

struct Args {
    events: usize,
    shape: Shape,
    batch_size: usize,
    max_batch_size: Option<usize>,
    queue_capacity: Option<usize>,
    workers: usize,
    baseline: bool,
    keep: bool,
    citus: bool,
    meters: bool,
    end: Option<chrono::DateTime<Utc>>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        events: 1_000_000,
        shape: Shape::Live,
        batch_size: 10_000,
        max_batch_size: None,
        queue_capacity: None,
        workers: 2,
        baseline: true,
        keep: false,
        citus: false,
        meters: false,
        end: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let number = |name: &str, v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("invalid {name} {v:?}: not a whole number"))
        };
        match flag.as_str() {
            "--events" => a.events = number("--events", value("--events")?)?,
            "--batch-size" => a.batch_size = number("--batch-size", value("--batch-size")?)?,
            "--workers" => a.workers = number("--workers", value("--workers")?)?,
            "--max-batch-size" => {
                a.max_batch_size = Some(number("--max-batch-size", value("--max-batch-size")?)?)
            }
            "--queue-capacity" => {
                a.queue_capacity = Some(number("--queue-capacity", value("--queue-capacity")?)?)
            }
            "--shape" => {
                a.shape = match value("--shape")?.as_str() {
                    "live" => Shape::Live,
                    "backfill" => Shape::Backfill,
                    other => {
                        return Err(format!(
                            "invalid --shape {other:?}: expected live or backfill"
                        ));
                    }
                }
            }
            "--no-baseline" => a.baseline = false,
            "--keep" => a.keep = true,
            "--citus" => a.citus = true,
            "--meters" => a.meters = true,
            "--end" => {
                let v = value("--end")?;
                a.end = Some(
                    chrono::DateTime::parse_from_rfc3339(&v)
                        .map_err(|_| format!("invalid --end {v:?}: expected RFC 3339"))?
                        .with_timezone(&Utc),
                )
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = tally_benches::or_exit(args());
    // A failure (PostgreSQL restarting mid-run, say) is reported, never a panic.
    if let Err(e) = run(a).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The event as a CloudEvent of type `prompt`: its payload is derived from its id, so a
/// retry (same id) carries the same payload.
fn prompt(mut e: tally::UsageEvent) -> tally::UsageEvent {
    let mut h = 0u64;
    for b in e.id.uuid().as_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    let data = format!(
        r#"{{"model": "m{}", "type": "t{}", "tokens": {}, "user": "u{}"}}"#,
        h % 12,
        (h >> 8) % 2,
        (h >> 16) % 5000,
        (h >> 24) % 100_000
    );
    e.service = EventType::from_str("prompt")
        .map(|t| t.service())
        .unwrap_or(e.service);
    e.quantity = tally::Quantity::ZERO;
    if let Ok(m) = data.parse() {
        e.metadata = m;
    }
    e
}

/// A meter of type `prompt`.
fn meter(
    slug: &str,
    agg: Aggregation,
    value: Option<&str>,
    dims: &[&str],
) -> Result<MeterSpec, String> {
    let bad = |e: tally::InvalidInput| e.to_string();
    let value = value.map(str::parse).transpose().map_err(bad)?;
    let mut m = MeterSpec::new(
        slug.parse().map_err(bad)?,
        "prompt".parse().map_err(bad)?,
        agg,
        value,
    )
    .map_err(bad)?;
    for d in dims {
        m = m
            .dimension(d, format!("$.{d}").parse().map_err(bad)?)
            .map_err(bad)?;
    }
    Ok(m)
}

/// `what` failed: its error, said with what was being done.
fn fail<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

async fn run(a: Args) -> Result<(), String> {
    let db = if a.citus {
        Db::Citus(Box::new(
            CitusDb::new()
                .await
                .map_err(fail("creating a Citus database to load into"))?
                .ok_or("--citus needs TALLY_CITUS_URL (a coordinator, see ../shared/citus)")?,
        ))
    } else {
        Db::One(Box::new(
            TestDb::new()
                .await
                .map_err(fail("creating a database to load into"))?,
        ))
    };
    let t = Instant::now();
    let mut events = generate(a.events, a.shape, a.end.unwrap_or_else(Utc::now), 42);
    if a.meters {
        events = events.into_iter().map(prompt).collect();
    }
    let dups = duplicates(&events);
    eprintln!(
        "generated {} events ({} duplicates) in {:.1}s",
        events.len(),
        dups,
        t.elapsed().as_secs_f64()
    );

    let cfg: tokio_postgres::Config = db.url().parse().map_err(fail("the database URL"))?;
    let (client, conn) = cfg.connect(NoTls).await.map_err(fail("connecting"))?;
    tokio::spawn(conn);
    let settings: Vec<String> = client
        .query("SELECT name || '=' || setting FROM pg_settings WHERE name IN ('shared_buffers','synchronous_commit','fsync','max_wal_size','server_version') ORDER BY name", &[])
        .await
        .map_err(fail("reading the settings"))?
        .iter()
        .filter_map(|r| r.try_get(0).ok())
        .collect();

    let mut baseline_rate = None;
    if a.baseline {
        client
            .batch_execute(
                "CREATE TABLE baseline_copy (event_id uuid, customer_id text, service text, quantity numeric(28,15), recorded_at timestamptz, metadata jsonb)",
            )
            .await
            .map_err(fail("preparing the raw COPY baseline"))?;
        if a.citus {
            // The fair baseline on a cluster: raw COPY into a distributed table.
            client
                .batch_execute("SELECT create_distributed_table('baseline_copy', 'customer_id', colocate_with => 'none')")
                .await
                .map_err(fail("preparing the raw COPY baseline"))?;
        }
        let t = Instant::now();
        let sink = client
            .copy_in("COPY baseline_copy FROM STDIN BINARY")
            .await
            .map_err(fail("preparing the raw COPY baseline"))?;
        let types = [
            Type::UUID,
            Type::TEXT,
            Type::TEXT,
            Type::NUMERIC,
            Type::TIMESTAMPTZ,
            Type::JSONB,
        ];
        let mut w = pin!(BinaryCopyInWriter::new(sink, &types));
        for e in &events {
            let meta: serde_json::Value =
                serde_json::from_str(e.metadata.as_str()).map_err(fail("an event's metadata"))?;
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
                .map_err(fail("preparing the raw COPY baseline"))?;
        }
        w.as_mut()
            .finish()
            .await
            .map_err(fail("the raw COPY baseline"))?;
        let secs = t.elapsed().as_secs_f64();
        baseline_rate = Some(events.len() as f64 / secs);
        eprintln!(
            "raw COPY into an unindexed table: {:.0} rows/s ({secs:.1}s)",
            events.len() as f64 / secs
        );
        client
            .batch_execute("DROP TABLE baseline_copy")
            .await
            .map_err(fail("preparing the raw COPY baseline"))?;
        client
            .batch_execute("CHECKPOINT")
            .await
            .map_err(fail("CHECKPOINT"))?;
    }

    let n = events.len();
    let mut chunks = Vec::with_capacity(n / 1000 + 1);
    let mut it = events.into_iter();
    loop {
        let chunk: Vec<_> = it.by_ref().take(1000).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    let store = db.tally().clone();
    if a.meters {
        for m in [
            meter(
                "tokens",
                Aggregation::Sum,
                Some("$.tokens"),
                &["model", "type"],
            )?,
            meter("prompts", Aggregation::Count, None, &[])?,
            meter("users", Aggregation::UniqueCount, Some("$.user"), &[])?,
        ] {
            store
                .create_meter(&m, None)
                .await
                .map_err(fail("creating a meter"))?;
        }
    }
    let recorder = store.recorder_with({
        let c = RecorderConfig::default()
            .batch_size(a.batch_size)
            .workers(a.workers);
        let c = match a.max_batch_size {
            Some(m) => c.max_batch_size(m),
            None => c,
        };
        match a.queue_capacity {
            Some(q) => c.queue_capacity(q),
            None => c,
        }
    });
    let t = Instant::now();
    for chunk in chunks {
        recorder
            .record_many(chunk)
            .await
            .map_err(fail("recording"))?;
    }
    recorder
        .close()
        .await
        .map_err(fail("closing the recorder"))?;
    let secs = t.elapsed().as_secs_f64();
    let rate = n as f64 / secs;
    let status = recorder.status();
    eprintln!("recorder, exactly once with rollups: {rate:.0} events/s ({secs:.1}s)");
    // A transient failure (the server restarting) is retried for up to a minute.
    let mut attempt = 0;
    let v = loop {
        match store.verify().await {
            Ok(v) => break v,
            Err(e) if e.is_transient() && attempt < 60 => {
                attempt += 1;
                eprintln!("verify failed ({e}); retrying in 1 s");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(format!("verifying: {e}")),
        }
    };
    let mut backfill = None;
    if a.meters {
        let m = meter("peak", Aggregation::Max, Some("$.tokens"), &["model"])?;
        let t = Instant::now();
        let def = store
            .create_meter(&m, None)
            .await
            .map_err(fail("creating the backfilled meter"))?;
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "backfill of a new meter over {} stored events: {:.0} events/s ({secs:.1}s)",
            def.backfilled,
            def.backfilled as f64 / secs
        );
        backfill = Some(serde_json::json!({
            "events": def.backfilled,
            "seconds": (secs * 10.0).round() / 10.0,
            "events_per_s": (def.backfilled as f64 / secs).round(),
        }));
    }
    let out = serde_json::json!({
        "meters": a.meters,
        "meter_backfill": backfill,
        "shape": format!("{:?}", a.shape).to_lowercase(),
        "citus": a.citus,
        "events": n,
        "duplicates_in_workload": dups,
        "batch_size": a.batch_size,
        "max_batch_size": a.max_batch_size,
        "queue_capacity": a.queue_capacity,
        "workers": a.workers,
        "recorder_events_per_s": rate.round(),
        "recorder_seconds": (secs * 10.0).round() / 10.0,
        "raw_copy_rows_per_s": baseline_rate.map(f64::round),
        "ratio_to_raw_copy": baseline_rate.map(|b| (rate / b * 1000.0).round() / 1000.0),
        "inserted": status.inserted,
        "duplicates_skipped": status.duplicates,
        "batches": status.batches,
        "verify": {"events": v.events, "mismatches": v.mismatches, "key_mismatches": v.key_mismatches},
        "settings": settings,
        "kept_database_url": a.keep.then(|| db.url().to_owned()),
    });
    println!("{out}");
    if status.inserted as usize != n - dups {
        return Err(format!(
            "{} events stored where {} distinct ones were recorded",
            status.inserted,
            n - dups
        ));
    }
    if (v.mismatches, v.key_mismatches) != (0, 0) {
        return Err(format!(
            "rollups differ from raw events: {} mismatches, {} key mismatches",
            v.mismatches, v.key_mismatches
        ));
    }
    if a.keep {
        // Left for the analytics bench (TALLY_BENCH_URL); drop it by hand afterwards.
        std::mem::forget(db);
    }
    Ok(())
}
