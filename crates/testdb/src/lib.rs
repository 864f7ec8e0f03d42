//! Test helpers for Tally's tests and benches. Not published.
//!
//! [`TestDb`] is a fresh, migrated database of the test's own (a
//! [`tally_throwaway::Database`]: on `DATABASE_URL`'s server, or on a throwaway cluster
//! of the process), dropped with the value; [`Cluster::private`] is a cluster a fault
//! test may restart; [`CitusDb`] is a database on the Citus cluster `TALLY_CITUS_URL`
//! names, distributed, dropped from every node. This crate administers databases; it
//! names none of Tally's tables.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let db = tally_testdb::TestDb::new().await?;
//! assert_eq!(db.tally().verify().await?.events, 0);
//! # Ok(()) }
//! ```

use std::time::Duration;

use tally::Tally;
pub use tally_throwaway::{Cluster, Database as TestDb, Error, Result, admin_url};
use tally_throwaway::{connect, db, drop_everywhere, fresh_name, with_dbname};

/// A fresh database on a Citus cluster, migrated (so distributed), dropped from every
/// node when dropped. The cluster is the one `TALLY_CITUS_URL` names (its coordinator,
/// an admin connection whose database has the workers registered, as
/// `../shared/citus/cluster.sh start` leaves it).
///
/// One `CitusDb` at a time uses a cluster, across processes: a test's distributed
/// writes open up to about 70 connections on each worker, and the throwaway
/// cluster's workers take 100, so two or three tests at once ran a worker out of
/// connections, and registering a node (whose connection Citus marks essential)
/// failed. The lock is a session advisory lock on the coordinator, held by
/// `_turn` until the database is dropped.
pub struct CitusDb {
    name: String,
    url: String,
    // Admin connection strings of the coordinator and each worker.
    nodes: Vec<String>,
    tally: Tally,
    report: tally::MigrateReport,
    // Field order matters: this is dropped (the lock released) after `Drop::drop`
    // has dropped the database everywhere.
    _turn: tokio_postgres::Client,
}

/// The advisory lock key that gives one `CitusDb` at a time its turn on a cluster.
const CITUS_LOCK: i64 = 0x7461_6c6c_7963_6974;

impl std::fmt::Debug for CitusDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CitusDb").field("name", &self.name).finish()
    }
}

impl CitusDb {
    /// A new database on the `TALLY_CITUS_URL` cluster, or `None` when it is not set
    /// (the Citus tests then have nothing to run against; `.ci/run` sets it).
    pub async fn new() -> Result<Option<CitusDb>> {
        let Some(mut db) = CitusDb::without_citus().await? else {
            return Ok(None);
        };
        db.enable_citus().await?;
        db.report = db.tally.migrate().await?;
        Ok(Some(db))
    }

    /// A new database on the cluster's nodes that the coordinator does not yet treat
    /// as distributed (no extension there, no workers registered), and not migrated:
    /// a single PostgreSQL as far as Tally can tell, until [`CitusDb::enable_citus`].
    pub async fn without_citus() -> Result<Option<CitusDb>> {
        let admin = match std::env::var("TALLY_CITUS_URL") {
            Ok(url) if !url.trim().is_empty() => url,
            _ => return Ok(None),
        };
        let cfg: tokio_postgres::Config = admin.parse().map_err(db("parsing the Citus URL"))?;
        let turn = connect(&admin).await?;
        // A test that hangs must not hold every other one for ever.
        turn.batch_execute("SET lock_timeout = '10min'")
            .await
            .map_err(db("bounding the wait for the Citus cluster"))?;
        turn.execute("SELECT pg_advisory_lock($1)", &[&CITUS_LOCK])
            .await
            .map_err(db("waiting for the Citus cluster"))?;
        let workers = turn
            .query(
                "SELECT nodename, nodeport FROM pg_dist_node WHERE groupid <> 0 ORDER BY nodeid",
                &[],
            )
            .await
            .map_err(db("listing the Citus workers"))?;
        let mut nodes = vec![admin.clone()];
        for w in &workers {
            let (host, port): (String, i32) = (w.get(0), w.get(1));
            let user = cfg.get_user().unwrap_or("postgres");
            nodes.push(format!(
                "host={host} port={port} user={user} dbname=postgres"
            ));
        }
        let name = fresh_name("tally_c");
        // Citus does not propagate CREATE DATABASE: each node gets the database, and
        // the workers the extension.
        for (i, node) in nodes.iter().enumerate() {
            connect(node)
                .await?
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .map_err(db("creating a Citus test database"))?;
            if i > 0 {
                connect(&with_dbname(node, &name)?)
                    .await?
                    .batch_execute("CREATE EXTENSION citus")
                    .await
                    .map_err(db("creating the citus extension"))?;
            }
        }
        let url = with_dbname(&admin, &name)?;
        let tally = Tally::builder(&url).pool_size(8).build_lazy()?;
        Ok(Some(CitusDb {
            name,
            url,
            nodes,
            tally,
            report: tally::MigrateReport::default(),
            _turn: turn,
        }))
    }

    /// Creates the extension on the coordinator's database and registers the
    /// coordinator and the workers: from now on `migrate` distributes.
    pub async fn enable_citus(&mut self) -> Result<()> {
        let client = connect(&self.url).await?;
        client
            .batch_execute("CREATE EXTENSION citus")
            .await
            .map_err(db("creating the citus extension"))?;
        let mut hosts = Vec::new();
        for node in &self.nodes {
            let cfg: tokio_postgres::Config = node.parse().map_err(db("parsing a node URL"))?;
            hosts.push(host_port(&cfg));
        }
        // Registering a node syncs metadata over a connection Citus marks essential;
        // a worker briefly out of connections fails it as a whole (it is rolled back),
        // and both calls are no-ops for a node already registered, so it is tried
        // again, a bounded number of times, on a fresh connection.
        let mut attempt = 1;
        loop {
            match register(&self.url, &hosts).await {
                Err(e) if attempt < 3 => {
                    eprintln!("tally-testdb: registering the Citus nodes failed, retrying: {e}");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                done => return done,
            }
        }
    }

    /// The coordinator's connection string for this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A Tally handle on the coordinator.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// A plain connection to the database on the coordinator.
    pub async fn client(&self) -> Result<tokio_postgres::Client> {
        connect(&self.url).await
    }

    /// What the first `migrate` did (it distributed the schema).
    pub fn migrated(&self) -> &tally::MigrateReport {
        &self.report
    }
}

impl Drop for CitusDb {
    fn drop(&mut self) {
        if !drop_everywhere(self.nodes.clone(), self.name.clone()) {
            eprintln!(
                "tally-testdb: could not drop Citus test database {}",
                self.name
            );
        }
    }
}

/// Registers the first of `hosts` as the coordinator and the others as workers.
async fn register(url: &str, hosts: &[(String, u16)]) -> Result<()> {
    let client = connect(url).await?;
    let mut hosts = hosts.iter();
    if let Some((host, port)) = hosts.next() {
        client
            .execute(
                "SELECT citus_set_coordinator_host($1, $2)",
                &[host, &i32::from(*port)],
            )
            .await
            .map_err(db("registering the coordinator"))?;
    }
    for (host, port) in hosts {
        client
            .execute("SELECT citus_add_node($1, $2)", &[host, &i32::from(*port)])
            .await
            .map_err(db("registering a worker"))?;
    }
    Ok(())
}

fn host_port(cfg: &tokio_postgres::Config) -> (String, u16) {
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    (host, cfg.get_ports().first().copied().unwrap_or(5432))
}
