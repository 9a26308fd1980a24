//! Doorbells: register writes that start the device's work, on a range
//! whose writes are otherwise posted. A doorbell is a write of a mirrored
//! register with one of its opaque bits set (`WriteEffects`: the device
//! said such a write starts something); for our LSI, ISTAT with SIGP.
//!
//! Why wait for one: a guest that rings and then sleeps until the command
//! completes (one command in flight, `fio --iodepth=1`) idles after a
//! posted doorbell: it switches to its idle task and halts, the device's
//! thread then runs the command, and the completion interrupt wakes the
//! vCPU and the guest switches back, once per I/O. Waiting for the
//! doorbell runs the command while the vCPU waits, as a device model in
//! the VMM's own process would, so the interrupt is pending when the guest
//! goes on and it never idles. A guest that rings many times before it
//! sleeps (a deep queue) is better off posting: the device takes the
//! commands in one go and raises one interrupt for many; waiting there
//! turns every command into a round trip of its own (measured at half the
//! IOPS, `resources/bench/2026-12-05-waited-doorbells.md`).
//!
//! `Adaptive` tells the two apart by what the device did between
//! doorbells: when each of the last few posted doorbells found the one
//! before it already applied (the mirror page's count of posted writes
//! applied had reached it), the guest rings once per completion, and the
//! doorbells that follow are waited for; one in `PROBE_EVERY` is posted
//! again to see whether that still holds. Either way a doorbell does the
//! same thing to the device: only who waits changes.

use std::sync::Mutex;

use crate::mirror::page::caught_up;

/// Posted doorbells in a row, each finding the one before applied, after
/// which the policy waits.
pub const ENTER_AFTER: u32 = 4;
/// While waiting, every this many doorbells one is posted to look again.
pub const PROBE_EVERY: u32 = 16;

/// `doorbells=`: how a posted range's doorbells are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DoorbellMode {
    /// Waited for while the guest rings once per completion, else posted.
    #[default]
    Adaptive,
    /// Always waited for.
    Waited,
    /// Always posted, as the range's other writes.
    Posted,
}

impl std::fmt::Display for DoorbellMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DoorbellMode::Adaptive => "waited for while the guest rings once per completion, else posted (doorbells=adaptive)",
            DoorbellMode::Waited => "waited for (doorbells=waited)",
            DoorbellMode::Posted => "posted (doorbells=posted)",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Posting; `streak` doorbells in a row found the one before applied.
    Posting { streak: u32 },
    /// Waiting; `since_probe` doorbells waited for since the last probe.
    Waiting { since_probe: u32 },
    /// The last doorbell was posted to see whether the next one finds it
    /// applied.
    Probing,
}

/// One device's doorbell policy, shared by its vCPU threads.
pub struct Doorbells {
    mode: DoorbellMode,
    state: Mutex<(State, Option<u64>)>,
}

impl Doorbells {
    pub fn new(mode: DoorbellMode) -> Self {
        Doorbells {
            mode,
            state: Mutex::new((State::Posting { streak: 0 }, None)),
        }
    }

    /// Whether to wait for the doorbell about to be sent. `applied` reads
    /// the mirror page's count of posted writes applied; `None` when the
    /// page does not count them, and then the adaptive policy posts.
    pub fn wait(&self, applied: impl FnOnce() -> Option<u64>) -> bool {
        match self.mode {
            DoorbellMode::Waited => true,
            DoorbellMode::Posted => false,
            DoorbellMode::Adaptive => {
                let Some(applied) = applied() else {
                    return false;
                };
                let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let (state, last_posted) = &mut *guard;
                let (next, wait) = decide(*state, *last_posted, applied);
                *state = next;
                wait
            }
        }
    }

    /// The doorbell just sent was posted, and `sent` posted writes had
    /// been sent with it. (Another vCPU's write counted in between makes
    /// `sent` one too high, which can only make the next look find the
    /// doorbell not applied: a doorbell posted that could have waited.)
    pub fn posted(&self, sent: u64) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(sent);
    }
}

/// The policy's next state and whether this doorbell waits, given the
/// count at which the last posted doorbell was sent and the count of
/// posted writes the device has applied now.
fn decide(state: State, last_posted: Option<u64>, applied: u64) -> (State, bool) {
    let before_applied = last_posted.is_some_and(|sent| caught_up(applied, sent));
    match state {
        State::Posting { streak } => {
            let streak = if before_applied { streak + 1 } else { 0 };
            if streak >= ENTER_AFTER {
                (State::Waiting { since_probe: 1 }, true)
            } else {
                (State::Posting { streak }, false)
            }
        }
        State::Waiting { since_probe } if since_probe + 1 >= PROBE_EVERY => (State::Probing, false),
        State::Waiting { since_probe } => (
            State::Waiting {
                since_probe: since_probe + 1,
            },
            true,
        ),
        State::Probing if before_applied => (State::Waiting { since_probe: 1 }, true),
        State::Probing => (State::Posting { streak: 0 }, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rings `n` doorbells, each posted one applied (`keeps_up`) or not by
    /// the next; returns which waited.
    fn ring(
        d: &Doorbells,
        sent: &mut u64,
        applied: &mut u64,
        n: usize,
        keeps_up: bool,
    ) -> Vec<bool> {
        (0..n)
            .map(|_| {
                let wait = d.wait(|| Some(*applied));
                if !wait {
                    *sent = sent.wrapping_add(1);
                    d.posted(*sent);
                }
                if keeps_up {
                    *applied = *sent;
                }
                wait
            })
            .collect()
    }

    #[test]
    fn a_guest_that_rings_once_per_completion_gets_waited_doorbells_with_a_probe_now_and_then() {
        let d = Doorbells::new(DoorbellMode::Adaptive);
        let (mut sent, mut applied) = (0, 0);
        let waits = ring(&d, &mut sent, &mut applied, 45, true);
        // The first finds no doorbell before it; the next four find theirs
        // applied, and the fourth of those already waits.
        assert_eq!(&waits[..5], &[false, false, false, false, true]);
        // Then fifteen waited for and one posted, over and over.
        let p = PROBE_EVERY as usize;
        let posted: Vec<usize> = (5..waits.len()).filter(|&i| !waits[i]).collect();
        assert_eq!(posted, vec![3 + p, 3 + 2 * p]);
    }

    #[test]
    fn a_deep_queue_keeps_its_doorbells_posted() {
        let d = Doorbells::new(DoorbellMode::Adaptive);
        let (mut sent, mut applied) = (0, 0);
        for _ in 0..10 {
            // Sixteen doorbells before the device runs, then it takes them.
            assert!(
                ring(&d, &mut sent, &mut applied, 16, false)
                    .iter()
                    .all(|w| !w)
            );
            applied = sent;
        }
    }

    #[test]
    fn a_probe_the_device_has_not_applied_goes_back_to_posting() {
        let d = Doorbells::new(DoorbellMode::Adaptive);
        let (mut sent, mut applied) = (0, 0);
        ring(
            &d,
            &mut sent,
            &mut applied,
            5 + PROBE_EVERY as usize - 2,
            true,
        );
        // The probe, then the queue deepens: the next one finds it queued.
        assert_eq!(ring(&d, &mut sent, &mut applied, 1, false), [false]);
        assert_eq!(ring(&d, &mut sent, &mut applied, 1, false), [false]);
        // And it takes a new streak to wait again.
        applied = sent;
        assert_eq!(
            ring(&d, &mut sent, &mut applied, 5, true),
            [false, false, false, true, true]
        );
    }

    #[test]
    fn counts_wrap_around_as_the_devices_do() {
        let d = Doorbells::new(DoorbellMode::Adaptive);
        let (mut sent, mut applied) = (u64::MAX - 2, u64::MAX - 2);
        let waits = ring(&d, &mut sent, &mut applied, 6, true);
        assert_eq!(waits, [false, false, false, false, true, true]);
    }

    #[test]
    fn fixed_modes_ignore_the_page_and_adaptive_posts_without_a_count() {
        let waited = Doorbells::new(DoorbellMode::Waited);
        let posted = Doorbells::new(DoorbellMode::Posted);
        let adaptive = Doorbells::new(DoorbellMode::Adaptive);
        for _ in 0..40 {
            assert!(waited.wait(|| panic!("no look at the page")));
            assert!(!posted.wait(|| panic!("no look at the page")));
            assert!(!adaptive.wait(|| None));
            adaptive.posted(1);
        }
    }
}
