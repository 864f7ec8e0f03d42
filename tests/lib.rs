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
) -> (tally::import::Progress, Arc<AtomicBool>) {
    let fired = Arc::new(AtomicBool::new(false));
    let f = fired.clone();
    let progress: tally::import::Progress = Arc::new(move |read: u64| {
        if read > size / 3 && !f.swap(true, Ordering::SeqCst) {
            fault();
        }
    });
    (progress, fired)
}
