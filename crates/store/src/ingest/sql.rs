//! The write path's statement text. The rollup upserts are generated from the one
//! description in `crate::rollup`; the rest names the event and key tables.
//!
//! Lock order: keys in (event_id, customer_id) order, then hourly rows, then daily rows,
//! then all-customer hourly rows, each in key order. Every writer takes row locks in
//! this one global order, so concurrent flushes wait for each other but cannot deadlock.

use std::sync::LazyLock;

use crate::rollup::{HOURLY, ROLLUPS, Rollup};

// The stage also holds each event's payload digest and its place among the
// transaction's staged events (`ord`: which line of an all-or-nothing import it is).
// A session made by an older build has a stage without them: `stage` recreates it.
pub(super) const STAGE_DDL: &str = "CREATE TEMP TABLE tally_stage (
    event_id uuid, customer_id text COLLATE \"C\", service text COLLATE \"C\", quantity numeric, recorded_at timestamptz, metadata jsonb,
    digest int8, ord int8
) ON COMMIT DELETE ROWS";

// Fast path, step 1: drop staged events whose key is already stored (a replay), and
// say which. A LIMIT-ed scalar subquery stays one index probe per staged row; EXISTS
// would let the planner pick a join that reads the whole key table.
pub(super) const DROP_STORED_SQL: &str = "DELETE FROM tally_stage s
    WHERE (SELECT true FROM usage_event_keys k WHERE k.event_id = s.event_id AND k.customer_id = s.customer_id LIMIT 1)
    RETURNING s.event_id, s.customer_id,
        (SELECT k.digest FROM usage_event_keys k WHERE k.event_id = s.event_id AND k.customer_id = s.customer_id LIMIT 1)";

/// The names of the rollups' upserts in a statement's `WITH`, in [`ROLLUPS`] order.
const CTE_NAMES: [&str; 3] = ["hourly", "daily", "totals"];

/// The rollup deltas of a batch, aggregated in Rust (`BatchDeltas`) and sent as sorted
/// arrays, one parameter per column of each rollup in [`ROLLUPS`] order, the lane
/// after the all-customer rollup's (see `params::BatchParams`). Rows are upserted in
/// key order.
fn delta_upserts() -> String {
    let mut next = 1;
    upsert_ctes(|r| {
        let (upsert, n) = r.upsert_arrays(next);
        next = n;
        upsert
    })
}

/// Each rollup's upsert (`upsert(rollup)`, in [`ROLLUPS`] order) as the `WITH` entries
/// [`CTE_NAMES`] name.
fn upsert_ctes(mut upsert: impl FnMut(&Rollup) -> String) -> String {
    let ctes: Vec<String> = CTE_NAMES
        .iter()
        .zip(ROLLUPS)
        .map(|(name, r)| format!("{name} AS (\n    {}\n    RETURNING 1\n)", upsert(r)))
        .collect();
    ctes.join(", ")
}

/// How many parameters the delta upserts take (all three rollups').
pub(super) fn delta_parameters() -> usize {
    ROLLUPS.iter().map(|r| r.parameters()).sum()
}

// Fast path, step 2: everything left is new. Keys go in by plain INSERT, which costs
// half of ON CONFLICT's speculative insertion (measured); if a concurrent writer
// claimed one of them since step 1, it fails with a unique violation and the batch is
// redone on the slow path. The rollup deltas were aggregated in Rust from exactly
// these events and arrive sorted by key (the lock order). Scalar subqueries in the
// final SELECT run left to right: keys, events, hourly, daily, all-customer.
pub(super) static INSERT_NEW_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH keys AS (
    INSERT INTO usage_event_keys (event_id, customer_id, digest)
    SELECT event_id, customer_id, digest FROM tally_stage ORDER BY event_id, customer_id
    RETURNING 1
), ins AS (
    INSERT INTO usage_events (event_id, customer_id, service, quantity, recorded_at, metadata)
    SELECT event_id, customer_id, service, quantity, recorded_at, metadata FROM tally_stage
    RETURNING 1
), {}
SELECT (SELECT count(*) FROM keys), (SELECT count(*) FROM ins), (SELECT count(*) FROM hourly), (SELECT count(*) FROM daily),
       (SELECT count(*) FROM totals)",
        delta_upserts()
    )
});

// Direct path (see `IngestTx::write_direct`): keys and events went in by COPY; this
// upserts the rollups, in the same order and by the same rule.
pub(super) static DIRECT_ROLLUPS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {}
SELECT (SELECT count(*) FROM hourly), (SELECT count(*) FROM daily), (SELECT count(*) FROM totals)",
        delta_upserts()
    )
});

// Which of some keys are stored, with their payload digests: on the direct path the
// keys a batch's events may repeat (this process wrote the same key recently), on
// Citus the keys a writer could not claim. One index probe each.
pub(super) const PROBE_KEYS_SQL: &str = "SELECT k.event_id, k.customer_id, k.digest
    FROM unnest($1::uuid[], $2::text[]) AS u(event_id, customer_id)
    JOIN usage_event_keys k ON k.event_id = u.event_id AND k.customer_id = u.customer_id";

// After the slow path: the digest now stored for each staged key (its own for a key
// the batch inserted, another writer's or an earlier one's for the rest).
pub(super) const STAGED_DIGESTS_SQL: &str = "SELECT DISTINCT s.event_id, s.customer_id, k.digest
    FROM tally_stage s JOIN usage_event_keys k ON k.event_id = s.event_id AND k.customer_id = s.customer_id";

// After an all-or-nothing load: the staged events whose key is stored with another
// payload (by another writer, before, or by an earlier line of the load).
pub(super) const STAGED_CONFLICTS_SQL: &str = "SELECT s.ord
    FROM tally_stage s JOIN usage_event_keys k ON k.event_id = s.event_id AND k.customer_id = s.customer_id
    WHERE k.digest IS NOT NULL AND k.digest IS DISTINCT FROM s.digest
    ORDER BY s.ord";

// Slow path: claims keys with ON CONFLICT DO NOTHING, waiting for concurrent writers
// of the same keys to commit, and inserts only the events whose keys it claimed. It
// reads the whole stage (a key staged twice keeps its first row: the stage is only
// appended to within a transaction, so ctid order is arrival order), so an
// all-or-nothing load can stage many batches and apply them in this one statement,
// taking its row locks in the global order like every other writer. The rollups are
// aggregated by the server from the rows inserted; the lane is `$1`, the event types
// with meters `$2` (their inserted events are returned for the meter step).
pub(super) static APPLY_STAGED_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH staged AS (
    SELECT DISTINCT ON (event_id, customer_id) event_id, customer_id, service, quantity, recorded_at, metadata, digest
    FROM tally_stage ORDER BY event_id, customer_id, ctid
), new_keys AS (
    INSERT INTO usage_event_keys (event_id, customer_id, digest)
    SELECT event_id, customer_id, digest FROM staged ORDER BY event_id, customer_id
    ON CONFLICT DO NOTHING
    RETURNING event_id, customer_id
), keys AS (
    SELECT 1 FROM new_keys
), ins AS (
    INSERT INTO usage_events (event_id, customer_id, service, quantity, recorded_at, metadata)
    SELECT s.event_id, s.customer_id, s.service, s.quantity, s.recorded_at, s.metadata
    FROM staged s JOIN new_keys k ON k.event_id = s.event_id AND k.customer_id = s.customer_id
    RETURNING event_id, customer_id, service, quantity, recorded_at, metadata
), {}
-- Scalar subqueries run left to right: events, keys, hourly, daily, totals (the lock order).
-- Then the inserted events of the metered types ($2), for the meter step.
SELECT (SELECT count(*) FROM ins), (SELECT coalesce(sum(quantity), 0) FROM ins),
       (SELECT count(*) FROM keys), (SELECT count(*) FROM hourly), (SELECT count(*) FROM daily),
       (SELECT count(*) FROM totals),
       (SELECT coalesce(array_agg(event_id ORDER BY event_id, customer_id), '{{}}') FROM ins WHERE service = ANY($2::text[])),
       (SELECT coalesce(array_agg(customer_id ORDER BY event_id, customer_id), '{{}}') FROM ins WHERE service = ANY($2::text[])),
       (SELECT coalesce(array_agg(service ORDER BY event_id, customer_id), '{{}}') FROM ins WHERE service = ANY($2::text[])),
       (SELECT coalesce(array_agg(recorded_at ORDER BY event_id, customer_id), '{{}}') FROM ins WHERE service = ANY($2::text[])),
       (SELECT coalesce(array_agg(metadata::text ORDER BY event_id, customer_id), '{{}}') FROM ins WHERE service = ANY($2::text[]))",
        upsert_ctes(|r| r.upsert_from("ins", 1))
    )
});

// The event types among the staged events (whose locks the meter step takes before
// the slow path's statement).
pub(super) const STAGED_TYPES_SQL: &str = "SELECT DISTINCT service FROM tally_stage";

pub(super) const DEAD_LETTER_SQL: &str = "INSERT INTO usage_dead_letters
    (event_id, customer_id, service, quantity, recorded_at, metadata, error, sqlstate)
    SELECT u.*, $7::text, $8::text
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::numeric[], $5::timestamptz[], $6::text[]) AS u";

// The distributed path (Citus): no temporary stage, since a coordinator-local temp
// table cannot be joined to distributed tables. Keys are claimed from arrays with
// `ON CONFLICT DO NOTHING` (waiting for a concurrent writer of the same key, like the
// slow path) and `RETURNING` says which are ours — the command tag would not
// (citus#3377); then the claimed events go in by binary COPY and the rollups by the
// same merge rule, each statement on its own: Citus routes every row to its shard.
pub(super) const CLAIM_KEYS_SQL: &str =
    "INSERT INTO usage_event_keys (event_id, customer_id, digest)
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::int8[]) ON CONFLICT DO NOTHING
    RETURNING event_id, customer_id";

/// On Citus, each rollup's upsert on its own (arrays from `$1`, the lane last), in
/// [`ROLLUPS`] order.
pub(super) static DISTRIBUTED_UPSERTS: LazyLock<[String; 3]> =
    LazyLock::new(|| ROLLUPS.map(|r: &Rollup| r.upsert_arrays(1).0));

/// The direct path's bulk insert of new hourly rows (`copy::copy_hourly`).
pub(super) static COPY_HOURLY_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "COPY {} ({}) FROM STDIN BINARY",
        HOURLY.table,
        HOURLY.columns()
    )
});
