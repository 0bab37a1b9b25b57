//! Counts panics on every thread, so a check can fail on a panic that a
//! tokio task swallowed.
//!
//! Under libFuzzer this adds nothing: libfuzzer-sys installs a panic hook that
//! aborts the process before any unwinding, in whichever thread panicked (a
//! tokio worker included), and the hook installed here calls it. Under
//! `cargo test` there is no such hook: tokio catches a task's panic and the
//! test would pass. The counter closes that gap.

use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

static PANICS: AtomicU64 = AtomicU64::new(0);
static INSTALL: Once = Once::new();

/// Installs the counting hook (once per process), keeping the hook that was
/// there before (libFuzzer's abort, or the default message) as the next step.
pub fn watch() {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

/// Panics seen since [`watch`] was first called.
pub fn count() -> u64 {
    PANICS.load(Ordering::SeqCst)
}
