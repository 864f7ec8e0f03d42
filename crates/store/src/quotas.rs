//! Plans, quotas, billing cycles, period usage and the alerts outbox: the SQL of the
//! alerts layer. The logic (periods, levels, caching, delivery) lives in `tally-alerts`.

use std::{collections::BTreeMap, sync::LazyLock};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::{
    Alert, AnchorDay, BillingCycle, CustomerId, Level, Mode, Plan, PlanName, Quota, QuotaLimit,
    QuotaSource, Service, Thresholds, TimeRange, Zone, percent_of,
};
use tokio_postgres::{Row, types::ToSql};

use crate::{Error, Numeric, Result, Store, rollup};

/// A service name as stored: a built-in or a meter.
fn stored_service(name: &str) -> Result<Service> {
    Ok(name.parse().or_else(|_| Service::custom(name))?)
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
    /// Of this service.
    pub service: Option<Service>,
    /// Of this level.
    pub level: Option<Level>,
}

/// Levels one evaluation found reached, to record (see [`Store::record_alerts`]).
#[derive(Debug, Clone)]
pub struct Reached<'a> {
    /// The customer.
    pub customer: &'a CustomerId,
    /// The service.
    pub service: &'a Service,
    /// The billing period.
    pub period: TimeRange,
    /// Usage of the period.
    pub usage: Decimal,
    /// The limit.
    pub limit: Decimal,
    /// Every level reached, lowest first.
    pub levels: &'a [Level],
}

/// What a piece of a period is read from.
#[derive(Clone, Copy)]
enum Piece {
    /// Whole UTC days: the daily rollup.
    Days,
    /// Whole UTC hours: the hourly rollup.
    Hours,
    /// Quarters `a..b` of one hour: the hourly rollup's partial sums.
    Quarters(i16, i16),
}

/// Pieces of periods as query parameters.
#[derive(Default)]
struct Pieces<'a> {
    idx: Vec<i32>,
    customers: Vec<&'a str>,
    services: Vec<&'a str>,
    kinds: Vec<i16>,
    lo: Vec<DateTime<Utc>>,
    hi: Vec<DateTime<Utc>>,
    qa: Vec<i16>,
    qb: Vec<i16>,
}

impl<'a> Pieces<'a> {
    fn push(
        &mut self,
        i: i32,
        c: &'a CustomerId,
        s: &'a Service,
        piece: Piece,
        lo: DateTime<Utc>,
        hi: DateTime<Utc>,
    ) {
        let (kind, qa, qb) = match piece {
            Piece::Days => (0, 0, 0),
            Piece::Hours => (1, 0, 0),
            Piece::Quarters(a, b) => (2, a, b),
        };
        self.idx.push(i);
        self.customers.push(c.as_str());
        self.services.push(s.as_str());
        self.kinds.push(kind);
        self.lo.push(lo);
        self.hi.push(hi);
        self.qa.push(qa);
        self.qb.push(qb);
    }
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
        service: stored_service(get(row, 1, CTX)?)?,
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

fn alert_of(row: &Row) -> Result<Alert> {
    const CTX: &str = "reading alerts";
    let usage = numeric_opt(row, 4, CTX)?.unwrap_or_default();
    let limit = numeric_opt(row, 5, CTX)?.unwrap_or_default();
    Ok(Alert {
        id: get(row, 0, CTX)?,
        customer_id: CustomerId::new(get::<&str>(row, 1, CTX)?)?,
        service: stored_service(get(row, 2, CTX)?)?,
        level: get::<&str>(row, 3, CTX)?.parse()?,
        usage,
        limit,
        percent: percent_of(usage, limit),
        period_start: get(row, 6, CTX)?,
        period_end: get(row, 7, CTX)?,
        triggered_at: get(row, 8, CTX)?,
        notify: get(row, 9, CTX)?,
    })
}

const ALERT_COLUMNS: &str = "alert_id, customer_id, service, level, usage, quota_limit, period_start, period_end, triggered_at, notify";

impl Store {
    /// Creates or replaces `plan`: its mode, thresholds and exactly its limits. Every
    /// service must be known (a built-in or a defined meter).
    pub async fn set_plan(&self, plan: &Plan) -> Result<()> {
        let catalog = self.catalog().await?;
        for service in plan.limits.keys() {
            catalog.service(service)?;
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
        let services: Vec<&str> = plan.limits.keys().map(String::as_str).collect();
        let limits: Vec<Option<Decimal>> = plan.limits.values().map(|l| l.value()).collect();
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
                    name: PlanName::new(name)?,
                    mode: get::<&str>(row, 1, CTX)?.parse()?,
                    limits: BTreeMap::new(),
                    thresholds: thresholds_of(row, 2, CTX)?,
                }),
            };
            if let Some(service) = get::<Option<&str>>(row, 5, CTX)? {
                plan.limits
                    .insert(service.to_owned(), limit_of(numeric_opt(row, 6, CTX)?));
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

    /// Sets `customer`'s own quota for `service` (beats their plan's). The service must
    /// be known.
    pub async fn set_quota(
        &self,
        customer: &CustomerId,
        service: &Service,
        limit: QuotaLimit,
        mode: Mode,
    ) -> Result<()> {
        let client = self.client("setting a quota").await?;
        let n = client
            .execute(
                "INSERT INTO tally_quotas (customer_id, service, quota_limit, mode)
                 SELECT $1, m.service, $3, $4 FROM tally_meters m WHERE m.service = $2
                 ON CONFLICT (customer_id, service) DO UPDATE SET quota_limit = excluded.quota_limit, mode = excluded.mode",
                &[&customer.as_str(), &service.as_str(), &limit.value(), &mode.as_str()],
            )
            .await
            .map_err(Error::db("setting a quota"))?;
        if n == 0 {
            return Err(Error::invalid(
                "service",
                service.as_str(),
                "unknown service; define the meter first",
            ));
        }
        Ok(())
    }

    /// Removes `customer`'s own quota for `service` (their plan's applies again).
    /// Returns whether there was one.
    pub async fn remove_quota(&self, customer: &CustomerId, service: &Service) -> Result<bool> {
        let client = self.client("removing a quota").await?;
        let n = client
            .execute(
                "DELETE FROM tally_quotas WHERE customer_id = $1 AND service = $2",
                &[&customer.as_str(), &service.as_str()],
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

    /// The quota in force for `customer` and `service`, if any: one indexed lookup
    /// (the hot path of a quota check).
    pub async fn quota(&self, customer: &CustomerId, service: &Service) -> Result<Option<Quota>> {
        let key = [(customer.clone(), service.clone())];
        Ok(self.quotas_for(&key).await?.into_iter().next())
    }

    /// The quotas in force for each of `keys` that has one, in one statement (what an
    /// evaluation after a commit reads for the keys the batch touched).
    pub async fn quotas_for(&self, keys: &[(CustomerId, Service)]) -> Result<Vec<Quota>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let customers: Vec<&str> = keys.iter().map(|(c, _)| c.as_str()).collect();
        let services: Vec<&str> = keys.iter().map(|(_, s)| s.as_str()).collect();
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

    /// The total quantity of each `(customer, service, range)`, exactly, all keys in one
    /// statement by primary key: whole UTC days from the daily rollup, whole UTC hours
    /// from the hourly rollup, and edges on a quarter hour (a period starting at local
    /// midnight in Asia/Kolkata starts at 18:30 UTC) from the hourly rollup's sums of
    /// its first 15, 30 and 45 minutes. Only an edge off the quarter hour (historic
    /// local-mean-time offsets) reads raw events, one scan per edge.
    pub async fn period_usage(
        &self,
        keys: &[(CustomerId, Service, TimeRange)],
    ) -> Result<Vec<Decimal>> {
        let client = self.client("reading period usage").await?;
        period_usage_on(&client, keys).await
    }

    /// Records the levels `reached` for its period, each at most once per customer,
    /// service and period whoever else records at the same time (a unique key decides).
    /// The highest level is marked to be announced. Returns the alerts this call added.
    pub async fn record_alerts(&self, reached: &Reached<'_>) -> Result<Vec<Alert>> {
        let Some(top) = reached.levels.iter().max() else {
            return Ok(Vec::new());
        };
        let levels: Vec<&str> = reached.levels.iter().map(|l| l.as_str()).collect();
        let client = self.client("recording alerts").await?;
        let sql = format!(
            "INSERT INTO usage_alerts (customer_id, service, level, period_start, period_end, usage, quota_limit, notify)
             SELECT $1, $2, l, $3, $4, $5, $6, l = $8 FROM unnest($7::text[]) AS l
             ON CONFLICT (customer_id, service, period_start, level) DO NOTHING
             RETURNING {ALERT_COLUMNS}"
        );
        let rows = client
            .query(
                &sql,
                &[
                    &reached.customer.as_str(),
                    &reached.service.as_str(),
                    &reached.period.from(),
                    &reached.period.to(),
                    &reached.usage,
                    &reached.limit,
                    &levels,
                    &top.as_str(),
                ],
            )
            .await
            .map_err(Error::db("recording alerts"))?;
        let mut out = rows.iter().map(alert_of).collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|a| a.level);
        Ok(out)
    }

    /// The alerts matching `filter`, newest first.
    pub async fn alerts(&self, filter: &AlertFilter) -> Result<Vec<Alert>> {
        let client = self.client("reading alerts").await?;
        let sql = format!(
            "SELECT {ALERT_COLUMNS} FROM usage_alerts
             WHERE ($1::timestamptz IS NULL OR triggered_at >= $1)
               AND ($2::text IS NULL OR customer_id = $2)
               AND ($3::text IS NULL OR service = $3)
               AND ($4::text IS NULL OR level = $4)
             ORDER BY triggered_at DESC, alert_id DESC"
        );
        let rows = client
            .query(
                &sql,
                &[
                    &filter.since,
                    &filter.customer.as_ref().map(CustomerId::as_str),
                    &filter.service.as_ref().map(Service::as_str),
                    &filter.level.map(Level::as_str),
                ],
            )
            .await
            .map_err(Error::db("reading alerts"))?;
        rows.iter().map(alert_of).collect()
    }

    /// Claims the oldest announced alert `sink` has not acknowledged, for delivery.
    /// `None` when there is none, or when another handle (in this process or another)
    /// is delivering to a sink of that name right now: one deliverer per sink at a
    /// time keeps delivery in order and exactly once.
    pub async fn claim_delivery(&self, sink: &str) -> Result<Option<Claimed>> {
        const CTX: &str = "claiming an alert for delivery";
        let client = self.client(CTX).await?;
        let mut claim = DeliveryClaim {
            client: Some(client),
            sink: sink.to_owned(),
            customer_id: String::new(),
            alert_id: 0,
        };
        let c = claim.client()?;
        c.batch_execute("BEGIN").await.map_err(Error::db(CTX))?;
        let locked: bool = c
            .query_one(
                "SELECT pg_try_advisory_xact_lock(hashtext('tally_alert_sink'), hashtext($1))",
                &[&sink],
            )
            .await
            .map_err(Error::db(CTX))?
            .try_get(0)
            .map_err(Error::db(CTX))?;
        if !locked {
            claim.release().await?;
            return Ok(None);
        }
        let sql = format!(
            "SELECT {ALERT_COLUMNS} FROM usage_alerts a
             WHERE a.notify AND NOT EXISTS (
                 SELECT 1 FROM usage_alert_deliveries d
                 WHERE d.sink = $1 AND d.customer_id = a.customer_id AND d.alert_id = a.alert_id)
             ORDER BY a.alert_id LIMIT 1"
        );
        let row = c.query_opt(&sql, &[&sink]).await.map_err(Error::db(CTX))?;
        match row {
            None => {
                claim.release().await?;
                Ok(None)
            }
            Some(row) => {
                let alert = alert_of(&row)?;
                claim.alert_id = alert.id;
                claim.customer_id = alert.customer_id.to_string();
                Ok(Some(claim.with(alert)))
            }
        }
    }
}

/// An alert claimed for one sink (see [`Store::claim_delivery`]): holds a transaction
/// that [`DeliveryClaim::delivered`] commits with the acknowledgement. Dropped without
/// it — the sink failed, the task was cancelled, the process died — the claim lapses
/// and the alert stays pending for that sink.
#[derive(Debug)]
pub struct DeliveryClaim {
    // Taken when finished; still here on drop means "roll back".
    client: Option<deadpool_postgres::Client>,
    sink: String,
    customer_id: String,
    alert_id: i64,
}

/// A [`DeliveryClaim`] and the alert it is for.
#[derive(Debug)]
pub struct Claimed {
    /// The claim.
    pub claim: DeliveryClaim,
    /// The alert to deliver.
    pub alert: Alert,
}

impl DeliveryClaim {
    fn client(&self) -> Result<&deadpool_postgres::Client> {
        self.client.as_ref().ok_or_else(|| {
            Error::internal(
                "using a delivery claim",
                "its connection was already handed back",
            )
        })
    }

    fn with(self, alert: Alert) -> Claimed {
        Claimed { claim: self, alert }
    }

    /// Records that the sink has the alert; it is never handed to that sink again.
    pub async fn delivered(mut self) -> Result<()> {
        const CTX: &str = "acknowledging a delivery";
        let client = self.client.take().ok_or_else(|| {
            Error::internal(
                "using a delivery claim",
                "its connection was already handed back",
            )
        })?;
        client
            .execute(
                "INSERT INTO usage_alert_deliveries (customer_id, alert_id, sink) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&self.customer_id, &self.alert_id, &self.sink],
            )
            .await
            .map_err(Error::db(CTX))?;
        client.batch_execute("COMMIT").await.map_err(Error::db(CTX))
    }

    /// Gives the claim up (the sink failed): the alert stays pending.
    pub async fn release(mut self) -> Result<()> {
        let client = self.client.take().ok_or_else(|| {
            Error::internal(
                "using a delivery claim",
                "its connection was already handed back",
            )
        })?;
        client
            .batch_execute("ROLLBACK")
            .await
            .map_err(Error::db("releasing a delivery claim"))
    }
}

impl Drop for DeliveryClaim {
    fn drop(&mut self) {
        // Not finished: close the connection rather than pool it mid-transaction; the
        // server rolls back and frees the sink's lock.
        if let Some(client) = self.client.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// Period usage from rollups, one row per key: each piece reads one rollup only (the
/// kind tests are one-time filters). Quarter pieces take a part of one hour: its sum up
/// to quarter `b` minus its sum up to quarter `a` (0 = nothing, 4 = the whole hour),
/// from the hourly rollup's quarter detail ([`rollup::QUARTERS`]).
static PERIOD_PIECES_SQL: LazyLock<String> = LazyLock::new(|| {
    let up_to = |q: &str, none: &str| {
        let cases: String = (1..4)
            .filter_map(|n| Some(format!(" WHEN {n} THEN h.{}", rollup::sum_to_quarter(n)?)))
            .collect();
        format!("CASE {q}{cases} ELSE {none} END")
    };
    format!(
        "WITH p AS (
             SELECT * FROM unnest($1::int4[], $2::text[], $3::text[], $4::int2[], $5::timestamptz[],
                                  $6::timestamptz[], $7::int2[], $8::int2[])
                 AS p(i, customer_id, service, kind, lo, hi, qa, qb))
         SELECT x.i, sum(x.q) FROM (
             SELECT p.i, d.quantity AS q FROM p JOIN {daily} d
               ON p.kind = 0 AND d.customer_id = p.customer_id AND d.service = p.service
              AND d.bucket >= p.lo AND d.bucket < p.hi
             UNION ALL
             SELECT p.i, h.quantity FROM p JOIN {hourly} h
               ON p.kind = 1 AND h.customer_id = p.customer_id AND h.service = p.service
              AND h.bucket >= p.lo AND h.bucket < p.hi
             UNION ALL
             SELECT p.i, {b} - {a}
             FROM p JOIN {hourly} h
               ON p.kind = 2 AND h.customer_id = p.customer_id AND h.service = p.service
              AND h.bucket = p.lo
         ) x
         GROUP BY x.i",
        daily = rollup::DAILY.table,
        hourly = rollup::HOURLY.table,
        b = up_to("p.qb", "h.quantity"),
        a = up_to("p.qa", "0"),
    )
});

/// [`Store::period_usage`] on a given connection (the write path's admission reads it
/// inside its own transaction).
pub(crate) async fn period_usage_on(
    client: &deadpool_postgres::Client,
    keys: &[(CustomerId, Service, TimeRange)],
) -> Result<Vec<Decimal>> {
    const CTX: &str = "reading period usage";
    let mut p = Pieces::default();
    let mut edges = Vec::new();
    for (i, (c, s, range)) in keys.iter().enumerate() {
        let split = range.utc_split();
        let i = i32::try_from(i)
            .map_err(|_| Error::invalid("keys", keys.len().to_string(), "too many at once"))?;
        for r in split.days.iter() {
            p.push(i, c, s, Piece::Days, r.from(), r.to());
        }
        for r in &split.hours {
            p.push(i, c, s, Piece::Hours, r.from(), r.to());
        }
        for q in &split.quarters {
            let (a, b) = (i16::from(q.from), i16::from(q.to));
            p.push(i, c, s, Piece::Quarters(a, b), q.hour, q.hour);
        }
        for r in &split.raw {
            edges.push((i, c, s, *r));
        }
    }
    let mut out = vec![Decimal::ZERO; keys.len()];
    let mut add = |i: i32, q: Decimal| -> Result<()> {
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) {
            *slot = tally_core::add_exact(*slot, q, "period usage")?;
        }
        Ok(())
    };
    if !p.idx.is_empty() {
        // The kind tests are one-time filters: each piece reads one rollup only.
        // Quarter pieces take a part of one hour: its sum up to quarter `b` minus
        // its sum up to quarter `a` (0 = nothing, 4 = the whole hour).
        let stmt = client
            .prepare_cached(&PERIOD_PIECES_SQL)
            .await
            .map_err(Error::db("preparing a period usage read"))?;
        let params: [&(dyn ToSql + Sync); 8] = [
            &p.idx,
            &p.customers,
            &p.services,
            &p.kinds,
            &p.lo,
            &p.hi,
            &p.qa,
            &p.qb,
        ];
        for row in client.query(&stmt, &params).await.map_err(Error::db(CTX))? {
            add(
                get(&row, 0, CTX)?,
                numeric_opt(&row, 1, CTX)?.unwrap_or_default(),
            )?;
        }
    }
    if !edges.is_empty() {
        let stmt = client
            .prepare_cached(
                "SELECT sum(quantity) FROM usage_events
                 WHERE recorded_at >= $3 AND recorded_at < $4 AND customer_id = $1 AND service = $2",
            )
            .await
            .map_err(Error::db("preparing a period usage read"))?;
        // Not on a quarter hour (historic local-mean-time offsets): raw events.
        for (i, c, s, r) in edges {
            let row = client
                .query_one(&stmt, &[&c.as_str(), &s.as_str(), &r.from(), &r.to()])
                .await
                .map_err(Error::db(CTX))?;
            add(i, numeric_opt(&row, 0, CTX)?.unwrap_or_default())?;
        }
    }
    Ok(out)
}
