//! The read commands: report, aggregate, stats, trends, peaks, invoice.

use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use tally::{
    Analytics, CustomerId, Granularity, Over, PriceBook, Service, Tally, TimeRange, Zone,
    chrono::{DateTime, Datelike, Utc},
    format_compact, parse_instant, parse_month,
    rust_decimal::Decimal,
};

use crate::{Failure, bad, rfc3339, tally_for};

/// Output format of read commands.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum ReadFormat {
    Table,
    Json,
    Csv,
}

#[derive(Args)]
pub(crate) struct Common {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: ReadFormat,
    /// Price book (JSON; see docs/cli.md). Default: the built-in per-unit prices.
    #[arg(long)]
    prices: Option<String>,
}

#[derive(Args)]
pub(crate) struct ReportArgs {
    #[arg(long)]
    customer: String,
    /// Start (RFC 3339 or YYYY-MM-DD); default the first of this month.
    #[arg(long)]
    from: Option<String>,
    /// End, exclusive; default the first of next month.
    #[arg(long)]
    to: Option<String>,
    #[arg(long)]
    service: Option<String>,
    /// Add a per-day breakdown.
    #[arg(long)]
    detailed: bool,
    /// Time zone for dates and the per-day breakdown.
    #[arg(long, default_value = "UTC")]
    tz: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub(crate) struct AggregateArgs {
    /// hourly, daily or monthly.
    #[arg(long)]
    period: String,
    /// One customer; default all customers added up.
    #[arg(long)]
    customer: Option<String>,
    #[arg(long)]
    service: Option<String>,
    #[arg(long)]
    from: Option<String>,
    #[arg(long)]
    to: Option<String>,
    /// IANA time zone of the buckets.
    #[arg(long, default_value = "UTC")]
    tz: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub(crate) struct StatsArgs {
    #[arg(long)]
    customer: String,
    #[arg(long)]
    service: String,
    /// Complete UTC days before today.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// events, hour or day.
    #[arg(long, default_value = "events")]
    over: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub(crate) struct TrendsArgs {
    #[arg(long)]
    customer: String,
    #[arg(long)]
    service: Option<String>,
    /// Calendar days, today included.
    #[arg(long, default_value_t = 7)]
    days: u32,
    #[arg(long, default_value = "UTC")]
    tz: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub(crate) struct PeaksArgs {
    #[arg(long)]
    customer: String,
    #[arg(long)]
    service: String,
    /// hour, day or month (UTC).
    #[arg(long, default_value = "hour")]
    by: String,
    /// How many (1 to 10000).
    #[arg(long, default_value_t = 10, allow_hyphen_values = true)]
    limit: i64,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub(crate) struct InvoiceArgs {
    #[arg(long)]
    customer: String,
    /// Billing period, YYYY-MM (UTC calendar month).
    #[arg(long)]
    period: String,
    #[command(flatten)]
    common: Common,
}

fn dec(d: Decimal) -> String {
    d.normalize().to_string()
}

fn money(d: Decimal) -> String {
    format!("{d:.2}")
}

fn opt_dec(d: Option<Decimal>) -> Value {
    d.map_or(Value::Null, |d| Value::String(dec(d)))
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values serialize")
    );
}

fn print_csv(header: &[&str], rows: Vec<Vec<String>>) -> Result<(), Failure> {
    let mut w = csv::Writer::from_writer(std::io::stdout());
    let err = |e: csv::Error| Failure::Runtime(format!("writing CSV: {e}"));
    w.write_record(header).map_err(err)?;
    for r in rows {
        w.write_record(&r).map_err(err)?;
    }
    w.flush()
        .map_err(|e| Failure::Runtime(format!("writing CSV: {e}")))
}

fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn emit(
    format: ReadFormat,
    json: Value,
    header: &[&str],
    rows: Vec<Vec<String>>,
) -> Result<(), Failure> {
    match format {
        ReadFormat::Json => {
            print_json(&json);
            Ok(())
        }
        ReadFormat::Csv => print_csv(header, rows),
        ReadFormat::Table => {
            print_table(header, rows);
            Ok(())
        }
    }
}

async fn setup(url: Option<String>, common: &Common) -> Result<(Tally, Analytics), Failure> {
    let prices = match &common.prices {
        None => PriceBook::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::Usage(format!("invalid --prices {path:?}: {e}")))?;
            let book: PriceBook = serde_json::from_str(&text)
                .map_err(|e| Failure::Usage(format!("invalid --prices {path:?}: {e}")))?;
            book.validate()
                .map_err(|e| Failure::Usage(format!("invalid --prices {path:?}: {e}")))?;
            book
        }
    };
    let tally = tally_for(url)?;
    let analytics = tally.analytics(prices);
    Ok((tally, analytics))
}

async fn service(tally: &Tally, name: &str) -> Result<Service, Failure> {
    tally.catalog().await?.service(name).map_err(bad)
}

/// `[from, to)` from the flags, defaulting to the current calendar month in `zone`.
fn range(from: &Option<String>, to: &Option<String>, zone: Zone) -> Result<TimeRange, Failure> {
    let now = Utc::now();
    let today = zone.date_of(now);
    let first = today.with_day(1).expect("day 1 exists");
    let from = match from {
        Some(s) => parse_instant("from", s, zone).map_err(bad)?,
        None => zone.start_of_day(first),
    };
    let to = match to {
        Some(s) => parse_instant("to", s, zone).map_err(bad)?,
        None => zone.start_of_day(
            first
                .checked_add_months(tally::chrono::Months::new(1))
                .expect("in range"),
        ),
    };
    TimeRange::new(from, to).map_err(bad)
}

pub(crate) async fn report(url: Option<String>, a: ReportArgs) -> Result<(), Failure> {
    let customer: CustomerId = a.customer.parse().map_err(bad)?;
    let zone: Zone = a.tz.parse().map_err(bad)?;
    let range = range(&a.from, &a.to, zone)?;
    let (tally, analytics) = setup(url, &a.common).await?;
    let svc = match &a.service {
        Some(s) => Some(service(&tally, s).await?),
        None => None,
    };
    let s = analytics
        .summary(&customer, range, svc.as_ref(), a.detailed.then_some(zone))
        .await
        .map_err(tally::Error::from)?;
    let services: Vec<Value> = s
        .services
        .iter()
        .map(|l| {
            json!({"service": l.service, "unit": l.unit, "quantity": dec(l.quantity), "events": l.events,
                   "unit_price": opt_dec(l.unit_price), "amount": money(l.amount)})
        })
        .collect();
    let mut doc = json!({"customer_id": s.customer_id, "from": rfc3339(s.from), "to": rfc3339(s.to),
                         "services": services, "total_amount": money(s.total_amount)});
    if let Some(days) = &s.days {
        doc["days"] = days
            .iter()
            .map(|d| json!({"date": d.date.to_string(), "service": d.service, "quantity": dec(d.quantity), "events": d.events}))
            .collect();
    }
    if a.common.format != ReadFormat::Json && a.detailed {
        let rows = s
            .days
            .unwrap_or_default()
            .into_iter()
            .map(|d| {
                vec![
                    d.date.to_string(),
                    d.service,
                    num(a.common.format, d.quantity),
                    d.events.to_string(),
                ]
            })
            .collect();
        return emit(
            a.common.format,
            doc,
            &["date", "service", "quantity", "events"],
            rows,
        );
    }
    let mut rows: Vec<Vec<String>> = s
        .services
        .into_iter()
        .map(|l| {
            vec![
                l.service,
                l.unit,
                num(a.common.format, l.quantity),
                l.events.to_string(),
                l.unit_price.map(dec).unwrap_or_default(),
                money(l.amount),
            ]
        })
        .collect();
    if a.common.format == ReadFormat::Table {
        rows.push(vec![
            "total".into(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            money(s.total_amount),
        ]);
    }
    emit(
        a.common.format,
        doc,
        &[
            "service",
            "unit",
            "quantity",
            "events",
            "unit_price",
            "amount",
        ],
        rows,
    )
}

/// Exact in CSV, compact (1.50M) in tables.
fn num(format: ReadFormat, d: Decimal) -> String {
    if format == ReadFormat::Table {
        format_compact(d)
    } else {
        dec(d)
    }
}

pub(crate) async fn aggregate(url: Option<String>, a: AggregateArgs) -> Result<(), Failure> {
    let g: Granularity = a.period.parse().map_err(bad)?;
    let zone: Zone = a.tz.parse().map_err(bad)?;
    let customer: Option<CustomerId> = a
        .customer
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(bad)?;
    let range = range(&a.from, &a.to, zone)?;
    let (tally, analytics) = setup(url, &a.common).await?;
    let svc = match &a.service {
        Some(s) => Some(service(&tally, s).await?),
        None => None,
    };
    let buckets = analytics
        .aggregate(customer.as_ref(), range, svc.as_ref(), g, zone)
        .await
        .map_err(tally::Error::from)?;
    let json_buckets: Vec<Value> = buckets
        .iter()
        .map(|b| {
            json!({"bucket": rfc3339(b.bucket), "customer_id": b.customer_id, "service": b.service, "events": b.events,
                   "quantity": dec(b.quantity), "min": dec(b.min), "max": dec(b.max), "avg": dec(b.avg())})
        })
        .collect();
    let doc = json!({"period": g.to_string(), "tz": zone.name(), "buckets": json_buckets});
    let f = a.common.format;
    let rows = buckets
        .into_iter()
        .map(|b| {
            let avg = b.avg();
            vec![
                local(b.bucket, zone, f),
                b.customer_id.unwrap_or_else(|| "*".into()),
                b.service,
                b.events.to_string(),
                num(f, b.quantity),
                num(f, b.min),
                num(f, b.max),
                num(f, avg.round_dp(6)),
            ]
        })
        .collect();
    emit(
        f,
        doc,
        &[
            "bucket",
            "customer_id",
            "service",
            "events",
            "quantity",
            "min",
            "max",
            "avg",
        ],
        rows,
    )
}

/// A bucket start: RFC 3339 UTC in CSV, local time in tables.
fn local(t: DateTime<Utc>, zone: Zone, format: ReadFormat) -> String {
    if format == ReadFormat::Table {
        t.with_timezone(&zone.tz())
            .format("%Y-%m-%d %H:%M %Z")
            .to_string()
    } else {
        rfc3339(t)
    }
}

pub(crate) async fn stats(url: Option<String>, a: StatsArgs) -> Result<(), Failure> {
    let customer: CustomerId = a.customer.parse().map_err(bad)?;
    let over: Over = a.over.parse().map_err(bad)?;
    let (tally, analytics) = setup(url, &a.common).await?;
    let svc = service(&tally, &a.service).await?;
    let s = analytics
        .stats(&customer, &svc, a.days, over, Utc::now())
        .await
        .map_err(tally::Error::from)?;
    let over_name = match s.over {
        Over::Events => "events",
        Over::Hour => "hour",
        Over::Day => "day",
    };
    let doc = json!({"customer_id": s.customer_id, "service": s.service, "over": over_name,
        "from": rfc3339(s.from), "to": rfc3339(s.to), "count": s.count, "total": dec(s.total), "avg": dec(s.avg),
        "min": dec(s.min), "max": dec(s.max), "median": dec(s.median), "p95": dec(s.p95), "p99": dec(s.p99)});
    let f = a.common.format;
    let row = vec![
        s.count.to_string(),
        num(f, s.total),
        num(f, s.avg.round_dp(6)),
        num(f, s.min),
        num(f, s.max),
        num(f, s.median),
        num(f, s.p95),
        num(f, s.p99),
    ];
    emit(
        f,
        doc,
        &[
            "count", "total", "avg", "min", "max", "median", "p95", "p99",
        ],
        vec![row],
    )
}

pub(crate) async fn trends(url: Option<String>, a: TrendsArgs) -> Result<(), Failure> {
    let customer: CustomerId = a.customer.parse().map_err(bad)?;
    let zone: Zone = a.tz.parse().map_err(bad)?;
    let (tally, analytics) = setup(url, &a.common).await?;
    let svc = match &a.service {
        Some(s) => Some(service(&tally, s).await?),
        None => None,
    };
    let days = analytics
        .trends(&customer, svc.as_ref(), a.days, zone, Utc::now())
        .await
        .map_err(tally::Error::from)?;
    let doc = json!({"days": days.iter().map(|d| json!({"date": d.date.to_string(), "service": d.service,
        "total": dec(d.total), "previous": opt_dec(d.previous),
        "change_pct": d.change_pct.map_or(Value::Null, |c| Value::String(format!("{c:.2}")))})).collect::<Vec<_>>()});
    let f = a.common.format;
    let rows = days
        .into_iter()
        .map(|d| {
            vec![
                d.date.to_string(),
                d.service,
                num(f, d.total),
                d.previous.map(|p| num(f, p)).unwrap_or_default(),
                d.change_pct
                    .map(|c| format!("{c:+.2}%"))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    emit(
        f,
        doc,
        &["date", "service", "total", "previous", "change_pct"],
        rows,
    )
}

pub(crate) async fn peaks(url: Option<String>, a: PeaksArgs) -> Result<(), Failure> {
    let customer: CustomerId = a.customer.parse().map_err(bad)?;
    let by: Granularity = a.by.parse().map_err(bad)?;
    let limit = u32::try_from(a.limit)
        .ok()
        .filter(|n| (1..=10_000).contains(n))
        .ok_or_else(|| {
            Failure::Usage(format!(
                "invalid limit \"{}\": must be from 1 to 10000",
                a.limit
            ))
        })?;
    let (tally, analytics) = setup(url, &a.common).await?;
    let svc = service(&tally, &a.service).await?;
    let peaks = analytics
        .peaks(&customer, &svc, by, limit)
        .await
        .map_err(tally::Error::from)?;
    let doc = json!({"peaks": peaks.iter().map(|p| json!({"bucket": rfc3339(p.bucket), "service": p.service,
        "total": dec(p.total), "events": p.events})).collect::<Vec<_>>()});
    let f = a.common.format;
    let rows = peaks
        .into_iter()
        .map(|p| {
            vec![
                local(p.bucket, Zone::UTC, f),
                p.service,
                num(f, p.total),
                p.events.to_string(),
            ]
        })
        .collect();
    emit(f, doc, &["bucket", "service", "total", "events"], rows)
}

pub(crate) async fn invoice(url: Option<String>, a: InvoiceArgs) -> Result<(), Failure> {
    let customer: CustomerId = a.customer.parse().map_err(bad)?;
    let period = parse_month("period", &a.period).map_err(bad)?;
    let (_tally, analytics) = setup(url, &a.common).await?;
    let inv = analytics
        .invoice(&customer, period)
        .await
        .map_err(tally::Error::from)?;
    let doc = json!({"customer_id": inv.customer_id, "period_start": rfc3339(inv.period_start),
        "period_end": rfc3339(inv.period_end), "currency": inv.currency,
        "lines": inv.lines.iter().map(|l| json!({"service": l.service, "quantity": dec(l.quantity),
            "billable_quantity": dec(l.billable_quantity), "amount": money(l.amount)})).collect::<Vec<_>>(),
        "total": money(inv.total)});
    let f = a.common.format;
    let mut rows: Vec<Vec<String>> = inv
        .lines
        .into_iter()
        .map(|l| {
            vec![
                l.service,
                num(f, l.quantity),
                num(f, l.billable_quantity),
                money(l.amount),
            ]
        })
        .collect();
    if f == ReadFormat::Table {
        rows.push(vec![
            "total".into(),
            String::new(),
            String::new(),
            money(inv.total),
        ]);
    }
    emit(
        f,
        doc,
        &["service", "quantity", "billable_quantity", "amount"],
        rows,
    )
}
