use std::{borrow::Cow, fmt};

use crate::LineError;

/// Any error Tally returns (re-exported by the facade as `tally::Error`).
///
/// Opaque, in the style of tokio-postgres: [`Error::kind`] says what sort of failure
/// it is, the accessors give its parts ([`Error::field`] and [`Error::value`] for bad
/// input, [`Error::sqlstate`] and [`Error::db_message`] for database errors), and
/// [`Error::is_transient`] says whether the same call may succeed later. Database
/// errors keep the server's message, detail and SQLSTATE in their `Display`
/// (tokio-postgres' own `Display` shows only "db error").
pub struct Error(Box<Repr>);

/// What sort of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A value from outside failed validation; [`Error::field`] and [`Error::value`]
    /// name it. Retrying the same value fails again.
    Invalid,
    /// A setting (URL, environment variable, pool size) is not usable; [`Error::field`]
    /// names it.
    Config,
    /// PostgreSQL refused a statement ([`Error::sqlstate`] has its code).
    Database,
    /// No connection to PostgreSQL could be had or kept.
    Connection,
    /// The schema's migrations do not match this build.
    Migration,
    /// A file could not be read or written.
    Io,
    /// A strict import found bad lines and imported nothing ([`Error::line_errors`]).
    ImportRejected,
    /// The recorder was closed; no more events are accepted.
    Closed,
    /// Another process holds what this call needs (an archive or restore running on
    /// the same database); the same call may succeed once it is done.
    Busy,
    /// Tally broke one of its own rules (a bug, never the caller's input); the message
    /// says which. Report it.
    Internal,
    /// A bounded wait ran out before the work was done.
    Timeout,
    /// An event reused the id of a stored event with a different payload (service,
    /// quantity or metadata): it is not stored. [`Error::value`] is the id.
    Conflict,
    /// A thing named by the caller (a meter) does not exist; [`Error::field`] says
    /// what sort of thing and [`Error::value`] the name given.
    NotFound,
}

#[derive(Debug)]
enum Repr {
    Invalid(tally_core::Error),
    // A row the database returned that Tally's own writes could not have made (a
    // hand-edited catalogue): the database's problem, not the caller's input.
    Corrupt {
        context: &'static str,
        message: String,
    },
    Db {
        context: Cow<'static, str>,
        source: tokio_postgres::Error,
    },
    Pool {
        context: &'static str,
        message: String,
    },
    Config {
        field: &'static str,
        value: String,
        reason: String,
    },
    ChecksumMismatch {
        version: i32,
        name: String,
        applied: String,
        embedded: String,
    },
    UnknownMigration {
        version: i32,
    },
    Io {
        context: Cow<'static, str>,
        source: std::io::Error,
    },
    ImportRejected {
        errors: Vec<LineError>,
    },
    Closed,
    Busy {
        what: &'static str,
        holder: &'static str,
    },
    Internal {
        what: &'static str,
        message: String,
    },
    Timeout {
        what: &'static str,
    },
    Conflict {
        event_id: String,
        customer: String,
    },
    NotFound {
        field: &'static str,
        value: String,
    },
}

impl Error {
    fn new(repr: Repr) -> Error {
        Error(Box::new(repr))
    }

    pub(crate) fn db(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
        move |source| {
            Error::new(Repr::Db {
                context: context.into(),
                source,
            })
        }
    }

    pub(crate) fn pool(
        context: &'static str,
    ) -> impl FnOnce(deadpool_postgres::PoolError) -> Error {
        move |e| match e {
            deadpool_postgres::PoolError::Backend(source) => Error::new(Repr::Db {
                context: context.into(),
                source,
            }),
            other => Error::new(Repr::Pool {
                context,
                message: other.to_string(),
            }),
        }
    }

    /// A failure to connect, naming where to (host, port, user, database; never the
    /// password).
    pub(crate) fn connect(target: String) -> impl FnOnce(deadpool_postgres::PoolError) -> Error {
        move |e| match e {
            deadpool_postgres::PoolError::Backend(source) => Error::new(Repr::Db {
                context: format!("connecting to {target}").into(),
                source,
            }),
            other => Error::new(Repr::Pool {
                context: "connecting",
                message: format!("{target}: {other}"),
            }),
        }
    }

    pub(crate) fn config(
        field: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Error {
        Error::new(Repr::Config {
            field,
            value: value.into(),
            reason: reason.into(),
        })
    }

    /// Bad input from outside, naming the field and the value.
    pub(crate) fn invalid(
        field: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Error {
        Error::new(Repr::Invalid(tally_core::Error::Invalid {
            field,
            value: value.into(),
            reason: reason.into(),
        }))
    }

    pub(crate) fn checksum_mismatch(
        version: i32,
        name: &str,
        applied: String,
        embedded: String,
    ) -> Error {
        Error::new(Repr::ChecksumMismatch {
            version,
            name: name.to_owned(),
            applied,
            embedded,
        })
    }

    pub(crate) fn unknown_migration(version: i32) -> Error {
        Error::new(Repr::UnknownMigration { version })
    }

    pub(crate) fn io(context: impl Into<Cow<'static, str>>, source: std::io::Error) -> Error {
        Error::new(Repr::Io {
            context: context.into(),
            source,
        })
    }

    pub(crate) fn import_rejected(errors: Vec<LineError>) -> Error {
        Error::new(Repr::ImportRejected { errors })
    }

    pub(crate) fn corrupt(context: &'static str, message: impl Into<String>) -> Error {
        Error::new(Repr::Corrupt {
            context,
            message: message.into(),
        })
    }

    pub(crate) fn closed() -> Error {
        Error::new(Repr::Closed)
    }

    /// `what` could not start because `holder` is running.
    pub(crate) fn busy(what: &'static str, holder: &'static str) -> Error {
        Error::new(Repr::Busy { what, holder })
    }

    /// An invariant of Tally's own code failed while doing `what`.
    pub(crate) fn internal(what: &'static str, message: impl Into<String>) -> Error {
        Error::new(Repr::Internal {
            what,
            message: message.into(),
        })
    }

    pub(crate) fn timeout(what: &'static str) -> Error {
        Error::new(Repr::Timeout { what })
    }

    /// `event`'s id is stored for `customer` with another payload.
    pub(crate) fn conflict(event: &tally_core::UsageEvent) -> Error {
        Error::new(Repr::Conflict {
            event_id: event.id.to_string(),
            customer: event.customer.as_str().to_owned(),
        })
    }

    /// No `field` named `value` exists.
    pub(crate) fn not_found(field: &'static str, value: impl Into<String>) -> Error {
        Error::new(Repr::NotFound {
            field,
            value: value.into(),
        })
    }

    /// What sort of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match &*self.0 {
            Repr::Invalid(_) => ErrorKind::Invalid,
            Repr::Db { source, .. } if source.as_db_error().is_some() => ErrorKind::Database,
            Repr::Corrupt { .. } => ErrorKind::Database,
            Repr::Db { .. } | Repr::Pool { .. } => ErrorKind::Connection,
            Repr::Config { .. } => ErrorKind::Config,
            Repr::ChecksumMismatch { .. } | Repr::UnknownMigration { .. } => ErrorKind::Migration,
            Repr::Io { .. } => ErrorKind::Io,
            Repr::ImportRejected { .. } => ErrorKind::ImportRejected,
            Repr::Closed => ErrorKind::Closed,
            Repr::Busy { .. } => ErrorKind::Busy,
            Repr::Internal { .. } => ErrorKind::Internal,
            Repr::Timeout { .. } => ErrorKind::Timeout,
            Repr::Conflict { .. } => ErrorKind::Conflict,
            Repr::NotFound { .. } => ErrorKind::NotFound,
        }
    }

    /// The field (or setting) a bad-input or configuration error is about:
    /// `"customer_id"`, `"quantity"`, `"USAGE_BATCH_SIZE"`, ...
    pub fn field(&self) -> Option<&str> {
        match &*self.0 {
            Repr::Invalid(e) => e.field(),
            Repr::Config { field, .. } => Some(field),
            Repr::Conflict { .. } => Some("event_id"),
            Repr::NotFound { field, .. } => Some(field),
            _ => None,
        }
    }

    /// The refused value of a bad-input or configuration error, as given.
    pub fn value(&self) -> Option<&str> {
        match &*self.0 {
            Repr::Invalid(e) => e.value(),
            Repr::Config { value, .. } => Some(value),
            Repr::Conflict { event_id, .. } => Some(event_id),
            Repr::NotFound { value, .. } => Some(value),
            _ => None,
        }
    }

    /// The five-character SQLSTATE of a database error (`"23505"`, `"57P01"`).
    pub fn sqlstate(&self) -> Option<&str> {
        match &*self.0 {
            Repr::Db { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }

    /// The server's message of a database error.
    pub fn db_message(&self) -> Option<&str> {
        match &*self.0 {
            Repr::Db { source, .. } => source.as_db_error().map(|e| e.message()),
            _ => None,
        }
    }

    /// The lines a strict import rejected (empty for other errors).
    pub fn line_errors(&self) -> &[LineError] {
        match &*self.0 {
            Repr::ImportRejected { errors } => errors,
            _ => &[],
        }
    }

    /// The migration a [`ErrorKind::Migration`] error is about.
    pub fn migration_version(&self) -> Option<i32> {
        match &*self.0 {
            Repr::ChecksumMismatch { version, .. } | Repr::UnknownMigration { version } => {
                Some(*version)
            }
            _ => None,
        }
    }

    /// Whether the same call may succeed later: no connection could be had or it was
    /// cut, the server is starting or shutting down (SQLSTATE class 57) or out of
    /// resources — disk full, out of memory, too many connections (class 53) — or the
    /// transaction lost a serialization race or a deadlock (40001, 40P01), or a
    /// bounded wait ran out, or another process held a lock this call needs (`Busy`).
    /// On Citus, a connection from the coordinator to a worker
    /// that failed inside the transaction ("failure on connection marked as
    /// essential", which Citus raises as the internal error XX000) is transient too:
    /// the transaction was rolled back whole. Everything else — bad input, a value or
    /// constraint the server refused, a missing schema, a read-only database, a
    /// migration mismatch — fails the same way every time and is permanent.
    ///
    /// The recorder retries transient failures with backoff; of the permanent ones it
    /// isolates and dead-letters only those about the events themselves (see
    /// `Recorder`).
    pub fn is_transient(&self) -> bool {
        match &*self.0 {
            Repr::Pool { .. } | Repr::Timeout { .. } | Repr::Busy { .. } => true,
            Repr::Db { source, .. } => match source.code() {
                None => true, // I/O or closed connection
                Some(code) => {
                    let c = code.code();
                    c.starts_with("08")
                        || c.starts_with("53")
                        || c.starts_with("57")
                        || c == "40001"
                        || c == "40P01"
                        || (c == "XX000" && citus_lost_a_worker(source))
                }
            },
            _ => false,
        }
    }
}

/// Citus' error for a worker connection lost mid-transaction carries no SQLSTATE of
/// its own (citus#5515), so it is known by its message.
fn citus_lost_a_worker(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        d.message()
            .starts_with("failure on connection marked as essential")
    })
}

impl From<tally_core::Error> for Error {
    fn from(e: tally_core::Error) -> Error {
        match e {
            tally_core::Error::Setting {
                field,
                value,
                reason,
            } => Error::new(Repr::Config {
                field,
                value,
                reason,
            }),
            e => Error::new(Repr::Invalid(e)),
        }
    }
}

/// A file or stream failure of a layer above the store (an export's output file):
/// kind [`ErrorKind::Io`]. The layer puts what it was doing into the message.
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::io("file I/O", e)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            Repr::Invalid(e) => e.fmt(f),
            Repr::Db { context, source } => write!(f, "{context}: {}", DbMessage(source)),
            Repr::Pool { context, message } => write!(f, "{context}: connection pool: {message}"),
            Repr::Config {
                field,
                value,
                reason,
            } => write!(f, "invalid {field} {value:?}: {reason}"),
            Repr::ChecksumMismatch {
                version,
                name,
                applied,
                embedded,
            } => write!(
                f,
                "migration {version} ({name}) changed after it was applied: checksum {applied} in the database, {embedded} in this build"
            ),
            Repr::UnknownMigration { version } => write!(
                f,
                "the database has migration {version}, which this build of Tally does not know; upgrade Tally"
            ),
            Repr::Io { context, source } => write!(f, "{context}: {source}"),
            Repr::Corrupt { context, message } => write!(
                f,
                "{context}: the database holds {message} (a row Tally did not write; fix it \
                 as the schema owner)"
            ),
            Repr::ImportRejected { errors } => {
                write!(f, "import rejected: {} bad line(s)", errors.len())?;
                if let Some(first) = errors.first() {
                    write!(f, ", first at line {}: {}", first.line, first.message)?;
                }
                Ok(())
            }
            Repr::Closed => f.write_str("the recorder is closed"),
            Repr::Busy { what, holder } => {
                write!(
                    f,
                    "{what}: {holder} is running on this database; try again when it ends"
                )
            }
            Repr::Internal { what, message } => write!(
                f,
                "internal error {what}: {message} (a bug in Tally; please report it)"
            ),
            Repr::Timeout { what } => write!(f, "timed out {what}"),
            Repr::Conflict { event_id, customer } => write!(
                f,
                "conflict: event_id {event_id} of customer {customer} is stored with a different \
                 payload (service, quantity or metadata); the new one is not stored"
            ),
            Repr::NotFound { field, value } => write!(f, "no such {field} {value:?}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.0 {
            Repr::Invalid(e) => Some(e),
            Repr::Db { source, .. } => Some(source),
            Repr::Io { source, .. } => Some(source),
            _ => None,
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
