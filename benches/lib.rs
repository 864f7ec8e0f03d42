//! Deterministic usage workloads for Tally's benches and the `tally-load` command.
//!
//! The shape follows the ingest issue: 1 000 customers with a skewed share of traffic
//! (customer index = ⌊1000·u^2.5⌋: the top customer sends about 6 %), six services
//! weighted api 45 %, bandwidth 20 %, compute 12 %, storage 10 %, database 8 %,
//! functions 5 %, events in time order over a span, 1 % duplicates of an earlier event
//! (same id: a retry) and 1 % arriving up to 7 days late.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use tally::{CustomerId, EventId, Metadata, Quantity, Service, UsageEvent};

/// A small, fast, deterministic PRNG (xorshift64*), so runs are reproducible without a
/// dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (seed 0 is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How the events are spread in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Dense: the span is 24 hours.
    Live,
    /// Sparse: the span is 30 days.
    Backfill,
}

impl Shape {
    fn span(self) -> Duration {
        match self {
            Shape::Live => Duration::hours(24),
            Shape::Backfill => Duration::days(30),
        }
    }
}

const SERVICES: [(Service, f64); 6] = [
    (Service::API, 0.45),
    (Service::BANDWIDTH, 0.20),
    (Service::COMPUTE, 0.12),
    (Service::STORAGE, 0.10),
    (Service::DATABASE, 0.08),
    (Service::FUNCTIONS, 0.05),
];

/// `n` events of `shape` ending at `end`, with 1 % duplicates and 1 % late events.
pub fn generate(n: usize, shape: Shape, end: DateTime<Utc>, seed: u64) -> Vec<UsageEvent> {
    generate_slice(n, n, shape, end, seed)
}

/// The last `n` events of a workload of `total` events of `shape` (same density in time).
pub fn generate_slice(
    n: usize,
    total: usize,
    shape: Shape,
    end: DateTime<Utc>,
    seed: u64,
) -> Vec<UsageEvent> {
    let mut rng = Rng::new(seed);
    let customers: Vec<CustomerId> = (0..1000)
        .map(|i| CustomerId::new(format!("cust-{i:04}")).unwrap())
        .collect();
    let metadata: Metadata = r#"{"region":"eu-west-1","source":"sdk-rust/1.0"}"#.parse().unwrap();
    let step_ns = shape.span().num_nanoseconds().unwrap() / total.max(1) as i64;
    let start = end - Duration::nanoseconds(step_ns * n as i64);
    let mut out: Vec<UsageEvent> = Vec::with_capacity(n);
    for i in 0..n {
        let r = rng.unit();
        if r < 0.01 && !out.is_empty() {
            // A retry: an earlier event, same id, sent again.
            let back = (rng.next_u64() % out.len().min(50_000) as u64) as usize;
            let dup = out[out.len() - 1 - back].clone();
            out.push(dup);
            continue;
        }
        let mut t = start + Duration::nanoseconds(step_ns * i as i64);
        if r < 0.02 {
            t -= Duration::seconds((rng.next_u64() % (7 * 86_400)) as i64);
        }
        let c = ((1000.0 * rng.unit().powf(2.5)) as usize).min(999);
        let mut pick = rng.unit();
        let service = SERVICES
            .iter()
            .find(|(_, w)| {
                pick -= w;
                pick < 0.0
            })
            .map_or(Service::FUNCTIONS, |(s, _)| s.clone());
        let quantity = match service.as_str() {
            "api" | "database" | "functions" => Quantity::ONE,
            _ => Quantity::new(Decimal::new((rng.next_u64() % 10_000_000) as i64 + 1, 6)).unwrap(),
        };
        out.push(
            UsageEvent::new(customers[c].clone(), service, quantity)
                .at(t)
                .with_id(EventId::new())
                .with_metadata(metadata.clone()),
        );
    }
    out
}

/// Events in the workload that are repeats of an earlier one.
pub fn duplicates(events: &[UsageEvent]) -> usize {
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    events
        .iter()
        .filter(|e| !seen.insert((e.id, e.customer.as_str())))
        .count()
}

/// Whether criterion runs in test mode (`cargo test --benches`, `cargo bench -- --test`):
/// then benches use small inputs, to check they work, not to measure.
pub fn test_mode() -> bool {
    std::env::args().any(|a| a == "--test") || !std::env::args().any(|a| a == "--bench")
}

/// The database a read bench runs on: `TALLY_BENCH_URL` when set (filled by `tally-load
/// --keep`), else a fresh test database with a backfill of its own (200 000 events;
/// 2 000 in test mode), so the bench always runs. Keep the `TestDb` alive while the
/// bench runs: dropping it drops the database.
pub async fn bench_database(bench: &str) -> (Option<tally_testdb::TestDb>, String) {
    if let Ok(url) = std::env::var("TALLY_BENCH_URL") {
        return (None, url);
    }
    let db = tally_testdb::TestDb::new()
        .await
        .unwrap_or_else(|e| panic!("the {bench} bench needs PostgreSQL: {e}"));
    let n = if test_mode() { 2_000 } else { 200_000 };
    let rec = db
        .tally()
        .recorder_with(tally::RecorderConfig::default().batch_size(50_000));
    rec.record_many(generate(n, Shape::Backfill, Utc::now(), 7))
        .await
        .unwrap();
    rec.close().await.unwrap();
    let url = db.url().to_owned();
    (Some(db), url)
}

/// A bench binary's parsed arguments, or (bad ones) the error on stderr and exit 2.
pub fn or_exit<T>(args: Result<T, String>) -> T {
    args.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2);
    })
}

/// The `p` quantile (0–1, nearest rank) of sorted microsecond latencies, in ms.
pub fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() - 1) as f64 * p).round() as usize;
    sorted_us.get(i).copied().unwrap_or_default() as f64 / 1000.0
}
