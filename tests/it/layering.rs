//! The layering rule, checked: `tally-store` is the only crate that speaks SQL, names a
//! table or uses the PostgreSQL driver (`tally-throwaway` and `tally-testdb` administer
//! databases — `CREATE DATABASE`, templates — so they may speak SQL, but name none of
//! Tally's tables); and every crate depends only on the layers below it, as its
//! `Cargo.toml` says.

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
            if name == "testdb" || name == "throwaway" {
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

/// Each crate (by directory) and the Tally crates it may depend on: the layers of
/// docs/architecture.md, one way. `export` prices with `analytics`' totals, the one
/// edge inside a layer; the CLI reaches the library only through the facade, and the
/// demo's database through `throwaway`, never the test helpers.
const LAYERS: &[(&str, &[&str])] = &[
    ("core", &[]),
    ("store", &["tally-core"]),
    ("analytics", &["tally-core", "tally-store"]),
    ("alerts", &["tally-core", "tally-store"]),
    ("export", &["tally-core", "tally-store", "tally-analytics"]),
    (
        "tally",
        &[
            "tally-core",
            "tally-store",
            "tally-analytics",
            "tally-alerts",
            "tally-export",
        ],
    ),
    ("throwaway", &["tally"]),
    ("testdb", &["tally", "tally-throwaway"]),
    ("cli", &["tally", "tally-throwaway"]),
];

/// The Tally crates a manifest's `[dependencies]` and `[build-dependencies]` name.
fn tally_dependencies(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut section = String::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        if section != "[dependencies]" && section != "[build-dependencies]" {
            continue;
        }
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        if name == "tally" || name.starts_with("tally-") {
            out.push(name);
        }
    }
    out
}

#[test]
fn every_crate_depends_only_on_the_layers_below_it() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    let mut dirs: Vec<String> = std::fs::read_dir(&crates)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut known: Vec<&str> = LAYERS.iter().map(|(d, _)| *d).collect();
    known.sort();
    assert_eq!(
        dirs, known,
        "a crate without a layer, or a layer without a crate"
    );
    let mut found = Vec::new();
    for (dir, allowed) in LAYERS {
        let manifest = std::fs::read_to_string(crates.join(dir).join("Cargo.toml")).unwrap();
        for dep in tally_dependencies(&manifest) {
            if !allowed.contains(&dep.as_str()) {
                found.push(format!("crates/{dir} depends on {dep}"));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn a_manifest_s_dev_dependencies_are_not_its_dependencies() {
    let manifest = "[package]\nname = \"x\"\n[dependencies]\ntally.workspace = true\n\
                    tally-store = { path = \"s\" }\nserde = \"1\"\n[dev-dependencies]\ntally-testdb.workspace = true\n";
    assert_eq!(tally_dependencies(manifest), ["tally", "tally-store"]);
}
