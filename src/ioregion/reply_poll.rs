//! How the two ends of a region fd wait: a while polling, then asleep.
//! A vCPU thread waits so for a remote's answer (`vmm_end`), the remote's
//! threads for the next access (`device_end`).
//!
//! A thread that sleeps in `recv` for the answer to a register read pays
//! the scheduler on both sides of the sleep and the remote's wake-up on
//! top (on PVM the vCPU's world switch too: `pvm_vcpu_put` and
//! `kvm_arch_vcpu_load` cost more when another thread ran in between),
//! and a remote asleep on an idle CPU takes long to wake (46 us for a
//! socket round trip between two CPUs of our cloud VM, 8 on one CPU:
//! `resources/bench/2026-12-06-cpl3-probe-polling.md`). When the two ends
//! run on different CPUs the other's record comes within microseconds,
//! and a thread that polls that long never sleeps. When they share a CPU
//! nothing arrives while one polls, so a poll that comes back empty makes
//! the next ones rarer (1, 2, 4 ... up to [`MAX_SKIPPED`] waits go
//! straight to sleep) and one that catches something makes them regular
//! again: on a shared CPU polling costs a window every [`MAX_SKIPPED`]
//! waits, at most.

use std::time::{Duration, Instant};

use crate::sys::cpus::CpuList;

/// How long a wait polls, by default.
pub const DEFAULT_WINDOW: Duration = Duration::from_micros(50);

/// Waits that go straight to sleep after empty polls, at most.
pub const MAX_SKIPPED: u32 = 256;

/// How long to poll when the user left it to us: not at all when the
/// remote can only run on the one CPU the vCPU threads run on (nothing can
/// answer while they poll), else [`DEFAULT_WINDOW`]. `None`: not known
/// (a remote reached over a socket may run anywhere).
pub fn auto_window(vmm_cpus: Option<&CpuList>, remote_cpus: Option<&CpuList>) -> Duration {
    match (vmm_cpus.and_then(CpuList::single), remote_cpus) {
        (Some(cpu), Some(remote)) if remote.single() == Some(cpu) => Duration::ZERO,
        _ => DEFAULT_WINDOW,
    }
}

/// What one wait's poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled<T> {
    /// It did not poll (polling is off, or backing off): sleep.
    Not,
    Caught(T),
    /// Nothing came within the window: sleep.
    Empty,
}

/// One region fd's polling state, kept under its exchange lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyPoll {
    /// Zero: never poll.
    window: Duration,
    /// Waits left that go straight to sleep.
    skip: u32,
    /// What `skip` becomes after the next empty poll.
    backoff: u32,
    pub caught: u64,
    pub missed: u64,
    said_backing_off: bool,
}

impl ReplyPoll {
    pub fn off() -> Self {
        ReplyPoll::new(Duration::ZERO)
    }

    pub fn new(window: Duration) -> Self {
        ReplyPoll {
            window,
            skip: 0,
            backoff: 1,
            caught: 0,
            missed: 0,
            said_backing_off: false,
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Calls `try_once` until it has something, for at most the window.
    pub fn poll<T>(&mut self, mut try_once: impl FnMut() -> Option<T>) -> Polled<T> {
        if self.window.is_zero() {
            return Polled::Not;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return Polled::Not;
        }
        let until = Instant::now() + self.window;
        loop {
            if let Some(found) = try_once() {
                self.caught += 1;
                self.backoff = 1;
                return Polled::Caught(found);
            }
            if Instant::now() >= until {
                self.missed += 1;
                self.skip = self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_SKIPPED);
                if self.skip == MAX_SKIPPED && !self.said_backing_off {
                    self.said_backing_off = true;
                    log::debug!(
                        "ioregion: answers never came within {:?} of polling (does the \
                         remote share this CPU?); polling once in {MAX_SKIPPED} waits",
                        self.window
                    );
                }
                return Polled::Empty;
            }
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_polls_unless_both_sides_have_the_same_one_cpu() {
        let list = |s: &str| s.parse::<CpuList>().unwrap();
        let (zero, one, both) = (list("0"), list("1"), list("0-1"));
        assert_eq!(auto_window(Some(&zero), Some(&zero)), Duration::ZERO);
        assert_eq!(auto_window(Some(&zero), Some(&one)), DEFAULT_WINDOW);
        assert_eq!(auto_window(Some(&zero), Some(&both)), DEFAULT_WINDOW);
        assert_eq!(auto_window(Some(&both), Some(&both)), DEFAULT_WINDOW);
        assert_eq!(auto_window(Some(&zero), None), DEFAULT_WINDOW);
        assert_eq!(auto_window(None, Some(&zero)), DEFAULT_WINDOW);
    }

    #[test]
    fn off_never_calls() {
        let mut p = ReplyPoll::off();
        assert_eq!(p.poll(|| -> Option<()> { panic!("polled") }), Polled::Not);
    }

    #[test]
    fn an_answer_inside_the_window_is_caught() {
        let mut p = ReplyPoll::new(Duration::from_secs(5));
        let mut tries = 0;
        let got = p.poll(|| {
            tries += 1;
            (tries == 3).then_some(7)
        });
        assert_eq!(
            (got, tries, p.caught, p.missed),
            (Polled::Caught(7), 3, 1, 0)
        );
    }

    /// Empty polls skip 1, 2, 4 ... waits, up to MAX_SKIPPED; a catch
    /// makes every wait poll again.
    #[test]
    fn empty_polls_back_off_and_a_catch_resets_them() {
        let mut p = ReplyPoll::new(Duration::from_micros(1));
        let mut polled_at = Vec::new();
        for wait in 0..1200u32 {
            let mut called = false;
            let polled = p.poll(|| -> Option<()> {
                called = true;
                None
            });
            assert_eq!(polled == Polled::Empty, called);
            if called {
                polled_at.push(wait);
            }
        }
        assert_eq!(polled_at[..5], [0, 2, 5, 10, 19]);
        let gaps: Vec<u32> = polled_at.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(*gaps.iter().max().unwrap(), MAX_SKIPPED + 1);
        assert_eq!(p.missed, polled_at.len() as u64);

        // Skip the rest of the back-off, then catch.
        while p.skip > 0 {
            p.poll(|| Some(()));
        }
        assert_eq!(p.poll(|| Some(())), Polled::Caught(()));
        assert_eq!(p.poll(|| -> Option<()> { None }), Polled::Empty);
        assert_eq!(p.skip, 1, "back to the first step");
    }
}
