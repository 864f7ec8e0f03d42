//! The seed's compact number formatting for tables (display only, so it lives here).

use tally::rust_decimal::{Decimal, RoundingStrategy};

/// Formats a number compactly: 1 500 000 → `"1.50M"`, 5 500 → `"5.50K"`, 250 → `"250"`,
/// `7600.000000` → `"7.60K"`, 2.5 × 10^9 → `"2.50B"`. Below 1 000 the value is shown
/// exactly, without trailing zeros.
pub(crate) fn format_compact(value: Decimal) -> String {
    let abs = value.abs();
    let scaled = |div: i64, suffix: &str| {
        let v = (value / Decimal::from(div))
            .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
        format!("{v:.2}{suffix}")
    };
    if abs >= Decimal::from(1_000_000_000) {
        scaled(1_000_000_000, "B")
    } else if abs >= Decimal::from(1_000_000) {
        scaled(1_000_000, "M")
    } else if abs >= Decimal::from(1_000) {
        scaled(1_000, "K")
    } else {
        value.normalize().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_examples() {
        let f = |s: &str| format_compact(s.parse().unwrap());
        assert_eq!(f("1500000"), "1.50M");
        assert_eq!(f("5500"), "5.50K");
        assert_eq!(f("250"), "250");
        assert_eq!(f("7600.000000"), "7.60K");
        assert_eq!(f("999.5"), "999.5");
        assert_eq!(f("1000"), "1.00K");
        assert_eq!(f("2500000000"), "2.50B");
        assert_eq!(f("0.000000093132257"), "0.000000093132257");
        assert_eq!(f("1005"), "1.01K"); // half-up
    }
}
