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

/// The checks count panics in every thread (a tokio task's panic is a
/// finding too), so one replay at a time: a regression failing in one test
/// must not show up as a panic in the other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn regressions_stay_fixed() {
    let _turn = one_at_a_time();
    for target in TARGETS {
        replay(target, "regressions");
    }
}

#[test]
fn seed_corpus_passes() {
    let _turn = one_at_a_time();
    for target in TARGETS {
        let n = replay(target, "corpus");
        assert!(n > 0, "{} has no seed corpus", target.name);
    }
}
