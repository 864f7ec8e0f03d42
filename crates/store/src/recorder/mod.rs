//! The batching recorder: a bounded in-memory queue drained by a background task that
//! writes batches through the exactly-once path. Transient failures are retried with
//! backoff; a permanent one is narrowed down to the events that cause it, which go to
//! the dead-letter table, and the rest of the batch is written.

use std::{
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use tally_core::UsageEvent;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use crate::{
    Error, Result,
    ingest::{Ingest, Lane},
};

mod config;
mod worker;

pub use config::RecorderConfig;
use worker::{Freed, Worker, dispatcher, writer};

/// A snapshot of what a recorder has done, for metrics and health checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecorderStatus {
    /// Events accepted by `record` and not yet committed.
    pub pending: u64,
    /// Events committed as new.
    pub inserted: u64,
    /// Events found already stored and counted once.
    pub duplicates: u64,
    /// Batches committed.
    pub batches: u64,
    /// Failed write attempts so far (transient ones are retried; permanent ones are
    /// narrowed down to the events that cause them).
    pub failed_attempts: u64,
    /// Failures since the last success; non-zero means writes are failing now.
    pub consecutive_failures: u64,
    /// Events that could not be written for a permanent reason and were stored in
    /// the dead-letter table (`usage_dead_letters`) with the error instead (conflicts
    /// included).
    pub dead_lettered: u64,
    /// Events that reused a stored event's key with a different payload (a
    /// conflict, [`crate::ErrorKind::Conflict`]): not stored, but dead-lettered.
    pub conflicts: u64,
    /// The most recent failure, with when it happened.
    pub last_error: Option<(DateTime<Utc>, String)>,
}

struct Shared {
    pending: AtomicU64,
    // One permit per event that may be queued or in flight; released on commit.
    capacity: Semaphore,
    status: Mutex<RecorderStatus>,
}

impl Shared {
    // A writer that panicked mid-update leaves counters, not broken invariants.
    fn status(&self) -> MutexGuard<'_, RecorderStatus> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

enum Msg {
    // The events, and who waits for their commit (`record_committed`).
    Events(Vec<UsageEvent>, Option<Arc<Waiter>>),
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

enum Job {
    Batch(Batch),
    Barrier(oneshot::Sender<()>),
}

/// A batch for a writer: its events, and which of them callers wait for.
#[derive(Default)]
struct Batch {
    events: Vec<UsageEvent>,
    // Runs of consecutive events of one waiting call (a call's events that go to one
    // writer arrive together, so one run per call and batch, unless the batch was cut
    // in between).
    waiters: Vec<(std::ops::Range<usize>, Arc<Waiter>)>,
}

impl Batch {
    fn push(&mut self, e: UsageEvent, waiter: Option<&Arc<Waiter>>) {
        let i = self.events.len();
        self.events.push(e);
        let Some(w) = waiter else { return };
        match self.waiters.last_mut() {
            Some((run, last)) if run.end == i && Arc::ptr_eq(last, w) => run.end = i + 1,
            _ => self.waiters.push((i..i + 1, w.clone())),
        }
    }
}

/// A call waiting for its events' commit ([`Recorder::record_committed`]): answered
/// once every one of them is committed (or counted as a duplicate) or refused.
struct Waiter {
    remaining: AtomicUsize,
    state: Mutex<WaitState>,
}

struct WaitState {
    refused: Option<Error>,
    reply: Option<oneshot::Sender<Result<()>>>,
}

impl Waiter {
    fn new(events: usize) -> (Arc<Waiter>, oneshot::Receiver<Result<()>>) {
        let (tx, rx) = oneshot::channel();
        let w = Waiter {
            remaining: AtomicUsize::new(events),
            state: Mutex::new(WaitState {
                refused: None,
                reply: Some(tx),
            }),
        };
        (Arc::new(w), rx)
    }

    fn state(&self) -> MutexGuard<'_, WaitState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `n` of the call's events are settled, `refused` with the first refusal among
    /// them, if any; the call is answered when the last one is.
    fn settled(&self, n: usize, refused: Option<Error>) {
        if let Some(e) = refused {
            self.state().refused.get_or_insert(e);
        }
        if n > 0 && self.remaining.fetch_sub(n, Ordering::AcqRel) == n {
            let mut s = self.state();
            if let Some(reply) = s.reply.take() {
                let _ = reply.send(match s.refused.take() {
                    Some(e) => Err(e),
                    None => Ok(()),
                });
            }
        }
    }
}

/// Queues usage events and writes them in batches, exactly once.
///
/// Cheap to clone; every clone feeds the same queue. The queue is bounded in events:
/// `record` waits while it is full, so memory stays bounded and nothing is dropped.
///
/// A batch that fails because of the database ([`Error::is_transient`] failures —
/// connection lost, server restarting, out of resources, deadlock — and also a
/// read-only database, a missing schema or privilege) stays queued and is retried with
/// exponential backoff until it commits. A batch that fails because of its events (a
/// value or constraint the database refuses, SQLSTATE 22xxx/23xxx) is split in halves,
/// each written on its own, until the events that fail are isolated; those go to the
/// dead-letter table `usage_dead_letters` with the error, and everything else is
/// written. Failures are
/// logged and visible in [`Recorder::status`]. Call [`Recorder::close`] before
/// exiting: events still queued when the runtime shuts down are lost with it.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    capacity: usize,
    // Where queued events are entered into this process's in-flight ledger.
    ingest: Ingest,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("status", &self.status())
            .finish()
    }
}

impl Recorder {
    pub(crate) fn start(ingest: Ingest, config: RecorderConfig) -> Recorder {
        let shared = Arc::new(Shared {
            pending: AtomicU64::new(0),
            capacity: Semaphore::new(config.queue_capacity),
            status: Mutex::new(RecorderStatus::default()),
        });
        // Messages hold at least one event each, so the event permits bound them too.
        let (tx, rx) = mpsc::channel(config.queue_capacity.min(65_536));
        let mut workers = Vec::with_capacity(config.workers);
        let mut handles = Vec::with_capacity(config.workers);
        let freed = Arc::new(Notify::new());
        for _ in 0..config.workers {
            // At most one batch waiting per writer on top of the one it writes.
            let (wtx, wrx) = mpsc::channel(1);
            let busy = Arc::new(AtomicUsize::new(0));
            workers.push(Worker {
                tx: wtx,
                busy: busy.clone(),
            });
            // Each writer keeps to a lane of the all-customer rollup of its own (round
            // robin over the process), so writers do not wait for each other there.
            let lane = Lane::next();
            handles.push(tokio::spawn(writer(
                ingest.clone(),
                lane,
                wrx,
                Freed {
                    busy,
                    notify: freed.clone(),
                },
                shared.clone(),
                config.clone(),
            )));
        }
        let capacity = config.queue_capacity;
        tokio::spawn(dispatcher(rx, workers, freed, handles, config));
        Recorder {
            tx,
            shared,
            capacity,
            ingest,
        }
    }

    /// Queues one event; waits while the queue is full. An event that fails
    /// [`UsageEvent::check`] is refused here, before it is queued.
    ///
    /// Returns once the event is queued in this process's memory, not once it is
    /// stored: a crash before its batch commits loses it (see
    /// [`Recorder::record_committed`] for the call that waits).
    pub async fn record(&self, event: UsageEvent) -> Result<()> {
        event.check()?;
        self.send_events(vec![event], None).await
    }

    /// Queues one event and returns once it is committed (stored as new, or found
    /// stored already and counted once): from then on a crash of this process loses
    /// nothing of it. Concurrent calls share transactions (group commit): a batch
    /// holding a waiting call goes to its writer as soon as the writer is free, and
    /// while the writer is busy it gathers every call that comes meanwhile, so waiting
    /// costs latency (about one transaction), not throughput.
    ///
    /// An error if the event is refused: by [`UsageEvent::check`] before it is queued,
    /// or by the database for a permanent reason (it is then in the dead-letter table,
    /// and the error is the database's). While the database is unreachable the call
    /// waits (the batch is retried); bound the wait with `tokio::time::timeout`, after
    /// which the event may still be committed.
    pub async fn record_committed(&self, event: UsageEvent) -> Result<()> {
        self.record_many_committed(vec![event]).await
    }

    /// As [`Recorder::record_committed`], for many events: returns once every one is
    /// committed. An error (the first refusal) if any was refused; the others are
    /// committed all the same.
    pub async fn record_many_committed(&self, events: Vec<UsageEvent>) -> Result<()> {
        for e in &events {
            e.check()?;
        }
        if events.is_empty() {
            return Ok(());
        }
        let (waiter, done) = Waiter::new(events.len());
        let mut events = events;
        while events.len() > self.capacity {
            let rest = events.split_off(self.capacity);
            self.send_events(events, Some(waiter.clone())).await?;
            events = rest;
        }
        self.send_events(events, Some(waiter)).await?;
        // The writers are gone without answering (the runtime is shutting down): the
        // events may not be stored.
        done.await.map_err(|_| Error::closed())?
    }

    /// Queues many events (cheaper per event than [`Recorder::record`]); waits while
    /// the queue is full.
    /// On an event that fails [`UsageEvent::check`] none is queued.
    pub async fn record_many(&self, mut events: Vec<UsageEvent>) -> Result<()> {
        for e in &events {
            e.check()?;
        }
        while events.len() > self.capacity {
            let rest = events.split_off(self.capacity);
            self.send_events(events, None).await?;
            events = rest;
        }
        if events.is_empty() {
            return Ok(());
        }
        self.send_events(events, None).await
    }

    async fn send_events(
        &self,
        events: Vec<UsageEvent>,
        waiter: Option<Arc<Waiter>>,
    ) -> Result<()> {
        let n = events.len() as u32;
        let permits = self
            .shared
            .capacity
            .acquire_many(n)
            .await
            .map_err(|_| Error::closed())?;
        permits.forget();
        self.shared
            .pending
            .fetch_add(u64::from(n), Ordering::Relaxed);
        self.ingest.entered(&events);
        if let Err(mpsc::error::SendError(msg)) = self.tx.send(Msg::Events(events, waiter)).await {
            if let Msg::Events(events, _) = msg {
                self.ingest.left_unwritten(&events);
            }
            self.shared
                .pending
                .fetch_sub(u64::from(n), Ordering::Relaxed);
            self.shared.capacity.add_permits(n as usize);
            return Err(Error::closed());
        }
        Ok(())
    }

    /// Returns once every event recorded before this call is committed (or, after a
    /// permanent failure, dead-lettered). While the database is unreachable this
    /// waits (the batch is being retried); [`Recorder::flush_within`] bounds the wait.
    pub async fn flush(&self) -> Result<()> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(Msg::Flush(reply))
            .await
            .map_err(|_| Error::closed())?;
        done.await.map_err(|_| Error::closed())
    }

    /// As [`Recorder::flush`], waiting at most `limit`: an [`ErrorKind::Timeout`]
    /// error then, and the events stay queued (they are still written when the
    /// database is back).
    ///
    /// [`ErrorKind::Timeout`]: crate::ErrorKind::Timeout
    pub async fn flush_within(&self, limit: Duration) -> Result<()> {
        tokio::time::timeout(limit, self.flush())
            .await
            .map_err(|_| Error::timeout("flushing the recorder"))?
    }

    /// Writes everything queued (by any clone, including events racing with the close)
    /// and stops the background tasks. Later `record` calls fail with an
    /// [`ErrorKind::Closed`](crate::ErrorKind::Closed) error on every clone.
    pub async fn close(&self) -> Result<()> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(Msg::Close(reply))
            .await
            .map_err(|_| Error::closed())?;
        done.await.map_err(|_| Error::closed())
    }

    /// As [`Recorder::close`], waiting at most `limit` for the queue to drain: an
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) error then. New events are
    /// refused either way; what is still queued keeps being written while the
    /// runtime runs.
    pub async fn close_within(&self, limit: Duration) -> Result<()> {
        tokio::time::timeout(limit, self.close())
            .await
            .map_err(|_| Error::timeout("closing the recorder"))?
    }

    /// What the recorder has done so far.
    pub fn status(&self) -> RecorderStatus {
        let mut s = self.shared.status().clone();
        s.pending = self.shared.pending.load(Ordering::Relaxed);
        s
    }
}
