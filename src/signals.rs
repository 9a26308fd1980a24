//! Signals as file events, for the VMM and the remotes alike: a set of
//! signals is blocked in every thread (block before spawning any) and read
//! from a signalfd by one loop, so a signal never interrupts a lock holder
//! nor ends the process by its default action.

use std::fs::File;
use std::io::Read;

/// Size of `struct signalfd_siginfo`.
const SIGINFO_SIZE: usize = 128;

pub use crate::sys::signal::{SigSet, block, signalfd};

/// The next pending signal's number, or None when none is pending.
pub fn next(fd: &mut File) -> Option<libc::c_int> {
    let mut info = [0u8; SIGINFO_SIZE];
    match fd.read(&mut info) {
        Ok(SIGINFO_SIZE) => Some(i32::from_ne_bytes(info[0..4].try_into().expect("4 bytes"))),
        _ => None,
    }
}
