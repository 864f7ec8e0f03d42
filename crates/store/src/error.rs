use std::fmt;

use tokio_postgres::error::SqlState;

/// What went wrong in `tally-store`.
///
/// Database errors keep the server's message, detail and SQLSTATE in their `Display`
/// (tokio-postgres' own `Display` shows only "db error"), and [`Error::sqlstate`] gives
/// the code to programs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// PostgreSQL (or the connection to it) failed.
    #[error("{context}: {}", DbMessage(source))]
    Db {
        /// What Tally was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// No connection could be had from the pool.
    #[error("{context}: connection pool: {message}")]
    Pool {
        /// What Tally was doing.
        context: &'static str,
        /// The pool's message.
        message: String,
    },
    /// The database URL or a setting is not usable.
    #[error("invalid {field} {value:?}: {reason}")]
    Config {
        /// The setting (`"database_url"`, `"USAGE_BATCH_SIZE"`, ...).
        field: &'static str,
        /// Its value.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// A value failed domain validation.
    #[error(transparent)]
    Invalid(#[from] tally_core::Error),
    /// An applied migration's file changed since it was applied.
    #[error(
        "migration {version} ({name}) changed after it was applied: checksum {applied} in the database, {embedded} in this build"
    )]
    ChecksumMismatch {
        /// Migration number.
        version: i32,
        /// File name.
        name: String,
        /// Checksum recorded when applied.
        applied: String,
        /// Checksum of the embedded file.
        embedded: String,
    },
    /// The database has migrations this build does not know (a newer Tally ran).
    #[error(
        "the database has migration {version}, which this build of Tally does not know; upgrade Tally"
    )]
    UnknownMigration {
        /// The unknown migration's number.
        version: i32,
    },
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What Tally was doing.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A strict import found bad lines; nothing was imported.
    #[error("import rejected: {} bad line(s), first at line {}: {}", .errors.len(), .errors[0].line, .errors[0].message)]
    ImportRejected {
        /// Every bad line.
        errors: Vec<crate::LineError>,
    },
    /// The recorder was closed; no more events are accepted.
    #[error("the recorder is closed")]
    Closed,
}

impl Error {
    pub(crate) fn db(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
        move |source| Error::Db { context, source }
    }

    pub(crate) fn pool(
        context: &'static str,
    ) -> impl FnOnce(deadpool_postgres::PoolError) -> Error {
        move |e| match e {
            deadpool_postgres::PoolError::Backend(source) => Error::Db { context, source },
            other => Error::Pool {
                context,
                message: other.to_string(),
            },
        }
    }

    /// The SQLSTATE of a database error.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            Error::Db { source, .. } => source.code(),
            _ => None,
        }
    }

    /// The server's message of a database error.
    pub fn db_message(&self) -> Option<&str> {
        match self {
            Error::Db { source, .. } => source.as_db_error().map(|e| e.message()),
            _ => None,
        }
    }

    /// Whether retrying the same operation later may succeed (connection trouble,
    /// server shutdown, serialization failures), as opposed to a bad request.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Pool { .. } => true,
            Error::Db { source, .. } => match source.code() {
                None => true, // I/O or closed connection
                Some(code) => {
                    let c = code.code();
                    c.starts_with("08")
                        || c.starts_with("53")
                        || c.starts_with("57")
                        || c == "40001"
                        || c == "40P01"
                }
            },
            _ => false,
        }
    }
}

/// Formats a driver error with the server's message, SQLSTATE, detail and hint.
struct DbMessage<'a>(&'a tokio_postgres::Error);

impl fmt::Display for DbMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(db) = self.0.as_db_error() {
            write!(
                f,
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            )?;
            if let Some(d) = db.detail() {
                write!(f, "; detail: {d}")?;
            }
            if let Some(h) = db.hint() {
                write!(f, "; hint: {h}")?;
            }
            return Ok(());
        }
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(self.0);
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
