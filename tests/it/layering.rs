//! The layering rule, checked: `tally-store` is the only crate that speaks SQL, names a
//! table or uses the PostgreSQL driver. (`tally-testdb` administers test databases —
//! `CREATE DATABASE`, templates — so it may speak SQL, but names none of Tally's
//! tables.)

use std::path::{Path, PathBuf};

/// Every table the migrations create, plus the write path's temporary staging table.
fn tables() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut out = vec!["tally_stage".to_owned(), "tally_migrations".to_owned()];
    for entry in std::fs::read_dir(dir).unwrap() {
        let sql = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for part in sql.split("CREATE TABLE ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `CREATE TABLE %I` in a function makes partitions (named usage_events_…).
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

const SQL: &[&str] = &[
    "SELECT ",
    "INSERT INTO",
    "UPDATE ",
    "DELETE FROM",
    "CREATE TABLE",
    "ON CONFLICT",
    "tokio_postgres",
    "deadpool_postgres",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether `word` occurs in `text` as a whole identifier.
fn has_word(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

#[test]
fn only_the_store_speaks_sql_or_names_a_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tables = tables();
    assert!(tables.len() >= 14, "{tables:?}");
    let mut found = Vec::new();
    let mut checked = 0;
    // The crates, and the examples with their tests: an embedding program goes through
    // the facade too.
    let dirs = ["crates", "examples"]
        .iter()
        .flat_map(|d| std::fs::read_dir(root.join(d)).unwrap())
        .map(|entry| entry.unwrap().path());
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if name == "store" {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        if dir.parent().is_some_and(|p| p.ends_with("examples")) {
            rust_files(&dir.join("tests"), &mut files);
        }
        for file in files {
            checked += 1;
            let text = std::fs::read_to_string(&file).unwrap();
            for t in &tables {
                if has_word(&text, t) {
                    found.push(format!("{} names table {t}", file.display()));
                }
            }
            if name == "testdb" {
                continue;
            }
            for s in SQL {
                if text.contains(s) {
                    found.push(format!("{} contains {s:?}", file.display()));
                }
            }
        }
    }
    assert!(checked >= 10, "only {checked} files checked");
    assert!(found.is_empty(), "{}", found.join("\n"));
}
