//! The example service as a program.
//!
//! `DATABASE_URL=postgres://… BIND=127.0.0.1:3000 cargo run -p tally-example-axum`
//! (`BIND` defaults to `127.0.0.1:3000`; port 0 picks a free one). The recorder and
//! alert thresholds come from the seed's variables (`USAGE_BATCH_SIZE`,
//! `USAGE_BATCH_TIMEOUT`, `USAGE_ALERT_*`); `QUOTA_CHECK=exact` makes hard quotas exact
//! across instances (`cached`, the default: see `QuotaCheck`). It prints `listening on http://ADDR` once
//! it accepts connections, and stops on SIGTERM or Ctrl-C after writing every event it
//! recorded.

use std::process::ExitCode;

use tally::TallyBuilder;
use tally_example_axum::{QuotaCheck, serve_with, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("axum-service: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let check = match std::env::var("QUOTA_CHECK").as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("cached") => QuotaCheck::Cached,
        Ok("exact") => QuotaCheck::Exact,
        Ok(other) => {
            return Err(format!("QUOTA_CHECK={other:?}: expected \"cached\" or \"exact\"").into());
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err("QUOTA_CHECK is not text: expected \"cached\" or \"exact\"".into());
        }
    };
    // Connects now: a wrong URL or password fails here, naming host, port and user.
    let tally = TallyBuilder::from_env()?.build().await?;
    tally.migrate().await?;
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let recorder = tally.recorder();
    Ok(serve_with(listener, tally, recorder, check, shutdown_signal()).await?)
}
