//! What an export adds up as it streams: rows, quantities and costs per service and per
//! day, each row priced with the price in force at its instant.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use tally_core::{Catalog, Metered, PriceBook, Service, add_exact};
use tally_store::{Result, StoredEvent};

use super::ServiceTotal;

pub(super) struct Running {
    pub(super) rows: u64,
    pub(super) services: BTreeMap<String, ServiceTotal>,
    pub(super) daily: BTreeMap<NaiveDate, BTreeMap<String, Decimal>>,
    pub(super) customer: Option<String>,
    // The current customer's use per service.
    pub(super) usage: BTreeMap<String, Metered>,
}

pub(super) const QUANTITY: &str = "an export's quantities";
pub(super) const COST: &str = "an export's costs";

impl Running {
    pub(super) fn new() -> Running {
        Running {
            rows: 0,
            services: BTreeMap::new(),
            daily: BTreeMap::new(),
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
        let used = match self.usage.get_mut(&e.service) {
            Some(u) => u,
            None => self
                .usage
                .entry(e.service.clone())
                .or_insert_with(|| Metered {
                    per_event: pricer.needs_events(&e.service).then(Vec::new),
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
        let t = match self.services.get_mut(&e.service) {
            Some(t) => t,
            None => self
                .services
                .entry(e.service.clone())
                .or_insert_with(|| ServiceTotal {
                    unit: unit.to_owned(),
                    ..ServiceTotal::default()
                }),
        };
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

    /// Prices the current customer's use (all its rows have passed) into the service
    /// totals.
    pub(super) fn close_customer(&mut self, pricer: &mut Pricer) -> Result<()> {
        for (service, used) in std::mem::take(&mut self.usage) {
            let amount = pricer.amount(&service, &used)?;
            if let Some(t) = self.services.get_mut(&service) {
                t.cost = add_exact(t.cost, amount, COST)?;
            }
        }
        Ok(())
    }
}

/// Prices rows as they stream and customers as they end, by one rule, the invoice's:
/// the price in force at the range's start (docs/semantics.md, "Money"), so a row's
/// cost and the summary's agree whatever price versions start inside the range.
/// Models without a per-unit price (tiers, packages) leave both row price columns
/// empty: their cost exists only for a total, in the summary.
pub(super) struct Pricer {
    pub(super) catalog: Catalog,
    pub(super) prices: PriceBook,
    pub(super) at: DateTime<Utc>,
    // Per service name: the service and its unit, looked up once.
    pub(super) services: HashMap<String, Option<(Service, Arc<str>)>>,
}

impl Pricer {
    pub(super) fn service(&mut self, name: &str) -> Option<(Service, Arc<str>)> {
        match self.services.get(name) {
            Some(k) => k.clone(),
            None => {
                let k = self.catalog.service(name).ok().map(|s| {
                    let unit: Arc<str> = Arc::from(self.catalog.unit(&s).unwrap_or_default());
                    (s, unit)
                });
                self.services.insert(name.to_owned(), k.clone());
                k
            }
        }
    }

    /// Whether the price of `service` needs each event's quantity.
    pub(super) fn needs_events(&mut self, service: &str) -> bool {
        let at = self.at;
        self.service(service)
            .and_then(|(s, _)| self.prices.price_at(&s, at).map(|p| p.needs_events()))
            .unwrap_or(false)
    }

    /// What one customer's `used` of `service` costs over the range, rounded once.
    pub(super) fn amount(&mut self, service: &str, used: &Metered) -> Result<Decimal> {
        let at = self.at;
        let exponent = self.prices.exponent();
        let price = self
            .service(service)
            .and_then(|(s, _)| self.prices.price_at(&s, at).cloned());
        Ok(match price {
            Some(p) => p.priced(used, exponent)?.amount,
            None => tally_core::round_to(Decimal::ZERO, exponent),
        })
    }

    /// (unit, unit price, cost) of one row.
    pub(super) fn price(
        &mut self,
        e: &StoredEvent,
    ) -> (Arc<str>, Option<Decimal>, Option<Decimal>) {
        let Some((service, unit)) = self.service(&e.service) else {
            return (Arc::from(""), None, None);
        };
        let unit_price = self
            .prices
            .price_at(&service, self.at)
            .and_then(|p| p.unit_price());
        let cost = unit_price
            .and_then(|p| p.checked_mul(e.quantity))
            .map(|c| c.normalize());
        (unit, unit_price, cost)
    }
}
