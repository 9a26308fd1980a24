//! The device-process side of a region fd: receive command records, run
//! them against the device, answer when asked.
//!
//! The same loop serves both dispatch paths, since KVM and our vCPU threads
//! send identical records. Records are handled strictly in arrival order,
//! which is what gives posted writes their PCI-like ordering: a read is
//! answered only after every write queued before it has been applied.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

pub use super::socket::RECV_BUF_SIZE;
pub use super::socket::socket_pair;
use super::socket::{peer_hung_up, recv_record, send_record};
use super::wire::{self, Access, Cmd, RECORD_SIZE, Resp, WireError};

/// The value answered when a command cannot be served: what a PCI read of
/// a missing device returns.
pub const ERROR_DATA: u64 = u64::MAX;

/// Why `serve` stopped normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeEnd {
    /// The other end (the VMM, or KVM's reference to the fd) went away.
    PeerClosed,
}

/// Why `serve` failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("region socket {op} failed")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Serves commands on `fd` until the peer closes it.
///
/// For a read the handler's return value is the data answered (masked to
/// the access size); for a write its return value is ignored and a
/// requested response echoes the written data, as QEMU's remote does. A
/// record that does not decode is logged and, if it asked for a response,
/// answered with [`ERROR_DATA`] so its sender is not left waiting; otherwise
/// it is dropped.
pub fn serve(fd: OwnedFd, mut handler: impl FnMut(&Cmd) -> u64) -> Result<ServeEnd, ServeError> {
    loop {
        match wait_readable(fd.as_fd())? {
            true => {}
            false => continue,
        }
        if let Drained::Closed(end) = drain(fd.as_fd(), &mut handler, usize::MAX)? {
            return Ok(end);
        }
    }
}

/// Blocks until `fd` has a record or a hang-up; false on a spurious wakeup.
pub fn wait_readable(fd: BorrowedFd<'_>) -> Result<bool, ServeError> {
    match crate::sys::poll(&mut [crate::sys::pollin(Some(fd.as_raw_fd()))], -1) {
        Ok(n) => Ok(n > 0),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
        Err(source) => Err(ServeError::Io { op: "poll", source }),
    }
}

/// How a `drain` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Nothing more is queued.
    Idle,
    /// `limit` records were served; more may be queued.
    Limit,
    Closed(ServeEnd),
}

/// What one receive found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// A record of this real length is in the buffer (cut to its size).
    Record(usize),
    /// Nothing queued (non-blocking receive only).
    Nothing,
    Closed(ServeEnd),
}

/// Receives one record into `buf` (at least RECV_BUF_SIZE bytes), blocking
/// or not. Empty records from a live peer are skipped.
pub fn receive(fd: BorrowedFd<'_>, buf: &mut [u8], block: bool) -> Result<Incoming, ServeError> {
    receive_with(fd, buf, if block { 0 } else { libc::MSG_DONTWAIT })
}

/// Copies the next record into `buf` without taking it off `fd`, and
/// without blocking: a server that owes an order across several fds looks
/// at what each holds before it applies anything, and leaves the rest
/// queued where the VMM's watchdog can see them waiting. Empty records
/// from a live peer are taken and skipped.
pub fn peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Incoming, ServeError> {
    receive_with(fd, buf, libc::MSG_DONTWAIT | libc::MSG_PEEK)
}

fn receive_with(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: libc::c_int,
) -> Result<Incoming, ServeError> {
    loop {
        return match recv_record(fd, buf, flags) {
            // 0 is a hang-up, or an empty record from a live peer, which
            // asks for nothing.
            Ok(0) => match peer_hung_up(fd) {
                Ok(true) => Ok(Incoming::Closed(ServeEnd::PeerClosed)),
                Ok(false) => {
                    log::warn!("ioregion: ignoring an empty record");
                    if flags & libc::MSG_PEEK != 0 {
                        // Peeking leaves it at the head: take it.
                        recv_record(fd, buf, libc::MSG_DONTWAIT).map_err(|e| ServeError::Io {
                            op: "recv",
                            source: e,
                        })?;
                    }
                    continue;
                }
                Err(e) => Err(ServeError::Io {
                    op: "poll",
                    source: e,
                }),
            },
            Ok(len) => Ok(Incoming::Record(len)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Incoming::Nothing),
            Err(e) if is_hangup(&e) => Ok(Incoming::Closed(ServeEnd::PeerClosed)),
            Err(e) => Err(ServeError::Io {
                op: "recv",
                source: e,
            }),
        };
    }
}

/// Applies a received record of real length `len` and answers it if it
/// asked for an answer. Returns `Some` if the peer is gone.
pub fn answer(
    fd: BorrowedFd<'_>,
    buf: &[u8],
    len: usize,
    handler: &mut dyn FnMut(&Cmd) -> u64,
) -> Result<Option<ServeEnd>, ServeError> {
    let record = &buf[..len.min(buf.len())];
    // With MSG_TRUNC `len` is the real length, so an oversized record is
    // reported as such rather than decoded from its first bytes.
    let decoded = if len > RECORD_SIZE {
        Err(WireError::Length(len))
    } else {
        Cmd::decode(record)
    };
    let data = match decoded {
        Ok(cmd) => {
            let value = handler(&cmd);
            if !cmd.response {
                return Ok(None);
            }
            match cmd.access {
                Access::Read => wire::mask_to_size(value, cmd.size),
                Access::Write => cmd.data,
            }
        }
        Err(e) => {
            let wanted = Cmd::wants_response(record);
            log::warn!(
                "ioregion: dropping a malformed command ({e}){}",
                if wanted { "; answering all ones" } else { "" }
            );
            if !wanted {
                return Ok(None);
            }
            ERROR_DATA
        }
    };
    match send_record(fd, &Resp { data }.encode(), 0) {
        Ok(()) => Ok(None),
        Err(e) if is_hangup(&e) => Ok(Some(ServeEnd::PeerClosed)),
        Err(e) => Err(ServeError::Io {
            op: "send",
            source: e,
        }),
    }
}

/// Serves up to `limit` records queued on `fd` right now, without
/// blocking, in arrival order.
pub fn drain(
    fd: BorrowedFd<'_>,
    handler: &mut dyn FnMut(&Cmd) -> u64,
    limit: usize,
) -> Result<Drained, ServeError> {
    let mut buf = [0u8; RECV_BUF_SIZE];
    for _ in 0..limit {
        match receive(fd, &mut buf, false)? {
            Incoming::Record(len) => {
                if let Some(end) = answer(fd, &buf, len, handler)? {
                    return Ok(Drained::Closed(end));
                }
            }
            Incoming::Nothing => return Ok(Drained::Idle),
            Incoming::Closed(end) => return Ok(Drained::Closed(end)),
        }
    }
    Ok(Drained::Limit)
}

fn is_hangup(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN)
    )
}

#[cfg(test)]
mod tests {
    use super::super::dispatch::{RegionFd, WriteKind};
    use super::*;
    use std::thread;
    use std::time::Duration;

    /// A device with four 64-bit registers at offsets 0, 8, 16, 24; an
    /// access of any size at a register's offset covers its low bytes.
    fn register_device(regs: &mut [u64; 4], cmd: &Cmd) -> u64 {
        let Some(reg) = regs.get_mut((cmd.offset / 8) as usize) else {
            return ERROR_DATA;
        };
        match cmd.access {
            Access::Read => *reg,
            Access::Write => {
                let keep = !wire::mask_to_size(u64::MAX, cmd.size);
                *reg = (*reg & keep) | cmd.data;
                0
            }
        }
    }

    fn spawn_device(posted: bool) -> (RegionFd, thread::JoinHandle<(ServeEnd, [u64; 4])>) {
        let (vmm, dev) = socket_pair().unwrap();
        let server = thread::spawn(move || {
            let mut regs = [0u64; 4];
            let end = serve(dev, |cmd| register_device(&mut regs, cmd)).unwrap();
            (end, regs)
        });
        let region = RegionFd::new(vmm, 0, posted).with_timeout(Duration::from_secs(5));
        (region, server)
    }

    fn read_u64(region: &RegionFd, offset: u64, size: usize) -> u64 {
        let mut buf = [0u8; 8];
        region.read(offset, &mut buf[..size]).unwrap();
        u64::from_le_bytes(buf)
    }

    #[test]
    fn dispatch_and_serve_round_trip_every_size() {
        let (region, server) = spawn_device(false);
        let value = 0x1122_3344_5566_7788u64.to_le_bytes();
        for (reg, size) in [(0u64, 1usize), (8, 2), (16, 4), (24, 8)] {
            assert_eq!(
                region.write(reg, &value[..size]).unwrap(),
                WriteKind::Acknowledged
            );
        }
        assert_eq!(read_u64(&region, 0, 8), 0x88);
        assert_eq!(read_u64(&region, 8, 8), 0x7788);
        assert_eq!(read_u64(&region, 16, 8), 0x5566_7788);
        assert_eq!(read_u64(&region, 24, 8), 0x1122_3344_5566_7788);
        // Narrow reads get only the low bytes.
        assert_eq!(read_u64(&region, 24, 1), 0x88);
        assert_eq!(read_u64(&region, 24, 2), 0x7788);
        assert_eq!(read_u64(&region, 24, 4), 0x5566_7788);
        // Out of range: the handler's all-ones, masked to the access size.
        assert_eq!(read_u64(&region, 64, 2), 0xffff);
        drop(region);
        let (end, regs) = server.join().unwrap();
        assert_eq!(end, ServeEnd::PeerClosed);
        assert_eq!(regs, [0x88, 0x7788, 0x5566_7788, 0x1122_3344_5566_7788]);
    }

    #[test]
    fn a_read_sees_the_posted_writes_before_it() {
        let (region, server) = spawn_device(true);
        for i in 0..100u64 {
            let value = (i + 1).to_le_bytes();
            assert_eq!(
                region.write((i % 4) * 8, &value).unwrap(),
                WriteKind::Posted
            );
        }
        assert_eq!(read_u64(&region, 0, 8), 97);
        assert_eq!(read_u64(&region, 8, 8), 98);
        assert_eq!(read_u64(&region, 16, 8), 99);
        assert_eq!(read_u64(&region, 24, 8), 100);
        drop(region);
        assert_eq!(server.join().unwrap().1, [97, 98, 99, 100]);
    }

    #[test]
    fn malformed_records_are_answered_only_when_they_ask() {
        let (vmm, dev) = socket_pair().unwrap();
        let server = thread::spawn(move || serve(dev, |_| 7).unwrap());
        let mut buf = [0u8; RECV_BUF_SIZE];
        // Unknown command byte, response bit set: answered with all ones.
        let mut bad = [0u8; 32];
        bad[0] = 9;
        bad[1] = 0x10;
        send_record(vmm.as_fd(), &bad, 0).unwrap();
        assert_eq!(recv_record(vmm.as_fd(), &mut buf, 0).unwrap(), 32);
        assert_eq!(Resp::decode(&buf[..32]).unwrap().data, ERROR_DATA);
        // Oversized record asking for a response: answered too.
        let mut big = [0u8; 40];
        big[1] = 0x13;
        send_record(vmm.as_fd(), &big, 0).unwrap();
        assert_eq!(recv_record(vmm.as_fd(), &mut buf, 0).unwrap(), 32);
        assert_eq!(Resp::decode(&buf[..32]).unwrap().data, ERROR_DATA);
        // Bad size exponent without the response bit, a short record and an
        // empty one: dropped, so the next answer is the good read's.
        bad[0] = 1;
        bad[1] = 0x05;
        send_record(vmm.as_fd(), &bad, 0).unwrap();
        send_record(vmm.as_fd(), &[0u8; 8], 0).unwrap();
        send_record(vmm.as_fd(), &[], 0).unwrap();
        send_record(vmm.as_fd(), &Cmd::read(0, 0, 4).unwrap().encode(), 0).unwrap();
        assert_eq!(recv_record(vmm.as_fd(), &mut buf, 0).unwrap(), 32);
        assert_eq!(Resp::decode(&buf[..32]).unwrap().data, 7);
        drop(vmm);
        assert_eq!(server.join().unwrap(), ServeEnd::PeerClosed);
    }

    #[test]
    fn peek_leaves_the_record_queued_and_skips_empty_ones() {
        let (vmm, dev) = socket_pair().unwrap();
        let mut buf = [0u8; RECV_BUF_SIZE];
        assert_eq!(peek(dev.as_fd(), &mut buf).unwrap(), Incoming::Nothing);
        send_record(vmm.as_fd(), &[], 0).unwrap();
        send_record(vmm.as_fd(), &[7; 32], 0).unwrap();
        for _ in 0..2 {
            assert_eq!(peek(dev.as_fd(), &mut buf).unwrap(), Incoming::Record(32));
        }
        let got = receive(dev.as_fd(), &mut buf, false).unwrap();
        assert_eq!((got, buf[0]), (Incoming::Record(32), 7));
        assert_eq!(peek(dev.as_fd(), &mut buf).unwrap(), Incoming::Nothing);
        drop(vmm);
        let closed = Incoming::Closed(ServeEnd::PeerClosed);
        assert_eq!(peek(dev.as_fd(), &mut buf).unwrap(), closed);
    }

    #[test]
    fn a_non_posted_write_is_answered_with_its_data() {
        let (vmm, dev) = socket_pair().unwrap();
        let server = thread::spawn(move || serve(dev, |_| 0).unwrap());
        let cmd = Cmd::write(0, 0, &[0x34, 0x12], true).unwrap();
        send_record(vmm.as_fd(), &cmd.encode(), 0).unwrap();
        let mut buf = [0u8; RECV_BUF_SIZE];
        assert_eq!(recv_record(vmm.as_fd(), &mut buf, 0).unwrap(), 32);
        assert_eq!(Resp::decode(&buf[..32]).unwrap().data, 0x1234);
        drop(vmm);
        assert_eq!(server.join().unwrap(), ServeEnd::PeerClosed);
    }
}
