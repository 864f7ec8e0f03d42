use std::{fmt, iter::Sum, ops::Add, str::FromStr};

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// An exact, non-negative amount of usage, kept to [`Quantity::SCALE`] fractional digits.
///
/// Quantities are `rust_decimal` values end to end (stored as `numeric(28,15)`), never
/// floats: 100 bytes of bandwidth is 0.000000093132257 GiB, not 0.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(try_from = "Decimal", into = "Decimal")]
pub struct Quantity(Decimal);

impl Quantity {
    /// Fractional digits kept. Conversions round half-up to this many; parsed text
    /// with more digits is rejected rather than silently rounded.
    pub const SCALE: u32 = 15;
    /// Quantities are below 10^13 (the integer digits `numeric(28,15)` leaves).
    pub const LIMIT: Decimal = Decimal::from_parts(1_316_134_912, 2_328, 0, false, 0); // 10^13
    /// Zero.
    pub const ZERO: Quantity = Quantity(Decimal::ZERO);
    /// One.
    pub const ONE: Quantity = Quantity(Decimal::ONE);

    /// Validates an exact decimal.
    pub fn new(value: Decimal) -> Result<Quantity> {
        if value.is_sign_negative() && !value.is_zero() {
            return Err(Error::invalid("quantity", value, "must not be negative"));
        }
        if value.scale() > Self::SCALE && value.normalize().scale() > Self::SCALE {
            return Err(Error::invalid(
                "quantity",
                value,
                format!("has more than {} fractional digits", Self::SCALE),
            ));
        }
        if value >= Self::LIMIT {
            return Err(Error::invalid("quantity", value, "must be below 10^13"));
        }
        // -0 and trailing zeros beyond SCALE are normalised away.
        let mut v = value.abs();
        if v.scale() > Self::SCALE {
            v = v.normalize();
        }
        Ok(Quantity(v))
    }

    /// Rounds a computed value (a unit conversion) half-up to [`Quantity::SCALE`] digits.
    pub fn from_computed(value: Decimal) -> Result<Quantity> {
        Quantity::new(
            value.round_dp_with_strategy(Self::SCALE, RoundingStrategy::MidpointAwayFromZero),
        )
    }

    /// A whole number of units.
    pub fn from_u64(n: u64) -> Result<Quantity> {
        Quantity::new(Decimal::from(n))
    }

    /// The exact value.
    pub fn value(self) -> Decimal {
        self.0
    }

    /// Whether this is zero.
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// `self - other`, or zero when `other` is larger (allowances never go negative).
    pub fn saturating_sub(self, other: Quantity) -> Quantity {
        if other.0 >= self.0 {
            Quantity::ZERO
        } else {
            Quantity(self.0 - other.0)
        }
    }
}

/// Exponent notation (`mantissa e exponent`, the mantissa plain), exactly; `None` when
/// `t` has no exponent.
fn scientific(s: &str, t: &str) -> Option<Result<Quantity>> {
    let (mantissa, exp) = t.split_once(['e', 'E'])?;
    let m = mantissa.strip_prefix('+').unwrap_or(mantissa);
    let (int, frac) = m.split_once('.').unwrap_or((m, ""));
    let exp_digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
    let well_formed = (!int.is_empty() || !frac.is_empty())
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
        && !exp_digits.is_empty()
        && exp_digits.len() <= 3
        && exp_digits.bytes().all(|b| b.is_ascii_digit());
    if !well_formed {
        return Some(Err(Error::invalid(
            "quantity",
            s,
            "is not a decimal number (digits with an optional '.' and exponent)",
        )));
    }
    let exact = Decimal::from_scientific(&format!("{m}e{exp}"))
        .ok()
        .filter(|d| {
            // from_scientific rounds what it cannot hold: exact means the digits survive.
            let digits = format!("{int}{frac}").trim_matches('0').len();
            d.normalize()
                .mantissa()
                .unsigned_abs()
                .to_string()
                .trim_end_matches('0')
                .len()
                == digits.max(1)
                || d.is_zero()
        });
    Some(match exact {
        // Name the value as given, not as the decimal it became.
        Some(d) => Quantity::new(d.normalize()).map_err(|e| match e {
            Error::Invalid { reason, .. } => Error::invalid("quantity", s, reason),
            other => other,
        }),
        None => Err(Error::invalid(
            "quantity",
            s,
            format!(
                "cannot be held exactly with {} fractional digits",
                Quantity::SCALE
            ),
        )),
    })
}

impl FromStr for Quantity {
    type Err = Error;
    /// Plain decimal notation (`"12"`, `"0.5"`, `"0.000000000093"`), or exponent form as
    /// JavaScript and Python print small and large numbers (`"9.3e-11"`, `"1E+3"`),
    /// accepted when its exact value fits [`Quantity::SCALE`] digits. Rejects `""`,
    /// signs other than a leading `+`, `NaN` and infinities.
    fn from_str(s: &str) -> Result<Quantity> {
        let t = s.trim();
        if let Some(q) = scientific(s, t) {
            return q;
        }
        let digits = t.strip_prefix('+').unwrap_or(t);
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let plain = !digits.is_empty()
            && (!int.is_empty() || !frac.is_empty())
            && int.bytes().all(|b| b.is_ascii_digit())
            && frac.bytes().all(|b| b.is_ascii_digit());
        if !plain {
            let reason = if t.is_empty() {
                "must not be empty".to_owned()
            } else if t.starts_with('-') {
                "must not be negative".to_owned()
            } else {
                "is not a plain decimal number (digits with an optional '.' and no exponent)"
                    .to_owned()
            };
            return Err(Error::invalid("quantity", s, reason));
        }
        if frac.trim_end_matches('0').len() > Self::SCALE as usize {
            return Err(Error::invalid(
                "quantity",
                s,
                format!("has more than {} fractional digits", Self::SCALE),
            ));
        }
        let int = int.trim_start_matches('0');
        if int.len() > 13 {
            return Err(Error::invalid("quantity", s, "must be below 10^13"));
        }
        let frac = &frac[..frac.len().min(Self::SCALE as usize)];
        let text = format!(
            "{}.{}",
            if int.is_empty() { "0" } else { int },
            if frac.is_empty() { "0" } else { frac }
        );
        let d = Decimal::from_str_exact(&text)
            .map_err(|e| Error::invalid("quantity", s, e.to_string()))?;
        Quantity::new(d)
    }
}

impl TryFrom<Decimal> for Quantity {
    type Error = Error;
    fn try_from(d: Decimal) -> Result<Quantity> {
        Quantity::new(d)
    }
}

impl From<Quantity> for Decimal {
    fn from(q: Quantity) -> Decimal {
        q.0
    }
}

impl Add for Quantity {
    type Output = Decimal;
    /// Sums may exceed a single quantity's range, so they are plain decimals.
    fn add(self, rhs: Quantity) -> Decimal {
        self.0 + rhs.0
    }
}

impl<'a> Sum<&'a Quantity> for Decimal {
    fn sum<I: Iterator<Item = &'a Quantity>>(iter: I) -> Decimal {
        iter.fold(Decimal::ZERO, |acc, q| acc + q.0)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.normalize(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_decimals_exactly() {
        assert_eq!("12".parse::<Quantity>().unwrap().value(), Decimal::from(12));
        assert_eq!(
            "0.000000000093".parse::<Quantity>().unwrap().value(),
            Decimal::new(93, 12)
        );
        assert_eq!(
            "+.5".parse::<Quantity>().unwrap().value(),
            Decimal::new(5, 1)
        );
        assert_eq!("7.".parse::<Quantity>().unwrap().value(), Decimal::from(7));
        assert_eq!(
            "0.100000000000000000".parse::<Quantity>().unwrap().value(),
            Decimal::new(1, 1)
        );
        assert_eq!(
            "9999999999999.999999999999999"
                .parse::<Quantity>()
                .unwrap()
                .to_string(),
            "9999999999999.999999999999999"
        );
    }

    #[test]
    fn exponent_form_is_exact_when_it_fits() {
        let q = |s: &str| s.parse::<Quantity>().map(|q| q.to_string());
        assert_eq!(q("9.3e-11").unwrap(), "0.000000000093");
        assert_eq!(q("1E+3").unwrap(), "1000");
        assert_eq!(q("1.5e2").unwrap(), "150");
        assert_eq!(q("1e-15").unwrap(), "0.000000000000001");
        assert_eq!(q("0e5").unwrap(), "0");
    }

    #[test]
    fn rejects_bad_text_naming_field_and_value() {
        for bad in [
            "-1",
            "NaN",
            "1e-16",
            "1e13",
            "1.5e",
            "e5",
            "1e+-3",
            "1e99999",
            "",
            " ",
            "inf",
            "-0.5",
            "1.2.3",
            "0x10",
            "1,5",
            ".",
            "+",
            "10000000000000",
            "0.0000000000000001",
        ] {
            let err = bad.parse::<Quantity>().unwrap_err();
            assert_eq!(err.field(), Some("quantity"), "{bad}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn rejects_negative_decimal() {
        assert!(Quantity::new(Decimal::NEGATIVE_ONE).is_err());
        assert_eq!(Quantity::new(-Decimal::ZERO).unwrap(), Quantity::ZERO);
    }

    #[test]
    fn computed_values_round_half_up_to_scale() {
        let q = Quantity::from_computed(Decimal::new(5, 16)).unwrap(); // 0.0000000000000005
        assert_eq!(q.value(), Decimal::new(1, 15));
        let q = Quantity::from_computed(Decimal::new(4, 16)).unwrap();
        assert!(q.is_zero());
    }

    #[test]
    fn limit_is_ten_to_the_thirteen() {
        assert_eq!(Quantity::LIMIT, Decimal::from(10_000_000_000_000u64));
    }
}
