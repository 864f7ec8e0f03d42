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
