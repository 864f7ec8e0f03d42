use std::fmt;

/// What went wrong in `tally-core`: always a value from outside that failed validation
/// (an argument or a setting), or exact arithmetic that would overflow.
///
/// Every variant names the field and carries the offending value, so a caller can
/// print it to a user unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value from outside did not pass validation.
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        /// The field that was being parsed (`"customer_id"`, `"quantity"`, ...).
        field: &'static str,
        /// The value as given (truncated to 300 characters).
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A setting (an environment variable) is not usable: kind `Config` once it is a
    /// `tally::Error`.
    #[error("invalid {field} {value:?}: {reason}")]
    Setting {
        /// The setting (`"USAGE_ALERT_WARNING"`, `"DATABASE_URL"`, ...).
        field: &'static str,
        /// Its value as given.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Exact arithmetic would have overflowed the decimal range.
    #[error("arithmetic overflow while computing {what}")]
    Overflow {
        /// The computation that overflowed.
        what: &'static str,
    },
}

impl Error {
    pub(crate) fn invalid(
        field: &'static str,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        let mut value = value.to_string();
        if value.chars().count() > 300 {
            value = value.chars().take(300).collect::<String>() + "…";
        }
        Error::Invalid {
            field,
            value,
            reason: reason.into(),
        }
    }

    /// The same failure, about a setting rather than an argument (what a value read
    /// from the environment fails with).
    pub fn into_setting(self) -> Self {
        match self {
            Error::Invalid {
                field,
                value,
                reason,
            } => Error::Setting {
                field,
                value,
                reason,
            },
            other => other,
        }
    }

    /// The field a validation error is about, if it is one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Error::Invalid { field, .. } | Error::Setting { field, .. } => Some(field),
            Error::Overflow { .. } => None,
        }
    }

    /// The refused value of a validation error, as given (truncated).
    pub fn value(&self) -> Option<&str> {
        match self {
            Error::Invalid { value, .. } | Error::Setting { value, .. } => Some(value),
            Error::Overflow { .. } => None,
        }
    }
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
