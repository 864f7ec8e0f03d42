//! What an export adds up as it streams: rows, quantities and costs per service and per
//! day, each row priced with the price in force at its instant.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use chrono::NaiveDate;
use rust_decimal::Decimal;
use tally_core::{Catalog, Metered, Price, PriceBook, TimeRange, add_exact};
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
    pub(super) usage: BTreeMap<String, BTreeMap<usize, Metered>>,
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
        row: &RowPrice,
        daily: bool,
        pricer: &mut Pricer,
    ) -> Result<()> {
        let (unit, part) = (&*row.unit, row.part);
        if self.customer.as_deref() != Some(e.customer_id.as_str()) {
            self.close_customer(pricer)?;
            self.customer = Some(e.customer_id.clone());
        }
        // Look up before inserting: a row allocates only for a key seen first.
        let parts = match self.usage.get_mut(&e.service) {
            Some(p) => p,
            None => self.usage.entry(e.service.clone()).or_default(),
        };
        let used = parts.entry(part).or_insert_with(|| Metered {
            per_event: pricer.needs_events(&e.service, part).then(Vec::new),
            ..Metered::new(Decimal::ZERO, 0)
        });
        used.quantity = add_exact(used.quantity, e.quantity, QUANTITY)?;
        used.events += 1;
        if let Some(each) = &mut used.per_event {
            each.push(e.quantity);
        }
        self.rows += 1;
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
        let mut total = Decimal::ZERO;
        for (name, parts) in &usage {
            let Some(known) = pricer.service(name) else {
                continue; // not in the catalogue: no price, no cost
            };
            for (i, used) in parts {
                let Some((part, Some(price))) = known.parts.get(*i) else {
                    continue; // used without a price: at zero
                };
                let amount = pricer.charge(*part, price, Some(used))?.unwrap_or_default();
                let t = self.total_of(name, &known.unit);
                t.cost = add_exact(t.cost, amount, COST)?;
                total = add_exact(total, amount, COST)?;
            }
        }
        // What a service charges unused (a minimum, a flat fee at zero), for the
        // parts this customer did not use.
        for (name, i, unit, amount) in pricer.unused_charges()?.iter() {
            if usage.get(name).is_some_and(|p| p.contains_key(i)) {
                continue;
            }
            let t = self.total_of(name, unit);
            t.cost = add_exact(t.cost, *amount, COST)?;
            total = add_exact(total, *amount, COST)?;
        }
        if let Some(up) = pricer.prices.minimum_top_up(total) {
            self.minimum = add_exact(self.minimum, up, COST)?;
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
    // What each priced service's parts charge unused (service, part, unit, amount):
    // the same for every customer, so computed once.
    pub(super) unused: Option<Arc<[UnusedCharge]>>,
}

/// What the pricer says of one row.
pub(super) struct RowPrice {
    pub(super) unit: Arc<str>,
    pub(super) unit_price: Option<Decimal>,
    pub(super) cost: Option<Decimal>,
    /// The part of the range (of its service's price) it falls in.
    pub(super) part: usize,
}

/// A part of a service's range that charges even unused: (service, part, unit, amount).
pub(super) type UnusedCharge = (String, usize, Arc<str>, Decimal);

impl Pricer {
    /// What `price` charges for `part` of the range on `used` (nothing used: `None`),
    /// as the invoice's lines for it add up ([`Price::charge_part`]); `None` when
    /// nothing is used and nothing charged.
    pub(super) fn charge(
        &self,
        part: TimeRange,
        price: &Price,
        used: Option<&Metered>,
    ) -> Result<Option<Decimal>> {
        let charge = price.charge_part(part, self.range, used, self.prices.exponent())?;
        Ok(charge.map(|c| c.total()).transpose()?)
    }

    /// Every part of every priced service that charges unused.
    pub(super) fn unused_charges(&mut self) -> Result<Arc<[UnusedCharge]>> {
        if let Some(u) = &self.unused {
            return Ok(u.clone());
        }
        let names: Vec<String> = self.prices.services.keys().cloned().collect();
        let mut out = Vec::new();
        for name in names {
            let Some(known) = self.service(&name) else {
                continue;
            };
            for (i, (part, price)) in known.parts.iter().enumerate() {
                if let Some(price) = price
                    && let Some(amount) = self.charge(*part, price, None)?
                {
                    out.push((name.clone(), i, known.unit.clone(), amount));
                }
            }
        }
        let out: Arc<[UnusedCharge]> = out.into();
        self.unused = Some(out.clone());
        Ok(out)
    }

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

    /// One row's unit, unit price and cost at the price in force at its instant, and
    /// the part of the range it falls in.
    pub(super) fn price(&mut self, e: &StoredEvent) -> RowPrice {
        let Some(known) = self.service(&e.service) else {
            return RowPrice {
                unit: Arc::from(""),
                unit_price: None,
                cost: None,
                part: 0,
            };
        };
        let part = known
            .parts
            .iter()
            .position(|(r, _)| r.contains(e.recorded_at))
            .unwrap_or(0);
        let unit_price = known
            .parts
            .get(part)
            .and_then(|(_, p)| p.as_ref())
            .and_then(Price::unit_price);
        let cost = unit_price
            .and_then(|p| p.checked_mul(e.quantity))
            .map(|c| c.normalize());
        RowPrice {
            unit: known.unit,
            unit_price,
            cost,
            part,
        }
    }
}
