//! Plans, quotas, billing cycles, period usage (`usage.rs`) and the alerts outbox
//! (`outbox.rs`): the SQL of the alerts layer. A period's cut into days, hours and
//! quarters is core's (`TimeRange::utc_split`); levels, caching and delivery are
//! `tally-alerts`'.

use std::{borrow::Cow, collections::BTreeMap};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::{
    AnchorDay, BillingCycle, CustomerId, Level, Measure, MeterSlug, Mode, Plan, PlanName, Quota,
    QuotaLimit, QuotaSource, Service, Thresholds, TimeRange, Zone,
};
use tokio_postgres::Row;

use crate::{Error, Numeric, Result, Store};

mod outbox;
mod usage;

pub use outbox::{Claimed, DeliveryClaim};
pub(crate) use usage::usage_on;

/// What a quota limits, as its key column holds it: a service's name, or `#` and a
/// meter's slug. No service name or event type has a `#`, so the two never meet, and
/// a meter's quotas and alerts keep the tables, keys and Citus layout of a service's.
pub(crate) fn measure_key(m: &Measure) -> Cow<'_, str> {
    match m {
        Measure::Service(s) => Cow::Borrowed(s.as_str()),
        Measure::Meter(slug) => Cow::Owned(meter_key(slug)),
    }
}

/// A meter's key (see [`measure_key`]).
fn meter_key(slug: &MeterSlug) -> String {
    format!("{METER_MARK}{slug}")
}

const METER_MARK: char = '#';

const NO_SUCH_METER: &str = "no such meter (see `tally meter list`)";

/// A quota's key column read back (see [`measure_key`]).
fn stored_measure(key: &str) -> Result<Measure> {
    Ok(match key.strip_prefix(METER_MARK) {
        Some(slug) => Measure::Meter(slug.parse()?),
        None => Measure::Service(key.parse().or_else(|_| Service::custom(key))?),
    })
}

fn numeric_opt(row: &Row, i: usize, ctx: &'static str) -> Result<Option<Decimal>> {
    Ok(row
        .try_get::<_, Option<Numeric>>(i)
        .map_err(Error::db(ctx))?
        .map(|n| n.0))
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    i: usize,
    ctx: &'static str,
) -> Result<T> {
    row.try_get(i).map_err(Error::db(ctx))
}

fn limit_of(v: Option<Decimal>) -> QuotaLimit {
    v.map_or(QuotaLimit::Unlimited, QuotaLimit::Limited)
}

fn thresholds_of(row: &Row, first: usize, ctx: &'static str) -> Result<Option<Thresholds>> {
    match (
        numeric_opt(row, first, ctx)?,
        numeric_opt(row, first + 1, ctx)?,
        numeric_opt(row, first + 2, ctx)?,
    ) {
        (Some(w), Some(c), Some(e)) => Ok(Some(Thresholds::new(w, c, e)?)),
        _ => Ok(None),
    }
}

/// Which alerts [`Store::alerts`] returns.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    /// Fired at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Of this customer.
    pub customer: Option<CustomerId>,
    /// Of this service or meter.
    pub measure: Option<Measure>,
    /// Of this level.
    pub level: Option<Level>,
}

/// Levels one evaluation found reached, to record (see [`Store::record_alerts`]).
#[derive(Debug, Clone)]
pub struct Reached<'a> {
    /// The customer.
    pub customer: &'a CustomerId,
    /// The service or meter.
    pub measure: &'a Measure,
    /// The billing period.
    pub period: TimeRange,
    /// Usage of the period.
    pub usage: Decimal,
    /// The limit.
    pub limit: Decimal,
    /// Every level reached, lowest first.
    pub levels: &'a [Level],
}

const QUOTA_COLUMNS: &str =
    "k.customer_id, k.service, k.quota_limit, k.mode, k.from_plan, c.plan, c.anchor_day, c.zone,
     p.warning_pct, p.critical_pct, p.exceeded_pct";

fn quota_of(row: &Row) -> Result<Quota> {
    const CTX: &str = "reading quotas";
    let customer: &str = get(row, 0, CTX)?;
    let plan: Option<&str> = get(row, 5, CTX)?;
    let from_plan: bool = get(row, 4, CTX)?;
    let anchor: Option<i16> = get(row, 6, CTX)?;
    let zone: Option<&str> = get(row, 7, CTX)?;
    Ok(Quota {
        customer_id: CustomerId::new(customer)?,
        measure: stored_measure(get(row, 1, CTX)?)?,
        limit: limit_of(numeric_opt(row, 2, CTX)?),
        mode: get::<&str>(row, 3, CTX)?.parse()?,
        source: match (from_plan, plan) {
            (true, Some(p)) => QuotaSource::Plan(PlanName::new(p)?),
            _ => QuotaSource::Customer,
        },
        cycle: BillingCycle {
            anchor: anchor.map_or(Ok(AnchorDay::FIRST), |a| AnchorDay::new(a.into()))?,
            zone: zone.map_or(Ok(Zone::UTC), str::parse::<Zone>)?,
        },
        thresholds: thresholds_of(row, 8, CTX)?,
    })
}
impl Store {
    /// Creates or replaces `plan`: its mode, thresholds and exactly its limits. Every
    /// service must be known (a built-in or a defined custom service), every meter
    /// defined.
    pub async fn set_plan(&self, plan: &Plan) -> Result<()> {
        let catalog = self.catalog().await?;
        for service in plan.limits.keys() {
            catalog.service(service)?;
        }
        for meter in plan.meters.keys() {
            match self.meter(meter.as_str()).await {
                Err(e) if e.kind() == crate::ErrorKind::NotFound => {
                    return Err(Error::invalid("meter", meter.as_str(), NO_SUCH_METER));
                }
                other => drop(other?),
            }
        }
        let mut client = self.client("saving a plan").await?;
        let tx = client
            .transaction()
            .await
            .map_err(Error::db("saving a plan"))?;
        let pct = |l: Level| plan.thresholds.map(|t| t.percent(l));
        tx.execute(
            "INSERT INTO tally_plans (plan, mode, warning_pct, critical_pct, exceeded_pct)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (plan) DO UPDATE SET mode = excluded.mode, warning_pct = excluded.warning_pct,
                 critical_pct = excluded.critical_pct, exceeded_pct = excluded.exceeded_pct",
            &[
                &plan.name.as_str(),
                &plan.mode.as_str(),
                &pct(Level::Warning),
                &pct(Level::Critical),
                &pct(Level::Exceeded),
            ],
        )
        .await
        .map_err(Error::db("saving a plan"))?;
        // Services by name (as the catalog checked them), meters by key.
        let services: Vec<Cow<'_, str>> = plan
            .limits
            .keys()
            .map(|s| Cow::Borrowed(s.as_str()))
            .chain(plan.meters.keys().map(|m| Cow::Owned(meter_key(m))))
            .collect();
        let limits: Vec<Option<Decimal>> = plan
            .limits
            .values()
            .chain(plan.meters.values())
            .map(|l| l.value())
            .collect();
        tx.execute(
            "DELETE FROM tally_plan_limits WHERE plan = $1",
            &[&plan.name.as_str()],
        )
        .await
        .map_err(Error::db("saving a plan's limits"))?;
        tx.execute(
            "INSERT INTO tally_plan_limits (plan, service, quota_limit)
             SELECT $1, s, l FROM unnest($2::text[], $3::numeric[]) AS u(s, l)",
            &[&plan.name.as_str(), &services, &limits],
        )
        .await
        .map_err(Error::db("saving a plan's limits"))?;
        tx.commit().await.map_err(Error::db("saving a plan"))
    }

    /// Every plan, by name.
    pub async fn plans(&self) -> Result<Vec<Plan>> {
        const CTX: &str = "reading plans";
        let client = self.client(CTX).await?;
        let rows = client
            .query(
                "SELECT p.plan, p.mode, p.warning_pct, p.critical_pct, p.exceeded_pct, l.service, l.quota_limit
                 FROM tally_plans p LEFT JOIN tally_plan_limits l ON l.plan = p.plan
                 ORDER BY p.plan, l.service",
                &[],
            )
            .await
            .map_err(Error::db(CTX))?;
        let mut plans: BTreeMap<String, Plan> = BTreeMap::new();
        for row in &rows {
            let name: &str = get(row, 0, CTX)?;
            let plan = match plans.get_mut(name) {
                Some(p) => p,
                None => plans.entry(name.to_owned()).or_insert(Plan {
                    thresholds: thresholds_of(row, 2, CTX)?,
                    ..Plan::new(PlanName::new(name)?, get::<&str>(row, 1, CTX)?.parse()?)
                }),
            };
            if let Some(key) = get::<Option<&str>>(row, 5, CTX)? {
                let limit = limit_of(numeric_opt(row, 6, CTX)?);
                match stored_measure(key)? {
                    Measure::Service(s) => {
                        plan.limits.insert(s.as_str().to_owned(), limit);
                    }
                    Measure::Meter(m) => {
                        plan.meters.insert(m, limit);
                    }
                }
            }
        }
        Ok(plans.into_values().collect())
    }

    /// Puts `customer` on `plan` (which must exist); `cycle`, when given, sets when
    /// their periods start (otherwise what was set before, or the 1st, UTC).
    pub async fn assign_plan(
        &self,
        customer: &CustomerId,
        plan: &PlanName,
        cycle: Option<BillingCycle>,
    ) -> Result<()> {
        let client = self.client("assigning a plan").await?;
        // VALUES, not a SELECT from tally_plans: the foreign key says whether the plan
        // exists, and Citus cannot push an INSERT … SELECT with parameters down to its
        // workers.
        let inserted = client
            .execute(
                "INSERT INTO tally_customers (customer_id, plan, anchor_day, zone)
                 VALUES ($1, $2, coalesce($3::int2, 1), coalesce($4::text, 'UTC'))
                 ON CONFLICT (customer_id) DO UPDATE SET plan = excluded.plan,
                     anchor_day = coalesce($3::int2, tally_customers.anchor_day),
                     zone = coalesce($4::text, tally_customers.zone)",
                &[
                    &customer.as_str(),
                    &plan.as_str(),
                    &cycle.map(|c| i16::from(c.anchor.get())),
                    &cycle.map(|c| c.zone.name()),
                ],
            )
            .await;
        match inserted {
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) => {
                Err(Error::invalid(
                    "plan",
                    plan.as_str(),
                    "no such plan (see `tally plan list`)",
                ))
            }
            Err(e) => Err(Error::db("assigning a plan")(e)),
            Ok(_) => Ok(()),
        }
    }

    /// Sets when `customer`'s billing periods start.
    pub async fn set_billing_cycle(
        &self,
        customer: &CustomerId,
        cycle: BillingCycle,
    ) -> Result<()> {
        let client = self.client("setting a billing cycle").await?;
        client
            .execute(
                "INSERT INTO tally_customers (customer_id, anchor_day, zone) VALUES ($1, $2, $3)
                 ON CONFLICT (customer_id) DO UPDATE SET anchor_day = excluded.anchor_day, zone = excluded.zone",
                &[
                    &customer.as_str(),
                    &i16::from(cycle.anchor.get()),
                    &cycle.zone.name(),
                ],
            )
            .await
            .map_err(Error::db("setting a billing cycle"))?;
        Ok(())
    }

    /// When `customer`'s billing periods start: as set, or the default (the 1st, UTC).
    pub async fn billing_cycle(&self, customer: &CustomerId) -> Result<BillingCycle> {
        const CTX: &str = "reading a billing cycle";
        let client = self.client(CTX).await?;
        let row = client
            .query_opt(
                "SELECT anchor_day, zone FROM tally_customers WHERE customer_id = $1",
                &[&customer.as_str()],
            )
            .await
            .map_err(Error::db(CTX))?;
        let Some(row) = row else {
            return Ok(BillingCycle::default());
        };
        let anchor: i16 = get(&row, 0, CTX)?;
        let zone: &str = get(&row, 1, CTX)?;
        Ok(BillingCycle {
            anchor: AnchorDay::new(i64::from(anchor))?,
            zone: zone.parse()?,
        })
    }

    /// Sets `customer`'s own quota for a service or meter (beats their plan's). The
    /// service must be known, the meter defined.
    pub async fn set_quota(
        &self,
        customer: &CustomerId,
        measure: &Measure,
        limit: QuotaLimit,
        mode: Mode,
    ) -> Result<()> {
        let client = self.client("setting a quota").await?;
        // The service's or meter's row is read in the statement, so one deleted meanwhile
        // sets nothing.
        let (exists, field, what) = match measure {
            Measure::Service(s) => (
                "SELECT 1 FROM tally_meters WHERE service = $5",
                "service",
                s.as_str(),
            ),
            Measure::Meter(m) => (
                "SELECT 1 FROM tally_meter_defs WHERE slug = $5 AND deleted_at IS NULL",
                "meter",
                m.as_str(),
            ),
        };
        let n = client
            .execute(
                &format!(
                    "INSERT INTO tally_quotas (customer_id, service, quota_limit, mode)
                     SELECT $1, $2, $3, $4 WHERE EXISTS ({exists})
                     ON CONFLICT (customer_id, service) DO UPDATE SET quota_limit = excluded.quota_limit, mode = excluded.mode"
                ),
                &[
                    &customer.as_str(),
                    &measure_key(measure).as_ref(),
                    &limit.value(),
                    &mode.as_str(),
                    &what,
                ],
            )
            .await
            .map_err(Error::db("setting a quota"))?;
        if n == 0 {
            return Err(Error::invalid(
                field,
                what,
                match measure {
                    Measure::Service(_) => "unknown service; define the meter first",
                    Measure::Meter(_) => NO_SUCH_METER,
                },
            ));
        }
        Ok(())
    }

    /// Removes `customer`'s own quota for a service or meter (their plan's applies
    /// again). Returns whether there was one.
    pub async fn remove_quota(&self, customer: &CustomerId, measure: &Measure) -> Result<bool> {
        let client = self.client("removing a quota").await?;
        let n = client
            .execute(
                "DELETE FROM tally_quotas WHERE customer_id = $1 AND service = $2",
                &[&customer.as_str(), &measure_key(measure).as_ref()],
            )
            .await
            .map_err(Error::db("removing a quota"))?;
        Ok(n > 0)
    }

    /// The quotas in force, per customer and service (a customer's own beats the
    /// plan's), for one customer or all, ordered by customer and service.
    pub async fn quotas(&self, customer: Option<&CustomerId>) -> Result<Vec<Quota>> {
        let client = self.client("reading quotas").await?;
        let sql = format!(
            "SELECT {QUOTA_COLUMNS} FROM (
                 SELECT q.customer_id, q.service, q.quota_limit, q.mode, false AS from_plan FROM tally_quotas q
                 UNION ALL
                 SELECT c.customer_id, l.service, l.quota_limit, p.mode, true
                 FROM tally_customers c JOIN tally_plans p ON p.plan = c.plan JOIN tally_plan_limits l ON l.plan = c.plan
                 WHERE NOT EXISTS (SELECT 1 FROM tally_quotas q WHERE q.customer_id = c.customer_id AND q.service = l.service)
             ) k
             LEFT JOIN tally_customers c ON c.customer_id = k.customer_id
             LEFT JOIN tally_plans p ON p.plan = c.plan
             WHERE $1::text IS NULL OR k.customer_id = $1
             ORDER BY k.customer_id, k.service"
        );
        let rows = client
            .query(&sql, &[&customer.map(CustomerId::as_str)])
            .await
            .map_err(Error::db("reading quotas"))?;
        rows.iter().map(quota_of).collect()
    }

    /// The quota in force for `customer` and a service or meter, if any: one indexed
    /// lookup (the hot path of a quota check).
    pub async fn quota(&self, customer: &CustomerId, measure: &Measure) -> Result<Option<Quota>> {
        let key = [(customer.clone(), measure.clone())];
        Ok(self.quotas_for(&key).await?.into_iter().next())
    }

    /// The quotas in force for each of `keys` that has one, in one statement (what an
    /// evaluation after a commit reads for the keys the batch touched).
    pub async fn quotas_for(&self, keys: &[(CustomerId, Measure)]) -> Result<Vec<Quota>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let customers: Vec<&str> = keys.iter().map(|(c, _)| c.as_str()).collect();
        let services: Vec<Cow<'_, str>> = keys.iter().map(|(_, m)| measure_key(m)).collect();
        let client = self.client("reading quotas").await?;
        let sql = format!(
            "SELECT {QUOTA_COLUMNS}
             FROM unnest($1::text[], $2::text[]) AS me(customer_id, service)
             LEFT JOIN tally_customers c ON c.customer_id = me.customer_id
             LEFT JOIN tally_plans p ON p.plan = c.plan
             LEFT JOIN tally_quotas q ON q.customer_id = me.customer_id AND q.service = me.service
             LEFT JOIN tally_plan_limits l ON l.plan = c.plan AND l.service = me.service
             -- A customer's own quota beats the plan's (plain joins, no LIMIT-ed
             -- subquery: the same statement runs on Citus).
             CROSS JOIN LATERAL (
                 SELECT me.customer_id, me.service,
                        CASE WHEN q.customer_id IS NULL THEN l.quota_limit ELSE q.quota_limit END AS quota_limit,
                        CASE WHEN q.customer_id IS NULL THEN p.mode ELSE q.mode END AS mode,
                        q.customer_id IS NULL AS from_plan
             ) k
             WHERE q.customer_id IS NOT NULL OR l.plan IS NOT NULL"
        );
        let stmt = client
            .prepare_cached(&sql)
            .await
            .map_err(Error::db("preparing a quota lookup"))?;
        let rows = client
            .query(&stmt, &[&customers, &services])
            .await
            .map_err(Error::db("reading quotas"))?;
        rows.iter().map(quota_of).collect()
    }
}
