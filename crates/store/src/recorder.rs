//! The batching recorder: a bounded in-memory queue drained by a background task that
//! writes batches through the exactly-once path. Transient failures are retried with
//! backoff; a permanent one is narrowed down to the events that cause it, which go to
//! the dead-letter table, and the rest of the batch is written.

use std::{
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use tally_core::UsageEvent;
use tokio::{
    sync::{Notify, Semaphore, mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    Error, Result,
    ingest::{Ingest, Lane},
    local::Local,
};

/// How the recorder batches and retries.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    batch_size: usize,
    max_batch_size: usize,
    batch_timeout: Duration,
    queue_capacity: usize,
    workers: usize,
    retry_initial: Duration,
    retry_max: Duration,
}

impl Default for RecorderConfig {
    /// Batches of 10 000 events, growing to 100 000 while their writer is busy (group
    /// commit); 5 s timeout; a queue of 400 000 events; 2 writers.
    fn default() -> Self {
        RecorderConfig {
            batch_size: 10_000,
            max_batch_size: 100_000,
            batch_timeout: Duration::from_secs(5),
            // Per writer, the batch it writes and the one growing meanwhile, each up to
            // the maximum: with less, the growing batch runs out of room under load,
            // the writer is handed a small one, and group commit does not pay.
            queue_capacity: 400_000,
            workers: RecorderConfig::DEFAULT_WORKERS,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
        }
    }
}

fn number(lookup: &dyn Fn(&str) -> Option<String>, name: &'static str) -> Result<Option<f64>> {
    match lookup(name) {
        Some(v) => {
            let n: f64 = v
                .trim()
                .parse()
                .map_err(|_| Error::config(name, v.clone(), "is not a number"))?;
            if !n.is_finite() || n <= 0.0 {
                return Err(Error::config(name, v, "must be a positive number"));
            }
            Ok(Some(n))
        }
        None => Ok(None),
    }
}

impl RecorderConfig {
    /// Writers of the default configuration.
    pub const DEFAULT_WORKERS: usize = 2;

    /// The defaults, overridden by `USAGE_BATCH_SIZE` (events) and
    /// `USAGE_BATCH_TIMEOUT` (seconds, fractions allowed) when set. A value that is not
    /// a positive number is an error naming the variable.
    pub fn from_env() -> Result<RecorderConfig> {
        RecorderConfig::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`RecorderConfig::from_env`], reading the variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<RecorderConfig> {
        let mut c = RecorderConfig::default();
        if let Some(n) = number(&lookup, "USAGE_BATCH_SIZE")? {
            if n.fract() != 0.0 || n > 10_000_000.0 {
                return Err(Error::config(
                    "USAGE_BATCH_SIZE",
                    n.to_string(),
                    "must be a whole number up to 10000000",
                ));
            }
            c = c.batch_size(n as usize);
        }
        if let Some(s) = number(&lookup, "USAGE_BATCH_TIMEOUT")? {
            c = c.batch_timeout(Duration::from_secs_f64(s));
        }
        Ok(c)
    }

    /// Events per batch (at least 1): a batch is handed to its writer once it has this
    /// many. While the writer is still busy with earlier batches it keeps growing, up
    /// to [`RecorderConfig::max_batch_size`] (group commit: large batches under load,
    /// small ones for a trickle). The queue grows to hold at least four batches.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self.max_batch_size = self.max_batch_size.max(self.batch_size);
        self.queue_capacity = self.queue_capacity.max(4 * self.batch_size);
        self
    }

    /// The most a batch grows to while its writer is busy (at least the batch size).
    /// Set it to the batch size to turn group commit off.
    pub fn max_batch_size(mut self, n: usize) -> Self {
        self.max_batch_size = n.max(self.batch_size);
        self
    }

    /// Longest time an event waits in the queue before its batch is written.
    pub fn batch_timeout(mut self, d: Duration) -> Self {
        self.batch_timeout = d.max(Duration::from_millis(1));
        self
    }

    /// Events the queue holds before `record` waits (backpressure), counting those
    /// being written. Group commit reaches [`RecorderConfig::max_batch_size`] under
    /// load only if this is at least `2 × workers × max_batch_size`.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n.max(1);
        self
    }

    /// Batches written concurrently, each on its own connection.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// First and longest wait between retries of a failed batch.
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_initial = initial.max(Duration::from_millis(1));
        self.retry_max = max.max(self.retry_initial);
        self
    }
}

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
    local: Arc<Local>,
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
        let local = ingest.local().clone();
        tokio::spawn(dispatcher(rx, workers, freed, handles, config));
        Recorder {
            tx,
            shared,
            capacity,
            local,
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
        self.local.recorded(&events);
        if let Err(mpsc::error::SendError(msg)) = self.tx.send(Msg::Events(events, waiter)).await {
            if let Msg::Events(events, _) = msg {
                self.local.settled(&events);
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

// Aborts the writers if the dispatcher ends without joining them (runtime shutdown).
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.iter().for_each(JoinHandle::abort);
    }
}

/// The dispatcher's end of one writer.
struct Worker {
    tx: mpsc::Sender<Job>,
    // Batches sent to the writer and not yet written (queued or in progress).
    busy: Arc<AtomicUsize>,
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
struct Freed {
    busy: Arc<AtomicUsize>,
    notify: Arc<Notify>,
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

async fn dispatcher(
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

async fn writer(
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
        match ingest.write(slice, lane).await {
            Ok(outcome) => {
                ingest.local().committed(slice);
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
                ingest.local().settled(slice);
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
