//! A bounded count of results asked for from outside.

use std::fmt;

use crate::{Error, Result};

/// How many results a top-N read returns: 1 to [`Limit::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Limit(u32);

impl Limit {
    /// The largest limit accepted.
    pub const MAX: u32 = 10_000;

    /// The limit when none is asked for: 10.
    pub const DEFAULT: Limit = Limit(10);

    /// Validates `n` from outside (field `limit`).
    pub fn new(n: i64) -> Result<Limit> {
        u32::try_from(n)
            .ok()
            .filter(|n| (1..=Limit::MAX).contains(n))
            .map(Limit)
            .ok_or_else(|| Error::invalid("limit", n, "must be from 1 to 10000"))
    }

    /// The limit as a number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert_eq!(Limit::new(1).map(Limit::get), Ok(1));
        assert_eq!(Limit::new(10_000).map(Limit::get), Ok(10_000));
        for bad in [0, -5, 10_001, i64::MAX] {
            let e = Limit::new(bad).unwrap_err();
            assert_eq!(e.field(), Some("limit"));
        }
        assert_eq!(
            Limit::new(-5).unwrap_err().to_string(),
            "invalid limit \"-5\": must be from 1 to 10000"
        );
    }
}
