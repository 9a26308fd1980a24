//! `kill -USR2` on a remote logs its device's state: the evidence a
//! stalled or crashed guest leaves in the device, taken while it is stuck
//! (the test harness sends it before it kills a scenario that timed out).
//!
//! The signal is blocked in every thread and read from a signalfd by the
//! control loop, so it never interrupts a lock holder; a remote whose loop
//! is itself stuck says nothing, which is evidence too.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// The signal that asks for a state dump, in the VMM and in remotes.
pub const DUMP_SIGNAL: libc::c_int = libc::SIGUSR2;
/// Size of `struct signalfd_siginfo`.
const SIGINFO_SIZE: usize = 128;

/// A signalfd that becomes readable when `DUMP_SIGNAL` arrives.
pub struct DumpSignal {
    fd: File,
}

impl DumpSignal {
    /// Blocks `DUMP_SIGNAL` in the calling thread (and the threads it
    /// spawns later: call before any) and opens the signalfd.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: sigemptyset initialises the zeroed set; sigaddset adds a
        // valid signal.
        let set = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, DUMP_SIGNAL);
            set
        };
        // SAFETY: `set` is a valid sigset; the old mask is not needed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        // SAFETY: `set` is valid; -1 asks for a new fd.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new fd that we own.
        Ok(DumpSignal {
            fd: unsafe { File::from_raw_fd(fd) },
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Consumes the pending signals; true if there was at least one.
    pub fn take(&mut self) -> bool {
        let mut info = [0u8; SIGINFO_SIZE];
        let mut any = false;
        while let Ok(SIGINFO_SIZE) = self.fd.read(&mut info) {
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
