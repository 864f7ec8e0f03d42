//! Monthly partitions of `usage_events`, created ahead and on demand.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use tally_core::UsageEvent;

use crate::{Error, Result};

/// How far from now partitions are made on demand. Events outside the window still
/// land, in the default partition, which [`crate::Store::partition_status`] reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub(crate) past_months: u32,
    pub(crate) future_months: u32,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            past_months: 36,
            future_months: 3,
        }
    }
}

/// How long creating a partition waits for the default partition's lock (held by
/// every transaction writing into it). Past it, on-demand creation gives up for now:
/// a transaction of this very process may be the one holding it (a strict import on
/// Citus writes as it goes), and it must not wait for itself.
const LOCK_WAIT: &str = "5s";

/// After an on-demand creation failed, how long the write path leaves that month
/// alone (its events go to the default partition meanwhile).
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Remembers which months are known to have a partition, so the write path asks the
/// database only the first time a month shows up. Partitions are created on a
/// connection of their own, outside the pool: a writer holding a pooled connection
/// for its transaction must never wait for a second one (eight writers on a pool of
/// eight would wait for each other for ever).
#[derive(Debug, Default)]
pub(crate) struct Partitions {
    known: Mutex<HashSet<NaiveDate>>,
    // Months whose on-demand creation failed, and when.
    failed: Mutex<HashMap<NaiveDate, Instant>>,
    window: Window,
}

fn month_of(t: DateTime<Utc>) -> NaiveDate {
    let d = t.date_naive();
    d.with_day(1).unwrap_or(d)
}

impl Partitions {
    /// Makes sure every month the events fall in has its partition, when inside the
    /// window. Never fails: a partition that cannot be made now (no privilege, its
    /// lock not had in time, the database refusing the DDL) is logged and tried again
    /// later, and the events land in the default partition meanwhile, which
    /// [`crate::Store::partition_status`] reports. A failure of DDL is never the
    /// events' fault, so it must not fail (or dead-letter) their write.
    pub(crate) async fn ensure_for(&self, db: &tokio_postgres::Config, events: &[UsageEvent]) {
        let now = month_of(Utc::now());
        let lo = now - Months::new(self.window.past_months);
        let hi = now + Months::new(self.window.future_months);
        let mut missing: Vec<NaiveDate> = {
            let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
            let failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
            let mut seen = HashSet::new();
            events
                .iter()
                .map(|e| month_of(e.recorded_at))
                .filter(|m| {
                    *m >= lo
                        && *m <= hi
                        && !known.contains(m)
                        && failed.get(m).is_none_or(|t| t.elapsed() >= RETRY_AFTER)
                        && seen.insert(*m)
                })
                .collect()
        };
        if missing.is_empty() {
            return;
        }
        missing.sort();
        if let Err(e) = self.create(db, &missing, true).await {
            tracing::warn!(error = %e, months = ?missing,
                "could not create an events partition now; its events go to the default \
                 partition, and it is tried again later");
        }
    }

    /// Creates the partitions for the current month and `ahead` months after it.
    pub(crate) async fn ensure_ahead(
        &self,
        db: &tokio_postgres::Config,
        ahead: u32,
    ) -> Result<Vec<NaiveDate>> {
        let now = month_of(Utc::now());
        let months: Vec<NaiveDate> = (0..=ahead).map(|i| now + Months::new(i)).collect();
        self.create(db, &months, false).await?;
        Ok(months)
    }

    /// Forgets `month` (its partition was dropped by an archive).
    pub(crate) fn forget(&self, month: NaiveDate) {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&month);
    }

    /// Months ahead that `migrate` prepares.
    pub(crate) fn default_ahead(&self) -> u32 {
        self.window.future_months
    }

    /// Creates the partitions of `months`. Without the right to (an application role
    /// with table privileges only, SQLSTATE 42501), `on_demand` creation gives up
    /// quietly: the rows land in the default partition, and the owner's scheduled
    /// `tally partitions --ensure-ahead` (or a later `migrate`) moves them out. Any
    /// other failure on demand marks the month to be tried again after
    /// [`RETRY_AFTER`].
    async fn create(
        &self,
        db: &tokio_postgres::Config,
        months: &[NaiveDate],
        on_demand: bool,
    ) -> Result<()> {
        let (client, conn) = db
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(Error::db("connecting to create partitions"))?;
        let conn = tokio::spawn(conn);
        let result = self.create_on(&client, months, on_demand).await;
        drop(client);
        let _ = conn.await;
        result
    }

    async fn create_on(
        &self,
        client: &tokio_postgres::Client,
        months: &[NaiveDate],
        on_demand: bool,
    ) -> Result<()> {
        if on_demand {
            client
                .batch_execute(&format!("SET lock_timeout = '{LOCK_WAIT}'"))
                .await
                .map_err(Error::db("creating a partition"))?;
        }
        for m in months {
            let created: bool = match client
                .query_one("SELECT tally_ensure_month_partition($1)", &[m])
                .await
            {
                Ok(row) => row.try_get(0).map_err(Error::db("creating a partition"))?,
                Err(e)
                    if on_demand
                        && e.code()
                            == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
                {
                    tracing::warn!(month = %m, "no privilege to create the events partition; \
                        its events go to the default partition until the owner creates it");
                    false
                }
                Err(e) => {
                    if on_demand {
                        self.failed
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(*m, Instant::now());
                    }
                    return Err(Error::db("creating a partition")(e));
                }
            };
            if created {
                tracing::info!(month = %m, "created events partition");
            }
            self.known
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(*m);
        }
        Ok(())
    }
}
