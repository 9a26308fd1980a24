//! What the unit tests of several modules share: waiting for another
//! thread to get somewhere, with a bound, so a test that would hang fails.

use std::time::{Duration, Instant};

/// How long a test waits for another thread before it fails.
const PATIENCE: Duration = Duration::from_secs(5);

/// Polls `probe` every millisecond until it returns Some; fails the test,
/// saying `what` it waited for, if that takes longer than 5 s.
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// As [`wait_for`], for a condition.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    wait_for(what, || done().then_some(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_what_the_probe_found_and_fails_when_it_finds_nothing() {
        let mut calls = 0;
        assert_eq!(
            wait_for("the third call", || {
                calls += 1;
                (calls == 3).then_some(calls)
            }),
            3
        );
        let gave_up = std::panic::catch_unwind(|| wait_until("never", || false));
        assert!(gave_up.is_err());
    }
}
