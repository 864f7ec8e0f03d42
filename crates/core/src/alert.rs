use std::{fmt, str::FromStr};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How far usage has gone toward a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// At or past the warning threshold (75 % by default).
    Warning,
    /// At or past the critical threshold (90 %).
    Critical,
    /// At or past the limit (100 %).
    Exceeded,
}

impl Level {
    /// All levels, lowest first.
    pub const ALL: [Level; 3] = [Level::Warning, Level::Critical, Level::Exceeded];

    /// The level's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Warning => "warning",
            Level::Critical => "critical",
            Level::Exceeded => "exceeded",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = Error;
    fn from_str(s: &str) -> Result<Level> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| Error::invalid("level", s, "expected warning, critical or exceeded"))
    }
}

/// Alert thresholds in percent of the limit (`USAGE_ALERT_WARNING`, `…_CRITICAL`,
/// `…_EXCEEDED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thresholds {
    warning: Decimal,
    critical: Decimal,
    exceeded: Decimal,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            warning: Decimal::from(75),
            critical: Decimal::from(90),
            exceeded: Decimal::from(100),
        }
    }
}

impl Thresholds {
    /// Validated thresholds: `0 < warning < critical < exceeded`.
    pub fn new(warning: Decimal, critical: Decimal, exceeded: Decimal) -> Result<Thresholds> {
        if warning <= Decimal::ZERO {
            return Err(Error::invalid("warning", warning, "must be above 0"));
        }
        if critical <= warning {
            return Err(Error::invalid(
                "critical",
                critical,
                format!("must be above warning ({warning})"),
            ));
        }
        if exceeded <= critical {
            return Err(Error::invalid(
                "exceeded",
                exceeded,
                format!("must be above critical ({critical})"),
            ));
        }
        Ok(Thresholds {
            warning,
            critical,
            exceeded,
        })
    }

    /// The threshold of `level`, in percent.
    pub fn percent(&self, level: Level) -> Decimal {
        match level {
            Level::Warning => self.warning,
            Level::Critical => self.critical,
            Level::Exceeded => self.exceeded,
        }
    }

    /// The highest level `usage` reaches against `limit`, exactly:
    /// `usage × 100 ≥ threshold × limit`. A zero limit is exceeded by any usage.
    pub fn classify(&self, usage: Decimal, limit: Decimal) -> Option<Level> {
        let hundred = Decimal::ONE_HUNDRED;
        Level::ALL.into_iter().rev().find(|l| {
            match (
                usage.checked_mul(hundred),
                self.percent(*l).checked_mul(limit),
            ) {
                (Some(lhs), Some(rhs)) => lhs >= rhs,
                // Only astronomically large usage overflows; it is past every threshold.
                (None, _) => true,
                (_, None) => false,
            }
        })
    }

    /// Every level `usage` reaches, lowest first.
    pub fn reached(&self, usage: Decimal, limit: Decimal) -> Vec<Level> {
        match self.classify(usage, limit) {
            Some(top) => Level::ALL.into_iter().filter(|l| *l <= top).collect(),
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal::dec;

    use super::*;

    #[test]
    fn classification_is_exact() {
        let t = Thresholds::default();
        assert_eq!(t.classify(dec!(9950), dec!(10000)), Some(Level::Critical));
        assert_eq!(t.classify(dec!(10000), dec!(10000)), Some(Level::Exceeded));
        assert_eq!(
            t.classify(dec!(9999.999999), dec!(10000)),
            Some(Level::Critical)
        );
        assert_eq!(t.classify(dec!(7500), dec!(10000)), Some(Level::Warning));
        assert_eq!(t.classify(dec!(7499.99), dec!(10000)), None);
        assert_eq!(t.classify(dec!(9000), dec!(10000)), Some(Level::Critical));
        assert_eq!(t.reached(dec!(12000), dec!(10000)), Level::ALL.to_vec());
        assert_eq!(t.classify(dec!(0), dec!(0)), Some(Level::Exceeded));
    }

    #[test]
    fn thresholds_must_increase() {
        assert!(Thresholds::new(dec!(90), dec!(75), dec!(100)).is_err());
        assert!(Thresholds::new(dec!(0), dec!(75), dec!(100)).is_err());
        assert_eq!("fatal".parse::<Level>().unwrap_err().field(), Some("level"));
    }
}
