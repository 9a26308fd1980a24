//! `kill -USR2` on a remote logs its device's state: the evidence a
//! stalled or crashed guest leaves in the device, taken while it is stuck
//! (the test harness sends it before it kills a scenario that timed out).
//!
//! The signal is blocked in every thread and read from a signalfd by the
//! control loop, so it never interrupts a lock holder; a remote whose loop
//! is itself stuck says nothing, which is evidence too.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};

use crate::signals;

/// The signal that asks for a state dump, in the VMM and in remotes.
pub const DUMP_SIGNAL: libc::c_int = libc::SIGUSR2;

/// A signalfd that becomes readable when `DUMP_SIGNAL` arrives.
pub struct DumpSignal {
    fd: File,
}

impl DumpSignal {
    /// Blocks `DUMP_SIGNAL` in the calling thread (and the threads it
    /// spawns later: call before any) and opens the signalfd.
    pub fn new() -> std::io::Result<Self> {
        let set = signals::SigSet::of(&[DUMP_SIGNAL]);
        signals::block(&set)?;
        Ok(DumpSignal {
            fd: signals::signalfd(&set)?,
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Consumes the pending signals; true if there was at least one.
    pub fn take(&mut self) -> bool {
        let mut any = false;
        while signals::next(&mut self.fd).is_some() {
            any = true;
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signal_is_read_not_delivered() {
        // Run in a thread of its own: the mask is per thread, and the
        // signal goes to this thread only (tgkill), so the other tests'
        // threads never see it.
        std::thread::spawn(|| {
            let mut dump = DumpSignal::new().unwrap();
            assert!(!dump.take(), "nothing pending yet");
            // SAFETY: signals this very thread, which blocks the signal.
            unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    libc::syscall(libc::SYS_gettid),
                    DUMP_SIGNAL,
                )
            };
            assert!(dump.take(), "the signal reached the fd");
            assert!(!dump.take(), "and was consumed");
        })
        .join()
        .unwrap();
    }
}
