//! Group commit: concurrent ingest requests share transactions, so acknowledging each
//! only after its commit costs latency, not throughput. A few writer tasks each take
//! every request waiting when they become free (up to [`MAX_GROUP`] events) and write
//! them in one transaction ([`Tally::write`]). A request never waits for a linger: a
//! writer that finds one request writes it alone.
//!
//! Each request stays all-or-nothing: a group whose write fails (one request's event
//! past a cardinality limit, say) is rolled back whole, and its requests are then
//! written one transaction each, so only the bad request gets the error. Conflicts
//! (a stored `source` and `id` with another payload) are not errors: each request gets
//! back the positions of its own.
//!
//! The recorder (`Recorder::record_committed`) also commits in groups, but it splits
//! and dead-letters per event, where a request must be refused whole (docs/http.md).

use std::sync::{Arc, atomic::Ordering::Relaxed};

use tally::{Tally, UsageEvent};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::metrics::Metrics;

/// The most events one group transaction takes (a request larger than this is
/// written alone).
const MAX_GROUP: usize = 20_000;

/// Requests waiting for a writer, at most (more wait to be queued).
const QUEUE: usize = 1_024;

/// Why a request was not written.
pub(super) enum Failed {
    /// The write failed (its own transaction's error).
    Write(tally::Error),
    /// The writers are gone (the server is stopping).
    Stopped,
}

struct Job {
    events: Vec<UsageEvent>,
    reply: oneshot::Sender<Result<Vec<usize>, Failed>>,
}

/// The queue the ingest handler hands requests to.
#[derive(Clone)]
pub(super) struct Committer {
    queue: mpsc::Sender<Job>,
}

impl Committer {
    /// Starts `writers` writer tasks (each holds a pooled connection while it writes).
    pub(super) fn start(tally: Tally, writers: usize, metrics: Arc<Metrics>) -> Committer {
        let (queue, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            tokio::spawn(writer(tally.clone(), rx.clone(), metrics.clone()));
        }
        Committer { queue }
    }

    /// Writes `events` in one transaction shared with whatever else is waiting;
    /// returns once committed, with the positions of `events` that conflict.
    pub(super) async fn write(&self, events: Vec<UsageEvent>) -> Result<Vec<usize>, Failed> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { events, reply })
            .await
            .map_err(|_| Failed::Stopped)?;
        answer.await.map_err(|_| Failed::Stopped)?
    }
}

async fn writer(tally: Tally, rx: Arc<Mutex<mpsc::Receiver<Job>>>, metrics: Arc<Metrics>) {
    loop {
        let group = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut n = first.events.len();
            let mut group = vec![first];
            while n < MAX_GROUP {
                match rx.try_recv() {
                    Ok(job) => {
                        n += job.events.len();
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
            group
        };
        commit(&tally, group, &metrics).await;
    }
}

async fn commit(tally: &Tally, group: Vec<Job>, metrics: &Metrics) {
    let mut lens = Vec::with_capacity(group.len());
    let mut replies = Vec::with_capacity(group.len());
    let mut all = Vec::new();
    for job in group {
        lens.push(job.events.len());
        all.extend(job.events);
        replies.push(job.reply);
    }
    let parts = || {
        lens.iter().scan(0, |start, len| {
            let part = *start..*start + len;
            *start += len;
            Some(part)
        })
    };
    if replies.len() > 1 {
        if let Ok(o) = tally.write(&all).await {
            metrics.transaction(o.inserted, o.duplicates);
            for (part, reply) in parts().zip(replies) {
                let own = o
                    .conflicts
                    .iter()
                    .filter(|c| part.contains(*c))
                    .map(|c| c - part.start)
                    .collect();
                let _ = reply.send(Ok(own));
            }
            return;
        }
        // Rolled back whole: each request alone, so only a bad one is refused.
        metrics.split.fetch_add(1, Relaxed);
    }
    for (part, reply) in parts().zip(replies) {
        let events = all.get(part).unwrap_or_default();
        let r = match tally.write(events).await {
            Ok(o) => {
                metrics.transaction(o.inserted, o.duplicates);
                Ok(o.conflicts)
            }
            Err(e) => Err(Failed::Write(e)),
        };
        let _ = reply.send(r);
    }
}
