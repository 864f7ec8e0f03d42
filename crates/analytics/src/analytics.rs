//! The reads themselves: each takes its query ([`crate::query`]) and answers from the
//! built-in meters' one read, [`Store::totals`] (the meter query's, for services).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use tally_core::{
    Catalog, CustomerId, Granularity, Metered, PriceBook, Service, TimeRange, Totals, Zone,
    round_to,
};
use tally_store::{MeterQuery, Result, Store, Who};

use crate::query::{PeaksQuery, StatsQuery, SummaryQuery, TrendsQuery, UsageQuery};
use crate::report::{
    Aggregation, Bucket, DayLine, Invoice, InvoiceLine, LineKind, Over, Peak, ServiceLine, Stats,
    Summary, TrendDay, add_money, invalid, stats_of,
};

/// The read side of Tally: summaries, aggregation, statistics, trends, peaks and
/// invoices, exact and served from the rollups.
#[derive(Debug, Clone)]
pub struct Analytics {
    store: Store,
    prices: PriceBook,
    zone: Zone,
}

impl Analytics {
    /// Analytics over `store`, pricing with the seed's per-unit defaults, in UTC.
    pub fn new(store: Store) -> Analytics {
        Analytics {
            store,
            prices: PriceBook::default(),
            zone: Zone::UTC,
        }
    }

    /// Prices with `prices` instead.
    pub fn with_prices(mut self, prices: PriceBook) -> Analytics {
        self.prices = prices;
        self
    }

    /// Reads in `zone` unless a query says otherwise.
    pub fn with_zone(mut self, zone: Zone) -> Analytics {
        self.zone = zone;
        self
    }

    /// The price book in use.
    pub fn prices(&self) -> &PriceBook {
        &self.prices
    }

    /// The zone reads use unless a query names one.
    pub fn zone(&self) -> Zone {
        self.zone
    }

    /// A customer's usage and cost per service over `range`; see [`SummaryQuery`].
    pub fn summary(&self, customer: &CustomerId, range: TimeRange) -> SummaryQuery<'_> {
        SummaryQuery::new(self, customer.clone(), range)
    }

    /// Usage per bucket over `range`, of all customers added up unless one is named;
    /// see [`UsageQuery`].
    pub fn usage(&self, range: TimeRange) -> UsageQuery<'_> {
        UsageQuery::new(self, range)
    }

    /// Statistics of a customer's use of a service; see [`StatsQuery`].
    pub fn stats(&self, customer: &CustomerId, service: &Service) -> StatsQuery<'_> {
        StatsQuery::new(self, customer.clone(), service.clone())
    }

    /// Daily totals with day-over-day change; see [`TrendsQuery`].
    pub fn trends(&self, customer: &CustomerId) -> TrendsQuery<'_> {
        TrendsQuery::new(self, customer.clone())
    }

    /// The largest buckets of a customer's use of a service; see [`PeaksQuery`].
    pub fn peaks(&self, customer: &CustomerId, service: &Service) -> PeaksQuery<'_> {
        PeaksQuery::new(self, customer.clone(), service.clone())
    }

    /// What `price` is applied to: the totals, and each event's quantity when the
    /// price needs them (read from raw events only then).
    async fn metered(
        &self,
        price: &tally_core::Price,
        used: Option<&Totals>,
        customer: &CustomerId,
        service: &Service,
        range: TimeRange,
    ) -> Result<Metered> {
        let mut metered = Metered::new(
            used.map_or(Decimal::ZERO, |t| t.quantity),
            used.map_or(0, |t| t.events),
        );
        if price.needs_events() {
            metered.per_event = Some(match used {
                Some(_) => {
                    self.store
                        .event_quantities(customer, service, range)
                        .await?
                }
                None => Vec::new(),
            });
        }
        Ok(metered)
    }

    /// The customer's use of each of `services` over `range`, in the parts the price
    /// book cuts it into ([`PriceBook::parts`]): per service, each part with the price
    /// in force over it and the usage in it. The usage of every piece between two
    /// price starts is read at once.
    async fn parted_usage(
        &self,
        customer: &CustomerId,
        range: TimeRange,
        services: &[Service],
    ) -> Result<Vec<Vec<Part<'_>>>> {
        let pieces: Vec<(DateTime<Utc>, TimeRange)> = self
            .prices
            .pieces(range)
            .into_iter()
            .map(|r| (r.from(), r))
            .collect();
        let sums = self
            .store
            .totals(&pieces, Who::One(customer), services)
            .await?;
        let mut out = Vec::with_capacity(services.len());
        for (i, s) in services.iter().enumerate() {
            let mut parts = Vec::new();
            for (range, price) in self.prices.parts(s, range) {
                let mut used: Option<Totals> = None;
                for (label, _) in pieces.iter().filter(|(l, _)| range.contains(*l)) {
                    if let Some(t) = sums.get(&(*label, i)) {
                        add_to(&mut used, *t)?;
                    }
                }
                parts.push(Part { range, price, used });
            }
            out.push(parts);
        }
        Ok(out)
    }

    async fn services(&self, filter: Option<&Service>) -> Result<(Vec<Service>, Catalog)> {
        let catalog = self.store.catalog().await?;
        let services = match filter {
            Some(s) => vec![catalog.service(s.as_str())?],
            None => catalog.meters().map(|m| m.service.clone()).collect(),
        };
        Ok((services, catalog))
    }

    pub(crate) async fn run_summary(&self, q: &SummaryQuery<'_>) -> Result<Summary> {
        let (customer, range) = (&q.customer, q.range);
        let detailed = q.daily.then_some(q.zone);
        let (services, catalog) = self.services(q.service.as_ref()).await?;
        let parted = self.parted_usage(customer, range, &services).await?;
        let mut lines = Vec::new();
        let exponent = self.prices.exponent();
        let mut total_amount = round_to(Decimal::ZERO, exponent);
        for (s, parts) in services.iter().zip(&parted) {
            // Each part at the price in force over it (docs/pricing.md), as an invoice.
            let mut all: Option<Totals> = None;
            let mut amount = round_to(Decimal::ZERO, exponent);
            for part in parts {
                let agg = part.used.as_ref();
                if let Some(t) = agg {
                    add_to(&mut all, *t)?;
                }
                if let Some(p) = part.price {
                    let metered = self.metered(p, agg, customer, s, part.range).await?;
                    amount = add_money(amount, p.priced(&metered, exponent)?.amount)?;
                }
            }
            total_amount = add_money(total_amount, amount)?;
            // A unit price only where one price covers the whole range.
            let unit_price = match parts.as_slice() {
                [only] => only.price.and_then(|p| p.unit_price()),
                _ => None,
            };
            lines.push(ServiceLine {
                service: s.to_string(),
                unit: catalog.unit(s).unwrap_or_default().to_owned(),
                quantity: all.map_or(Decimal::ZERO, |a| a.quantity),
                events: all.map_or(0, |a| a.events),
                unit_price,
                amount,
            });
        }
        let days = match detailed {
            None => None,
            Some(zone) => {
                let buckets = zone.buckets(range, Granularity::Day);
                let t = self
                    .store
                    .totals(&buckets, Who::One(customer), &services)
                    .await?;
                let mut days: Vec<DayLine> = t
                    .into_iter()
                    .filter_map(|((label, service), a)| {
                        Some(DayLine {
                            date: zone.date_of(label),
                            service: services.get(service)?.to_string(),
                            quantity: a.quantity,
                            events: a.events,
                        })
                    })
                    .collect();
                days.sort_by(|a, b| (a.date, &a.service).cmp(&(b.date, &b.service)));
                Some(days)
            }
        };
        Ok(Summary {
            customer_id: customer.clone(),
            from: range.from(),
            to: range.to(),
            services: lines,
            total_amount,
            days,
        })
    }

    pub(crate) async fn run_usage(&self, q: &UsageQuery<'_>) -> Result<Aggregation> {
        let (customer, range) = (q.customer.as_ref(), q.range);
        let (granularity, zone) = (q.granularity, q.zone);
        let (services, _) = self.services(q.service.as_ref()).await?;
        let buckets = zone.buckets(range, granularity);
        let who = customer.map_or(Who::All, Who::One);
        let mut t: Vec<((DateTime<Utc>, usize), Totals)> = self
            .store
            .totals(&buckets, who, &services)
            .await?
            .into_iter()
            .collect();
        // Services are in catalog (name) order, so this is (bucket, service) order.
        t.sort_by_key(|(k, _)| *k);
        let customer_id = customer.map(|c| c.to_string());
        let buckets: Vec<Bucket> = t
            .into_iter()
            .filter_map(|((bucket, service), a)| {
                Some(Bucket {
                    bucket,
                    customer_id: customer_id.clone(),
                    service: services.get(service)?.to_string(),
                    events: a.events,
                    quantity: a.quantity,
                    min: a.min,
                    max: a.max,
                })
            })
            .collect();
        Ok(Aggregation {
            period: granularity,
            tz: zone,
            buckets,
        })
    }

    pub(crate) async fn run_stats(&self, q: &StatsQuery<'_>) -> Result<Stats> {
        let (customer, service, days, over, zone) =
            (&q.customer, &q.service, q.days, q.over, q.zone);
        let as_of = q.as_of.unwrap_or_else(Utc::now);
        if !(1..=3660).contains(&days) {
            return Err(invalid("days", &days.to_string(), "must be from 1 to 3660").into());
        }
        let (mut found, _) = self.services(Some(service)).await?;
        let service = found.pop().unwrap_or_else(|| service.clone());
        // Whole days of the zone: [midnight − days, midnight) of as_of's day.
        let today = zone.date_of(as_of);
        let end = zone.start_of_day(today);
        let window = TimeRange::new(
            zone.start_of_day(today - Duration::days(i64::from(days))),
            end,
        )?;
        let values = match over {
            Over::Events => {
                self.store
                    .event_quantities(customer, &service, window)
                    .await?
            }
            Over::Hour | Over::Day => {
                let g = if over == Over::Hour {
                    Granularity::Hour
                } else {
                    Granularity::Day
                };
                let buckets = zone.buckets(window, g);
                let t = self
                    .store
                    .totals(&buckets, Who::One(customer), std::slice::from_ref(&service))
                    .await?;
                let by_label: HashMap<DateTime<Utc>, Decimal> = t
                    .into_iter()
                    .map(|((label, _), a)| (label, a.quantity))
                    .collect();
                buckets
                    .iter()
                    .map(|(label, _)| by_label.get(label).copied().unwrap_or_default())
                    .collect()
            }
        };
        stats_of(values, customer, &service, over, window)
    }

    pub(crate) async fn run_trends(&self, q: &TrendsQuery<'_>) -> Result<Vec<TrendDay>> {
        let (customer, service, days, zone) = (&q.customer, q.service.as_ref(), q.days, q.zone);
        let as_of = q.as_of.unwrap_or_else(Utc::now);
        if !(1..=3660).contains(&days) {
            return Err(invalid("days", &days.to_string(), "must be from 1 to 3660").into());
        }
        let (services, _) = self.services(service).await?;
        let today = zone.date_of(as_of);
        let dates: Vec<NaiveDate> = (0..days)
            .rev()
            .map(|i| today - Duration::days(i64::from(i)))
            .collect();
        let ranges: Vec<(DateTime<Utc>, TimeRange)> = dates
            .iter()
            .map(|d| {
                let lo = zone.start_of_day(*d);
                let hi = zone.start_of_day(*d + Duration::days(1));
                TimeRange::new(lo, hi).map(|r| (lo, r))
            })
            .collect::<Result<_, _>>()?;
        let t = self
            .store
            .totals(&ranges, Who::One(customer), &services)
            .await?;
        // With a filter, that service even without usage; otherwise the services used.
        let used: BTreeSet<usize> = match service {
            Some(_) => BTreeSet::from([0]),
            None => t.keys().map(|(_, s)| *s).collect(),
        };
        let mut out = Vec::new();
        for s in used {
            let mut previous: Option<Decimal> = None;
            for (label, _) in &ranges {
                let total = t.get(&(*label, s)).map_or(Decimal::ZERO, |a| a.quantity);
                let change_pct = previous.filter(|p| !p.is_zero()).map(|p| {
                    ((total - p) / p * Decimal::ONE_HUNDRED)
                        .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
                });
                out.push(TrendDay {
                    date: zone.date_of(*label),
                    service: services.get(s).map(ToString::to_string).unwrap_or_default(),
                    quantity: total,
                    previous,
                    change_pct,
                    partial: zone.date_of(*label) == today,
                });
                previous = Some(total);
            }
        }
        Ok(out)
    }

    pub(crate) async fn run_peaks(&self, q: &PeaksQuery<'_>) -> Result<Vec<Peak>> {
        let (customer, service, by, limit, zone) = (&q.customer, &q.service, q.by, q.limit, q.zone);
        let peak = |bucket, quantity, events| Peak {
            bucket,
            service: service.to_string(),
            quantity,
            events,
        };
        if zone == Zone::UTC {
            // UTC buckets are the rollups' own rows: the database sorts and cuts them.
            let top = self.store.top_buckets(customer, service, by, limit).await?;
            return Ok(top
                .into_iter()
                .map(|b| peak(b.bucket, b.quantity, b.events))
                .collect());
        }
        // Another zone's buckets cut UTC days (and some UTC hours): every bucket of the
        // customer's history is totalled exactly, then the largest are kept.
        let Some(used) = self.store.usage_extent(customer, service).await? else {
            return Ok(Vec::new());
        };
        // Buckets are labelled by their start even where clipped to the extent, and
        // nothing was used outside it.
        let buckets = zone.buckets(used, by);
        let t = self
            .store
            .totals(&buckets, Who::One(customer), std::slice::from_ref(service))
            .await?;
        let mut all: Vec<(DateTime<Utc>, Totals)> =
            t.into_iter().map(|((label, _), t)| (label, t)).collect();
        all.sort_by(|(a, x), (b, y)| y.quantity.cmp(&x.quantity).then(a.cmp(b)));
        let keep = usize::try_from(limit.get()).unwrap_or(usize::MAX);
        Ok(all
            .into_iter()
            .take(keep)
            .map(|(b, t)| peak(b, t.quantity, t.events))
            .collect())
    }

    /// An invoice preview for `period` (normally a calendar month). Where a price
    /// version starts inside the period, the period is priced in parts, each by the
    /// price in force over it on the usage in it, its minimum and maximum prorated
    /// ([`PriceBook::parts`], docs/pricing.md); the lines of such a service carry
    /// their part. Per service (and part): a usage line where used or charging
    /// something without use (a first-tier flat fee, a minimum); a true-up line below
    /// its minimum, a cap line above its maximum; then the meters' lines; an invoice
    /// minimum line where the total is below the book's minimum. Amounts are rounded
    /// to the currency's minor unit ([`PriceBook::exponent`]).
    pub async fn invoice(&self, customer: &CustomerId, period: TimeRange) -> Result<Invoice> {
        let (services, _) = self.services(None).await?;
        let parted = self.parted_usage(customer, period, &services).await?;
        let exponent = self.prices.exponent();
        let money = |d: Decimal| round_to(d, exponent);
        let mut lines = Vec::new();
        for (s, parts) in services.iter().zip(&parted) {
            let split = parts.len() > 1;
            for &Part {
                range: part,
                price,
                used,
            } in parts
            {
                let used = used.as_ref();
                let quantity = used.map_or(Decimal::ZERO, |t| t.quantity);
                let of = LineOf {
                    service: Some(s.to_string()),
                    meter: None,
                    dimensions: BTreeMap::new(),
                    rest: false,
                    part: split.then_some(part),
                };
                let Some(price) = price else {
                    // Used, but without a price: listed, at zero.
                    if used.is_some() {
                        lines.push(of.line(
                            LineKind::Usage,
                            quantity,
                            quantity,
                            money(Decimal::ZERO),
                        ));
                    }
                    continue;
                };
                let metered = self.metered(price, used, customer, s, part).await?;
                let used = used.is_some().then_some(&metered);
                if let Some(charge) = price.charge_part(part, period, used, exponent)? {
                    push_charge(&mut lines, &charge, &of);
                }
            }
        }
        lines.extend(self.meter_lines(customer, period).await?);
        let mut total = money(Decimal::ZERO);
        for l in &lines {
            total = add_money(total, l.amount)?;
        }
        if let Some(up) = self.prices.minimum_top_up(total) {
            let of = LineOf {
                service: None,
                meter: None,
                dimensions: BTreeMap::new(),
                rest: false,
                part: None,
            };
            lines.push(of.line(LineKind::Minimum, Decimal::ZERO, Decimal::ZERO, up));
            total = add_money(total, up)?;
        }
        Ok(Invoice {
            customer_id: customer.clone(),
            period_start: period.from(),
            period_end: period.to(),
            currency: self.prices.currency.clone(),
            lines,
            total_amount: money(total),
        })
    }

    /// The lines of the meters the price book prices ([`tally_core::MeterPrice`]):
    /// per combination, the meter's value over the period for the customer's events
    /// with its values, then the fallback for the events with none of them. A gauge
    /// (`TIME_WEIGHTED`) holds its last value to the period's end, so the preview of a
    /// period not over yet bills it as if nothing changes.
    async fn meter_lines(
        &self,
        customer: &CustomerId,
        period: TimeRange,
    ) -> Result<Vec<InvoiceLine>> {
        let exponent = self.prices.exponent();
        let mut lines = Vec::new();
        for entry in self.prices.meter_parts(period) {
            let mut q = MeterQuery::new(entry.range, period.to()).customer(customer);
            for (k, v) in entry.filter {
                q = q.filter(k, v);
            }
            for combination in &entry.excluded {
                q = q.exclude(combination);
            }
            let answer = self.store.query_meter(entry.meter, &q).await?;
            let used = answer.data.first().map(|row| Metered::new(row.value, 0));
            let Some(charge) =
                entry
                    .price
                    .charge_part(entry.range, period, used.as_ref(), exponent)?
            else {
                continue; // nothing used, nothing charged
            };
            let of = LineOf {
                service: None,
                meter: Some(entry.meter.to_owned()),
                dimensions: entry.filter.clone(),
                rest: entry.filter.is_empty() && !entry.excluded.is_empty(),
                part: entry.split.then_some(entry.range),
            };
            push_charge(&mut lines, &charge, &of);
        }
        Ok(lines)
    }
}

/// What an invoice line is for: a service or a meter's combination, and its part of
/// the period where a price changes inside it.
struct LineOf {
    service: Option<String>,
    meter: Option<String>,
    dimensions: BTreeMap<String, String>,
    rest: bool,
    part: Option<TimeRange>,
}

impl LineOf {
    fn line(
        &self,
        kind: LineKind,
        quantity: Decimal,
        billable_quantity: Decimal,
        amount: Decimal,
    ) -> InvoiceLine {
        InvoiceLine {
            service: self.service.clone(),
            meter: self.meter.clone(),
            dimensions: self.dimensions.clone(),
            rest: self.rest,
            kind,
            from: self.part.map(|p| p.from()),
            to: self.part.map(|p| p.to()),
            quantity,
            billable_quantity,
            amount,
        }
    }
}

/// Adds `t` to a total that may not have started.
fn add_to(total: &mut Option<Totals>, t: Totals) -> Result<()> {
    match total {
        Some(a) => a.merge(t)?,
        None => *total = Some(t),
    }
    Ok(())
}

/// A charge's lines: its usage line, then its true-up and cap lines where it has them.
fn push_charge(lines: &mut Vec<InvoiceLine>, charge: &tally_core::Charge, of: &LineOf) {
    lines.push(of.line(
        LineKind::Usage,
        charge.line.quantity,
        charge.line.billable_quantity,
        charge.line.amount,
    ));
    if let Some(up) = charge.true_up {
        lines.push(of.line(LineKind::TrueUp, Decimal::ZERO, Decimal::ZERO, up));
    }
    if let Some(cap) = charge.cap {
        lines.push(of.line(LineKind::Cap, Decimal::ZERO, Decimal::ZERO, cap));
    }
}

/// A part of a range between two price starts, for one service.
struct Part<'a> {
    range: TimeRange,
    price: Option<&'a tally_core::Price>,
    used: Option<Totals>,
}
