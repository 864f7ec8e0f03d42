//! Tally's domain: the types every other Tally crate speaks, and the pricing math.
//!
//! No I/O, no async, no database: customer ids, services and meters with their units,
//! exact quantities and the seed's unit conversions, usage events with UUIDv7 ids,
//! half-open time ranges and calendar buckets in any IANA zone, price books with
//! per-unit, package, graduated and volume prices, plans, quotas, billing periods and
//! alert levels, the one rollup
//! aggregate ([`Totals`]) and how results are written in JSON ([`serde_fmt`]).
//! Every constructor that takes text from outside validates it and names the field and
//! the value when it refuses.
//!
//! ```
//! use rust_decimal::Decimal;
//! use tally_core::{CustomerId, Price, PriceModel, Quantity, Service, Tier, UsageEvent};
//!
//! let customer: CustomerId = "acme-42".parse()?;
//! let event = UsageEvent::new(customer, Service::API, "3".parse::<Quantity>()?);
//! assert_eq!(event.service.as_str(), "api");
//!
//! // SPEC §9: graduated tiers 0–100 @ 1.00, 100–200 @ 0.50, 200+ @ 0.10.
//! let tiers = vec![
//!     Tier::new(Some(Decimal::from(100)), "1.00".parse()?),
//!     Tier::new(Some(Decimal::from(200)), "0.50".parse()?),
//!     Tier::new(None, "0.10".parse()?),
//! ];
//! let price = Price::new(PriceModel::Graduated { tiers }, Decimal::ZERO)?;
//! assert_eq!(price.line(Decimal::from(201))?.amount.to_string(), "150.10");
//!
//! // Bad input is a typed error naming the field and the value.
//! let err = "a b".parse::<CustomerId>().unwrap_err();
//! assert_eq!(err.field(), Some("customer_id"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod alert;
pub mod convert;
mod customer;
mod error;
mod event;
mod limit;
pub mod meter;
mod price_file;
mod pricing;
mod progress;
mod quantity;
mod quota;
mod range;
pub mod serde_fmt;
mod service;
mod time;
mod totals;

pub use alert::{Level, Thresholds};
pub use customer::CustomerId;
pub use error::{Error, Result};
pub use event::{EventId, Metadata, Usage, UsageEvent, track};
pub use limit::Limit;
pub use meter::{
    Acc, Aggregation, CloudEvent, Dimension, EventType, JsonPath, Latest, MeterPieces, MeterSlug,
    MeterSpec, Payload, Reading, Sample, Value, WindowSize,
};
pub use pricing::{
    Charge, Line, MONEY_SCALE, MeterPart, MeterPrice, MeterPrices, Metered, Price, PriceBook,
    PriceModel, PriceVersion, Rounding, Tier, currency_exponent, is_iso_4217, round_money,
    round_to, share_of,
};
pub use progress::Progress;
pub use quantity::Quantity;
pub use quota::{
    Alert, AnchorDay, BillingCycle, Decision, Measure, Mode, PeriodName, Plan, PlanName, Quota,
    QuotaLimit, QuotaSource, percent_of,
};
pub use range::{QuarterPiece, TimeRange, UtcSplit};
pub use service::{BuiltIn, Catalog, Meter, Service};
pub use time::{
    Granularity, Zone, check_instant, normalize_instant, parse_instant, parse_month,
    supported_instants,
};
pub use totals::{QuarterColumns, Quarters, Totals, add_exact, exact_sum};

/// Re-exported so users of Tally's types need not pin their own versions.
pub use chrono;
pub use rust_decimal;
pub use uuid;
