//! The read commands: report, aggregate, stats, trends, peaks, invoice.

use clap::Args;
use tally::{
    CustomerId, Granularity, Limit, Service, Tally, TimeRange, Zone, alerts::PeriodName,
    chrono::Utc, pricing::PriceBook, report::Over,
};

use crate::{
    Failure, bad,
    output::{Format, Peaks, Trends, emit},
    parse_opt, tally_builder, tally_for,
};

#[derive(Args)]
pub(crate) struct Common {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Price book (JSON; see docs/cli.md). Default: the built-in per-unit prices.
    #[arg(long)]
    prices: Option<String>,
}

#[derive(Args)]
pub(crate) struct ReportArgs {
    /// Customer id (1-255 of A-Z a-z 0-9 _ . : @ -).
    #[arg(long)]
    customer: String,
    /// Start (RFC 3339 or YYYY-MM-DD); default the first of this month.
    #[arg(long)]
    from: Option<String>,
    /// End, exclusive; default the first of next month.
    #[arg(long)]
    to: Option<String>,
    /// Service: api, storage, bandwidth, compute, database, functions or a defined meter.
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
    /// Service: api, storage, bandwidth, compute, database, functions or a defined meter.
    #[arg(long)]
    service: Option<String>,
    /// Start, inclusive (RFC 3339 with offset, or YYYY-MM-DD in --tz); default the first of this month.
    #[arg(long)]
    from: Option<String>,
    /// End, exclusive (RFC 3339 with offset, or YYYY-MM-DD in --tz); default the first of next month.
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
    /// Customer id (1-255 of A-Z a-z 0-9 _ . : @ -).
    #[arg(long)]
    customer: String,
    /// Service: api, storage, bandwidth, compute, database, functions or a defined meter.
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
    /// Customer id (1-255 of A-Z a-z 0-9 _ . : @ -).
    #[arg(long)]
    customer: String,
    /// Service: api, storage, bandwidth, compute, database, functions or a defined meter.
    #[arg(long)]
    service: Option<String>,
    /// Calendar days, today included.
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// IANA time zone of the calendar days (UTC, Europe/Berlin, Asia/Kolkata...).
    #[arg(long, default_value = "UTC")]
    tz: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub(crate) struct PeaksArgs {
    /// Customer id (1-255 of A-Z a-z 0-9 _ . : @ -).
    #[arg(long)]
    customer: String,
    /// Service: api, storage, bandwidth, compute, database, functions or a defined meter.
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
    /// Customer id (1-255 of A-Z a-z 0-9 _ . : @ -).
    #[arg(long)]
    customer: String,
    /// Billing period in the customer's cycle (`quota set --anchor-day --tz`; the 1st,
    /// UTC, by default): YYYY-MM is the period starting in that month, YYYY-MM-DD the
    /// period holding that day; default the period holding now.
    #[arg(long)]
    period: Option<String>,
    #[command(flatten)]
    common: Common,
}

async fn setup(url: Option<String>, common: &Common) -> Result<Tally, Failure> {
    let path = common.prices.as_deref();
    with_prices(url, price_book(path)?, path).await
}

fn bad_prices(path: Option<&str>, e: &dyn std::fmt::Display) -> Failure {
    Failure::Usage(format!(
        "invalid --prices {:?}: {e}",
        path.unwrap_or_default()
    ))
}

/// The price book of `--prices FILE`, read strictly ([`PriceBook::from_json`]);
/// `None` without the flag.
pub(crate) fn price_book(path: Option<&str>) -> Result<Option<PriceBook>, Failure> {
    let Some(p) = path else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(p).map_err(|e| bad_prices(path, &e))?;
    let book = PriceBook::from_json(&text).map_err(|e| bad_prices(path, &e))?;
    Ok(Some(book))
}

/// A handle pricing with `book` (the default book without one), once every service
/// the book prices is known to the catalogue.
pub(crate) async fn with_prices(
    url: Option<String>,
    book: Option<PriceBook>,
    path: Option<&str>,
) -> Result<Tally, Failure> {
    let Some(book) = book else {
        return tally_for(url).await;
    };
    let tally = tally_builder(url)?.prices(book.clone()).build().await?;
    let catalog = tally.catalog().await?;
    book.check_services(&catalog)
        .map_err(|e| bad_prices(path, &e))?;
    Ok(tally)
}

async fn service(tally: &Tally, name: &str) -> Result<Service, Failure> {
    tally.catalog().await?.service(name).map_err(bad)
}

pub(crate) async fn opt_service(
    tally: &Tally,
    name: &Option<String>,
) -> Result<Option<Service>, Failure> {
    match name {
        Some(s) => Ok(Some(service(tally, s).await?)),
        None => Ok(None),
    }
}

/// `[from, to)` from the flags, defaulting to the current calendar month in `zone`.
pub(crate) fn range(
    from: &Option<String>,
    to: &Option<String>,
    zone: Zone,
) -> Result<TimeRange, Failure> {
    TimeRange::from_bounds(from.as_deref(), to.as_deref(), zone, Utc::now()).map_err(bad)
}

pub(crate) async fn report(url: Option<String>, a: ReportArgs) -> Result<(), Failure> {
    let customer: CustomerId = a.customer.parse().map_err(bad)?;
    let zone: Zone = a.tz.parse().map_err(bad)?;
    let range = range(&a.from, &a.to, zone)?;
    let tally = setup(url, &a.common).await?;
    let svc = opt_service(&tally, &a.service).await?;
    let mut q = tally.summary(&customer, range).in_zone(zone);
    if let Some(s) = &svc {
        q = q.service(s);
    }
    if a.detailed {
        q = q.daily();
    }
    let s = q.await?;
    emit(a.common.format, &s)
}

pub(crate) async fn aggregate(url: Option<String>, a: AggregateArgs) -> Result<(), Failure> {
    let g: Granularity = a.period.parse().map_err(bad)?;
    let zone: Zone = a.tz.parse().map_err(bad)?;
    let customer: Option<CustomerId> = parse_opt(&a.customer)?;
    let range = range(&a.from, &a.to, zone)?;
    let tally = setup(url, &a.common).await?;
    let svc = opt_service(&tally, &a.service).await?;
    let mut q = tally.usage(range).by(g).in_zone(zone);
    if let Some(c) = &customer {
        q = q.customer(c);
    }
    if let Some(s) = &svc {
        q = q.service(s);
    }
    let agg = q.await?;
    emit(a.common.format, &agg)
}

pub(crate) async fn stats(url: Option<String>, a: StatsArgs) -> Result<(), Failure> {
    let customer: CustomerId = a.customer.parse().map_err(bad)?;
    let over: Over = a.over.parse().map_err(bad)?;
    let tally = setup(url, &a.common).await?;
    let svc = service(&tally, &a.service).await?;
    let s = tally
        .stats(&customer, &svc)
        .days(a.days)
        .over(over)
        .in_zone(Zone::UTC)
        .await?;
    emit(a.common.format, &s)
}

pub(crate) async fn trends(url: Option<String>, a: TrendsArgs) -> Result<(), Failure> {
    let customer: CustomerId = a.customer.parse().map_err(bad)?;
    let zone: Zone = a.tz.parse().map_err(bad)?;
    let tally = setup(url, &a.common).await?;
    let svc = opt_service(&tally, &a.service).await?;
    let mut q = tally.trends(&customer).days(a.days).in_zone(zone);
    if let Some(s) = &svc {
        q = q.service(s);
    }
    let days = q.await?;
    emit(a.common.format, &Trends { days })
}

pub(crate) async fn peaks(url: Option<String>, a: PeaksArgs) -> Result<(), Failure> {
    let customer: CustomerId = a.customer.parse().map_err(bad)?;
    let by: Granularity = a.by.parse().map_err(bad)?;
    let limit = Limit::new(a.limit).map_err(bad)?;
    let tally = setup(url, &a.common).await?;
    let svc = service(&tally, &a.service).await?;
    let peaks = tally
        .peaks(&customer, &svc)
        .by(by)
        .limit(limit)
        .in_zone(Zone::UTC)
        .await?;
    emit(a.common.format, &Peaks { peaks })
}

pub(crate) async fn invoice(url: Option<String>, a: InvoiceArgs) -> Result<(), Failure> {
    let customer: CustomerId = a.customer.parse().map_err(bad)?;
    let name: Option<PeriodName> = parse_opt(&a.period)?;
    let tally = setup(url, &a.common).await?;
    let cycle = tally.billing_cycle(&customer).await?;
    let period = match name {
        Some(n) => cycle.period_named(n),
        None => cycle.period_at(Utc::now()),
    }
    .map_err(bad)?;
    let inv = tally.invoice(&customer, period).await?;
    emit(a.common.format, &inv)
}
