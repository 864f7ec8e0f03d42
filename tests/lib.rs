//! Helpers for Tally's integration tests: event builders and a TCP proxy that can
//! take "the database" down and bring it back.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use chrono::{DateTime, Utc};
use tally::{CustomerId, EventId, Metadata, Quantity, Service, UsageEvent};
use tokio::{
    net::{TcpListener, TcpStream, UnixStream},
    sync::Notify,
};

/// Parses an RFC 3339 instant.
pub fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("valid RFC 3339")
        .with_timezone(&Utc)
}

/// An event with an explicit id, customer, service, quantity and time.
pub fn event(id: u128, customer: &str, service: Service, quantity: &str, t: &str) -> UsageEvent {
    UsageEvent::new(
        CustomerId::new(customer).unwrap(),
        service,
        quantity.parse::<Quantity>().unwrap(),
    )
    .at(at(t))
    .with_id(EventId::from(uuid::Uuid::from_u128(id)))
}

/// Same, with metadata.
pub fn event_with(id: u128, customer: &str, quantity: &str, t: &str, metadata: &str) -> UsageEvent {
    event(id, customer, Service::API, quantity, t)
        .with_metadata(metadata.parse::<Metadata>().unwrap())
}

/// Where the proxy forwards to.
#[derive(Debug, Clone)]
enum Upstream {
    Tcp(String, u16),
    Unix(std::path::PathBuf),
}

/// A TCP proxy in front of the test database. [`Proxy::down`] cuts every connection
/// and refuses new ones, as a crashed or unreachable server would; [`Proxy::up`]
/// lets connections through again.
pub struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl Proxy {
    /// Starts a proxy to the server of `url` (a key=value or URL connection string).
    pub async fn start(url: &str) -> Proxy {
        let cfg: tokio_postgres::Config = url.parse().expect("valid connection string");
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        let upstream = match cfg.get_hosts().first().expect("a host") {
            tokio_postgres::config::Host::Tcp(h) => Upstream::Tcp(h.clone(), port),
            tokio_postgres::config::Host::Unix(p) => {
                Upstream::Unix(p.join(format!(".s.PGSQL.{port}")))
            }
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Notify::new());
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client); // refused: the server is "down"
                    continue;
                }
                let (upstream, cut) = (upstream.clone(), cut2.clone());
                tokio::spawn(async move {
                    let mut client = client;
                    let copy = async {
                        match upstream {
                            Upstream::Tcp(h, p) => {
                                let mut s = TcpStream::connect((h.as_str(), p)).await?;
                                tokio::io::copy_bidirectional(&mut client, &mut s)
                                    .await
                                    .map(|_| ())
                            }
                            Upstream::Unix(path) => {
                                let mut s = UnixStream::connect(path).await?;
                                tokio::io::copy_bidirectional(&mut client, &mut s)
                                    .await
                                    .map(|_| ())
                            }
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Proxy { addr, up, cut }
    }

    /// A connection string for `dbname` through the proxy.
    pub fn url(&self, url: &str) -> String {
        let cfg: tokio_postgres::Config = url.parse().expect("valid connection string");
        format!(
            "host=127.0.0.1 port={} user={} dbname={}",
            self.addr.port(),
            cfg.get_user().unwrap_or("postgres"),
            cfg.get_dbname().unwrap_or("postgres")
        )
    }

    /// Cuts every open connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    /// Accepts connections again.
    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// `n` API events of quantity 1 for customers `c0`–`c6`, ids from `offset + 1`.
pub fn api_events(n: u128, offset: u128) -> Vec<UsageEvent> {
    (0..n)
        .map(|i| {
            event(
                offset + i + 1,
                &format!("c{}", i % 7),
                Service::API,
                "1",
                "2026-11-01T10:00:00Z",
            )
        })
        .collect()
}

/// A CSV of `rows` API events with explicit ids (so a retried batch dedupes), one unit
/// each, spread over 13 customers and the hours of 2026-11-01.
pub fn numbered_csv(rows: u32) -> String {
    let mut text = String::from("event_id,customer_id,service,quantity,recorded_at\n");
    for i in 0..rows {
        text.push_str(&format!(
            "00000000-0000-7000-8000-{i:012},c{},api,1,2026-11-01T{:02}:00:00Z\n",
            i % 13,
            i % 24
        ));
    }
    text
}

/// An import progress callback that runs `fault` once, when a third of `size` bytes
/// has been read; the flag says whether it ran.
pub fn fault_at_a_third(
    size: u64,
    fault: impl Fn() + Send + Sync + 'static,
) -> (tally::Progress, Arc<AtomicBool>) {
    let fired = Arc::new(AtomicBool::new(false));
    let f = fired.clone();
    let progress: tally::Progress = Arc::new(move |read: u64| {
        if read > size / 3 && !f.swap(true, Ordering::SeqCst) {
            fault();
        }
    });
    (progress, fired)
}

/// The versions of the embedded migrations from `first` to the newest (one file in
/// `migrations/` each, numbered from 1).
pub fn migrations_from(first: i32) -> Vec<i32> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
    let n = std::fs::read_dir(dir)
        .unwrap()
        .filter(|f| {
            f.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".sql")
        })
        .count();
    (first..=n as i32).collect()
}

/// Applies the migration files named below `before` (e.g. `"0009"`) by hand and records
/// each in `tally_migrations` as `migrate` does: a database as an older build left it.
/// Returns how many it applied.
pub async fn migrate_by_hand_before(client: &tokio_postgres::Client, before: &str) -> usize {
    client
        .batch_execute(
            "CREATE TABLE tally_migrations (version integer PRIMARY KEY, name text NOT NULL,
                 checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|f| f.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.as_str() < before)
        .collect();
    files.sort();
    for (i, name) in files.iter().enumerate() {
        let sql = std::fs::read_to_string(format!("{dir}/{name}")).unwrap();
        client.batch_execute(&sql).await.unwrap();
        client
            .execute(
                "INSERT INTO tally_migrations (version, name, checksum)
                 VALUES ($1, $2, encode(sha256(convert_to($3, 'UTF8')), 'hex'))",
                &[&(i as i32 + 1), name, &sql],
            )
            .await
            .unwrap();
    }
    files.len()
}

/// Writes, by SQL, what migration 8's write path left for 901 events of two customers
/// and two services in May 2026 (every 7 min 13 s from 2026-05-03): the events, their
/// keys, the rollups, and the all-customer rollup in two lanes.
pub async fn fill_as_migration_8(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "SELECT tally_ensure_month_partition('2026-05-01');
             INSERT INTO usage_events
             SELECT gen_random_uuid(), CASE WHEN i % 3 = 0 THEN 'globex' ELSE 'acme' END,
                    CASE WHEN i % 2 = 0 THEN 'api' ELSE 'storage' END, (i * 37 % 101) + 0.5,
                    timestamptz '2026-05-03 00:00:00+00' + i * interval '7 minutes 13 seconds', '{}'
             FROM generate_series(0, 900) i;
             INSERT INTO usage_event_keys SELECT event_id, customer_id FROM usage_events;
             INSERT INTO usage_hourly
             SELECT customer_id, service, b, count(*), sum(quantity), min(quantity), max(quantity),
                    coalesce(sum(quantity) FILTER (WHERE recorded_at < b + interval '15 minutes'), 0),
                    coalesce(sum(quantity) FILTER (WHERE recorded_at < b + interval '30 minutes'), 0),
                    coalesce(sum(quantity) FILTER (WHERE recorded_at < b + interval '45 minutes'), 0)
             FROM (SELECT *, date_trunc('hour', recorded_at) AS b FROM usage_events) e GROUP BY 1, 2, 3;
             INSERT INTO usage_daily
             SELECT customer_id, service, date_trunc('day', recorded_at), count(*), sum(quantity),
                    min(quantity), max(quantity)
             FROM usage_events GROUP BY 1, 2, 3;
             INSERT INTO usage_hourly_total
             SELECT service, date_trunc('hour', recorded_at), (customer_id = 'acme')::int,
                    count(*), sum(quantity), min(quantity), max(quantity)
             FROM usage_events GROUP BY 1, 2, 3;",
        )
        .await
        .unwrap();
}

/// Checks an upgraded [`fill_as_migration_8`] database: `verify` is clean, and two
/// Asia/Kolkata days (edges on the half hour), read after the raw events are deleted,
/// so from the rollups alone, equal what the raw events gave.
pub async fn check_quarter_hours_after_upgrade(
    tally: &tally::Tally,
    client: &tokio_postgres::Client,
) {
    let v = tally.verify().await.unwrap();
    assert_eq!((v.events, v.mismatches), (901, 0));
    let r = tally::TimeRange::new(at("2026-05-03T18:30:00Z"), at("2026-05-05T18:30:00Z")).unwrap();
    let zone: tally::Zone = "Asia/Kolkata".parse().unwrap();
    let expected: Vec<(i64, rust_decimal::Decimal)> = client
        .query(
            "SELECT count(*), sum(quantity)::text FROM usage_events
             WHERE recorded_at >= '2026-05-03T18:30:00Z' AND recorded_at < '2026-05-05T18:30:00Z'
             GROUP BY date_trunc('day', recorded_at AT TIME ZONE 'Asia/Kolkata'), service
             ORDER BY date_trunc('day', recorded_at AT TIME ZONE 'Asia/Kolkata'), service",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let sum: String = row.get(1);
            (row.get(0), sum.parse().unwrap())
        })
        .collect();
    client
        .batch_execute("DELETE FROM usage_events")
        .await
        .unwrap();
    let got: Vec<(i64, rust_decimal::Decimal)> = tally
        .usage(r)
        .by(tally::Granularity::Day)
        .in_zone(zone)
        .await
        .unwrap()
        .buckets
        .iter()
        .map(|b| (b.events, b.quantity))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(got.len(), 4);
}
