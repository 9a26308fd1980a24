//! Whole-record I/O on a SOCK_SEQPACKET socket, shared by the sending side
//! (`dispatch`) and the serving side (`serve`).
//!
//! SEQPACKET keeps record boundaries: one send is one record and one recv
//! takes exactly one record, which is what KVM's ioregionfd code expects of
//! the fd (a partial read there fails the guest access). Receiving with
//! MSG_TRUNC makes the kernel report a record's real length even when it
//! did not fit the buffer, so an oversized record is detected instead of
//! silently cut to size.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Instant;

/// Receive buffer length: more than one record, so that with MSG_TRUNC an
/// oversized record is told apart from an exact one.
pub const RECV_BUF_SIZE: usize = 64;

/// Creates a connected SOCK_SEQPACKET pair, close-on-exec so the ends do not
/// leak into processes we spawn. One end goes to the device process, the
/// other is used by the VMM (or handed to KVM).
pub fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded, so both fds are open and owned by nobody else.
    let pair = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok(pair)
}

/// Sends one record. MSG_NOSIGNAL turns a closed peer into EPIPE instead of
/// a SIGPIPE that would kill the process; EINTR is retried (a SEQPACKET send
/// that was interrupted sent nothing). Other flags (MSG_DONTWAIT) pass
/// through, so EAGAIN reaches the caller.
pub fn send_record(fd: BorrowedFd<'_>, record: &[u8], flags: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: the pointer and length describe `record`, which outlives the call.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                record.as_ptr().cast(),
                record.len(),
                flags | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            // SEQPACKET sends are all or nothing; anything else is a kernel surprise.
            if n as usize != record.len() {
                return Err(io::Error::other(format!(
                    "sent {n} of {} bytes of a record",
                    record.len()
                )));
            }
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Receives one record into `buf` and returns its real length, which is
/// larger than `buf` when the record was truncated. 0 means the peer closed
/// (or sent an empty record). EINTR is retried.
pub fn recv_record(fd: BorrowedFd<'_>, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    loop {
        // SAFETY: the pointer and length describe `buf`, which outlives the call;
        // with MSG_TRUNC the kernel still writes at most `buf.len()` bytes.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags | libc::MSG_TRUNC,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// What a receive with a deadline found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A record of this real length (possibly longer than the buffer, or 0).
    Record(usize),
    /// The peer closed its end.
    Closed,
    TimedOut,
}

/// Sends one record, waiting at most until `deadline` for room in the
/// peer's queue; returns false on timeout, when nothing was sent. The wait
/// uses MSG_DONTWAIT and poll rather than the fd's own blocking mode, which
/// we leave alone because KVM may use the same fd.
pub fn send_before(fd: BorrowedFd<'_>, record: &[u8], deadline: Instant) -> io::Result<bool> {
    loop {
        match send_record(fd, record, libc::MSG_DONTWAIT) {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if wait_until(fd, libc::POLLOUT, deadline)?.is_none() {
            return Ok(false);
        }
    }
}

/// Receives one record into `buf`, waiting at most until `deadline`.
pub fn recv_before(fd: BorrowedFd<'_>, buf: &mut [u8], deadline: Instant) -> io::Result<Received> {
    loop {
        let Some(revents) = wait_until(fd, libc::POLLIN, deadline)? else {
            return Ok(Received::TimedOut);
        };
        match recv_record(fd, buf, libc::MSG_DONTWAIT) {
            // A live peer can send an empty record; a closed one also
            // reports POLLHUP.
            Ok(0) if revents & libc::POLLHUP != 0 => return Ok(Received::Closed),
            Ok(len) => return Ok(Received::Record(len)),
            // Readiness without data (a spurious wakeup): wait again.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether the peer has closed its end, checked without waiting: tells a
/// hang-up from an empty record when a blocking recv returned 0.
pub fn peer_hung_up(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let revents = wait_until(fd, 0, Instant::now())?;
    Ok(revents.is_some_and(|r| r & libc::POLLHUP != 0))
}

/// Waits until `fd` reports one of `events` (or an error/hang-up) or the
/// deadline passes. Returns the reported events, or None on timeout. EINTR
/// is retried with the time that is left.
fn wait_until(fd: BorrowedFd<'_>, events: i16, deadline: Instant) -> io::Result<Option<i16>> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Round up so a wait of less than a millisecond does not become a busy poll.
        let ms = left
            .as_micros()
            .div_ceil(1000)
            .min(libc::c_int::MAX as u128) as libc::c_int;
        let mut pfd = [libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        }];
        match crate::sys::poll(&mut pfd, ms) {
            Ok(0) if Instant::now() >= deadline => return Ok(None),
            Ok(0) => {}
            Ok(_) => return Ok(Some(pfd[0].revents)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::Duration;

    #[test]
    fn records_keep_their_boundaries_and_true_length() {
        let (a, b) = socket_pair().unwrap();
        send_record(a.as_fd(), &[1; 32], 0).unwrap();
        send_record(a.as_fd(), &[2; 40], 0).unwrap();
        send_record(a.as_fd(), &[3; 16], 0).unwrap();
        let mut buf = [0u8; RECV_BUF_SIZE];
        assert_eq!(recv_record(b.as_fd(), &mut buf, 0).unwrap(), 32);
        let mut small = [0u8; 33];
        assert_eq!(recv_record(b.as_fd(), &mut small, 0).unwrap(), 40);
        assert_eq!(recv_record(b.as_fd(), &mut buf, 0).unwrap(), 16);
        assert_eq!(buf[0], 3);
        drop(a);
        assert_eq!(recv_record(b.as_fd(), &mut buf, 0).unwrap(), 0);
    }

    #[test]
    fn bounded_receive_reports_records_timeouts_and_hang_ups() {
        let (a, b) = socket_pair().unwrap();
        let mut buf = [0u8; RECV_BUF_SIZE];
        let soon = || Instant::now() + Duration::from_millis(20);
        let deadline = soon();
        assert_eq!(
            recv_before(b.as_fd(), &mut buf, deadline).unwrap(),
            Received::TimedOut
        );
        assert!(Instant::now() >= deadline);
        send_record(a.as_fd(), &[], 0).unwrap();
        let got = recv_before(b.as_fd(), &mut buf, soon()).unwrap();
        assert_eq!(got, Received::Record(0), "an empty record is not a hang-up");
        assert!(send_before(a.as_fd(), &[1; 32], soon()).unwrap());
        let got = recv_before(b.as_fd(), &mut buf, soon()).unwrap();
        assert_eq!(got, Received::Record(32));
        drop(a);
        assert_eq!(
            recv_before(b.as_fd(), &mut buf, soon()).unwrap(),
            Received::Closed
        );
        let err = send_record(b.as_fd(), &[0; 32], 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn bounded_send_times_out_when_the_peer_queue_is_full() {
        let (a, _b) = socket_pair().unwrap();
        let soon = || Instant::now() + Duration::from_millis(20);
        let mut sent = 0;
        while send_before(a.as_fd(), &[0; 32], soon()).unwrap() {
            sent += 1;
            assert!(sent < 1_000_000, "the queue never filled");
        }
        assert!(sent > 0);
    }
}
