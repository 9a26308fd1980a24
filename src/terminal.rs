//! Raw mode for an interactive console, restored however the VMM ends.

use std::os::fd::RawFd;

/// Puts a tty in raw mode and restores its settings when dropped.
pub struct RawModeGuard {
    fd: RawFd,
    saved: libc::termios,
}

impl RawModeGuard {
    /// Returns None when `fd` is not a terminal (a pipe or a file).
    pub fn new(fd: RawFd) -> std::io::Result<Option<Self>> {
        // SAFETY: isatty only inspects the fd.
        if unsafe { libc::isatty(fd) } != 1 {
            return Ok(None);
        }
        // SAFETY: an all-zero termios is a valid buffer for tcgetattr to fill.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios buffer.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: `raw` is a valid termios.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so the VMM's own log lines stay readable.
        raw.c_oflag |= libc::OPOST;
        // SAFETY: `raw` is a valid termios derived from the current one.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Some(RawModeGuard { fd, saved }))
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `new` on the same fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}
