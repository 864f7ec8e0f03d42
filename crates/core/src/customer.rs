use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A customer id: 1–255 characters of `[A-Za-z0-9_.:@-]`.
///
/// The character set excludes everything that could matter to SQL, a shell, CSV or a
/// file name, so an id can be printed anywhere; Tally still only ever passes it to SQL
/// as a bind parameter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerId(String);

impl CustomerId {
    /// The longest id accepted.
    pub const MAX_LEN: usize = 255;

    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.is_empty() {
            return Err(Error::invalid("customer_id", &id, "must not be empty"));
        }
        if id.len() > Self::MAX_LEN {
            return Err(Error::invalid(
                "customer_id",
                &id,
                format!(
                    "is {} characters long, at most {} are allowed",
                    id.chars().count(),
                    Self::MAX_LEN
                ),
            ));
        }
        if let Some(c) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "_.:@-".contains(*c)))
        {
            return Err(Error::invalid(
                "customer_id",
                &id,
                format!("contains {c:?}; only letters, digits and _ . : @ - are allowed"),
            ));
        }
        Ok(CustomerId(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CustomerId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        CustomerId::new(s)
    }
}

impl TryFrom<String> for CustomerId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        CustomerId::new(s)
    }
}

impl From<CustomerId> for String {
    fn from(c: CustomerId) -> String {
        c.0
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for CustomerId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
