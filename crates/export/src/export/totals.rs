//! What an export adds up as it streams: rows, quantities and costs per service and per
//! day, each row priced with the price in force at its instant.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use tally_core::{Catalog, Metered, Price, PriceBook, TimeRange, add_exact, round_to, share_of};
use tally_store::{Result, StoredEvent};

use super::ServiceTotal;

pub(super) struct Running {
    pub(super) rows: u64,
    pub(super) services: BTreeMap<String, ServiceTotal>,
    pub(super) daily: BTreeMap<NaiveDate, BTreeMap<String, Decimal>>,
    /// What customers below the book's minimum pay on top of their charges.
    pub(super) minimum: Decimal,
    pub(super) customer: Option<String>,
    // The current customer's use per service and part of the range.
    pub(super) usage: BTreeMap<(String, usize), Metered>,
}

pub(super) const QUANTITY: &str = "an export's quantities";
pub(super) const COST: &str = "an export's costs";

impl Running {
    pub(super) fn new() -> Running {
        Running {
            rows: 0,
            services: BTreeMap::new(),
            daily: BTreeMap::new(),
            minimum: Decimal::ZERO,
            customer: None,
            usage: BTreeMap::new(),
        }
    }

    /// Counts `e`; `daily` also keeps the per-day totals (for the XLSX chart).
    pub(super) fn add(
        &mut self,
        e: &StoredEvent,
        unit: &str,
        daily: bool,
        pricer: &mut Pricer,
    ) -> Result<()> {
        if self.customer.as_deref() != Some(e.customer_id.as_str()) {
            self.close_customer(pricer)?;
            self.customer = Some(e.customer_id.clone());
        }
        let part = pricer.part_of(&e.service, e.recorded_at);
        let key = (e.service.clone(), part);
        let used = match self.usage.get_mut(&key) {
            Some(u) => u,
            None => self.usage.entry(key).or_insert_with(|| Metered {
                per_event: pricer.needs_events(&e.service, part).then(Vec::new),
                ..Metered::new(Decimal::ZERO, 0)
            }),
        };
        used.quantity = add_exact(used.quantity, e.quantity, QUANTITY)?;
        used.events += 1;
        if let Some(each) = &mut used.per_event {
            each.push(e.quantity);
        }
        self.rows += 1;
        // Look up before inserting: a row allocates only for a key seen first.
        let t = self.total_of(&e.service, unit);
        t.events += 1;
        t.quantity = add_exact(t.quantity, e.quantity, QUANTITY)?;
        if daily {
            let per = self.daily.entry(e.recorded_at.date_naive()).or_default();
            let day = match per.get_mut(&e.service) {
                Some(d) => d,
                None => per.entry(e.service.clone()).or_default(),
            };
            *day = add_exact(*day, e.quantity, QUANTITY)?;
        }
        Ok(())
    }

    fn total_of(&mut self, service: &str, unit: &str) -> &mut ServiceTotal {
        if !self.services.contains_key(service) {
            self.services.insert(
                service.to_owned(),
                ServiceTotal {
                    unit: unit.to_owned(),
                    ..ServiceTotal::default()
                },
            );
        }
        self.services.entry(service.to_owned()).or_default()
    }

    /// Prices the current customer (all its rows have passed) as its invoice for the
    /// range would: each service in its parts, with true-up and cap lines (a service
    /// with a minimum is charged even unused), then the book's minimum.
    pub(super) fn close_customer(&mut self, pricer: &mut Pricer) -> Result<()> {
        if self.customer.is_none() {
            return Ok(());
        }
        let usage = std::mem::take(&mut self.usage);
        let mut names: std::collections::BTreeSet<String> =
            usage.keys().map(|(s, _)| s.clone()).collect();
        names.extend(pricer.prices.services.keys().cloned());
        let mut total = Decimal::ZERO;
        for name in names {
            let Some(known) = pricer.service(&name) else {
                continue; // not in the catalogue: no price, no cost
            };
            for (i, (part, price)) in known.parts.iter().enumerate() {
                let used = usage.get(&(name.clone(), i));
                let Some(price) = price else {
                    continue; // used without a price: at zero
                };
                let price = price.for_share(share_of(*part, pricer.range));
                let unused = Metered {
                    per_event: price.needs_events().then(Vec::new),
                    ..Metered::new(Decimal::ZERO, 0)
                };
                let charge = price.charge(used.unwrap_or(&unused), pricer.prices.exponent())?;
                if used.is_none() && charge.line.amount.is_zero() && charge.true_up.is_none() {
                    continue; // nothing used, nothing charged
                }
                let mut amount = charge.line.amount;
                for extra in [charge.true_up, charge.cap].into_iter().flatten() {
                    amount = add_exact(amount, extra, COST)?;
                }
                let t = self.total_of(&name, &known.unit);
                t.cost = add_exact(t.cost, amount, COST)?;
                total = add_exact(total, amount, COST)?;
            }
        }
        let exponent = pricer.prices.exponent();
        if let Some(min) = pricer.prices.minimum.map(|m| round_to(m, exponent))
            && total < min
        {
            self.minimum = add_exact(self.minimum, round_to(min - total, exponent), COST)?;
        }
        Ok(())
    }
}

/// A service as the pricer knows it: its unit and its parts of the range, each with
/// the price in force over it.
#[derive(Clone)]
pub(super) struct Known {
    pub(super) unit: Arc<str>,
    pub(super) parts: Arc<[(TimeRange, Option<Price>)]>,
}

/// Prices rows as they stream and customers as they end, by one rule, the invoice's:
/// the range is cut where a price version starts inside it, and each part is priced
/// by the price in force over it (docs/pricing.md), so a row's cost and the summary's
/// agree, and a customer's total is their invoice's for the range. Models without a
/// per-unit price (tiers, packages) leave both row price columns empty: their cost
/// exists only for a total, in the summary.
pub(super) struct Pricer {
    pub(super) catalog: Catalog,
    pub(super) prices: PriceBook,
    pub(super) range: TimeRange,
    // Per service name, looked up once: None for a name the catalogue does not know.
    pub(super) services: HashMap<String, Option<Known>>,
}

impl Pricer {
    pub(super) fn service(&mut self, name: &str) -> Option<Known> {
        match self.services.get(name) {
            Some(k) => k.clone(),
            None => {
                let k = self.catalog.service(name).ok().map(|s| Known {
                    unit: Arc::from(self.catalog.unit(&s).unwrap_or_default()),
                    parts: self
                        .prices
                        .parts(&s, self.range)
                        .into_iter()
                        .map(|(r, p)| (r, p.cloned()))
                        .collect(),
                });
                self.services.insert(name.to_owned(), k.clone());
                k
            }
        }
    }

    /// Which part of the range `at` falls in, for `service`.
    pub(super) fn part_of(&mut self, service: &str, at: DateTime<Utc>) -> usize {
        self.service(service)
            .and_then(|k| k.parts.iter().position(|(r, _)| r.contains(at)))
            .unwrap_or(0)
    }

    /// Whether the price of `service` over part `part` needs each event's quantity.
    pub(super) fn needs_events(&mut self, service: &str, part: usize) -> bool {
        self.service(service)
            .and_then(|k| {
                k.parts
                    .get(part)
                    .and_then(|(_, p)| p.as_ref().map(Price::needs_events))
            })
            .unwrap_or(false)
    }

    /// (unit, unit price, cost) of one row, at the price in force at its instant.
    pub(super) fn price(
        &mut self,
        e: &StoredEvent,
    ) -> (Arc<str>, Option<Decimal>, Option<Decimal>) {
        let Some(known) = self.service(&e.service) else {
            return (Arc::from(""), None, None);
        };
        let unit_price = known
            .parts
            .iter()
            .find(|(r, _)| r.contains(e.recorded_at))
            .and_then(|(_, p)| p.as_ref())
            .and_then(Price::unit_price);
        let cost = unit_price
            .and_then(|p| p.checked_mul(e.quantity))
            .map(|c| c.normalize());
        (known.unit, unit_price, cost)
    }
}
