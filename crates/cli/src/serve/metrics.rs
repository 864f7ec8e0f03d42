//! `GET /metrics`: what the server did, in Prometheus' text format (0.0.4). Counters
//! are atomics bumped on the request path; nothing here blocks a request.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

/// The commit latency histogram's upper bounds, in seconds.
const BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
pub(super) struct Metrics {
    /// Responses by status code.
    responses: Mutex<BTreeMap<u16, u64>>,
    /// Events newly stored.
    accepted: AtomicU64,
    /// Events already stored (a retry): acknowledged, counted once.
    duplicates: AtomicU64,
    /// Transactions that wrote events (a group of requests, or one).
    transactions: AtomicU64,
    /// Groups rolled back whole and written again one request at a time.
    pub(super) split: AtomicU64,
    /// Events refused (the request's 4xx, or a conflict).
    pub(super) refused: AtomicU64,
    /// Events of requests being written now (read, not yet committed or refused).
    pub(super) in_flight: AtomicI64,
    /// Commit latency: counts per bucket (the last is +Inf), total microseconds.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    micros: AtomicU64,
}

impl Metrics {
    pub(super) fn responded(&self, status: u16) {
        if let Ok(mut m) = self.responses.lock() {
            *m.entry(status).or_default() += 1;
        }
    }

    /// One committed transaction's counts.
    pub(super) fn transaction(&self, inserted: u64, duplicates: u64) {
        self.accepted.fetch_add(inserted, Ordering::Relaxed);
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        self.transactions.fetch_add(1, Ordering::Relaxed);
    }

    /// One request's time from its events being read to their commit.
    pub(super) fn committed(&self, took: Duration) {
        let s = took.as_secs_f64();
        let i = BOUNDS.iter().position(|b| s <= *b).unwrap_or(BOUNDS.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.micros.fetch_add(us, Ordering::Relaxed);
    }

    pub(super) fn render(&self) -> String {
        let mut o = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "tally_events_accepted_total",
            "Events stored and acknowledged.",
            get(&self.accepted),
        );
        counter(
            "tally_events_duplicate_total",
            "Events acknowledged that were already stored (counted once).",
            get(&self.duplicates),
        );
        counter(
            "tally_ingest_transactions_total",
            "Transactions that wrote events: concurrent requests share one.",
            get(&self.transactions),
        );
        counter(
            "tally_ingest_group_splits_total",
            "Shared transactions rolled back (a refused request) and written again a request at a time.",
            get(&self.split),
        );
        counter(
            "tally_events_refused_total",
            "Events in refused requests, and conflicting events.",
            get(&self.refused),
        );
        let _ = writeln!(
            o,
            "# HELP tally_events_in_flight Events received and not yet committed or refused.\n# TYPE tally_events_in_flight gauge\ntally_events_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        let name = "tally_ingest_commit_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} Time from a request's events being read to their commit (its acknowledgment).\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += get(b);
            let le = BOUNDS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(o, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(
            o,
            "{name}_sum {}\n{name}_count {cumulative}",
            get(&self.micros) as f64 / 1e6
        );
        let _ = writeln!(
            o,
            "# HELP tally_http_responses_total Responses by status code.\n# TYPE tally_http_responses_total counter"
        );
        if let Ok(m) = self.responses.lock() {
            for (status, n) in m.iter() {
                let _ = writeln!(o, "tally_http_responses_total{{code=\"{status}\"}} {n}");
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_histogram_is_cumulative_and_the_text_is_prometheus() {
        let m = super::Metrics::default();
        m.committed(std::time::Duration::from_micros(800));
        m.committed(std::time::Duration::from_millis(30));
        m.committed(std::time::Duration::from_secs(20));
        m.responded(204);
        m.responded(204);
        m.responded(400);
        let t = m.render();
        for line in [
            "tally_ingest_commit_seconds_bucket{le=\"0.001\"} 1",
            "tally_ingest_commit_seconds_bucket{le=\"0.025\"} 1",
            "tally_ingest_commit_seconds_bucket{le=\"0.05\"} 2",
            "tally_ingest_commit_seconds_bucket{le=\"10\"} 2",
            "tally_ingest_commit_seconds_bucket{le=\"+Inf\"} 3",
            "tally_ingest_commit_seconds_count 3",
            "tally_ingest_commit_seconds_sum 20.0308",
            "tally_http_responses_total{code=\"204\"} 2",
            "tally_http_responses_total{code=\"400\"} 1",
            "# TYPE tally_events_accepted_total counter",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} not in\n{t}");
        }
    }
}
