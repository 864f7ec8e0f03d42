use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// One schema migration, embedded from `migrations/` at build time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    /// Its number (applied in increasing order).
    pub(crate) version: i32,
    /// Its file name.
    pub(crate) name: &'static str,
    /// Its SQL.
    pub(crate) sql: &'static str,
}

impl Migration {
    /// SHA-256 of the SQL, hex.
    pub(crate) fn checksum(&self) -> String {
        hex(&Sha256::digest(self.sql.as_bytes()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every migration this build knows, in order.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_events.sql",
        sql: include_str!("../../../migrations/0001_events.sql"),
    },
    // Renamed from 0002_analytics.sql (named for what it holds, not who reads it); the
    // SQL, and so the checksum, is unchanged, and names are not compared.
    Migration {
        version: 2,
        name: "0002_all_customer_rollup.sql",
        sql: include_str!("../../../migrations/0002_all_customer_rollup.sql"),
    },
    Migration {
        version: 3,
        name: "0003_dead_letters.sql",
        sql: include_str!("../../../migrations/0003_dead_letters.sql"),
    },
    Migration {
        version: 4,
        name: "0004_rollup_limits.sql",
        sql: include_str!("../../../migrations/0004_rollup_limits.sql"),
    },
    Migration {
        version: 5,
        name: "0005_quotas_alerts.sql",
        sql: include_str!("../../../migrations/0005_quotas_alerts.sql"),
    },
    Migration {
        version: 6,
        name: "0006_archives.sql",
        sql: include_str!("../../../migrations/0006_archives.sql"),
    },
    Migration {
        version: 7,
        name: "0007_archived_totals.sql",
        sql: include_str!("../../../migrations/0007_archived_totals.sql"),
    },
    Migration {
        version: 8,
        name: "0008_distributable_keys.sql",
        sql: include_str!("../../../migrations/0008_distributable_keys.sql"),
    },
    Migration {
        version: 9,
        name: "0009_quarter_hours.sql",
        sql: include_str!("../../../migrations/0009_quarter_hours.sql"),
    },
    Migration {
        version: 10,
        name: "0010_partition_lock.sql",
        sql: include_str!("../../../migrations/0010_partition_lock.sql"),
    },
    Migration {
        version: 11,
        name: "0011_event_digests.sql",
        sql: include_str!("../../../migrations/0011_event_digests.sql"),
    },
    Migration {
        version: 12,
        name: "0012_meters.sql",
        sql: include_str!("../../../migrations/0012_meters.sql"),
    },
    Migration {
        version: 13,
        name: "0013_meter_archived.sql",
        sql: include_str!("../../../migrations/0013_meter_archived.sql"),
    },
];

/// A fingerprint of the whole embedded schema (test harnesses key template databases
/// on it, so a schema change makes a new template).
pub fn schema_fingerprint() -> String {
    let mut h = Sha256::new();
    for m in MIGRATIONS {
        h.update(m.name.as_bytes());
        h.update(m.sql.as_bytes());
    }
    hex(&h.finalize())[..16].to_owned()
}

// Arbitrary constant key for pg_advisory_lock: "tally" in ASCII.
const LOCK_KEY: i64 = 0x0074_616c_6c79;

/// What [`crate::Store::migrate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MigrateReport {
    /// Migrations applied now.
    pub applied: Vec<i32>,
    /// Migrations found already applied.
    #[serde(rename = "already_applied")]
    pub already: Vec<i32>,
    /// Tables distributed now (Citus only; the layout is in docs/scaling.md). Empty on
    /// a single PostgreSQL and once everything is distributed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub distributed: Vec<String>,
}

/// How one table is laid out on a Citus cluster.
enum Layout {
    /// Copied to every node: small catalogues that distributed tables join or refer to.
    Reference,
    /// Sharded by `customer_id`, colocated with `usage_events`: a customer's events,
    /// keys, rollups, quotas and alerts live on the same worker.
    ByCustomer,
    /// Sharded by `service` on its own: the all-customer rollup has no customer.
    ByService,
}

/// Every table of the schema that Citus should know, in the order they are
/// distributed (reference tables before the tables that refer to them; `usage_events`
/// first of the colocated group). `tally_migrations` stays a coordinator-local table.
const LAYOUT: [(&str, Layout); 24] = [
    ("tally_meters", Layout::Reference),
    ("tally_plans", Layout::Reference),
    ("tally_plan_limits", Layout::Reference),
    ("usage_archives", Layout::Reference),
    ("usage_events", Layout::ByCustomer),
    ("usage_event_keys", Layout::ByCustomer),
    ("usage_hourly", Layout::ByCustomer),
    ("usage_daily", Layout::ByCustomer),
    ("usage_dead_letters", Layout::ByCustomer),
    ("tally_customers", Layout::ByCustomer),
    ("tally_quotas", Layout::ByCustomer),
    ("usage_alerts", Layout::ByCustomer),
    ("usage_alert_deliveries", Layout::ByCustomer),
    ("usage_archived_totals", Layout::ByCustomer),
    ("usage_hourly_total", Layout::ByService),
    ("tally_meter_defs", Layout::Reference),
    ("tally_meter_dimensions", Layout::Reference),
    ("tally_meter_cardinality", Layout::Reference),
    ("tally_meter_quarters", Layout::ByCustomer),
    ("tally_meter_days", Layout::ByCustomer),
    ("tally_meter_distinct_quarters", Layout::ByCustomer),
    ("tally_meter_distinct_days", Layout::ByCustomer),
    ("tally_meter_distinct_months", Layout::ByCustomer),
    ("tally_meter_samples", Layout::ByCustomer),
];

/// Whether the database has the Citus extension (then Tally's tables are distributed).
pub(crate) async fn is_citus(client: &tokio_postgres::Client) -> Result<bool> {
    client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')",
            &[],
        )
        .await
        .map_err(Error::db("looking for the citus extension"))?
        .try_get(0)
        .map_err(Error::db("looking for the citus extension"))
}

/// What the application role may do to each of Tally's tables: what the recorder,
/// the reads, quotas and alert delivery need, and nothing that could break the
/// installation (the migration ledger, the archive ledger and the catalogue stay
/// read-only: migrate, archive, restore and `define_meter` run as the owner).
const APP_PRIVILEGES: [(&str, &str); 26] = [
    ("usage_events", "SELECT, INSERT"),
    // `partition_status` counts the default partition's rows directly.
    ("usage_events_default", "SELECT"),
    ("usage_event_keys", "SELECT, INSERT"),
    // Rollups merge by INSERT … ON CONFLICT DO UPDATE.
    ("usage_hourly", "SELECT, INSERT, UPDATE"),
    ("usage_hourly_total", "SELECT, INSERT, UPDATE"),
    ("usage_daily", "SELECT, INSERT, UPDATE"),
    ("usage_dead_letters", "SELECT, INSERT"),
    ("usage_alerts", "SELECT, INSERT"),
    ("usage_alert_deliveries", "SELECT, INSERT"),
    // Plans, limits, customers and quotas are the application's to administer.
    ("tally_plans", "SELECT, INSERT, UPDATE, DELETE"),
    ("tally_plan_limits", "SELECT, INSERT, UPDATE, DELETE"),
    ("tally_customers", "SELECT, INSERT, UPDATE, DELETE"),
    ("tally_quotas", "SELECT, INSERT, UPDATE, DELETE"),
    ("tally_meters", "SELECT"),
    ("tally_migrations", "SELECT"),
    ("usage_archives", "SELECT"),
    ("usage_archived_totals", "SELECT"),
    // Meters are the application's to define, restart and delete (OpenMeter's API
    // does); their rollups merge like the service rollups. A deleted (or restarted)
    // meter's definition is marked, not removed; its rows under the retired number are.
    ("tally_meter_defs", "SELECT, INSERT, UPDATE"),
    ("tally_meter_dimensions", "SELECT, INSERT, DELETE"),
    ("tally_meter_cardinality", "SELECT, INSERT, UPDATE, DELETE"),
    ("tally_meter_quarters", "SELECT, INSERT, UPDATE, DELETE"),
    ("tally_meter_days", "SELECT, INSERT, UPDATE, DELETE"),
    ("tally_meter_distinct_quarters", "SELECT, INSERT, DELETE"),
    ("tally_meter_distinct_days", "SELECT, INSERT, DELETE"),
    ("tally_meter_distinct_months", "SELECT, INSERT, DELETE"),
    ("tally_meter_samples", "SELECT, INSERT, DELETE"),
];

/// The SQL that gives `role` exactly the privileges an application needs on Tally's
/// tables (docs/operations.md), revoking anything wider granted before. Run it as the
/// schema owner after each migrate ([`crate::Store::grant_app`] does). Identity
/// columns need no sequence grant: an INSERT draws from them with the table's right
/// (a USAGE on sequences granted by older instructions is harmless and left).
pub fn app_grants(role: &str) -> Result<String> {
    if role.is_empty() || role.len() > 63 || role.contains('\0') {
        return Err(Error::invalid(
            "role",
            role,
            "a PostgreSQL role name is 1 to 63 bytes, without NUL",
        ));
    }
    let role = format!("\"{}\"", role.replace('"', "\"\""));
    let mut sql = String::new();
    for (table, privileges) in APP_PRIVILEGES {
        sql.push_str(&format!(
            "REVOKE ALL ON {table} FROM {role};\nGRANT {privileges} ON {table} TO {role};\n"
        ));
    }
    Ok(sql)
}

/// On a database with the Citus extension, distributes every table of [`LAYOUT`] that
/// is not distributed yet (existing rows move to the workers). Returns those tables.
async fn distribute(client: &tokio_postgres::Client) -> Result<Vec<String>> {
    const CTX: &str = "distributing the schema";
    if !is_citus(client).await? {
        return Ok(Vec::new());
    }
    let known: Vec<String> = client
        .query(
            "SELECT logicalrelid::regclass::text FROM pg_dist_partition",
            &[],
        )
        .await
        .map_err(Error::db(CTX))?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()
        .map_err(Error::db(CTX))?;
    let mut done = Vec::new();
    for (table, layout) in &LAYOUT {
        if known.iter().any(|k| k == table) {
            continue;
        }
        let sql = match layout {
            Layout::Reference => "SELECT create_reference_table($1::text::regclass)",
            Layout::ByCustomer if *table == "usage_events" => {
                "SELECT create_distributed_table($1::text::regclass, 'customer_id', colocate_with => 'default')"
            }
            Layout::ByCustomer => {
                "SELECT create_distributed_table($1::text::regclass, 'customer_id', colocate_with => 'usage_events')"
            }
            Layout::ByService => {
                "SELECT create_distributed_table($1::text::regclass, 'service', colocate_with => 'none')"
            }
        };
        client
            .execute(sql, &[table])
            .await
            .map_err(Error::db(CTX))?;
        tracing::info!(table, "distributed");
        done.push((*table).to_owned());
    }
    Ok(done)
}

/// Applies the embedded migrations that are missing, each in its own transaction.
///
/// Safe to run from several processes at once (a session advisory lock serialises
/// them) and a no-op when everything is applied. A migration whose file changed after
/// it was applied is an error, as is a database migrated by a newer build.
pub(crate) async fn migrate(client: &mut tokio_postgres::Client) -> Result<MigrateReport> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(Error::db("taking the migration lock"))?;
    let result = match migrate_locked(client).await {
        Ok(mut report) => distribute(client).await.map(|d| {
            report.distributed = d;
            report
        }),
        Err(e) => Err(e),
    };
    // Unlock even after a failure; the session ends the lock anyway if this fails too.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let report = result?;
    unlock.map_err(Error::db("releasing the migration lock"))?;
    Ok(report)
}

async fn migrate_locked(client: &mut tokio_postgres::Client) -> Result<MigrateReport> {
    // Only create the ledger when it is missing: `CREATE … IF NOT EXISTS` needs the
    // CREATE privilege even when it does nothing, and an application role without DDL
    // rights must be able to run a migrate that has nothing to do.
    let exists: bool = client
        .query_one("SELECT to_regclass('tally_migrations') IS NOT NULL", &[])
        .await
        .map_err(Error::db("looking for tally_migrations"))?
        .try_get(0)
        .map_err(Error::db("looking for tally_migrations"))?;
    if !exists {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS tally_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
            )
            .await
            .map_err(Error::db("creating tally_migrations"))?;
    }
    let rows = client
        .query(
            "SELECT version, name, checksum FROM tally_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(Error::db("reading tally_migrations"))?;
    let mut report = MigrateReport::default();
    for row in &rows {
        let version: i32 = row
            .try_get(0)
            .map_err(Error::db("reading tally_migrations"))?;
        let applied: String = row
            .try_get(2)
            .map_err(Error::db("reading tally_migrations"))?;
        let Some(m) = MIGRATIONS.iter().find(|m| m.version == version) else {
            return Err(Error::unknown_migration(version));
        };
        let embedded = m.checksum();
        if applied != embedded {
            return Err(Error::checksum_mismatch(version, m.name, applied, embedded));
        }
        report.already.push(version);
    }
    for m in MIGRATIONS
        .iter()
        .filter(|m| !report.already.contains(&m.version))
    {
        let tx = client
            .transaction()
            .await
            .map_err(Error::db("starting a migration"))?;
        // One statement at a time, as psql sends a file: Citus passes a multi-statement
        // query string on to the workers, which refuse it ("cannot insert multiple
        // commands into a prepared statement"), so a distributed installation could
        // not take a new migration whole.
        for statement in statements(m.sql) {
            tx.batch_execute(statement)
                .await
                .map_err(Error::db("applying a migration"))?;
        }
        tx.execute(
            "INSERT INTO tally_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &m.checksum()],
        )
        .await
        .map_err(Error::db("recording a migration"))?;
        tx.commit()
            .await
            .map_err(Error::db("committing a migration"))?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        report.applied.push(m.version);
    }
    Ok(report)
}

/// The statements of a migration file, in order, each without its `;`: split at every
/// `;` outside quotes, quoted identifiers, dollar-quoted bodies and comments. A piece
/// with nothing but comments and white space is left out. Only for Tally's own files:
/// backslash escapes in `E'…'` strings are not understood (none of them uses one).
fn statements(sql: &str) -> Vec<&str> {
    #[derive(Clone, Copy)]
    enum In {
        Code,
        Quote(u8),
        LineComment,
        // Depth: PostgreSQL's block comments nest.
        BlockComment(u32),
        // Where the opening `$tag$` starts and its length.
        Dollar(usize, usize),
    }
    let bytes = sql.as_bytes();
    let at = |i: usize| bytes.get(i).copied();
    let mut out = Vec::new();
    let (mut start, mut code, mut state, mut i) = (0, false, In::Code, 0);
    while let Some(b) = at(i) {
        let mut step = 1;
        state = match state {
            In::Code => match (b, at(i + 1)) {
                (b'\'' | b'"', _) => {
                    code = true;
                    In::Quote(b)
                }
                (b'-', Some(b'-')) => In::LineComment,
                (b'/', Some(b'*')) => {
                    step = 2;
                    In::BlockComment(1)
                }
                (b'$', _) => {
                    code = true;
                    // `$tag$` with a tag of letters, digits and `_` not starting with a
                    // digit (`$1` is a parameter, not a quote).
                    let tag = bytes
                        .get(i + 1..)
                        .unwrap_or_default()
                        .iter()
                        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                        .count();
                    // Nor is a `$` inside an identifier (`a$b`).
                    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$';
                    let opens = at(i + 1).is_none_or(|c| !c.is_ascii_digit())
                        && !i.checked_sub(1).and_then(at).is_some_and(word);
                    if opens && at(i + 1 + tag) == Some(b'$') {
                        step = tag + 2;
                        In::Dollar(i, tag + 2)
                    } else {
                        In::Code
                    }
                }
                (b';', _) => {
                    if code && let Some(s) = sql.get(start..i) {
                        out.push(s.trim());
                    }
                    (start, code) = (i + 1, false);
                    In::Code
                }
                _ => {
                    code |= !b.is_ascii_whitespace();
                    In::Code
                }
            },
            In::Quote(q) if b == q => In::Code,
            In::LineComment if b == b'\n' => In::Code,
            In::BlockComment(depth) => match (b, at(i + 1)) {
                (b'*', Some(b'/')) => {
                    step = 2;
                    if depth <= 1 {
                        In::Code
                    } else {
                        In::BlockComment(depth - 1)
                    }
                }
                (b'/', Some(b'*')) => {
                    step = 2;
                    In::BlockComment(depth.saturating_add(1))
                }
                _ => state,
            },
            In::Dollar(open, len) => {
                let tag = bytes.get(open..open + len).unwrap_or_default();
                if bytes.get(i..i + len) == Some(tag) {
                    step = len;
                    In::Code
                } else {
                    state
                }
            }
            other => other,
        };
        i += step;
    }
    if code && let Some(s) = sql.get(start..) {
        out.push(s.trim());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn statements_split_at_semicolons_outside_quotes_bodies_and_comments() {
        let sql = "-- a comment; not a statement
            CREATE TABLE a$b$c (x text DEFAULT 'a;b', \"c;d\" int);
            /* one; /* nested; */ still; */ INSERT INTO a VALUES ($1);
            CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;
            DO $body$ BEGIN PERFORM 'x$$;'; END $body$;
            SELECT 1 -- trailing; comment
            ;
            -- only a comment at the end;
            ";
        assert_eq!(
            statements(sql),
            vec![
                "-- a comment; not a statement\n            CREATE TABLE a$b$c (x text DEFAULT 'a;b', \"c;d\" int)",
                "/* one; /* nested; */ still; */ INSERT INTO a VALUES ($1)",
                "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$",
                "DO $body$ BEGIN PERFORM 'x$$;'; END $body$",
                "SELECT 1 -- trailing; comment",
            ]
        );
        assert_eq!(statements("SELECT 1"), vec!["SELECT 1"]);
        assert!(statements("  ;; -- nothing\n").is_empty());
    }

    #[test]
    fn every_migration_splits_into_whole_statements() {
        for m in MIGRATIONS {
            let parts = statements(m.sql);
            assert!(!parts.is_empty(), "{}", m.name);
            for p in &parts {
                // Each piece ends where a statement ends: outside any body or quote.
                assert!(!p.ends_with(','), "{}: {p}", m.name);
                assert_eq!(p.matches("$$").count() % 2, 0, "{}: {p}", m.name);
            }
        }
        let first = statements(MIGRATIONS[0].sql);
        let function = first
            .iter()
            .find(|p| p.contains("CREATE FUNCTION tally_ensure_month_partition"))
            .unwrap();
        assert!(function.ends_with("$$"), "{function}");
    }

    proptest! {
        #[test]
        fn splitting_never_panics_and_keeps_text_in_order(sql in "[ a-z;'\"$/*\\-\n]{0,80}") {
            let parts = statements(&sql);
            let mut from = 0;
            for p in parts {
                let found = sql.get(from..).and_then(|rest| rest.find(p));
                prop_assert!(found.is_some(), "{:?} not in order in {:?}", p, sql);
                from += found.unwrap_or_default() + p.len();
            }
        }

        #[test]
        fn splitting_any_text_never_panics(sql in "\\PC{0,120}") {
            let _ = statements(&sql);
        }
    }
}
