//! How a recorder batches and retries: the builder and the seed's USAGE_BATCH_* variables.

use std::time::Duration;

use crate::{Error, Result};

/// How the recorder batches and retries.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    pub(super) batch_size: usize,
    pub(super) max_batch_size: usize,
    pub(super) batch_timeout: Duration,
    pub(super) queue_capacity: usize,
    pub(super) workers: usize,
    pub(super) retry_initial: Duration,
    pub(super) retry_max: Duration,
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
