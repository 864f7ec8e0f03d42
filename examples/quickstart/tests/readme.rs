//! The README's "Use" program is this crate's `src/main.rs`, to the byte, and it runs.

use std::process::Command;

use tally_testdb::TestDb;

/// The README quotes `src/main.rs` whole, in its first ```rust block.
#[test]
fn the_readme_quotes_the_program_as_it_is() {
    let readme = include_str!("../../../README.md");
    let program = include_str!("../src/main.rs");
    let quoted = readme
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a ```rust block in the README");
    assert_eq!(
        quoted, program,
        "README.md's Use block and src/main.rs differ"
    );
}

#[tokio::test]
async fn the_program_runs_and_prints_what_is_due() {
    let db = TestDb::new().await.unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.starts_with("acme: 0.00 due this month"),
        "{printed}"
    );
    let verified = db.tally().verify().await.unwrap();
    assert_eq!(verified.events, 1);
}
