//! The alerts outbox: alerts recorded once per level and period, and claimed for delivery
//! to one sink at a time inside a transaction that commits with the acknowledgement.

use tally_core::{Alert, CustomerId, Level, percent_of};
use tokio_postgres::Row;

use super::{AlertFilter, Reached, get, measure_key, numeric_opt, stored_measure};
use crate::{Error, Result, Store, pool::HandTx};

fn alert_of(row: &Row) -> Result<Alert> {
    const CTX: &str = "reading alerts";
    let usage = numeric_opt(row, 4, CTX)?.unwrap_or_default();
    let limit = numeric_opt(row, 5, CTX)?.unwrap_or_default();
    Ok(Alert {
        id: get(row, 0, CTX)?,
        customer_id: CustomerId::new(get::<&str>(row, 1, CTX)?)?,
        measure: stored_measure(get(row, 2, CTX)?)?,
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
                    &measure_key(reached.measure).as_ref(),
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
                    &filter.measure.as_ref().map(measure_key).as_deref(),
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
            tx: HandTx::new(client),
            sink: sink.to_owned(),
            customer_id: String::new(),
            alert_id: 0,
        };
        claim.tx.begin(CTX).await?;
        let c = claim.tx.client()?;
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
    // Dropped open (not delivered nor released): closed, so the server rolls back.
    tx: HandTx,
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
    fn with(self, alert: Alert) -> Claimed {
        Claimed { claim: self, alert }
    }

    /// Records that the sink has the alert; it is never handed to that sink again.
    pub async fn delivered(mut self) -> Result<()> {
        const CTX: &str = "acknowledging a delivery";
        self.tx
            .client()?
            .execute(
                "INSERT INTO usage_alert_deliveries (customer_id, alert_id, sink) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&self.customer_id, &self.alert_id, &self.sink],
            )
            .await
            .map_err(Error::db(CTX))?;
        self.tx.end(true, CTX).await
    }

    /// Gives the claim up (the sink failed): the alert stays pending.
    pub async fn release(mut self) -> Result<()> {
        self.tx.end(false, "releasing a delivery claim").await
    }
}
