//! The seed's unit conversions, exact: bytes to GiB, bytes held for hours to
//! GiB-hours, CPU seconds to CPU-hours.

use rust_decimal::Decimal;

use crate::{Quantity, Result};

/// 2^30 bytes.
const GIB: Decimal = Decimal::from_parts(1 << 30, 0, 0, false, 0);
const SECONDS_PER_HOUR: Decimal = Decimal::from_parts(3600, 0, 0, false, 0);

/// Bytes as GiB (`bytes / 2^30`), rounded half-up to [`Quantity::SCALE`] digits.
///
/// ```
/// # use tally_core::convert::bytes_to_gib;
/// assert_eq!(bytes_to_gib(1 << 30).unwrap().to_string(), "1");
/// assert_eq!(bytes_to_gib(100).unwrap().to_string(), "0.000000093132257");
/// ```
pub fn bytes_to_gib(bytes: u64) -> Result<Quantity> {
    Quantity::from_computed(Decimal::from(bytes) / GIB)
}

/// Bytes held for `hours` as GiB-hours (`bytes / 2^30 × hours`).
pub fn gib_hours(bytes: u64, hours: Quantity) -> Result<Quantity> {
    // Multiply first: the division is the only inexact step.
    let product = Decimal::from(bytes)
        .checked_mul(hours.value())
        .ok_or(crate::Error::Overflow { what: "GiB-hours" })?;
    Quantity::from_computed(product / GIB)
}

/// CPU seconds as CPU-hours (`seconds / 3600`).
pub fn cpu_hours(cpu_seconds: Quantity) -> Result<Quantity> {
    Quantity::from_computed(cpu_seconds.value() / SECONDS_PER_HOUR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_are_exact_to_scale() {
        assert_eq!(
            bytes_to_gib(1_073_741_824 * 3 / 2).unwrap().value(),
            Decimal::new(15, 1)
        );
        assert_eq!(bytes_to_gib(0).unwrap(), Quantity::ZERO);
        assert!(!bytes_to_gib(1).unwrap().is_zero()); // 9.31e-10
        assert_eq!(
            gib_hours(1 << 31, "24".parse().unwrap()).unwrap().value(),
            Decimal::from(48)
        );
        assert_eq!(
            gib_hours(1 << 29, "0.5".parse().unwrap()).unwrap().value(),
            Decimal::new(25, 2)
        );
        assert_eq!(
            cpu_hours("5400".parse().unwrap()).unwrap().value(),
            Decimal::new(15, 1)
        );
        assert_eq!(
            cpu_hours("1".parse().unwrap()).unwrap().to_string(),
            "0.000277777777778"
        );
    }
}
