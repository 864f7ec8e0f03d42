use std::str::FromStr;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::{Error, Result};

/// Parses a libpq-style URL or key/value string into a driver config.
pub(crate) fn parse_url(url: &str) -> Result<tokio_postgres::Config> {
    let mut cfg = tokio_postgres::Config::from_str(url)
        .map_err(|e| Error::config("database_url", redact(url), e.to_string()))?;
    if cfg.get_application_name().is_none() {
        cfg.application_name("tally");
    }
    Ok(cfg)
}

/// Builds a pool of at most `max_size` connections. Connections are made lazily.
pub(crate) fn build_pool(cfg: tokio_postgres::Config, max_size: usize) -> Result<Pool> {
    let mgr = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(max_size)
        .build()
        .map_err(|e| Error::config("pool", max_size.to_string(), e.to_string()))
}

/// A pooled connection in a transaction begun by hand (`BEGIN` as a statement, so the
/// functions over `&Client` run inside it). If it is dropped while the transaction is
/// open — its future cancelled, or an error returned early — the connection is closed
/// rather than pooled: the server rolls back and frees its locks, and no later user of
/// the pool finds itself inside a stranger's transaction (the pool's fast recycling
/// does not look).
#[derive(Debug)]
pub(crate) struct HandTx {
    // `None` once handed back or closed.
    client: Option<deadpool_postgres::Client>,
    open: bool,
}

impl HandTx {
    pub(crate) fn new(client: deadpool_postgres::Client) -> HandTx {
        HandTx {
            client: Some(client),
            open: false,
        }
    }

    /// The connection (inside the transaction, once begun).
    pub(crate) fn client(&self) -> Result<&deadpool_postgres::Client> {
        self.client.as_ref().ok_or_else(|| {
            Error::internal(
                "using a transaction",
                "its connection was already handed back",
            )
        })
    }

    /// Runs `BEGIN`. Open from before it is sent: a cancelled `BEGIN` may have run.
    pub(crate) async fn begin(&mut self, context: &'static str) -> Result<()> {
        self.open = true;
        self.client()?
            .batch_execute("BEGIN")
            .await
            .map_err(Error::db(context))
    }

    /// Runs `COMMIT` (or `ROLLBACK`); the connection can then be pooled again.
    pub(crate) async fn end(&mut self, commit: bool, context: &'static str) -> Result<()> {
        let sql = if commit { "COMMIT" } else { "ROLLBACK" };
        self.client()?
            .batch_execute(sql)
            .await
            .map_err(Error::db(context))?;
        self.open = false;
        Ok(())
    }
}

impl Drop for HandTx {
    fn drop(&mut self) {
        if let (true, Some(client)) = (self.open, self.client.take()) {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// The URL with any password replaced, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_are_config_errors_without_passwords() {
        let e = parse_url("postgres://u:secret@host:notaport/db").unwrap_err();
        assert!(e.to_string().contains("database_url"));
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
