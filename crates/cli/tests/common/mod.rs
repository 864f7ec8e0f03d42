//! Running the `tally` binary against a test database, for the CLI test files.

#![allow(dead_code)] // each test file uses its own share of these

use std::process::{Command, Output};

use tally_testdb::TestDb;

/// Runs `tally args…` with `DATABASE_URL` set to the test database.
pub(crate) fn tally(db: &TestDb, args: &[&str]) -> Output {
    tally_with(args, &[("DATABASE_URL", db.url())])
}

/// Runs `tally args…` with these environment variables set (no database unless one
/// of them names it).
pub(crate) fn tally_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The JSON a successful run printed (fails the test, showing both streams, otherwise).
pub(crate) fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The JSON a run printed that exited with `code` (a lenient import that rejected lines
/// exits 3 with its summary on stdout).
pub(crate) fn json_exiting(out: &Output, code: i32) -> serde_json::Value {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
