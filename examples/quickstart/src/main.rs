//! Record one metered API request behind a quota check, then read what is due.

use tally::{CustomerId, Service, TallyBuilder, TimeRange, Zone, track};

#[tokio::main]
async fn main() -> Result<(), tally::Error> {
    // DATABASE_URL names the database; USAGE_BATCH_* and USAGE_ALERT_* tune it.
    let tally = TallyBuilder::from_env()?.build().await?;
    tally.migrate().await?;

    let recorder = tally.recorder();
    let customer: CustomerId = "acme".parse()?;
    if tally
        .check_quota(&customer, &Service::API, "1".parse()?)
        .await?
        .allowed()
    {
        let usage = track::api_request("/v1/items", "GET", 200)?;
        recorder
            .record(usage.for_customer(customer.clone()))
            .await?;
    }
    recorder.close().await?; // returns once everything recorded is committed

    let summary = tally
        .summary(&customer, TimeRange::this_month(Zone::UTC))
        .await?;
    println!("{customer}: {} due this month", summary.total_amount);
    Ok(())
}
