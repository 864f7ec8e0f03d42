//! `tally demo` end to end (smaller batch than the default million, same scenarios).

use std::process::Command;

#[test]
fn the_demo_runs_every_scenario_and_cleans_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["demo", "--events", "20000"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {text}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in 1..=10 {
        assert!(
            text.contains(&format!("== {n}. ")),
            "scenario {n} missing:\n{text}"
        );
    }
    for part in [
        "writing them again: 0 new, 6 duplicates",
        "20000 events committed",
        ", 0 rollup mismatches",
        "Block (usage 9950 of 10000: answer 429)",
        "replaying 10 archived events: 0 new",
        "its database is dropped",
    ] {
        assert!(text.contains(part), "{part:?} missing:\n{text}");
    }
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}
