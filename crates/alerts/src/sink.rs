//! Where alerts go: the [`Sink`] trait and the two built-ins.

use std::{
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
};

use tally_core::Alert;
use tokio::io::AsyncWriteExt;

/// What a sink reports when it could not take an alert; the alert stays pending and
/// is offered again after a backoff.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// The future [`Sink::deliver`] returns.
pub type Delivery<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// A destination for alerts, implemented by the embedding program (a webhook, a
/// queue, an e-mail) or one of the built-ins ([`LogFileSink`], [`StderrSink`]).
///
/// Each alert is offered to each sink, in the order they fired, until the sink returns
/// `Ok`; from then on it is never offered to that sink again. Bookkeeping is per
/// [`Sink::name`] in the database, so a name must stay the same across restarts, and
/// two processes using the same name share one delivery (only one of them delivers
/// each alert). If the process dies after the sink took an alert but before the
/// acknowledgement commits, the next process offers it again: a sink that must never
/// see a duplicate can recognise one by [`Alert::id`].
pub trait Sink: Send + Sync + 'static {
    /// The sink's stable identity (delivery is tracked per name).
    fn name(&self) -> &str;

    /// Takes `alert`; `Ok` once it is safely delivered.
    fn deliver<'a>(&'a self, alert: &'a Alert) -> Delivery<'a>;
}

/// Appends one line per alert to a file (customer, service, level, usage, limit,
/// percent, period and the UTC time it fired; see [`Alert::line`]), synced to disk
/// before the delivery counts. Its name is `log:` and the path.
#[derive(Debug, Clone)]
pub struct LogFileSink {
    path: PathBuf,
    name: String,
}

impl LogFileSink {
    /// A sink appending to `path` (created when missing). Its name holds the path made
    /// absolute with links resolved, so `race.log`, `./race.log` and `/abs/race.log` are
    /// one sink, and one file never receives an alert twice.
    pub fn new(path: impl Into<PathBuf>) -> LogFileSink {
        let path = path.into();
        let name = format!("log:{}", canonical(&path).display());
        LogFileSink { path, name }
    }
}

impl Sink for LogFileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a self, alert: &'a Alert) -> Delivery<'a> {
        Box::pin(async move {
            let mut f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await?;
            f.write_all(format!("{}\n", alert.line()).as_bytes())
                .await?;
            f.sync_data().await?;
            Ok(())
        })
    }
}

/// `path` made absolute: the file itself resolved when it exists, else its directory
/// (the file is created on first delivery), else the path joined to the working
/// directory.
fn canonical(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match (std::fs::canonicalize(dir), path.file_name()) {
        (Ok(d), Some(f)) => d.join(f),
        _ => std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
    }
}

/// Writes one line per alert to standard error. Its name is `stderr`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrSink;

impl Sink for StderrSink {
    fn name(&self) -> &str {
        "stderr"
    }

    fn deliver<'a>(&'a self, alert: &'a Alert) -> Delivery<'a> {
        Box::pin(async move {
            let mut err = tokio::io::stderr();
            err.write_all(format!("{}\n", alert.line()).as_bytes())
                .await?;
            err.flush().await?;
            Ok(())
        })
    }
}
