//! Alert history and delivery: every pending alert handed to every sink, each failing
//! sink (and the background pass's own database work) retried with its own backoff, and
//! the background pass that evaluates touched keys after commits.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use chrono::Utc;
use tally_core::Alert;
use tally_store::{AlertFilter, Result};
use tokio::{sync::Notify, time::Instant};

use super::{Alerts, Inner, lock};

#[derive(Default)]
pub(super) struct Backoff {
    failures: u32,
    until: Option<Instant>,
}
/// What a backoff is for: one sink, or the background pass's own database work.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Retried {
    Sink(String),
    Evaluation,
    Delivery,
}
/// What [`Alerts::deliver`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Alerts acknowledged by a sink in this pass (one per sink and alert).
    pub delivered: u64,
    /// Sinks that failed, with the error; their alerts stay pending.
    pub failed: Vec<(String, String)>,
}
impl Alerts {
    // ----- history and delivery -----

    /// Alerts matching `filter`, newest first.
    pub async fn list(&self, filter: &AlertFilter) -> Result<Vec<Alert>> {
        self.inner.store.alerts(filter).await
    }

    /// Delivers every pending alert to every sink now (sinks waiting out a backoff
    /// included).
    pub async fn deliver(&self) -> Result<DeliveryReport> {
        let _pass = self.inner.pass.lock().await;
        self.deliver_pass(true).await
    }

    pub(super) async fn deliver_pass(&self, force: bool) -> Result<DeliveryReport> {
        let mut report = DeliveryReport::default();
        for sink in self.sinks() {
            let name = sink.name().to_owned();
            let retried = Retried::Sink(name.clone());
            if !force
                && lock(&self.inner.backoff)
                    .get(&retried)
                    .and_then(|b| b.until)
                    .is_some_and(|u| Instant::now() < u)
            {
                continue;
            }
            loop {
                let Some(claimed) = self.inner.store.claim_delivery(&name).await? else {
                    // Nothing pending (another process may have delivered it): nothing
                    // to retry either, so no due retry keeps the background pass awake.
                    lock(&self.inner.backoff).remove(&retried);
                    break;
                };
                let timeout = self.inner.config.delivery_timeout;
                let attempt = tokio::time::timeout(timeout, sink.deliver(&claimed.alert))
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!("no answer within {} ms", timeout.as_millis()).into())
                    });
                match attempt {
                    Ok(()) => {
                        claimed.claim.delivered().await?;
                        report.delivered += 1;
                        lock(&self.inner.backoff).remove(&retried);
                    }
                    Err(e) => {
                        claimed.claim.release().await?;
                        let wait = self.note_failure(retried.clone());
                        tracing::warn!(sink = %name, alert = claimed.alert.id, error = %e,
                            retry_in_ms = wait.as_millis() as u64,
                            "delivering an alert failed; it stays pending");
                        report.failed.push((name.clone(), e.to_string()));
                        break;
                    }
                }
            }
        }
        Ok(report)
    }

    fn note_failure(&self, what: Retried) -> Duration {
        let c = &self.inner.config;
        let mut backoff = lock(&self.inner.backoff);
        let b = backoff.entry(what).or_default();
        let wait = c
            .retry_initial
            .saturating_mul(2u32.saturating_pow(b.failures.min(20)))
            .min(c.retry_max);
        b.failures += 1;
        b.until = Some(Instant::now() + wait);
        wait
    }

    /// The earliest retry, also one already due: a pass that took longer than the
    /// backoff (a loaded machine, a slow sink) must not leave it to the 30 s idle wait.
    fn next_retry(&self) -> Option<Instant> {
        lock(&self.inner.backoff)
            .values()
            .filter_map(|b| b.until)
            .min()
    }
}

/// The background pass: evaluate touched keys, deliver, sleep until woken or a retry
/// is due. Holds the alerts weakly, so dropping every handle ends it.
pub(super) async fn background(weak: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let alerts = Alerts { inner };
        {
            let _pass = alerts.inner.pass.lock().await;
            let keys: Vec<_> = lock(&alerts.inner.dirty).drain().collect();
            // Database failures here are retried with the sinks' backoff rule.
            match alerts.evaluate(&keys, Utc::now()).await {
                Ok(_) => {
                    lock(&alerts.inner.backoff).remove(&Retried::Evaluation);
                }
                Err(e) => {
                    let wait = alerts.note_failure(Retried::Evaluation);
                    tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64,
                        "evaluating alerts failed; will retry");
                    lock(&alerts.inner.dirty).extend(keys);
                }
            }
            match alerts.deliver_pass(false).await {
                Ok(_) => {
                    lock(&alerts.inner.backoff).remove(&Retried::Delivery);
                }
                Err(e) => {
                    let wait = alerts.note_failure(Retried::Delivery);
                    tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64,
                        "delivering alerts failed; will retry");
                }
            }
        }
        let wait = alerts.next_retry().map_or(Duration::from_secs(30), |t| {
            t.saturating_duration_since(Instant::now())
        });
        drop(alerts);
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
