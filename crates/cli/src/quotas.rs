//! `plan`, `quota` and `alerts`: plans, quotas and alert history.

use std::{collections::BTreeMap, sync::Arc};

use clap::{Args, Subcommand};
use serde::Serialize;
use tally::{
    CustomerId, Level, Tally, Thresholds, TimeRange, Zone,
    alerts::{
        Alert, AlertFilter, AnchorDay, BillingCycle, LogFileSink, Measure, MeterSlug, Mode, Plan,
        PlanName, Quota, QuotaLimit, QuotaSource, StderrSink, percent_of,
    },
    chrono::{Duration, Utc},
    rust_decimal::Decimal,
    serde_fmt::{self, rfc3339},
};

use crate::{
    Failure, bad,
    output::{Format, Tabular, emit, out},
    parse_opt, tally_for,
};

/// The alert log file: `--log`, else `USAGE_ALERT_LOG`.
#[derive(Args)]
pub(crate) struct LogArg {
    /// Also append each alert to this file (one line per alert).
    #[arg(long, env = "USAGE_ALERT_LOG", value_name = "FILE")]
    log: Option<std::path::PathBuf>,
}

impl LogArg {
    pub(crate) fn add_sink(&self, tally: &Tally) {
        if let Some(path) = &self.log {
            tally.alerts().add_sink(Arc::new(LogFileSink::new(path)));
        }
    }
}

// ----- plan -----

#[derive(Subcommand)]
pub(crate) enum PlanCommand {
    /// Create or replace a plan.
    #[command(
        after_help = "Examples:\n  tally plan set pro --mode hard --limit api=100000 --limit storage=unlimited\n  tally plan set free --limit api=10000 --warning 50 --critical 80 --exceeded 100\n  tally plan set team --mode hard --meter-limit active_users=1000"
    )]
    Set(PlanSetArgs),
    /// List the plans and their limits.
    #[command(after_help = "Examples:\n  tally plan list\n  tally plan list --format json")]
    List(FormatArg),
}

#[derive(Args)]
pub(crate) struct FormatArg {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Args)]
pub(crate) struct PlanSetArgs {
    /// The plan's name (1-64 of A-Z a-z 0-9 _ . -).
    name: String,
    /// soft (warn) or hard (block).
    #[arg(long, default_value = "soft")]
    mode: String,
    /// A limit, SERVICE=N or SERVICE=unlimited; repeat for each service.
    #[arg(long = "limit", value_name = "SERVICE=N", allow_hyphen_values = true)]
    limits: Vec<String>,
    /// A limit of a meter's value per period, METER=N or METER=unlimited; repeat for
    /// each meter.
    #[arg(
        long = "meter-limit",
        value_name = "METER=N",
        allow_hyphen_values = true
    )]
    meter_limits: Vec<String>,
    /// Alert thresholds of this plan in percent (all three, or none for the defaults).
    #[arg(long, requires_all = ["critical", "exceeded"])]
    warning: Option<String>,
    /// Critical threshold, percent of the limit (with --warning and --exceeded).
    #[arg(long, requires_all = ["warning", "exceeded"])]
    critical: Option<String>,
    /// Exceeded threshold, percent of the limit (with --warning and --critical).
    #[arg(long, requires_all = ["warning", "critical"])]
    exceeded: Option<String>,
}

fn percent(field: &'static str, v: &str) -> Result<Decimal, Failure> {
    Decimal::from_str_exact(v.trim()).map_err(|_| {
        Failure::Usage(format!(
            "invalid --{field} {v:?}: expected a number of percent"
        ))
    })
}

pub(crate) async fn plan(url: Option<String>, cmd: PlanCommand) -> Result<(), Failure> {
    match cmd {
        PlanCommand::Set(a) => {
            let mut plan = Plan::new(a.name.parse().map_err(bad)?, a.mode.parse().map_err(bad)?);
            let mut limits = Vec::new();
            for l in &a.limits {
                let (service, value) = l.split_once('=').ok_or_else(|| {
                    Failure::Usage(format!(
                        "invalid --limit {l:?}: expected SERVICE=N or SERVICE=unlimited"
                    ))
                })?;
                limits.push((
                    service.to_owned(),
                    value.parse::<QuotaLimit>().map_err(bad)?,
                ));
            }
            for l in &a.meter_limits {
                let (meter, value) = l.split_once('=').ok_or_else(|| {
                    Failure::Usage(format!(
                        "invalid --meter-limit {l:?}: expected METER=N or METER=unlimited"
                    ))
                })?;
                let meter: MeterSlug = meter.parse().map_err(bad)?;
                if plan.meters.contains_key(&meter) {
                    return Err(Failure::Usage(format!(
                        "invalid --meter-limit: {meter} is given more than once"
                    )));
                }
                plan = plan.meter_limit(&meter, value.parse::<QuotaLimit>().map_err(bad)?);
            }
            if let (Some(w), Some(c), Some(e)) = (&a.warning, &a.critical, &a.exceeded) {
                plan.thresholds = Some(
                    Thresholds::new(
                        percent("warning", w)?,
                        percent("critical", c)?,
                        percent("exceeded", e)?,
                    )
                    .map_err(bad)?,
                );
            }
            let tally = tally_for(url).await?;
            let catalog = tally.catalog().await?;
            let mut seen = std::collections::BTreeSet::new();
            for (service, limit) in limits {
                let service = catalog.service(&service).map_err(bad)?;
                if !seen.insert(service.clone()) {
                    return Err(Failure::Usage(format!(
                        "invalid --limit: {service} is given more than once"
                    )));
                }
                plan = plan.limit(&service, limit);
            }
            tally.alerts().set_plan(&plan).await?;
            out(format_args!("plan {} saved\n", plan.name))
        }
        PlanCommand::List(f) => {
            let tally = tally_for(url).await?;
            let plans = Plans {
                plans: tally.alerts().plans().await?,
            };
            emit(f.format, &plans)
        }
    }
}

#[derive(Serialize)]
struct Plans {
    plans: Vec<Plan>,
}

impl Tabular for Plans {
    fn header(&self) -> &'static [&'static str] {
        &["plan", "mode", "service", "limit", "thresholds"]
    }

    fn rows(&self, _table: bool) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        for p in &self.plans {
            let th = p.thresholds.map_or_else(
                || "default".to_owned(),
                |t| {
                    Level::ALL
                        .iter()
                        .map(|l| t.percent(*l).normalize().to_string())
                        .collect::<Vec<_>>()
                        .join("/")
                },
            );
            if p.limits.is_empty() && p.meters.is_empty() {
                rows.push(vec![
                    p.name.to_string(),
                    p.mode.to_string(),
                    String::new(),
                    String::new(),
                    th.clone(),
                ]);
            }
            let meters = p
                .meters
                .iter()
                .map(|(m, l)| (Measure::from(m).to_string(), l));
            for (service, limit) in p.limits.iter().map(|(s, l)| (s.clone(), l)).chain(meters) {
                rows.push(vec![
                    p.name.to_string(),
                    p.mode.to_string(),
                    service,
                    limit.to_string(),
                    th.clone(),
                ]);
            }
        }
        rows
    }
}

// ----- quota -----

#[derive(Subcommand)]
pub(crate) enum QuotaCommand {
    /// Set a customer's limit for a service or a meter, or put them on a plan (--plan).
    #[command(
        after_help = "Examples:\n  tally quota set --customer acme --plan pro --anchor-day 15 --tz America/New_York\n  tally quota set --customer acme --service api --limit 5000 --mode hard\n  tally quota set --customer acme --meter active_users --limit 1000 --mode hard"
    )]
    Set(QuotaSetArgs),
    /// The quotas in force with this period's usage.
    #[command(
        after_help = "Examples:\n  tally quota list\n  tally quota list --customer acme --format json"
    )]
    List(QuotaListArgs),
    /// Remove a customer's own limit for a service or meter (their plan's applies again).
    #[command(
        after_help = "Examples:\n  tally quota remove --customer acme --service api\n  tally quota remove --customer acme --meter active_users"
    )]
    Remove(QuotaRemoveArgs),
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("measure").args(["service", "meter"]))]
pub(crate) struct QuotaSetArgs {
    /// Customer id (1-255 of A-Z a-z 0-9 _ . : @ -).
    #[arg(long)]
    customer: String,
    /// The service the limit is for.
    #[arg(long, requires = "limit", conflicts_with_all = ["plan", "meter"])]
    service: Option<String>,
    /// The meter the limit is for: a limit of its value (sum, count, unique count,
    /// peak, ...) over each billing period.
    #[arg(long, requires = "limit", conflicts_with = "plan")]
    meter: Option<String>,
    /// The limit per billing period in the service's unit (or of the meter's value),
    /// or unlimited.
    #[arg(long, requires = "measure", allow_hyphen_values = true)]
    limit: Option<String>,
    /// soft (warn) or hard (block).
    #[arg(long, default_value = "soft", conflicts_with = "plan")]
    mode: String,
    /// Put the customer on this plan instead.
    #[arg(long)]
    plan: Option<String>,
    /// Day of the month billing periods start (1-31; 31 = the month's last day).
    #[arg(long, allow_hyphen_values = true)]
    anchor_day: Option<String>,
    /// Time zone whose midnight starts the periods.
    #[arg(long)]
    tz: Option<String>,
}

#[derive(Args)]
pub(crate) struct QuotaListArgs {
    /// Customer id (1-255 of A-Z a-z 0-9 _ . : @ -).
    #[arg(long)]
    customer: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("measure").args(["service", "meter"]).required(true))]
pub(crate) struct QuotaRemoveArgs {
    /// Customer id (1-255 of A-Z a-z 0-9 _ . : @ -).
    #[arg(long)]
    customer: String,
    /// Service: api, storage, bandwidth, compute, database, functions or a defined meter.
    #[arg(long)]
    service: Option<String>,
    /// A meter's slug (`tally meter list`).
    #[arg(long)]
    meter: Option<String>,
}

/// The service (`--service`) or meter (`--meter`) an option names.
async fn measure_of(
    tally: &Tally,
    service: Option<&String>,
    meter: Option<&String>,
) -> Result<Option<Measure>, Failure> {
    Ok(match (service, meter) {
        (Some(s), _) => Some(Measure::Service(
            tally.catalog().await?.service(s).map_err(bad)?,
        )),
        (None, Some(m)) => Some(Measure::Meter(m.parse().map_err(bad)?)),
        (None, None) => None,
    })
}

pub(crate) async fn quota(url: Option<String>, cmd: QuotaCommand) -> Result<(), Failure> {
    match cmd {
        QuotaCommand::Set(a) => {
            let customer: CustomerId = a.customer.parse().map_err(bad)?;
            let limit: Option<QuotaLimit> = parse_opt(&a.limit)?;
            let mode: Mode = a.mode.parse().map_err(bad)?;
            let plan: Option<PlanName> = parse_opt(&a.plan)?;
            let anchor: Option<AnchorDay> = parse_opt(&a.anchor_day)?;
            let zone: Option<Zone> = parse_opt(&a.tz)?;
            let cycle = (anchor.is_some() || zone.is_some()).then(|| BillingCycle {
                anchor: anchor.unwrap_or(AnchorDay::FIRST),
                zone: zone.unwrap_or(Zone::UTC),
            });
            if a.service.is_none() && a.meter.is_none() && plan.is_none() && cycle.is_none() {
                return Err(Failure::Usage(
                    "nothing to set: pass --service S --limit N, --meter M --limit N, --plan P, or --anchor-day/--tz"
                        .into(),
                ));
            }
            let tally = tally_for(url).await?;
            let alerts = tally.alerts();
            let mut said = Vec::new();
            if let Some(plan) = &plan {
                alerts.assign_plan(&customer, plan, cycle).await?;
                said.push(format!("{customer} is on plan {plan}"));
            } else if let Some(cycle) = cycle {
                alerts.set_billing_cycle(&customer, cycle).await?;
            }
            let measure = measure_of(&tally, a.service.as_ref(), a.meter.as_ref()).await?;
            if let (Some(measure), Some(limit)) = (measure, limit) {
                alerts
                    .set_quota(&customer, measure.clone(), limit, mode)
                    .await?;
                said.push(format!("{customer} {measure}: {limit} ({mode})"));
            }
            if let Some(c) = cycle {
                said.push(format!(
                    "{customer}'s periods start on day {} at midnight {}",
                    c.anchor.get(),
                    c.zone
                ));
            }
            out(format_args!("{}\n", said.join("\n")))
        }
        QuotaCommand::List(a) => {
            let customer: Option<CustomerId> = parse_opt(&a.customer)?;
            let tally = tally_for(url).await?;
            let quotas = tally.alerts().quotas(customer.as_ref()).await?;
            let usage = tally.alerts().period_usage(&quotas, Utc::now()).await?;
            let list = QuotaList {
                quotas: quotas
                    .into_iter()
                    .zip(usage)
                    .map(|(quota, (period, usage))| QuotaRow {
                        percent: quota
                            .limit
                            .value()
                            .zip(usage)
                            .and_then(|(l, u)| percent_of(u, l)),
                        quota,
                        period,
                        usage,
                    })
                    .collect(),
            };
            emit(a.format, &list)
        }
        QuotaCommand::Remove(a) => {
            let customer: CustomerId = a.customer.parse().map_err(bad)?;
            let tally = tally_for(url).await?;
            let Some(measure) = measure_of(&tally, a.service.as_ref(), a.meter.as_ref()).await?
            else {
                return Err(Failure::Usage("pass --service S or --meter M".into()));
            };
            if tally
                .alerts()
                .remove_quota(&customer, measure.clone())
                .await?
            {
                out(format_args!("removed {customer}'s own {measure} quota\n"))
            } else {
                let (flag, name) = match &measure {
                    Measure::Service(s) => ("service", s.as_str()),
                    Measure::Meter(m) => ("meter", m.as_str()),
                };
                Err(Failure::Usage(format!(
                    "invalid --{flag} {name:?}: {customer} has no quota of their own for it"
                )))
            }
        }
    }
}

#[derive(Serialize)]
struct QuotaRow {
    #[serde(flatten)]
    quota: Quota,
    #[serde(flatten, serialize_with = "period_bounds")]
    period: TimeRange,
    /// `None`: a meter not ready to read (backfilling or failed).
    #[serde(serialize_with = "serde_fmt::opt_decimal")]
    usage: Option<Decimal>,
    #[serde(serialize_with = "serde_fmt::opt_decimal")]
    percent: Option<Decimal>,
}

fn period_bounds<S: serde::Serializer>(p: &TimeRange, s: S) -> Result<S::Ok, S::Error> {
    let mut m = BTreeMap::new();
    m.insert("period_start", rfc3339(p.from()));
    m.insert("period_end", rfc3339(p.to()));
    m.serialize(s)
}

#[derive(Serialize)]
struct QuotaList {
    quotas: Vec<QuotaRow>,
}

impl Tabular for QuotaList {
    fn header(&self) -> &'static [&'static str] {
        &[
            "customer_id",
            "service",
            "limit",
            "mode",
            "source",
            "period_start",
            "period_end",
            "usage",
            "percent",
        ]
    }

    fn rows(&self, _table: bool) -> Vec<Vec<String>> {
        self.quotas
            .iter()
            .map(|r| {
                vec![
                    r.quota.customer_id.to_string(),
                    r.quota.measure.to_string(),
                    r.quota.limit.to_string(),
                    r.quota.mode.to_string(),
                    match &r.quota.source {
                        QuotaSource::Plan(p) => format!("plan {p}"),
                        QuotaSource::Customer => "customer".to_owned(),
                    },
                    rfc3339(r.period.from()),
                    rfc3339(r.period.to()),
                    r.usage
                        .map(|u| u.normalize().to_string())
                        .unwrap_or_default(),
                    r.percent.map(|p| p.to_string()).unwrap_or_default(),
                ]
            })
            .collect()
    }
}

// ----- alerts -----

#[derive(Subcommand)]
pub(crate) enum AlertsCommand {
    /// Evaluate quotas now: fire the levels reached and deliver pending alerts (to
    /// stderr and --log).
    #[command(
        after_help = "Examples:\n  tally alerts check\n  tally alerts check --customer acme --log alerts.log"
    )]
    Check(AlertsCheckArgs),
    /// Alerts of the last N days, newest first.
    #[command(
        after_help = "Examples:\n  tally alerts list --days 7\n  tally alerts list --customer acme --level exceeded --format json"
    )]
    List(AlertsListArgs),
}

#[derive(Args)]
pub(crate) struct AlertsCheckArgs {
    /// One customer; default everyone with a quota.
    #[arg(long)]
    customer: Option<String>,
    #[command(flatten)]
    log: LogArg,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Args)]
pub(crate) struct AlertsListArgs {
    /// Customer id (1-255 of A-Z a-z 0-9 _ . : @ -).
    #[arg(long)]
    customer: Option<String>,
    /// The whole window of the last N days.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Service: api, storage, bandwidth, compute, database, functions or a defined meter.
    #[arg(long, conflicts_with = "meter")]
    service: Option<String>,
    /// Only the alerts of this meter's quotas.
    #[arg(long)]
    meter: Option<String>,
    /// warning, critical or exceeded.
    #[arg(long)]
    level: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

pub(crate) async fn alerts(url: Option<String>, cmd: AlertsCommand) -> Result<(), Failure> {
    match cmd {
        AlertsCommand::Check(a) => {
            let customer: Option<CustomerId> = parse_opt(&a.customer)?;
            let tally = tally_for(url).await?;
            tally.alerts().add_sink(Arc::new(StderrSink));
            a.log.add_sink(&tally);
            let fired = tally.alerts().check(customer.as_ref()).await?;
            emit(a.format, &Fired { fired })?;
            // check delivered once; a sink that failed then gets one more try, and an
            // alert still undelivered is a failure of the command (it stays pending).
            let report = tally.alerts().deliver().await?;
            if report.failed.is_empty() {
                return Ok(());
            }
            let failed: Vec<String> = report
                .failed
                .iter()
                .map(|(sink, e)| format!("{sink}: {e}"))
                .collect();
            Err(Failure::Runtime(format!(
                "delivering alerts failed (they stay pending): {}",
                failed.join("; ")
            )))
        }
        AlertsCommand::List(a) => {
            if a.days == 0 || a.days > 36_500 {
                return Err(Failure::Usage(format!(
                    "invalid --days {}: must be 1 to 36500",
                    a.days
                )));
            }
            let filter = AlertFilter {
                since: Some(Utc::now() - Duration::days(i64::from(a.days))),
                customer: parse_opt(&a.customer)?,
                measure: None,
                level: parse_opt::<Level>(&a.level)?,
            };
            let tally = tally_for(url).await?;
            let measure = match parse_opt::<MeterSlug>(&a.meter)? {
                Some(m) => Some(Measure::Meter(m)),
                None => crate::reads::opt_service(&tally, &a.service)
                    .await?
                    .map(Measure::Service),
            };
            let alerts = tally
                .alerts()
                .list(&AlertFilter { measure, ..filter })
                .await?;
            emit(a.format, &Listed { alerts })
        }
    }
}

fn alert_rows(alerts: &[Alert], with_time: bool) -> Vec<Vec<String>> {
    alerts
        .iter()
        .map(|a| {
            let mut row = vec![
                a.customer_id.to_string(),
                a.measure.to_string(),
                a.level.to_string(),
                a.usage.normalize().to_string(),
                a.limit.normalize().to_string(),
                a.percent.map(|p| p.to_string()).unwrap_or_default(),
                rfc3339(a.period_start),
            ];
            if with_time {
                row.push(rfc3339(a.triggered_at));
            }
            row
        })
        .collect()
}

#[derive(Serialize)]
struct Fired {
    fired: Vec<Alert>,
}

/// Columns of an alert; `alerts check` shows all but the last.
const ALERT_HEADER: [&str; 8] = [
    "customer_id",
    "service",
    "level",
    "usage",
    "limit",
    "percent",
    "period_start",
    "triggered_at",
];

impl Tabular for Fired {
    fn header(&self) -> &'static [&'static str] {
        ALERT_HEADER.split_last().map_or(&[], |(_, rest)| rest)
    }

    fn rows(&self, _table: bool) -> Vec<Vec<String>> {
        alert_rows(&self.fired, false)
    }
}

#[derive(Serialize)]
struct Listed {
    alerts: Vec<Alert>,
}

impl Tabular for Listed {
    fn header(&self) -> &'static [&'static str] {
        &ALERT_HEADER
    }

    fn rows(&self, _table: bool) -> Vec<Vec<String>> {
        alert_rows(&self.alerts, true)
    }
}
