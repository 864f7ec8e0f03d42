//! The recorder's background side: the dispatcher that cuts batches from the queue and
//! the writers that commit them, retrying transient failures and isolating permanent ones
//! into the dead-letter table.

use std::{
    hash::{BuildHasher, RandomState},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use chrono::Utc;
use futures_util::future::join_all;
use tally_core::UsageEvent;
use tokio::{
    sync::{Notify, mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};

use super::{Batch, Job, Msg, RecorderConfig, Shared};
use crate::{
    Error,
    ingest::{Ingest, Lane},
};

// Aborts the writers if the dispatcher ends without joining them (runtime shutdown).
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.iter().for_each(JoinHandle::abort);
    }
}

/// The dispatcher's end of one writer.
pub(super) struct Worker {
    pub(super) tx: mpsc::Sender<Job>,
    // Batches sent to the writer and not yet written (queued or in progress).
    pub(super) busy: Arc<AtomicUsize>,
}

impl Worker {
    fn idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }

    async fn send(&self, batch: Batch) {
        self.busy.fetch_add(1, Ordering::AcqRel);
        // A writer only stops when the dispatcher drops its sender, so this cannot fail.
        let _ = self.tx.send(Job::Batch(batch)).await;
    }
}

/// The writer's end: it says when it has written a batch, so that the dispatcher hands
/// it the batch that grew meanwhile at once.
pub(super) struct Freed {
    pub(super) busy: Arc<AtomicUsize>,
    pub(super) notify: Arc<Notify>,
}

impl Freed {
    fn done(&self) {
        self.busy.fetch_sub(1, Ordering::AcqRel);
        self.notify.notify_one();
    }
}

/// A writer's next batch, growing in the dispatcher.
struct Pending {
    batch: Batch,
    // When its oldest event has waited `batch_timeout`.
    due: Option<Instant>,
}

impl Pending {
    fn new(config: &RecorderConfig) -> Pending {
        Pending {
            batch: Batch {
                events: Vec::with_capacity(config.batch_size),
                waiters: Vec::new(),
            },
            due: None,
        }
    }

    fn take(&mut self, config: &RecorderConfig) -> Batch {
        std::mem::replace(self, Pending::new(config)).batch
    }

    fn len(&self) -> usize {
        self.batch.events.len()
    }

    /// Whether a caller waits for an event of the batch: then it goes as soon as its
    /// writer is free, whatever its size (group commit).
    fn awaited(&self) -> bool {
        !self.batch.waiters.is_empty()
    }
}

pub(super) async fn dispatcher(
    mut rx: mpsc::Receiver<Msg>,
    workers: Vec<Worker>,
    freed: Arc<Notify>,
    handles: Vec<JoinHandle<()>>,
    config: RecorderConfig,
) {
    let mut guard = AbortOnDrop(handles);
    // One partial batch per writer. A customer's events always go to the same writer,
    // so one recorder's writers never contend for the same dedupe keys or rollup rows.
    let route = RandomState::new();
    let mut batches: Vec<Pending> = workers.iter().map(|_| Pending::new(&config)).collect();
    let mut close_replies = Vec::new();
    loop {
        let deadline = batches.iter().filter_map(|b| b.due).min();
        let due = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = due => {
                let now = Instant::now();
                for (worker, batch) in workers.iter().zip(batches.iter_mut()) {
                    if batch.due.is_some_and(|d| d <= now) {
                        worker.send(batch.take(&config)).await;
                    }
                }
                continue;
            }
            // A writer is free: hand it the batch that grew meanwhile, if it is big
            // enough or awaited.
            _ = freed.notified() => {
                for (worker, batch) in workers.iter().zip(batches.iter_mut()) {
                    if (batch.len() >= config.batch_size || batch.awaited()) && worker.idle() {
                        worker.send(batch.take(&config)).await;
                    }
                }
                continue;
            }
        };
        match msg {
            Some(Msg::Events(events, waiter)) => {
                let awaited = waiter.is_some();
                for e in events {
                    let w = (route.hash_one(e.customer.as_str()) % workers.len() as u64) as usize;
                    let (Some(batch), Some(worker)) = (batches.get_mut(w), workers.get(w)) else {
                        continue; // w < workers.len() == batches.len(): never taken
                    };
                    if batch.due.is_none() {
                        batch.due = Some(Instant::now() + config.batch_timeout);
                    }
                    batch.batch.push(e, waiter.as_ref());
                    // Group commit: a batch goes to its writer once it has `batch_size`
                    // events and the writer is free; while the writer is busy it keeps
                    // growing (one transaction for more events), and the writer takes
                    // it as soon as it is done. Only at the maximum does it wait in the
                    // writer's queue, and the dispatcher with it (backpressure).
                    let n = batch.len();
                    if (n >= config.batch_size && worker.idle()) || n >= config.max_batch_size {
                        worker.send(batch.take(&config)).await;
                    }
                }
                // Group commit: a waiting caller's batch goes to a free writer now.
                if awaited {
                    for (worker, batch) in workers.iter().zip(batches.iter_mut()) {
                        if batch.awaited() && worker.idle() {
                            worker.send(batch.take(&config)).await;
                        }
                    }
                }
            }
            Some(Msg::Flush(reply)) => {
                send_all(&workers, &mut batches, &config).await;
                // Each writer handles its queue in order, so once every writer has
                // passed the barrier, every earlier batch is committed.
                let mut acks = Vec::with_capacity(workers.len());
                for w in &workers {
                    let (tx, rx) = oneshot::channel();
                    if w.tx.send(Job::Barrier(tx)).await.is_ok() {
                        acks.push(rx);
                    }
                }
                tokio::spawn(async move {
                    join_all(acks).await;
                    let _ = reply.send(());
                });
            }
            Some(Msg::Close(reply)) => {
                // Refuse new messages, then keep draining what was already sent.
                close_replies.push(reply);
                rx.close();
            }
            None => break,
        }
    }
    // Every handle is gone or close was asked: write what is left, let the writers
    // finish their queues, then answer.
    send_all(&workers, &mut batches, &config).await;
    drop(workers);
    for h in std::mem::take(&mut guard.0) {
        let _ = h.await;
    }
    for reply in close_replies {
        let _ = reply.send(());
    }
}

async fn send_all(workers: &[Worker], batches: &mut [Pending], config: &RecorderConfig) {
    for (w, batch) in workers.iter().zip(batches.iter_mut()) {
        if batch.len() > 0 {
            w.send(batch.take(config)).await;
        }
    }
}

pub(super) async fn writer(
    ingest: Ingest,
    lane: Lane,
    mut rx: mpsc::Receiver<Job>,
    freed: Freed,
    shared: Arc<Shared>,
    config: RecorderConfig,
) {
    while let Some(job) = rx.recv().await {
        let Batch { events, waiters } = match job {
            Job::Barrier(ack) => {
                let _ = ack.send(());
                continue;
            }
            Job::Batch(batch) => batch,
        };
        let mut refused = write_isolating(&ingest, lane, &events, &shared, &config).await;
        shared
            .pending
            .fetch_sub(events.len() as u64, Ordering::Relaxed);
        shared.capacity.add_permits(events.len());
        freed.done();
        for (run, waiter) in waiters {
            let first = refused.iter().position(|(i, _)| run.contains(i));
            waiter.settled(run.len(), first.map(|k| refused.swap_remove(k).1));
        }
    }
}

/// Whether a failure is about the events themselves — a value or a constraint the
/// database refuses (SQLSTATE classes 22 and 23), or a total Tally cannot hold — so that
/// isolating and dead-lettering them lets the rest through. Any other failure is about
/// the database: unreachable or restarting (transient), or read-only, without the
/// schema or a privilege (permanent, but an operator's to fix, and the events are not
/// at fault): the batch waits and is retried with backoff, visible in `status()`.
fn about_the_events(e: &Error) -> bool {
    e.kind() == crate::ErrorKind::Invalid
        || e.sqlstate()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
}

fn note_failure(shared: &Shared, e: &Error) {
    let mut s = shared.status();
    s.failed_attempts += 1;
    s.consecutive_failures += 1;
    s.last_error = Some((Utc::now(), e.to_string()));
}

/// Writes `events`: transient failures are retried with backoff; a permanent failure
/// splits the slice in halves until the failing events are isolated, which are then
/// dead-lettered. Returns when every event is committed or dead-lettered, with the
/// index and error of each event refused.
async fn write_isolating(
    ingest: &Ingest,
    lane: Lane,
    events: &[UsageEvent],
    shared: &Shared,
    config: &RecorderConfig,
) -> Vec<(usize, Error)> {
    let mut refused = Vec::new();
    // Ranges of `events` still to write (a stack: halves of a failing range go on it).
    let mut todo: Vec<std::ops::Range<usize>> = Vec::new();
    todo.push(0..events.len());
    let mut backoff = config.retry_initial;
    while let Some(range) = todo.pop() {
        let Some(slice) = events.get(range.clone()) else {
            continue; // sub-ranges of 0..len: never taken
        };
        match ingest.write_entered(slice, lane).await {
            Ok(outcome) => {
                backoff = config.retry_initial;
                {
                    let mut s = shared.status();
                    s.inserted += outcome.inserted;
                    s.duplicates += outcome.duplicates;
                    s.conflicts += outcome.conflicts.len() as u64;
                    s.batches += 1;
                    s.consecutive_failures = 0;
                }
                for i in outcome.conflicts {
                    let Some(e) = slice.get(i) else { continue };
                    let error = Error::conflict(e);
                    tracing::warn!(error = %error, "an event reused a stored event's id");
                    dead_letter(ingest, std::slice::from_ref(e), &error, shared, config).await;
                    refused.push((range.start + i, error));
                }
            }
            Err(e) if !about_the_events(&e) => {
                tracing::error!(error = %e, events = slice.len(), retry_in_ms = backoff.as_millis() as u64,
                    transient = e.is_transient(),
                    "writing a batch failed; it stays queued and will be retried");
                note_failure(shared, &e);
                todo.push(range);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.retry_max);
            }
            Err(e) if slice.len() > 1 => {
                tracing::warn!(error = %e, events = slice.len(),
                    "writing a batch failed for a permanent reason; splitting it to find the events that cause it");
                note_failure(shared, &e);
                let mid = range.start + slice.len() / 2;
                todo.push(mid..range.end);
                todo.push(range.start..mid);
            }
            Err(e) => {
                note_failure(shared, &e);
                dead_letter(ingest, slice, &e, shared, config).await;
                ingest.left_unwritten(slice);
                refused.push((range.start, e));
            }
        }
    }
    refused
}

/// Stores `events` in the dead-letter table, retrying transient failures; if that
/// fails permanently too, the events are logged in full (the last place they exist).
async fn dead_letter(
    ingest: &Ingest,
    events: &[UsageEvent],
    error: &Error,
    shared: &Shared,
    config: &RecorderConfig,
) {
    let mut backoff = config.retry_initial;
    loop {
        match ingest.dead_letter(events, error).await {
            Ok(()) => {
                tracing::error!(error = %error, events = events.len(),
                    "events refused by the database were stored in usage_dead_letters");
                shared.status().dead_lettered += events.len() as u64;
                return;
            }
            Err(e) if e.is_transient() => {
                note_failure(shared, &e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.retry_max);
            }
            Err(e) => {
                for ev in events {
                    tracing::error!(error = %error, dead_letter_error = %e, event = ?ev,
                        "an event could be neither written nor dead-lettered");
                }
                return;
            }
        }
    }
}
