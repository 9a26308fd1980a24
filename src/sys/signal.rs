//! Signal sets, thread signal masks, handlers and signalfds behind safe
//! functions: the VMM's stop signals, the vCPU kick and the remotes' dump
//! signal are all built from these.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::thread::JoinHandle;

/// A set of signals.
#[derive(Clone, Copy)]
pub struct SigSet(libc::sigset_t);

impl SigSet {
    pub fn empty() -> Self {
        // SAFETY: sigemptyset initialises the zeroed set it is given.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            SigSet(set)
        }
    }

    /// The set holding `signals`.
    pub fn of(signals: &[libc::c_int]) -> Self {
        let mut set = SigSet::empty();
        for &s in signals {
            set.add(s);
        }
        set
    }

    pub fn add(&mut self, signal: libc::c_int) {
        // SAFETY: adds to an initialised set; an invalid number fails.
        unsafe { libc::sigaddset(&mut self.0, signal) };
    }

    pub fn remove(&mut self, signal: libc::c_int) {
        // SAFETY: removes from an initialised set; an invalid number fails.
        unsafe { libc::sigdelset(&mut self.0, signal) };
    }

    pub fn contains(&self, signal: libc::c_int) -> bool {
        // SAFETY: sigismember reads an initialised set.
        unsafe { libc::sigismember(&self.0, signal) == 1 }
    }

    /// For calls that take a `sigset_t` (ppoll).
    pub fn as_raw(&self) -> &libc::sigset_t {
        &self.0
    }
}

/// Blocks `set` in the calling thread and in the threads it spawns from
/// now on; returns the mask it had before.
pub fn block(set: &SigSet) -> io::Result<SigSet> {
    let mut old = SigSet::empty();
    // SAFETY: valid sets; `old` receives the thread's previous mask.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set.0, &mut old.0) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(old)
}

/// Replaces the calling thread's signal mask with `mask`.
pub fn set_mask(mask: &SigSet) -> io::Result<()> {
    // SAFETY: a valid set; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &mask.0, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// A non-blocking, close-on-exec signalfd for `set`.
pub fn signalfd(set: &SigSet) -> io::Result<File> {
    // SAFETY: `set` is valid; -1 asks for a new fd.
    let fd = unsafe { libc::signalfd(-1, &set.0, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new fd that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Takes every signal of `set` pending on the calling thread (blocked
/// ones), without waiting.
pub fn take_pending(set: &SigSet) {
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: sigtimedwait with a valid set, no siginfo wanted, and a zero
    // timeout, so it never blocks.
    while unsafe { libc::sigtimedwait(&set.0, std::ptr::null_mut(), &zero) } > 0 {}
}

extern "C" fn do_nothing(_signo: libc::c_int) {}

/// Gives `signal` a handler that does nothing, without SA_RESTART: the
/// signal then interrupts the wait it arrives in (EINTR) instead of taking
/// its default action.
pub fn interrupt_only(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid starting point.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = do_nothing as *const () as libc::sighandler_t;
    action.sa_flags = 0;
    // SAFETY: installs a handler that is async-signal-safe (it does nothing).
    if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `signal` to the thread `handle` runs. ESRCH (the thread has
/// returned) is an error like any other.
pub fn signal_thread<T>(handle: &JoinHandle<T>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: `handle` is not joined (we borrow it), so its pthread_t is
    // valid even if the thread has returned since.
    let rc = unsafe { libc::pthread_kill(handle.as_pthread_t(), signal) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_holds_what_was_added_and_not_what_was_removed() {
        let mut set = SigSet::of(&[libc::SIGUSR1, libc::SIGUSR2]);
        assert!(set.contains(libc::SIGUSR1) && set.contains(libc::SIGUSR2));
        assert!(!set.contains(libc::SIGTERM));
        set.remove(libc::SIGUSR1);
        assert!(!set.contains(libc::SIGUSR1));
        assert!(!SigSet::empty().contains(libc::SIGUSR2));
    }

    #[test]
    fn a_blocked_signal_reaches_the_signalfd_and_the_old_mask_comes_back() {
        std::thread::spawn(|| {
            let set = SigSet::of(&[libc::SIGWINCH]);
            let old = block(&set).unwrap();
            assert!(!old.contains(libc::SIGWINCH));
            let mut fd = signalfd(&set).unwrap();
            // SAFETY: raises a blocked signal in this thread.
            assert_eq!(unsafe { libc::raise(libc::SIGWINCH) }, 0);
            let mut info = [0u8; 128];
            use std::io::Read;
            assert_eq!(fd.read(&mut info).unwrap(), 128);
            assert_eq!(
                i32::from_ne_bytes(info[..4].try_into().unwrap()),
                libc::SIGWINCH
            );
            set_mask(&old).unwrap();
        })
        .join()
        .unwrap();
    }
}
