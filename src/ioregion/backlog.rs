//! Noticing a device process that stopped taking posted writes. A posted
//! write returns as soon as it is queued, so nobody waits on it: without
//! a look at the queue, a frozen device would only be found out at the
//! next access that waits for an answer, which for a driver that posts
//! its doorbell and sleeps until an interrupt can be minutes away.
//!
//! Each record sent on a unix socket stays charged to the sender
//! (SIOCOUTQ) until the receiver has taken it. So a queue that is not
//! empty, has not shrunk and has had nothing added since the last look
//! is standing still; [`StallClock`] measures for how long.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

/// One look at a region fd's queue of posted writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Bytes sent and not yet taken by the device process (SIOCOUTQ).
    pub unread_bytes: usize,
    /// Posted writes sent on the fd so far.
    pub posted_sent: u64,
}

/// The bytes queued on `fd` that its peer has not read yet.
pub fn unread_bytes(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int through a valid pointer.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(queued.max(0) as usize)
}

/// Looks further apart than this do not vouch for the time between them:
/// the watcher itself was not running (the whole VMM stopped with SIGSTOP,
/// a host under load), so the device may well have been stopped too.
pub const MAX_GAP: Duration = Duration::from_secs(3);

/// How long a region fd's backlog has stood still.
#[derive(Debug, Default)]
pub struct StallClock {
    last: Option<(Backlog, Instant)>,
    /// When the backlog was first seen as it still is; None while empty.
    since: Option<Instant>,
}

impl StallClock {
    /// Records a look taken at `now`; returns for how long the backlog
    /// has been queued and untouched (zero when it is empty or moving).
    pub fn observe(&mut self, backlog: Backlog, now: Instant) -> Duration {
        let unchanged = self.last.is_some_and(|(seen, at)| {
            seen == backlog && now.saturating_duration_since(at) <= MAX_GAP
        });
        self.last = Some((backlog, now));
        if backlog.unread_bytes == 0 {
            self.since = None;
        } else if !unchanged || self.since.is_none() {
            self.since = Some(now);
        }
        self.since.map_or(Duration::ZERO, |t| now - t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioregion::socket_pair;
    use std::os::fd::AsFd;

    fn look(unread_bytes: usize, posted_sent: u64) -> Backlog {
        Backlog {
            unread_bytes,
            posted_sent,
        }
    }

    #[test]
    fn only_a_queue_that_stands_still_counts() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut clock = StallClock::default();
        assert_eq!(clock.observe(look(0, 0), t0), s(0), "empty");
        assert_eq!(clock.observe(look(64, 2), t0 + s(1)), s(0), "new records");
        assert_eq!(clock.observe(look(64, 2), t0 + s(2)), s(1), "untouched");
        assert_eq!(clock.observe(look(64, 2), t0 + s(4)), s(3));
        assert_eq!(clock.observe(look(32, 2), t0 + s(5)), s(0), "one taken");
        assert_eq!(clock.observe(look(32, 2), t0 + s(7)), s(2));
        assert_eq!(clock.observe(look(32, 3), t0 + s(8)), s(0), "one more sent");
        assert_eq!(clock.observe(look(0, 3), t0 + s(9)), s(0), "drained");
        assert_eq!(clock.observe(look(0, 3), t0 + s(10)), s(0), "idle");
        // A gap in the looks (the VMM was stopped) starts the count afresh.
        assert_eq!(clock.observe(look(32, 4), t0 + s(11)), s(0));
        assert_eq!(clock.observe(look(32, 4), t0 + s(30)), s(0), "after a gap");
        assert_eq!(clock.observe(look(32, 4), t0 + s(31)), s(1));
    }

    #[test]
    fn unread_bytes_fall_when_the_peer_reads() {
        let (ours, theirs) = socket_pair().unwrap();
        assert_eq!(unread_bytes(ours.as_fd()).unwrap(), 0);
        let record = [7u8; 32];
        // SAFETY: send/recv on valid fds with valid buffers.
        unsafe {
            assert_eq!(
                libc::send(ours.as_raw_fd(), record.as_ptr().cast(), 32, 0),
                32
            );
        }
        assert!(unread_bytes(ours.as_fd()).unwrap() >= 32);
        let mut buf = [0u8; 32];
        // SAFETY: as above.
        unsafe {
            assert_eq!(
                libc::recv(theirs.as_raw_fd(), buf.as_mut_ptr().cast(), 32, 0),
                32
            );
        }
        assert_eq!(unread_bytes(ours.as_fd()).unwrap(), 0);
    }
}
