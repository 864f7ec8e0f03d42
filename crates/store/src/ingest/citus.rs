//! The distributed path (Citus): no temporary stage, since a coordinator-local temp
//! table cannot be joined to distributed tables (see `sql::CLAIM_KEYS_SQL`).

use tally_core::UsageEvent;
use uuid::Uuid;

use super::{
    Lane,
    batch::{BatchDeltas, KeySet},
    copy::copy_events,
    params::BatchParams,
    sql,
    tx::Applied,
};
use crate::{Error, Result};

/// Writes `events` (unique within themselves) exactly once on a Citus cluster, in the
/// caller's transaction. Returns the events inserted and their total quantity.
pub(super) async fn write_distributed(
    client: &deadpool_postgres::Client,
    events: &[&UsageEvent],
    lane: Lane,
) -> Result<Applied> {
    let db = Error::db;
    // Claimed in key order, like every other writer.
    let mut keys: Vec<(Uuid, &str, i64)> = events
        .iter()
        .map(|e| (e.id.uuid(), e.customer.as_str(), e.digest()))
        .collect();
    keys.sort_unstable();
    let (mut ids, mut customers, mut digests) = (Vec::new(), Vec::new(), Vec::new());
    for (id, customer, digest) in keys {
        ids.push(id);
        customers.push(customer);
        digests.push(digest);
    }
    let rows = client
        .query(sql::CLAIM_KEYS_SQL, &[&ids, &customers, &digests])
        .await
        .map_err(db("claiming event keys"))?;
    let claimed = KeySet::of(&rows, "claiming event keys")?;
    let (new, taken): (Vec<&UsageEvent>, Vec<&UsageEvent>) =
        events.iter().copied().partition(|e| claimed.contains(e));
    // The digests of the keys others hold (a new statement: it sees what the claim
    // waited for).
    let mut stored = KeySet::default();
    if !taken.is_empty() {
        let ids: Vec<Uuid> = taken.iter().map(|e| e.id.uuid()).collect();
        let customers: Vec<&str> = taken.iter().map(|e| e.customer.as_str()).collect();
        let rows = client
            .query(sql::PROBE_KEYS_SQL, &[&ids, &customers])
            .await
            .map_err(db("looking up event keys"))?;
        stored = KeySet::of(&rows, "looking up event keys")?;
    }
    if new.is_empty() {
        return Ok(Applied {
            stored,
            ..Applied::default()
        });
    }
    copy_events(client, &new).await?;
    let r = BatchDeltas::of(new.iter().copied())?;
    let params = BatchParams::of(&r, lane.0)?;
    // Each rollup on its own (in the lock order), so Citus routes each row to its shard.
    for (i, (statement, context)) in sql::DISTRIBUTED_UPSERTS
        .iter()
        .zip([
            "updating the hourly rollup",
            "updating the daily rollup",
            "updating the all-customer rollup",
        ])
        .enumerate()
    {
        client
            .execute(statement.as_str(), &params.params_of(i)?)
            .await
            .map_err(db(context))?;
    }
    crate::meters::apply_meters(client, &new).await?;
    Ok(Applied {
        inserted: r.events,
        quantity: r.quantity,
        stored,
    })
}
