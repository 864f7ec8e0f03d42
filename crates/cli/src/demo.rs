//! `tally demo`: the seed's scenarios end to end on a database of its own — a fresh one
//! on the `DATABASE_URL` server, or on a throwaway cluster started from the system's
//! PostgreSQL binaries when it is unset — dropped (and the cluster stopped) at exit,
//! Ctrl-C included.

use std::{io::IsTerminal, time::Instant};

use clap::Args;
use tally::{
    CustomerId, Granularity, Limit, Quantity, Service, Tally, TimeRange, UsageEvent, Zone,
    alerts::{AlertFilter, Decision},
    archive::ArchiveOptions,
    chrono::{Duration, Utc},
    export::{EventFilter, ExportFormat},
    report::Over,
    track,
};
use tally_throwaway::Database;

use crate::{
    Failure,
    output::{Format, Peaks, Trends, emit, out},
};

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Events in the high-volume batch.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Where the exports and archives go (default: a new temporary directory, removed
    /// at exit).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn step(n: u32, title: &str) -> Result<(), Failure> {
    out(format_args!("\n== {n}. {title}\n"))
}

fn runtime(e: impl std::fmt::Display) -> Failure {
    Failure::Runtime(e.to_string())
}

pub(crate) async fn demo(a: DemoArgs) -> Result<(), Failure> {
    let where_ = if std::env::var_os("DATABASE_URL").is_some() {
        "a new database on the DATABASE_URL server"
    } else {
        "a throwaway PostgreSQL cluster started from the system's binaries"
    };
    out(format_args!("tally demo: starting {where_}…\n"))?;
    let db = Database::new().await.map_err(runtime)?;
    let tmp = tempfile::tempdir().map_err(runtime)?;
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    let started = Instant::now();
    let result = tokio::select! {
        r = scenarios(db.tally(), a.events, &dir) => r,
        _ = tokio::signal::ctrl_c() => Err(Failure::Runtime("interrupted".into())),
    };
    // Dropping the database (and, at exit, the cluster) happens on every path.
    drop(db);
    result?;
    out(format_args!(
        "\ndemo finished in {:.1} s; its database is dropped{}\n",
        started.elapsed().as_secs_f64(),
        if a.dir.is_some() {
            ""
        } else {
            " and its files removed"
        }
    ))
}

async fn scenarios(t: &Tally, events: usize, dir: &std::path::Path) -> Result<(), Failure> {
    let now = Utc::now();
    let month = TimeRange::from_bounds(None, None, Zone::UTC, now).map_err(crate::bad)?;
    let acme: CustomerId = "acme".parse().map_err(crate::bad)?;

    step(1, "basic tracking: the six helpers, exactly once")?;
    let usages = [
        track::api_request("/v1/orders", "POST", 201),
        track::storage(5 * (1 << 30), "24".parse().map_err(crate::bad)?),
        track::bandwidth(3 * (1 << 30), "egress"),
        track::compute(
            "5400".parse().map_err(crate::bad)?,
            tally::Metadata::empty(),
        ),
        track::database_query("select", 12),
        track::function("resize-image", 340, 512),
    ];
    let mut tracked = Vec::new();
    for u in usages {
        tracked.push(u.map_err(crate::bad)?.for_customer(acme.clone()));
    }
    let first = t.write(&tracked).await?;
    let again = t.write(&tracked).await?;
    out(format_args!(
        "recorded {} events; writing them again: {} new, {} duplicates\n",
        first.inserted, again.inserted, again.duplicates
    ))?;

    step(
        2,
        "a high-volume batch through the recorder (binary COPY, exactly once)",
    )?;
    let rec = t.recorder();
    let customers: Vec<CustomerId> = (0..200)
        .filter_map(|i| format!("cust-{i:03}").parse().ok())
        .collect();
    let services = [Service::API, Service::BANDWIDTH, Service::DATABASE];
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(events as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let t0 = Instant::now();
    let span = Duration::days(20);
    let mut sent = 0usize;
    while sent < events {
        let n = (events - sent).min(50_000);
        let chunk: Vec<UsageEvent> = (sent..sent + n)
            .filter_map(|i| {
                let customer = customers.get(i % customers.len())?.clone();
                let service = services.get(i % services.len())?.clone();
                let q = Quantity::from_u64(1 + (i as u64 % 7)).ok()?;
                // Spread over the last 20 days, in time order.
                let at = now - span + span * (i as i32) / (events.max(1) as i32);
                Some(UsageEvent::new(customer, service, q).at(at))
            })
            .collect();
        rec.record_many(chunk).await?;
        sent += n;
        if let Some(b) = &bar {
            b.set_position(sent as u64);
        }
    }
    rec.close().await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let secs = t0.elapsed().as_secs_f64();
    let v = t.verify().await?;
    out(format_args!(
        "{} events committed in {secs:.1} s ({:.0} events/s); verify: {} events, {} rollup mismatches\n",
        sent,
        sent as f64 / secs.max(1e-9),
        v.events,
        v.mismatches
    ))?;

    let top: CustomerId = "cust-000".parse().map_err(crate::bad)?;
    step(3, "aggregation: cust-000's daily usage, Asia/Kolkata days")?;
    let kolkata: Zone = "Asia/Kolkata".parse().map_err(crate::bad)?;
    let last_week = TimeRange::new(now - Duration::days(7), now).map_err(crate::bad)?;
    let agg = t
        .usage(last_week)
        .customer(&top)
        .service(&Service::API)
        .by(Granularity::Day)
        .in_zone(kolkata)
        .await?;
    emit(Format::Table, &agg)?;

    step(4, "a usage report with cost: acme, this month")?;
    emit(Format::Table, &t.summary(&acme, month).await?)?;

    step(
        5,
        "quotas and alerts: startup-co on the free plan (10 000 API requests, hard)",
    )?;
    let startup: CustomerId = "startup-co".parse().map_err(crate::bad)?;
    t.alerts()
        .assign_plan(&startup, &"free".parse().map_err(crate::bad)?, None)
        .await?;
    for n in ["7600", "1500", "850"] {
        let q: Quantity = n.parse().map_err(crate::bad)?;
        t.write(&[UsageEvent::new(startup.clone(), Service::API, q)])
            .await?;
        let fired = t.alerts().settle().await?;
        for a in fired {
            out(format_args!(
                "  +{n}: {} alert at {}% ({} of {})\n",
                a.level,
                a.percent.unwrap_or_default(),
                a.usage.normalize(),
                a.limit.normalize()
            ))?;
        }
    }
    let decision = t
        .check_quota(&startup, &Service::API, "100".parse().map_err(crate::bad)?)
        .await?;
    out(format_args!(
        "  check_quota(startup-co, api, 100) = {}\n",
        match decision {
            Decision::Block { usage, limit } => format!(
                "Block (usage {} of {}: answer 429)",
                usage.normalize(),
                limit.normalize()
            ),
            other => format!("{other:?}"),
        }
    ))?;
    let history = t.alerts().list(&AlertFilter::default()).await?;
    out(format_args!(
        "  alert history: {} alert(s), each level once\n",
        history.len()
    ))?;

    step(
        6,
        "exports: CSV, JSON and XLSX of acme and cust-000 this month",
    )?;
    for (format, customer) in [
        (ExportFormat::Csv, &acme),
        (ExportFormat::Json, &acme),
        (ExportFormat::Xlsx, &top),
    ] {
        let path = dir.join(format!(
            "demo_{}_{}.{}",
            customer,
            now.format("%Y%m%d_%H%M%S"),
            format
        ));
        let filter = EventFilter {
            range: month,
            customer: Some(customer.clone()),
            service: None,
        };
        let report = t.export_to(format, filter, &path, false, None).await?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        out(format_args!(
            "  {}: {} rows, {} bytes, total cost {}\n",
            path.display(),
            report.rows,
            size,
            tally::serde_fmt::money_text(report.total_cost)
        ))?;
    }

    step(7, "statistics, trends and peaks: cust-000's API use")?;
    emit(
        Format::Table,
        &t.stats(&top, &Service::API)
            .days(14)
            .over(Over::Hour)
            .as_of(now)
            .await?,
    )?;
    let days = t
        .trends(&top)
        .service(&Service::API)
        .days(5)
        .as_of(now)
        .await?;
    emit(Format::Table, &Trends { days })?;
    let peaks = t
        .peaks(&top, &Service::API)
        .by(Granularity::Day)
        .limit(Limit::new(3).map_err(crate::bad)?)
        .await?;
    emit(Format::Table, &Peaks { peaks })?;

    step(
        8,
        "archive: events of a customer from 120 days ago leave for a file",
    )?;
    let old: Vec<UsageEvent> = (0..1000u64)
        .filter_map(|i| {
            let customer: CustomerId = "old-co".parse().ok()?;
            Some(
                UsageEvent::new(customer, Service::API, Quantity::from_u64(1).ok()?)
                    .at(now - Duration::days(120) + Duration::minutes(i as i64)),
            )
        })
        .collect();
    t.write(&old).await?;
    let report = t
        .archive(&ArchiveOptions {
            cutoff: now - Duration::days(90),
            dir: dir.to_owned(),
            forget_keys: false,
        })
        .await?;
    for m in &report.archives {
        out(format_args!(
            "  {}: {} events (sha256 {}…)\n",
            m.file,
            m.events,
            m.sha256.get(..12).unwrap_or("")
        ))?;
    }
    let replay = t.write(old.get(..10).unwrap_or_default()).await?;
    let v = t.verify().await?;
    out(format_args!(
        "  replaying 10 archived events: {} new; verify: {} in the database + {} archived, {} mismatches\n",
        replay.inserted, v.events, v.archived_events, v.mismatches
    ))?;

    step(
        9,
        "API monitoring: requests per endpoint and status, the last hour",
    )?;
    let api = t.recorder();
    let endpoints = [
        ("/v1/orders", "POST", 201),
        ("/v1/orders", "GET", 200),
        ("/v1/users", "GET", 404),
    ];
    for i in 0..300usize {
        let Some((e, m, s)) = endpoints.get(i % endpoints.len()) else {
            continue;
        };
        let usage = track::api_request(e, m, *s).map_err(crate::bad)?;
        api.record(
            usage
                .for_customer(acme.clone())
                .at(now - Duration::seconds(i as i64 * 10)),
        )
        .await?;
    }
    api.close().await?;
    let hour =
        TimeRange::new(now - Duration::hours(1), now + Duration::seconds(1)).map_err(crate::bad)?;
    emit(
        Format::Table,
        &t.usage(hour)
            .customer(&acme)
            .service(&Service::API)
            .by(Granularity::Hour)
            .await?,
    )?;

    step(
        10,
        "storage billing: 2 TiB held for the month (1 474 560 GiB-hours), an invoice",
    )?;
    let store_co: CustomerId = "store-co".parse().map_err(crate::bad)?;
    let held = track::storage(2 * (1u64 << 40), "720".parse().map_err(crate::bad)?)
        .map_err(crate::bad)?
        .for_customer(store_co.clone())
        .at(month.from());
    t.write(&[held]).await?;
    emit(Format::Table, &t.invoice(&store_co, month).await?)?;
    Ok(())
}
