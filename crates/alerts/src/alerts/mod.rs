//! Quota checks, alert evaluation and delivery.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock},
    time::Duration,
};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::{
    Alert, BillingCycle, CustomerId, Decision, Measure, Mode, Plan, PlanName, Quantity, Quota,
    QuotaLimit, Service, Thresholds, TimeRange, UsageEvent,
};
use tally_store::{LocalMark, Reached, Result, Store, WriteOutcome};
use tokio::{sync::Notify, time::Instant};

use crate::sink::Sink;

mod delivery;

pub use delivery::DeliveryReport;
use delivery::{Backoff, Retried, background};

/// What [`Alerts::record_within_quota`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Admission {
    /// The quota's answer for the event, with the usage it was decided on.
    pub decision: Decision,
    /// What the write did; `None` when the decision was `Block` (nothing written).
    pub written: Option<WriteOutcome>,
}

/// How alerts are evaluated and delivered.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    thresholds: Thresholds,
    cache_ttl: Duration,
    retry_initial: Duration,
    retry_max: Duration,
    delivery_timeout: Duration,
}

impl Default for AlertConfig {
    /// Levels at 75, 90 and 100 %; quota reads cached for 1 s; a failing sink retried
    /// after 100 ms, doubling up to 60 s; a sink that takes over 30 s has failed.
    fn default() -> Self {
        AlertConfig {
            thresholds: Thresholds::default(),
            cache_ttl: Duration::from_secs(1),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(60),
            delivery_timeout: Duration::from_secs(30),
        }
    }
}

impl AlertConfig {
    /// The defaults with thresholds from `USAGE_ALERT_WARNING`, `USAGE_ALERT_CRITICAL`
    /// and `USAGE_ALERT_EXCEEDED` (percent) when set; a bad value is an error naming
    /// the variable.
    pub fn from_env() -> Result<AlertConfig> {
        AlertConfig::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`AlertConfig::from_env`], reading the variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<AlertConfig> {
        Ok(AlertConfig {
            thresholds: Thresholds::from_lookup(lookup)?,
            ..AlertConfig::default()
        })
    }

    /// The installation's thresholds (a plan may have its own).
    pub fn thresholds(mut self, t: Thresholds) -> Self {
        self.thresholds = t;
        self
    }

    /// How long a quota check reuses what it read from the database for a customer
    /// and service (this process's own writes are always added on top). Zero reads
    /// every time.
    pub fn cache_ttl(mut self, d: Duration) -> Self {
        self.cache_ttl = d;
        self
    }

    /// How long a sink may take with one alert before the attempt counts as failed
    /// (and is retried later).
    pub fn delivery_timeout(mut self, d: Duration) -> Self {
        self.delivery_timeout = d.max(Duration::from_millis(1));
        self
    }

    /// First and longest wait before a failing sink is tried again.
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_initial = initial.max(Duration::from_millis(1));
        self.retry_max = max.max(self.retry_initial);
        self
    }
}

type Key = (CustomerId, Measure);

// Past this many cached keys, expired entries are dropped before adding one.
const CACHE_KEYS: usize = 100_000;

/// What a quota check read for one key.
struct Cached {
    quota: Option<Quota>,
    // For a limited quota: its period, the usage read and (for a service) the mark
    // taken before it.
    period: Option<TimeRange>,
    usage: Decimal,
    mark: Option<LocalMark>,
    read_at: Instant,
}

struct Inner {
    store: Store,
    config: AlertConfig,
    cache: Mutex<HashMap<Key, Cached>>,
    sinks: RwLock<Vec<Arc<dyn Sink>>>,
    // Customers and services touched by commits, waiting for evaluation.
    dirty: Mutex<HashSet<(CustomerId, Service)>>,
    wake: Arc<Notify>,
    watching: Mutex<bool>,
    // One evaluation-and-delivery pass at a time in this process.
    pass: tokio::sync::Mutex<()>,
    backoff: Mutex<HashMap<Retried, Backoff>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Quotas and alerts on a [`Store`]: quota checks, evaluation after commits and on
/// demand, delivery to [`Sink`]s. Cheap to clone.
#[derive(Clone)]
pub struct Alerts {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts")
            .field("config", &self.inner.config)
            .field("sinks", &self.sink_names())
            .finish()
    }
}

impl Alerts {
    /// Quotas and alerts on `store`. Nothing is evaluated in the background until
    /// [`Alerts::watch`]. For the facade: an application gets its `Alerts` from
    /// `Tally::alerts()` (configured by `TallyBuilder::alert_config` and `sink`), so this
    /// constructor is hidden from the facade's documentation.
    #[doc(hidden)]
    pub fn new(store: Store, config: AlertConfig) -> Alerts {
        Alerts {
            inner: Arc::new(Inner {
                store,
                config,
                cache: Mutex::default(),
                sinks: RwLock::default(),
                dirty: Mutex::default(),
                wake: Arc::new(Notify::new()),
                watching: Mutex::new(false),
                pass: tokio::sync::Mutex::new(()),
                backoff: Mutex::default(),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AlertConfig {
        &self.inner.config
    }

    /// Adds a sink; alerts not yet delivered to a sink of its name (including ones
    /// fired before, by any process) will be.
    pub fn add_sink(&self, sink: Arc<dyn Sink>) {
        self.inner
            .sinks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sink);
        self.inner.wake.notify_one();
    }

    fn sink_names(&self) -> Vec<String> {
        self.sinks().iter().map(|s| s.name().to_owned()).collect()
    }

    fn sinks(&self) -> Vec<Arc<dyn Sink>> {
        self.inner
            .sinks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Evaluates alerts after every batch the store commits, for the customers and
    /// services it touched, and delivers them, on a background task of the current
    /// tokio runtime. Idempotent. The task ends when every handle is dropped.
    pub fn watch(&self) {
        let mut watching = lock(&self.inner.watching);
        if *watching {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("alerts are not watched: no tokio runtime");
            return;
        };
        *watching = true;
        let weak = Arc::downgrade(&self.inner);
        let hook_weak = weak.clone();
        self.inner.store.on_commit(Arc::new(move |keys| {
            if let Some(inner) = hook_weak.upgrade() {
                lock(&inner.dirty).extend(keys.iter().cloned());
                inner.wake.notify_one();
            }
        }));
        rt.spawn(background(weak, self.inner.wake.clone()));
    }

    /// Evaluates what commits have touched since the last pass and delivers what is
    /// pending, now. Returns the alerts fired. Call it before exiting (or in tests) to
    /// be sure the background task has nothing left.
    pub async fn settle(&self) -> Result<Vec<Alert>> {
        let _pass = self.inner.pass.lock().await;
        let keys: Vec<_> = lock(&self.inner.dirty).drain().collect();
        let fired = match self.evaluate(&keys, Utc::now()).await {
            Ok(f) => f,
            Err(e) => {
                lock(&self.inner.dirty).extend(keys);
                return Err(e);
            }
        };
        self.deliver_pass(true).await?;
        Ok(fired)
    }

    // ----- plans and quotas -----

    fn forget(&self, customer: Option<&CustomerId>) {
        let mut cache = lock(&self.inner.cache);
        match customer {
            Some(c) => cache.retain(|(k, _), _| k != c),
            None => cache.clear(),
        }
    }

    /// Creates or replaces a plan.
    pub async fn set_plan(&self, plan: &Plan) -> Result<()> {
        self.inner.store.set_plan(plan).await?;
        self.forget(None);
        Ok(())
    }

    /// Every plan.
    pub async fn plans(&self) -> Result<Vec<Plan>> {
        self.inner.store.plans().await
    }

    /// Puts `customer` on `plan`, optionally with the day and zone their periods
    /// start.
    pub async fn assign_plan(
        &self,
        customer: &CustomerId,
        plan: &PlanName,
        cycle: Option<BillingCycle>,
    ) -> Result<()> {
        self.inner.store.assign_plan(customer, plan, cycle).await?;
        self.forget(Some(customer));
        Ok(())
    }

    /// Sets when `customer`'s billing periods start.
    pub async fn set_billing_cycle(
        &self,
        customer: &CustomerId,
        cycle: BillingCycle,
    ) -> Result<()> {
        self.inner.store.set_billing_cycle(customer, cycle).await?;
        self.forget(Some(customer));
        Ok(())
    }

    /// Sets `customer`'s own quota for a service or a meter (beats the plan's): a
    /// `&Service`, or a `&MeterSlug` to limit the meter's value over each period (a
    /// unique count, a peak, …).
    pub async fn set_quota(
        &self,
        customer: &CustomerId,
        on: impl Into<Measure>,
        limit: QuotaLimit,
        mode: Mode,
    ) -> Result<()> {
        self.inner
            .store
            .set_quota(customer, &on.into(), limit, mode)
            .await?;
        self.forget(Some(customer));
        Ok(())
    }

    /// Removes `customer`'s own quota for a service or meter; returns whether there
    /// was one.
    pub async fn remove_quota(
        &self,
        customer: &CustomerId,
        on: impl Into<Measure>,
    ) -> Result<bool> {
        let removed = self.inner.store.remove_quota(customer, &on.into()).await?;
        self.forget(Some(customer));
        Ok(removed)
    }

    /// The quotas in force, for one customer or all.
    pub async fn quotas(&self, customer: Option<&CustomerId>) -> Result<Vec<Quota>> {
        self.inner.store.quotas(customer).await
    }

    /// The usage of each quota's current period (at `now`), from the database: a
    /// service's total, a meter's value (`None` for a meter not ready: backfilling,
    /// failed or deleted; its quota is not evaluated meanwhile).
    pub async fn period_usage(
        &self,
        quotas: &[Quota],
        now: DateTime<Utc>,
    ) -> Result<Vec<(TimeRange, Option<Decimal>)>> {
        let mut keys = Vec::with_capacity(quotas.len());
        for q in quotas {
            keys.push((
                q.customer_id.clone(),
                q.measure.clone(),
                q.cycle.period_at(now)?,
            ));
        }
        let usage = self.inner.store.usage(&keys, now).await?;
        Ok(keys.into_iter().map(|k| k.2).zip(usage).collect())
    }

    /// `customer`'s committed usage of `service` over `range`, exactly, the way quota
    /// periods are read.
    pub async fn usage(
        &self,
        customer: &CustomerId,
        service: &Service,
        range: TimeRange,
    ) -> Result<Decimal> {
        let keys = [(customer.clone(), service.clone(), range)];
        let usage = self.inner.store.period_usage(&keys).await?;
        Ok(usage.first().copied().unwrap_or_default())
    }

    // ----- checks -----

    fn thresholds(&self, quota: &Quota) -> Thresholds {
        quota.thresholds.unwrap_or(self.inner.config.thresholds)
    }

    /// May `customer` use `requested` more of a service (or add `requested` to a
    /// meter's value) now? `Allow`, `Warn` (usage with the request reaches an alert
    /// level) or `Block` (a hard quota the request would pass). Usage is the current
    /// period's from the database, plus, for a service, everything this process has
    /// handed to its write path and the database may not show yet.
    ///
    /// The database read is reused for [`AlertConfig::cache_ttl`]; this process's own
    /// writes of a service are always counted, so within one process a hard limit of a
    /// service holds exactly. A meter's value is what was committed when it was read
    /// (what a batch adds to a unique count or a peak is not known before it is
    /// written). What other processes committed since the read is seen at the next
    /// read, and what they have not committed yet (up to their batch timeout) not at
    /// all: where a hard limit must hold across processes, use
    /// [`Alerts::record_within_quota`].
    pub async fn check_quota(
        &self,
        customer: &CustomerId,
        on: impl Into<Measure>,
        requested: Quantity,
    ) -> Result<Decision> {
        let now = Utc::now();
        let key = (customer.clone(), on.into());
        let local_since = |mark: Option<LocalMark>| match (&key.1, mark) {
            (Measure::Service(s), Some(mark)) => self.inner.store.local_since(customer, s, mark),
            (Measure::Service(_), None) => None,
            (Measure::Meter(_), _) => Some(Decimal::ZERO),
        };
        let cached = {
            let cache = lock(&self.inner.cache);
            cache.get(&key).and_then(|c| {
                let fresh = c.read_at.elapsed() < self.inner.config.cache_ttl
                    && c.period.is_none_or(|p| p.contains(now));
                fresh.then(|| (c.quota.clone(), c.usage, c.mark))
            })
        };
        if let Some((quota, usage, mark)) = cached {
            let Some(quota) = quota else {
                return Ok(Decision::Allow);
            };
            if quota.limit == QuotaLimit::Unlimited {
                return Ok(Decision::Allow);
            }
            if let Some(local) = local_since(mark) {
                return Ok(self.decide(&quota, usage, local, requested.value()));
            }
        }
        let quota = self.inner.store.quota(customer, &key.1).await?;
        // Mark first: anything committed after it is counted again, never lost.
        let mark = key
            .1
            .service()
            .map(|s| self.inner.store.local_mark(customer, s));
        let (period, usage, local) = match &quota {
            Some(q) if q.limit != QuotaLimit::Unlimited => {
                let period = q.cycle.period_at(now)?;
                let usage = self
                    .period_usage(std::slice::from_ref(q), now)
                    .await?
                    .first()
                    .and_then(|(_, u)| *u)
                    .unwrap_or_default();
                // The mark is void only if the ledger was pruned meanwhile; then what
                // is pending now is all that can be missing.
                (Some(period), usage, local_since(mark).unwrap_or_default())
            }
            _ => (None, Decimal::ZERO, Decimal::ZERO),
        };
        let decision = match &quota {
            Some(q) => self.decide(q, usage, local, requested.value()),
            None => Decision::Allow,
        };
        if !self.inner.config.cache_ttl.is_zero() {
            let mut cache = lock(&self.inner.cache);
            if cache.len() >= CACHE_KEYS {
                let ttl = self.inner.config.cache_ttl;
                cache.retain(|_, c| c.read_at.elapsed() < ttl);
            }
            cache.insert(
                key,
                Cached {
                    quota,
                    period,
                    usage,
                    mark,
                    read_at: Instant::now(),
                },
            );
        }
        Ok(decision)
    }

    /// Records `event` only if every quota it counts against lets it through, exactly,
    /// across processes: its customer's quota of its service, and of each meter of its
    /// type (e.g. 1,000 unique users a month, hard). The check and the write are one
    /// transaction that holds a lock of each of those keys and reads their committed
    /// usage inside it before and after the write, so two processes cannot both take
    /// the last unit of a hard limit, and a unique count is blocked exactly when the
    /// event brings a new value past it (a value already counted passes).
    /// `Block`: nothing is written. Otherwise the event is committed when this returns
    /// (durable, as [`tally_store::Store::write`]) and the decision says the highest
    /// level it reached.
    ///
    /// Exact against every write made through this call, and against everything else
    /// once it is committed; a [`tally_store::Recorder`]'s queue (in this process or
    /// another) is not counted until it is committed. One transaction per event, serialised
    /// per customer and key (no cache, no batching): for requests that must not pass a
    /// limit, not for the bulk of ingest. With no quota, or only unlimited ones, the
    /// event is written as by `write`. A meter not ready (backfilling or failed) does
    /// not hold the event back.
    pub async fn record_within_quota(&self, event: &UsageEvent) -> Result<Admission> {
        let customer = &event.customer;
        let keys = self
            .measured(&[(customer.clone(), event.service.clone())])
            .await?;
        let quotas: Vec<Quota> = self
            .inner
            .store
            .quotas_for(&keys)
            .await?
            .into_iter()
            .filter(|q| q.limit != QuotaLimit::Unlimited)
            .collect();
        let events = std::slice::from_ref(event);
        if quotas.is_empty() {
            let written = self.inner.store.write(events).await?;
            return Ok(Admission {
                decision: Decision::Allow,
                written: Some(written),
            });
        }
        let now = Utc::now();
        let mut keys = Vec::with_capacity(quotas.len());
        for q in &quotas {
            keys.push((customer.clone(), q.measure.clone(), q.cycle.period_at(now)?));
        }
        let mut decision = Decision::Allow;
        let written = self
            .inner
            .store
            .write_admitted(events, &keys, |usage| {
                // The database alone: every admitted write before this one committed
                // under the locks. This process's ledger is not added, since admitted
                // writes queued behind a lock would count against this one.
                for (q, u) in quotas.iter().zip(usage) {
                    let Some((before, after)) = *u else {
                        continue;
                    };
                    let d = self.decide(q, before, Decimal::ZERO, after - before);
                    decision = worse(decision, d);
                }
                decision.allowed()
            })
            .await?;
        Ok(Admission { decision, written })
    }

    fn decide(&self, quota: &Quota, db: Decimal, local: Decimal, requested: Decimal) -> Decision {
        let usage = db.checked_add(local).unwrap_or(Decimal::MAX);
        Decision::decide(
            usage,
            requested,
            quota.limit,
            quota.mode,
            &self.thresholds(quota),
        )
    }

    // ----- evaluation -----

    /// Evaluates every quota in force (of `customer`, or everyone's) against the
    /// committed usage of its current period, records the levels reached (each once per
    /// period) and delivers what is pending. Returns the alerts this call fired.
    pub async fn check(&self, customer: Option<&CustomerId>) -> Result<Vec<Alert>> {
        self.check_at(customer, Utc::now()).await
    }

    /// As [`Alerts::check`], for the periods that hold `now` instead of the present
    /// ones: a replay of a past period (a backfill, a test on a clock of its own).
    pub async fn check_at(
        &self,
        customer: Option<&CustomerId>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Alert>> {
        let _pass = self.inner.pass.lock().await;
        let quotas = self.inner.store.quotas(customer).await?;
        let fired = self.evaluate_quotas(quotas, now).await?;
        self.deliver_pass(true).await?;
        Ok(fired)
    }

    /// What writes of these customers and services count against: each service, and
    /// every meter of its type (a service is an event type).
    async fn measured(&self, touched: &[(CustomerId, Service)]) -> Result<Vec<Key>> {
        let mut by_type: HashMap<String, Vec<Measure>> = HashMap::new();
        for m in self.inner.store.meters().await? {
            by_type
                .entry(m.spec.event_type.as_str().to_owned())
                .or_default()
                .push(Measure::Meter(m.spec.slug));
        }
        let mut keys: Vec<Key> = Vec::with_capacity(touched.len());
        for (c, s) in touched {
            keys.push((c.clone(), Measure::from(s)));
            for m in by_type.get(s.as_str()).into_iter().flatten() {
                keys.push((c.clone(), m.clone()));
            }
        }
        Ok(keys)
    }

    async fn evaluate(
        &self,
        touched: &[(CustomerId, Service)],
        now: DateTime<Utc>,
    ) -> Result<Vec<Alert>> {
        if touched.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.measured(touched).await?;
        let mut quotas = Vec::new();
        // Bounded statements however many keys a commit touched.
        for chunk in keys.chunks(1000) {
            quotas.extend(self.inner.store.quotas_for(chunk).await?);
        }
        self.evaluate_quotas(quotas, now).await
    }

    async fn evaluate_quotas(&self, quotas: Vec<Quota>, now: DateTime<Utc>) -> Result<Vec<Alert>> {
        let limited: Vec<Quota> = quotas
            .into_iter()
            .filter(|q| q.limit != QuotaLimit::Unlimited)
            .collect();
        let mut fired = Vec::new();
        // Bounded statements however many customers there are.
        for chunk in limited.chunks(1000) {
            let usage = self.period_usage(chunk, now).await?;
            for (q, (period, usage)) in chunk.iter().zip(usage) {
                let (QuotaLimit::Limited(limit), Some(usage)) = (q.limit, usage) else {
                    continue; // unlimited, or a meter not ready to read
                };
                if usage.is_zero() {
                    continue; // nothing used: no level, even of a zero limit
                }
                let levels = self.thresholds(q).reached(usage, limit);
                let reached = Reached {
                    customer: &q.customer_id,
                    measure: &q.measure,
                    period,
                    usage,
                    limit,
                    levels: &levels,
                };
                let new = self.inner.store.record_alerts(&reached).await?;
                for a in &new {
                    tracing::info!(customer = %a.customer_id, on = %a.measure, level = %a.level,
                        usage = %a.usage, limit = %a.limit, "alert fired");
                }
                fired.extend(new);
            }
        }
        Ok(fired)
    }
}

/// The decision that says more: a block beats a warning, a higher level a lower one.
fn worse(a: Decision, b: Decision) -> Decision {
    let rank = |d: &Decision| match d {
        Decision::Allow => 0,
        Decision::Warn { level, .. } => 1 + *level as u8,
        Decision::Block { .. } => u8::MAX,
    };
    if rank(&b) > rank(&a) { b } else { a }
}
