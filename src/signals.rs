//! Signals as file events, for the VMM and the remotes alike: a set of
//! signals is blocked in every thread (block before spawning any) and read
//! from a signalfd by one loop, so a signal never interrupts a lock holder
//! nor ends the process by its default action.

use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;

/// Size of `struct signalfd_siginfo`.
const SIGINFO_SIZE: usize = 128;

/// The set holding `signals`.
pub fn set_of(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set; sigaddset adds
    // signals to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks `set` in the calling thread and the threads it spawns later.
pub fn block(set: &libc::sigset_t) -> std::io::Result<()> {
    // SAFETY: `set` is a valid sigset; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// A non-blocking signalfd for `set`.
pub fn signalfd(set: &libc::sigset_t) -> std::io::Result<File> {
    // SAFETY: `set` is valid; -1 asks for a new fd.
    let fd = unsafe { libc::signalfd(-1, set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new fd that we own.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The next pending signal's number, or None when none is pending.
pub fn next(fd: &mut File) -> Option<libc::c_int> {
    let mut info = [0u8; SIGINFO_SIZE];
    match fd.read(&mut info) {
        Ok(SIGINFO_SIZE) => Some(i32::from_ne_bytes(info[0..4].try_into().expect("4 bytes"))),
        _ => None,
    }
}
