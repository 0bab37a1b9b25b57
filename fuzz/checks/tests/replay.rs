//! Replays every committed fuzz input on stable, as part of `cargo test`:
//! the crash inputs under `fuzz/regressions/<target>/` (each one a defect
//! that must stay fixed) and the seed corpus under `fuzz/corpus/<target>/`
//! (so a seed that starts failing is seen without a fuzzing run).

use std::path::{Path, PathBuf};

use portico_fuzz::{TARGETS, Target};

/// `fuzz/`, where the corpus and the regressions live.
fn fuzz_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fuzz/checks is inside fuzz/")
}

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
        .collect();
    files.sort();
    files
}

/// Runs `target` on each input, naming the file that fails.
fn replay(target: &Target, kind: &str) -> usize {
    let files = inputs(kind, target.name);
    for file in &files {
        let data = std::fs::read(file).expect("a readable input");
        let outcome = std::panic::catch_unwind(|| (target.check)(&data));
        assert!(
            outcome.is_ok(),
            "{} fails on {} (under libFuzzer: `cargo +nightly fuzz run --sanitizer none {} {}` in fuzz/)",
            target.name,
            file.display(),
            target.name,
            file.display()
        );
    }
    files.len()
}

#[test]
fn regressions_stay_fixed() {
    for target in TARGETS {
        replay(target, "regressions");
    }
}

#[test]
fn seed_corpus_passes() {
    for target in TARGETS {
        let n = replay(target, "corpus");
        assert!(n > 0, "{} has no seed corpus", target.name);
    }
}

#[test]
fn known_open_defects_still_reproduce() {
    use portico_fuzz::http1_raw::{KNOWN_OPEN, violations};
    for known in KNOWN_OPEN {
        let file = fuzz_dir().join("regressions/http1_raw").join(known.input);
        let data = std::fs::read(&file).expect("the input of a known defect");
        let found = violations(&data);
        assert!(
            found.iter().any(|v| v.kind == known.kind),
            "{:?} ({}) no longer reproduces with {}: if it is fixed, delete its entry \
             from KNOWN_OPEN in fuzz/checks/src/http1_raw/mod.rs to arm the oracle. \
             Found instead: {found:?}",
            known.kind,
            known.issue,
            file.display()
        );
    }
}
