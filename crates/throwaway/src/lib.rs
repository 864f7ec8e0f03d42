//! A throwaway PostgreSQL for Tally: a fresh, migrated database of its own, dropped
//! when it is dropped. What `tally demo` runs on, and what Tally's tests and benches
//! get through `tally-testdb`. Not published.
//!
//! [`Database::new`] clones a migrated template (about 70 ms):
//!
//! - with `DATABASE_URL` set, on that server (the URL is an admin connection: it must be
//!   allowed to `CREATE DATABASE`);
//! - without it, on one throwaway cluster per process, started from the system's
//!   PostgreSQL binaries (`pg_config --bindir`, `/usr/lib/postgresql/*/bin`) in a
//!   temporary directory, reachable only through a Unix socket there, and run as the
//!   `postgres` user through `runuser` when the process is root (`initdb` refuses root).
//!   The cluster stops and its directory is removed when the process exits, however it
//!   exits: a watcher shell holds the other end of a pipe and stops the server at EOF.
//!
//! The template is named after Tally's schema fingerprint, so a schema change builds a
//! new one; concurrent processes (cargo-nextest runs one per test) serialise its
//! creation with an advisory lock.
//!
//! Each database comes with a [`tally::Tally`] handle on it. [`Database::client`] gives a
//! plain driver connection for what a caller does behind Tally's back. This crate
//! administers databases (`CREATE DATABASE`, templates); it names none of Tally's
//! tables.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let db = tally_throwaway::Database::new().await?;
//! assert_eq!(db.tally().verify().await?.events, 0);
//! # Ok(()) }
//! ```

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tally::Tally;
use tokio::sync::OnceCell;

/// Why no database could be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Neither `DATABASE_URL` nor PostgreSQL server binaries are available.
    #[error(
        "no PostgreSQL to test against: DATABASE_URL is not set and no server binaries were found ({searched}). \
         Install the PostgreSQL server package (Debian/Ubuntu: `apt-get install postgresql`; Fedora: \
         `dnf install postgresql-server`; macOS: `brew install postgresql`) or set DATABASE_URL to a server \
         where this user may CREATE DATABASE"
    )]
    NoServer {
        /// Where binaries were looked for.
        searched: String,
    },
    /// Starting the throwaway cluster failed.
    #[error("starting a throwaway PostgreSQL cluster: {0}")]
    Cluster(String),
    /// The server refused an administrative statement or could not be reached.
    #[error("{context}: {source}")]
    Db {
        /// What was being done.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Tally failed on the new database (migrating it).
    #[error(transparent)]
    Tally(#[from] tally::Error),
}

#[doc(hidden)]
pub fn db(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |source| Error::Db { context, source }
}

/// What this crate returns.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A fresh, migrated database, dropped (with `WITH (FORCE)`) when this is dropped.
pub struct Database {
    name: String,
    url: String,
    admin_url: String,
    tally: Tally,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("name", &self.name)
            .finish()
    }
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Database {
    /// A new database cloned from the migrated template.
    pub async fn new() -> Result<Database> {
        let admin_url = admin_url()?;
        let template = TEMPLATE
            .get_or_try_init(|| build_template(&admin_url))
            .await?
            .clone();
        Database::create(admin_url, &template).await
    }

    /// A new database cloned from the migrated template on `cluster` (a private one,
    /// for fault tests).
    pub async fn new_on(cluster: &Cluster) -> Result<Database> {
        let admin_url = cluster.admin_url();
        let template = build_template(&admin_url).await?;
        Database::create(admin_url, &template).await
    }

    /// A new database without Tally's schema (for migration tests).
    pub async fn empty() -> Result<Database> {
        Database::create(admin_url()?, "template0").await
    }

    async fn create(admin_url: String, template: &str) -> Result<Database> {
        let name = fresh_name("tally_t");
        let admin = connect(&admin_url).await?;
        // Identifiers cannot be bind parameters; both names are made here of [a-z0-9_].
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .await
            .map_err(db("creating a throwaway database"))?;
        let url = with_dbname(&admin_url, &name)?;
        let tally = Tally::builder(&url).pool_size(8).build_lazy()?;
        Ok(Database {
            name,
            url,
            admin_url,
            tally,
        })
    }

    /// The database's connection string.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A Tally handle on the database (pool of 8 connections).
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// A plain driver connection to the database, for what a caller does behind
    /// Tally's back.
    pub async fn client(&self) -> Result<tokio_postgres::Client> {
        connect(&self.url).await
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if !drop_everywhere(vec![self.admin_url.clone()], self.name.clone()) {
            eprintln!("tally-throwaway: could not drop database {}", self.name);
        }
    }
}

/// A database name no other test process or call uses: `prefix`, the process id, a
/// counter and the clock's nanoseconds, all of [a-z0-9_] (it is spliced into SQL).
#[doc(hidden)]
pub fn fresh_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// Drops database `name` on every server of `admins` (with `FORCE`); whether all went.
/// Drop may run inside a runtime, which cannot block: this uses a thread of its own.
#[doc(hidden)]
pub fn drop_everywhere(admins: Vec<String>, name: String) -> bool {
    let dropped = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let mut ok = true;
            for admin in &admins {
                let Ok(client) = connect(admin).await else {
                    ok = false;
                    continue;
                };
                ok &= client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .is_ok();
            }
            ok.then_some(())
        })
    })
    .join();
    matches!(dropped, Ok(Some(())))
}

/// The admin connection string: `DATABASE_URL`, or the throwaway cluster's.
pub fn admin_url() -> Result<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => Ok(url),
        _ => Cluster::shared().map(|c| c.admin_url()),
    }
}

/// A plain driver connection to `url`.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let cfg: tokio_postgres::Config = url.parse().map_err(db("parsing the server URL"))?;
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(db("connecting to the server"))?;
    tokio::spawn(conn);
    Ok(client)
}

/// `url` with its database replaced by `dbname`, as a key=value string.
pub fn with_dbname(url: &str, dbname: &str) -> Result<String> {
    let mut cfg: tokio_postgres::Config = url.parse().map_err(db("parsing the server URL"))?;
    cfg.dbname(dbname);
    // Rebuild a key=value string; tokio_postgres::Config has no Display.
    let mut parts = vec![format!("dbname={dbname}")];
    for h in cfg.get_hosts() {
        match h {
            tokio_postgres::config::Host::Tcp(h) => parts.push(format!("host={h}")),
            tokio_postgres::config::Host::Unix(p) => parts.push(format!("host={}", p.display())),
        }
    }
    if let Some(p) = cfg.get_ports().first() {
        parts.push(format!("port={p}"));
    }
    if let Some(u) = cfg.get_user() {
        parts.push(format!("user={u}"));
    }
    if let Some(pw) = cfg.get_password() {
        parts.push(format!(
            "password='{}'",
            String::from_utf8_lossy(pw)
                .replace('\\', "\\\\")
                .replace('\'', "\\'")
        ));
    }
    Ok(parts.join(" "))
}

// "tallytpl" in ASCII: serialises template builds across processes.
const TEMPLATE_LOCK: i64 = 0x7461_6c6c_7974_706c;

async fn build_template(admin_url: &str) -> Result<String> {
    let name = format!("tally_tmpl_{}", tally::schema_fingerprint());
    let admin = connect(admin_url).await?;
    admin
        .execute("SELECT pg_advisory_lock($1)", &[&TEMPLATE_LOCK])
        .await
        .map_err(db("locking the template"))?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(db("looking for the template"))?
        .is_some();
    if !exists {
        // Templates of older schemas are of no further use.
        let stale = admin
            .query("SELECT datname FROM pg_database WHERE datname LIKE 'tally\\_tmpl\\_%' AND datname <> $1", &[&name])
            .await
            .map_err(db("listing old templates"))?;
        for row in stale {
            let old: String = row.try_get(0).map_err(db("listing old templates"))?;
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {old} WITH (FORCE)"))
                .await
                .map_err(db("dropping an old template"))?;
        }
        let building = format!("{name}_build");
        // Two calls: several statements in one would run as one transaction.
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
            .await
            .map_err(db("creating the template"))?;
        admin
            .batch_execute(&format!("CREATE DATABASE {building}"))
            .await
            .map_err(db("creating the template"))?;
        {
            let tally = Tally::builder(with_dbname(admin_url, &building)?)
                .pool_size(1)
                .build_lazy()?;
            tally.migrate().await?;
        }
        // The pool's connection may still be closing; the rename needs it gone.
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                &[&building],
            )
            .await
            .map_err(db("closing template connections"))?;
        admin
            .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}"))
            .await
            .map_err(db("naming the template"))?;
    }
    admin
        .execute("SELECT pg_advisory_unlock($1)", &[&TEMPLATE_LOCK])
        .await
        .map_err(db("unlocking the template"))?;
    Ok(name)
}

/// A throwaway PostgreSQL cluster, one per process, stopped when the process exits.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    // Holding the write end keeps the watcher waiting; the OS closes it at exit. A
    // line `restart` on it restarts the server.
    watch: Mutex<Child>,
}

static CLUSTER: OnceLock<Result<Cluster, Failure>> = OnceLock::new();

// The first start's failure, kept so every later caller gets the same answer.
#[derive(Debug, Clone)]
enum Failure {
    NoServer(String),
    Cluster(String),
}

impl Cluster {
    /// The process's cluster, started on first use.
    pub fn shared() -> Result<&'static Cluster> {
        let started = CLUSTER.get_or_init(|| {
            Cluster::start().map_err(|e| match e {
                Error::NoServer { searched } => Failure::NoServer(searched),
                other => Failure::Cluster(other.to_string()),
            })
        });
        match started {
            Ok(c) => Ok(c),
            Err(Failure::NoServer(searched)) => Err(Error::NoServer {
                searched: searched.clone(),
            }),
            Err(Failure::Cluster(e)) => Err(Error::Cluster(e.clone())),
        }
    }

    /// The superuser connection string (Unix socket, trust auth).
    pub fn admin_url(&self) -> String {
        format!("host={} user=postgres dbname=postgres", self.dir.display())
    }

    /// A cluster of the caller's own (not shared with other tests), for fault tests
    /// that restart the server. Stopped when dropped or when the process exits.
    pub fn private() -> Result<Cluster> {
        Cluster::start()
    }

    /// Restarts the server the way an operator's restart does (a fast shutdown:
    /// sessions are ended with SQLSTATE 57P01), and waits until it accepts
    /// connections again.
    pub fn restart(&self) -> Result<()> {
        {
            let mut child = self
                .watch
                .lock()
                .map_err(|_| Error::Cluster("watcher lock poisoned".into()))?;
            let stdin = child
                .stdin
                .as_mut()
                .ok_or_else(|| Error::Cluster("the cluster was stopped".into()))?;
            std::io::Write::write_all(stdin, b"restart\n")
                .and_then(|()| std::io::Write::flush(stdin))
                .map_err(|e| Error::Cluster(format!("asking for a restart: {e}")))?;
        }
        // The old server takes a moment to go down; wait for it, then for the new one.
        std::thread::sleep(Duration::from_millis(300));
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .arg("-h")
                .arg(&self.dir)
                .args(["-U", "postgres", "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
                return Err(Error::Cluster(format!(
                    "server did not become ready in 60 s; its log:\n{log}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start() -> Result<Cluster> {
        let bin = find_bindir()?;
        let is_root = std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // Short path: the socket path must stay under 108 bytes.
        let dir = std::env::temp_dir().join(format!(
            "tally-pg-{}-{}",
            std::process::id(),
            nanos % 1_000_000
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Cluster(format!("creating {}: {e}", dir.display())))?;
        let as_pg = |program: &Path| {
            if is_root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            } else {
                Command::new(program)
            }
        };
        if is_root {
            let out = Command::new("chown")
                .args(["postgres:", dir.to_str().unwrap_or_default()])
                .output()
                .map_err(|e| Error::Cluster(format!("running chown: {e}")))?;
            if !out.status.success() {
                return Err(Error::Cluster(format!(
                    "running as root, the cluster must belong to the `postgres` user, but chown failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        let data = dir.join("data");
        let out = as_pg(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .output()
            .map_err(|e| {
                Error::Cluster(format!(
                    "running initdb (as root it runs through runuser): {e}"
                ))
            })?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Error::Cluster(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        // The watcher starts the server, restarts it on each line `restart`, and at EOF
        // on stdin (our process exiting, or `stop`) stops the server and removes the
        // directory.
        let script = r#"
            start() {
                "$1/postgres" -D "$2/data" -k "$2" -c listen_addresses= -c fsync=off -c synchronous_commit=off \
                    -c full_page_writes=off -c max_connections=300 -c shared_buffers=256MB -c timezone=UTC \
                    >>"$2/log" 2>&1 &
                pid=$!
            }
            start "$1" "$2"
            while read -r cmd; do
                if [ "$cmd" = restart ]; then
                    kill -INT "$pid" 2>/dev/null
                    wait "$pid"
                    start "$1" "$2"
                fi
            done
            kill -INT "$pid" 2>/dev/null
            wait "$pid"
            rm -rf "$2"
        "#;
        let watch = as_pg(Path::new("sh"))
            .args(["-c", script, "tally-pg"])
            .arg(&bin)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::Cluster(format!("starting postgres: {e}")))?;
        let cluster = Cluster {
            dir,
            bin,
            watch: Mutex::new(watch),
        };
        cluster.wait_ready()?;
        Ok(cluster)
    }

    /// Stops the server now (otherwise it stops when the process exits).
    pub fn stop(&self) {
        if let Ok(mut child) = self.watch.lock() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn find_bindir() -> Result<PathBuf> {
    let mut searched = Vec::new();
    let has_server = |p: &Path| {
        p.join("initdb").is_file() && p.join("postgres").is_file() && p.join("pg_isready").is_file()
    };
    if let Ok(dir) = std::env::var("PG_BIN") {
        let p = PathBuf::from(dir);
        if has_server(&p) {
            return Ok(p);
        }
        searched.push(format!("PG_BIN={}", p.display()));
    }
    match Command::new("pg_config").arg("--bindir").output() {
        Ok(out) if out.status.success() => {
            let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_server(&p) {
                return Ok(p);
            }
            searched.push(format!("pg_config --bindir ({})", p.display()));
        }
        _ => searched.push("pg_config (not found)".into()),
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort();
    if let Some((_, p)) = versions.into_iter().rev().find(|(_, p)| has_server(p)) {
        return Ok(p);
    }
    searched.push("/usr/lib/postgresql/*/bin".into());
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = PathBuf::from(dir);
        if has_server(&p) {
            return Ok(p);
        }
    }
    searched.push("PATH".into());
    Err(Error::NoServer {
        searched: searched.join(", "),
    })
}
