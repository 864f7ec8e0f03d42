//! `meter`: define, list, show, delete and query meters (docs/meters.md).

use std::{io::IsTerminal, sync::Arc};

use clap::{Args, Subcommand};
use tally::{
    CustomerId, Zone,
    chrono::Utc,
    meters::{
        Aggregation, DefinedMeter, EventType, JsonPath, MeterQuery, MeterQueryResult, MeterSlug,
        MeterSpec, WindowSize,
    },
};

use crate::{
    Failure, bad,
    output::{Format, Tabular, emit},
    reads::range,
    tally_for,
};

#[derive(Subcommand)]
pub(crate) enum MeterCommand {
    /// Define a meter and count the stored events of its type (a progress bar on a terminal).
    #[command(
        after_help = "Examples:\n  tally meter create tokens_total --type prompt --aggregation sum --value '$.tokens' --group-by model='$.model'\n  tally meter create active_users --type prompt --aggregation unique_count --value '$.user'\n  tally meter create disk_gib_hours --type disk --aggregation time_weighted --value '$.gib' --group-by region='$.region'"
    )]
    Create(CreateArgs),
    /// List the meters.
    #[command(after_help = "Examples:\n  tally meter list\n  tally meter list --format json")]
    List(FormatArg),
    /// Show one meter.
    #[command(after_help = "Examples:\n  tally meter show tokens_total --format json")]
    Show(OneArg),
    /// Rename or redescribe a meter (what it meters, and so its rollups, stay).
    #[command(
        after_help = "Examples:\n  tally meter update tokens_total --name 'LLM tokens' --description 'input and output tokens'"
    )]
    Update(UpdateArgs),
    /// Count a meter's stored events again from scratch: after its backfill was
    /// interrupted (the process was killed: the meter stayed backfilling) or failed, or
    /// after archives of its type were restored.
    #[command(after_help = "Examples:\n  tally meter restart tokens_total")]
    Restart(OneArg),
    /// Delete a meter (it stops being maintained; its slug is free again).
    #[command(after_help = "Examples:\n  tally meter delete tokens_total")]
    Delete(OneArg),
    /// Query a meter: windows in a zone, grouped and filtered by dimensions.
    #[command(
        after_help = "Examples:\n  tally meter query tokens_total --from 2026-11-01 --to 2026-12-01 --window day --tz Asia/Kolkata\n  tally meter query tokens_total --customer acme --group-by model --filter model=gpt-4o --format json"
    )]
    Query(QueryArgs),
}

#[derive(Args)]
pub(crate) struct FormatArg {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Args)]
pub(crate) struct OneArg {
    /// The meter's slug or id.
    meter: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Args)]
pub(crate) struct UpdateArgs {
    /// The meter's slug or id.
    meter: String,
    /// The new display name (1-256 characters; kept when not given).
    #[arg(long)]
    name: Option<String>,
    /// The new description (at most 1024 characters; kept when not given).
    #[arg(long)]
    description: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Args)]
pub(crate) struct CreateArgs {
    /// The slug: a-z and 0-9 in words joined by _.
    slug: String,
    /// The event type it reads (CloudEvents' type; a built-in service's name reads its events).
    #[arg(long = "type", value_name = "TYPE")]
    event_type: String,
    /// sum, count, unique_count, avg, min, max, latest or time_weighted.
    #[arg(long)]
    aggregation: String,
    /// Where the value is in the event's data (a JSONPath such as $.tokens); not for count.
    #[arg(long, value_name = "JSONPATH")]
    value: Option<String>,
    /// A dimension, NAME=JSONPATH (up to 8).
    #[arg(long = "group-by", value_name = "NAME=JSONPATH")]
    group_by: Vec<String>,
    /// The most distinct dimension combinations accepted (default 10000).
    #[arg(long)]
    cardinality_limit: Option<u32>,
    /// A display name.
    #[arg(long)]
    name: Option<String>,
    /// A description.
    #[arg(long)]
    description: Option<String>,
    /// Ignore events before this instant (RFC 3339).
    #[arg(long, value_name = "TIME")]
    event_from: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Args)]
pub(crate) struct QueryArgs {
    /// The meter's slug or id, or a service's name (its built-in meter: the sum of
    /// its quantities).
    meter: String,
    /// Start (inclusive): a date or an RFC 3339 instant; default the start of this month.
    #[arg(long)]
    from: Option<String>,
    /// End (exclusive); default the start of next month.
    #[arg(long)]
    to: Option<String>,
    /// minute, hour, day or month (none: one window for the whole range).
    #[arg(long)]
    window: Option<String>,
    /// The IANA zone windows and dates are in.
    #[arg(long, default_value = "UTC")]
    tz: String,
    /// Only this customer (repeat for more).
    #[arg(long)]
    customer: Vec<String>,
    /// Group by this dimension, or subject for the customer (repeat for more).
    #[arg(long = "group-by", value_name = "NAME")]
    group_by: Vec<String>,
    /// Only events whose dimension NAME is VALUE (repeat; values of one name are alternatives).
    #[arg(long, value_name = "NAME=VALUE")]
    filter: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

fn pair<'a>(flag: &str, s: &'a str) -> Result<(&'a str, &'a str), Failure> {
    s.split_once('=')
        .ok_or_else(|| Failure::Usage(format!("invalid --{flag} {s:?}: expected NAME=VALUE")))
}

pub(crate) async fn meter(url: Option<String>, c: MeterCommand) -> Result<(), Failure> {
    match c {
        MeterCommand::Create(a) => {
            let slug: MeterSlug = a.slug.parse().map_err(bad)?;
            let kind: EventType = a.event_type.parse().map_err(bad)?;
            let agg: Aggregation = a.aggregation.parse().map_err(bad)?;
            let value: Option<JsonPath> = a
                .value
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(bad)?;
            let mut spec = MeterSpec::new(slug, kind, agg, value).map_err(bad)?;
            for g in &a.group_by {
                let (name, path) = pair("group-by", g)?;
                spec = spec
                    .dimension(name, path.parse().map_err(bad)?)
                    .map_err(bad)?;
            }
            if let Some(n) = a.cardinality_limit {
                spec.cardinality_limit = n;
            }
            spec.name = a.name;
            spec.description = a.description;
            spec.event_from = a
                .event_from
                .as_deref()
                .map(|t| tally::parse_instant("event_from", t, Zone::UTC))
                .transpose()
                .map_err(bad)?;
            spec.check().map_err(bad)?;
            let tally = tally_for(url).await?;
            let (bar, progress) = backfill_bar();
            let made = tally.create_meter(&spec, progress).await;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            emit(a.format, &Meters(vec![archived_warning(made?)]))
        }
        MeterCommand::Restart(a) => {
            let tally = tally_for(url).await?;
            let (bar, progress) = backfill_bar();
            let made = tally.restart_meter(&a.meter, progress).await;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            emit(a.format, &Meters(vec![archived_warning(made?)]))
        }
        MeterCommand::List(f) => {
            let tally = tally_for(url).await?;
            emit(f.format, &Meters(tally.meters().await?))
        }
        MeterCommand::Show(a) => {
            let tally = tally_for(url).await?;
            one(a.format, tally.meter(&a.meter).await?)
        }
        MeterCommand::Update(a) => {
            if a.name.is_none() && a.description.is_none() {
                return Err(Failure::Usage(
                    "nothing to change: give --name or --description".into(),
                ));
            }
            let tally = tally_for(url).await?;
            let now = tally.meter(&a.meter).await?;
            let name = a.name.or(now.spec.name);
            let description = a.description.or(now.spec.description);
            one(
                a.format,
                tally.update_meter(&now.id, name, description).await?,
            )
        }
        MeterCommand::Delete(a) => {
            let tally = tally_for(url).await?;
            one(a.format, tally.delete_meter(&a.meter).await?)
        }
        MeterCommand::Query(a) => {
            let zone: Zone = a.tz.parse().map_err(bad)?;
            let range = range(&a.from, &a.to, zone)?;
            let mut q = MeterQuery::new(range, Utc::now()).in_zone(zone);
            if let Some(w) = &a.window {
                q = q.window(w.parse::<WindowSize>().map_err(bad)?);
            }
            for c in &a.customer {
                q = q.customer(&c.parse::<CustomerId>().map_err(bad)?);
            }
            for g in &a.group_by {
                q = q.group_by(g);
            }
            for f in &a.filter {
                let (name, value) = pair("filter", f)?;
                q = q.filter(name, value);
            }
            let tally = tally_for(url).await?;
            let r = tally.query_meter(&a.meter, &q).await?;
            emit(
                a.format,
                &Rows {
                    result: r,
                    zone,
                    dims: a
                        .group_by
                        .iter()
                        .filter(|g| *g != "subject")
                        .cloned()
                        .collect(),
                },
            )
        }
    }
}

/// One meter: its object in JSON (as OpenMeter's API returns it), a row otherwise.
fn one(format: Format, m: DefinedMeter) -> Result<(), Failure> {
    match format {
        Format::Json => crate::output::print_json(&m),
        f => emit(f, &Meters(vec![m])),
    }
}

#[derive(serde::Serialize)]
#[serde(transparent)]
struct Meters(Vec<DefinedMeter>);

impl Tabular for Meters {
    fn header(&self) -> &'static [&'static str] {
        &[
            "slug",
            "type",
            "aggregation",
            "value",
            "group_by",
            "state",
            "backfilled",
            "id",
        ]
    }

    fn rows(&self, _table: bool) -> Vec<Vec<String>> {
        self.0
            .iter()
            .map(|m| {
                vec![
                    m.spec.slug.to_string(),
                    m.spec.event_type.to_string(),
                    m.spec.aggregation.to_string(),
                    m.spec
                        .value_property
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    m.spec
                        .group_by
                        .iter()
                        .map(|d| format!("{}={}", d.name, d.path))
                        .collect::<Vec<_>>()
                        .join(" "),
                    format!("{:?}", m.state).to_lowercase(),
                    m.backfilled.to_string(),
                    m.id.clone(),
                ]
            })
            .collect()
    }
}

#[derive(serde::Serialize)]
#[serde(transparent)]
struct Rows {
    result: MeterQueryResult,
    #[serde(skip)]
    zone: Zone,
    #[serde(skip)]
    dims: Vec<String>,
}

impl Tabular for Rows {
    fn header(&self) -> &'static [&'static str] {
        &["window_start", "window_end", "subject", "group_by", "value"]
    }

    fn rows(&self, table: bool) -> Vec<Vec<String>> {
        let when = |t| crate::output::local(t, self.zone, table);
        self.result
            .data
            .iter()
            .map(|r| {
                vec![
                    when(r.window_start),
                    when(r.window_end),
                    r.subject.clone().unwrap_or_else(|| "*".into()),
                    self.dims
                        .iter()
                        .map(|d| {
                            format!(
                                "{d}={}",
                                r.group_by.get(d).cloned().flatten().unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(" "),
                    r.value.normalize().to_string(),
                ]
            })
            .collect()
    }
}

/// A backfill's progress bar on a terminal (none otherwise), and what feeds it.
fn backfill_bar() -> (Option<indicatif::ProgressBar>, Option<tally::Progress>) {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} backfilling: {pos} stored events read, {per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar
    });
    let progress = bar
        .clone()
        .map(|b| Arc::new(move |n: u64| b.set_position(n)) as tally::Progress);
    (bar, progress)
}

/// The meter, after telling stderr what archived events it could not count.
fn archived_warning(m: tally::meters::DefinedMeter) -> tally::meters::DefinedMeter {
    if m.archived > 0 {
        eprintln!(
            "warning: {} archived events of type {} are not counted (their raw events are in archive files): restore the archives, then `tally meter restart {}`",
            m.archived, m.spec.event_type, m.spec.slug
        );
    }
    m
}
