//! The 32-byte ioregionfd command and response records (kernel RFC v3
//! layout, as in the QEMU RFC), encoded and decoded byte by byte.
//!
//! Both dispatch paths (KVM writing the records itself, or our vCPU thread
//! writing them) put exactly these bytes on the fd, so a device process has
//! one parser. The kernel fills the records in host byte order; we only run
//! on x86_64, so the wire is little-endian and we say so explicitly instead
//! of relying on the host.
//!
//! Command record:
//!
//! | bytes  | field                                                      |
//! | ------ | ---------------------------------------------------------- |
//! | 0      | cmd: 0 = read, 1 = write                                   |
//! | 1      | bits 0-3 size exponent (0=1B .. 3=8B), bit 4 response wanted |
//! | 2..8   | sequence number, 48 bits little-endian; 0 = none           |
//! | 8..16  | user_data (from the region registration)                   |
//! | 16..24 | offset from the start of the region                        |
//! | 24..32 | writes: the value in the low bytes, rest zero (ours: a write of up to 4 bytes may put 1 + the posted writes sent before, modulo 2^32, in bytes 28..32); reads: 0, or (ours) 1 + the posted writes sent before |
//!
//! Response record: bytes 0..8 data (read value in the low bytes), then 24
//! bytes of zero padding.
//!
//! The sequence number is ours, not the RFC's: there bytes 2..8 are
//! padding, and KVM (including our module in kernel/) writes them as zero.
//! Our vCPU threads stamp every record they send with the next value of
//! one VM-wide counter ([`Cmd::sequence`]), so a device process that
//! serves several fds can put posted writes back into the order the vCPUs
//! issued them (see `device_end`). A reader that ignores the
//! padding, as the RFC's readers do, is unaffected.
//!
//! A read's data bytes are also ours: the RFC leaves them zero, and our
//! vCPU threads put there 1 + the number of posted writes the VMM had sent
//! to the device before the read ([`Cmd::posted_before`]). A device
//! process that has applied that many already need not look for queued
//! posted writes before it answers (which costs a receive per fd that
//! finds nothing); zero, as KVM writes, tells it nothing. A write of up
//! to 4 bytes says the same in its upper four data bytes, modulo 2^32
//! (every register and SCRIPTS RAM write of our LSI fits): a posted write
//! that finds exactly that many applied is the next one owed, and the
//! device applies it without a receive on each of its other fds.
//!
//! Records travel on one end of a SOCK_SEQPACKET pair ([`socket_pair`]):
//! one send is one record and one recv takes exactly one record, which is
//! what KVM's ioregionfd code expects of the fd (a partial read there fails
//! the guest access). Receiving with MSG_TRUNC makes the kernel report a
//! record's real length even when it did not fit the buffer, so an
//! oversized record is detected instead of silently cut to size.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Length of both records.
pub const RECORD_SIZE: usize = 32;

const CMD_READ: u8 = 0;
const CMD_WRITE: u8 = 1;
const SIZE_EXPONENT_MASK: u8 = 0x0f;
const RESPONSE_BIT: u8 = 1 << 4;
/// Where the sequence number sits, and how wide it is.
const SEQUENCE_BYTES: std::ops::Range<usize> = 2..8;
/// Sequence numbers count modulo 2^48, skipping 0.
pub const SEQUENCE_MASK: u64 = (1 << 48) - 1;
/// Writes up to this size exponent (4 bytes) leave bytes 28..32 free for
/// the count of posted writes sent before them.
const WRITE_COUNT_MAX_EXPONENT: u8 = 2;

/// Why a record could not be built or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("record is {0} bytes, expected exactly {RECORD_SIZE}")]
    Length(usize),
    #[error("unknown command byte {0} (expected 0 = read or 1 = write)")]
    UnknownCmd(u8),
    #[error("size exponent {0} is out of range (0..=3, i.e. 1 to 8 bytes)")]
    SizeExponent(u8),
    #[error("a read command must ask for a response")]
    ReadWithoutResponse,
    #[error("access size {0} is not 1, 2, 4 or 8 bytes")]
    AccessSize(usize),
}

/// Direction of a guest access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// One guest access as sent to the device process.
///
/// `size` is 1, 2, 4 or 8; the constructors and [`Cmd::decode`] guarantee
/// it, and [`Cmd::encode`] relies on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cmd {
    pub access: Access,
    pub size: u8,
    pub response: bool,
    pub user_data: u64,
    pub offset: u64,
    pub data: u64,
    /// The sender's sequence number (48 bits), 0 when it has none: records
    /// KVM writes, and those the constructors make.
    pub sequence: u64,
    /// 1 + the posted writes the sender had sent to the device before
    /// this record; 0 when it does not say (KVM's records, the
    /// constructors'). A write carries only its low 32 bits, and only when
    /// it is at most 4 bytes wide ([`sent_before_of`]).
    pub posted_before: u64,
}

/// The size exponent of a 1, 2, 4 or 8 byte access.
pub fn size_exponent(size: usize) -> Result<u8, WireError> {
    match size {
        1 => Ok(0),
        2 => Ok(1),
        4 => Ok(2),
        8 => Ok(3),
        _ => Err(WireError::AccessSize(size)),
    }
}

/// Keeps only the low `size` bytes of `data`: the record promises zeros
/// above the access size.
pub fn mask_to_size(data: u64, size: u8) -> u64 {
    if size >= 8 {
        data
    } else {
        data & ((1u64 << (u32::from(size) * 8)) - 1)
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(le)
}

impl Cmd {
    /// A read of `size` bytes at `offset`; reads always want a response.
    pub fn read(user_data: u64, offset: u64, size: usize) -> Result<Cmd, WireError> {
        size_exponent(size)?;
        Ok(Cmd {
            access: Access::Read,
            size: size as u8,
            response: true,
            user_data,
            offset,
            data: 0,
            sequence: 0,
            posted_before: 0,
        })
    }

    /// A write of `data` (1, 2, 4 or 8 bytes) at `offset`. `response` is
    /// false for posted writes.
    pub fn write(
        user_data: u64,
        offset: u64,
        data: &[u8],
        response: bool,
    ) -> Result<Cmd, WireError> {
        size_exponent(data.len())?;
        Ok(Cmd {
            access: Access::Write,
            size: data.len() as u8,
            response,
            user_data,
            offset,
            data: crate::bus::data_from_bytes(data),
            sequence: 0,
            posted_before: 0,
        })
    }

    /// The record's bytes. `data` is masked to the access size so the bytes
    /// above it are zero, as the layout requires.
    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        debug_assert!(
            size_exponent(usize::from(self.size)).is_ok(),
            "Cmd with access size {}",
            self.size
        );
        // An invalid size cannot come from the constructors or decode; if a
        // caller builds one by hand, encode the largest valid size not above
        // it (0 as 1, anything over 8 as 8) rather than panic on a vCPU thread.
        let exponent = match self.size {
            0 | 1 => 0,
            2 | 3 => 1,
            4..=7 => 2,
            _ => 3,
        };
        let mut rec = [0u8; RECORD_SIZE];
        rec[0] = match self.access {
            Access::Read => CMD_READ,
            Access::Write => CMD_WRITE,
        };
        rec[1] = exponent | if self.response { RESPONSE_BIT } else { 0 };
        rec[SEQUENCE_BYTES].copy_from_slice(&(self.sequence & SEQUENCE_MASK).to_le_bytes()[..6]);
        rec[8..16].copy_from_slice(&self.user_data.to_le_bytes());
        rec[16..24].copy_from_slice(&self.offset.to_le_bytes());
        let data = match self.access {
            Access::Read => self.posted_before,
            Access::Write if exponent <= WRITE_COUNT_MAX_EXPONENT => {
                mask_to_size(self.data, 1 << exponent) | (self.posted_before << 32)
            }
            Access::Write => mask_to_size(self.data, 1 << exponent),
        };
        rec[24..32].copy_from_slice(&data.to_le_bytes());
        rec
    }

    /// Parses one record.
    ///
    /// The padding bytes and the reserved bits 5-7 of byte 1 are not
    /// checked, so a sender that puts something there in a later revision
    /// still gets served. `data` is masked to the access size, so a handler never sees
    /// bytes the guest did not write.
    pub fn decode(bytes: &[u8]) -> Result<Cmd, WireError> {
        if bytes.len() != RECORD_SIZE {
            return Err(WireError::Length(bytes.len()));
        }
        let access = match bytes[0] {
            CMD_READ => Access::Read,
            CMD_WRITE => Access::Write,
            other => return Err(WireError::UnknownCmd(other)),
        };
        let exponent = bytes[1] & SIZE_EXPONENT_MASK;
        if exponent > 3 {
            return Err(WireError::SizeExponent(exponent));
        }
        let size = 1u8 << exponent;
        let response = bytes[1] & RESPONSE_BIT != 0;
        if access == Access::Read && !response {
            return Err(WireError::ReadWithoutResponse);
        }
        let (data, posted_before) = match access {
            Access::Read => (0, u64_at(bytes, 24)),
            Access::Write if exponent <= WRITE_COUNT_MAX_EXPONENT => (
                mask_to_size(u64_at(bytes, 24), size),
                u64_at(bytes, 24) >> 32,
            ),
            Access::Write => (mask_to_size(u64_at(bytes, 24), size), 0),
        };
        Ok(Cmd {
            access,
            size,
            response,
            user_data: u64_at(bytes, 8),
            offset: u64_at(bytes, 16),
            data,
            sequence: sequence_of(bytes).unwrap_or(0),
            posted_before,
        })
    }

    /// Whether a raw record, valid or not, asks for a response: lets a
    /// server answer a record it cannot decode so the sender is not left
    /// waiting.
    pub fn wants_response(bytes: &[u8]) -> bool {
        bytes.len() >= 2 && bytes[1] & RESPONSE_BIT != 0
    }
}

/// The sequence number of a raw record, valid or not (so that even a
/// record that will not decode keeps its place); None if it carries none
/// or is too short to.
pub fn sequence_of(bytes: &[u8]) -> Option<u64> {
    let raw = bytes.get(SEQUENCE_BYTES)?;
    let mut le = [0u8; 8];
    le[..6].copy_from_slice(raw);
    Some(u64::from_le_bytes(le)).filter(|s| *s != 0)
}

/// What a command record says of the posted writes its sender had sent
/// to the device before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentBefore {
    /// A read: the whole count.
    All(u64),
    /// A write of up to 4 bytes: the count modulo 2^32.
    Low32(u32),
}

/// How many posted writes the sender of a raw record had sent to the
/// device before it, if it says; None for records that do not (KVM's, and
/// writes of 8 bytes).
pub fn sent_before_of(bytes: &[u8]) -> Option<SentBefore> {
    if bytes.len() != RECORD_SIZE {
        return None;
    }
    let said = u64_at(bytes, 24);
    match bytes[0] {
        CMD_READ => said.checked_sub(1).map(SentBefore::All),
        CMD_WRITE if bytes[1] & SIZE_EXPONENT_MASK <= WRITE_COUNT_MAX_EXPONENT => {
            ((said >> 32) as u32).checked_sub(1).map(SentBefore::Low32)
        }
        _ => None,
    }
}

/// The VM-wide count behind [`next_sequence`]. One counter for every
/// vCPU: an access that the guest ordered after another (on another vCPU,
/// through memory) takes its number after the first one's send returned,
/// so it gets a larger one.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// The next sequence number for a command record: never 0 (no sequence),
/// counting modulo 2^48 (see [`sequence_precedes`]).
pub fn next_sequence() -> u64 {
    loop {
        let n = SEQUENCE.fetch_add(1, Ordering::SeqCst).wrapping_add(1) & SEQUENCE_MASK;
        if n != 0 {
            return n;
        }
    }
}

/// Whether sequence number `a` was given out before `b`. They count modulo
/// 2^48, so this compares along the shorter way round the circle: right
/// for any two numbers given out less than 2^47 apart, which records that
/// are queued at the same time always are.
pub fn sequence_precedes(a: u64, b: u64) -> bool {
    let ahead = b.wrapping_sub(a) & SEQUENCE_MASK;
    ahead != 0 && ahead < 1 << 47
}

/// The device's answer to a read or a non-posted write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resp {
    pub data: u64,
}

impl Resp {
    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        let mut rec = [0u8; RECORD_SIZE];
        rec[0..8].copy_from_slice(&self.data.to_le_bytes());
        rec
    }

    /// Parses one response; the padding is not checked (see [`Cmd::decode`]).
    pub fn decode(bytes: &[u8]) -> Result<Resp, WireError> {
        if bytes.len() != RECORD_SIZE {
            return Err(WireError::Length(bytes.len()));
        }
        Ok(Resp {
            data: u64_at(bytes, 0),
        })
    }
}

/// Receive buffer length: more than one record, so that with MSG_TRUNC an
/// oversized record is told apart from an exact one.
pub const RECV_BUF_SIZE: usize = 64;

/// Creates a connected SOCK_SEQPACKET pair, close-on-exec so the ends do not
/// leak into processes we spawn. One end goes to the device process, the
/// other is used by the VMM (or handed to KVM).
pub fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    crate::sys::seqpacket_pair()
}

/// Sends one record. MSG_NOSIGNAL turns a closed peer into EPIPE instead of
/// a SIGPIPE that would kill the process; EINTR is retried (a SEQPACKET send
/// that was interrupted sent nothing). Other flags (MSG_DONTWAIT) pass
/// through, so EAGAIN reaches the caller.
pub fn send_record(fd: BorrowedFd<'_>, record: &[u8], flags: libc::c_int) -> io::Result<()> {
    loop {
        match crate::sys::send(fd, record, flags | libc::MSG_NOSIGNAL) {
            // SEQPACKET sends are all or nothing; anything else is a kernel surprise.
            Ok(n) if n != record.len() => {
                return Err(io::Error::other(format!(
                    "sent {n} of {} bytes of a record",
                    record.len()
                )));
            }
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Receives one record into `buf` and returns its real length, which is
/// larger than `buf` when the record was truncated. 0 means the peer closed
/// (or sent an empty record). EINTR is retried.
pub fn recv_record(fd: BorrowedFd<'_>, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    loop {
        match crate::sys::recv(fd, buf, flags | libc::MSG_TRUNC) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            result => return result,
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

// What the device process does with the records it receives.

/// The value answered when a command cannot be served: what a PCI read of
/// a missing device returns.
pub const ERROR_DATA: u64 = u64::MAX;

/// Why a region fd's thread stopped normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeEnd {
    /// The other end (the VMM, or KVM's reference to the fd) went away.
    PeerClosed,
}

/// Why a region fd's thread failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("region socket {op} failed")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
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
    let flags = if block { 0 } else { libc::MSG_DONTWAIT };
    loop {
        return match recv_record(fd, buf, flags) {
            // 0 is a hang-up, or an empty record from a live peer, which
            // asks for nothing.
            Ok(0) => match peer_hung_up(fd) {
                Ok(true) => Ok(Incoming::Closed(ServeEnd::PeerClosed)),
                Ok(false) => {
                    log::warn!("ioregion: ignoring an empty record");
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
                Access::Read => mask_to_size(value, cmd.size),
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

fn is_hangup(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a command record by hand from the documented layout.
    fn cmd_bytes(cmd: u8, info: u8, user_data: u64, offset: u64, data: [u8; 8]) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0] = cmd;
        b[1] = info;
        b[8..16].copy_from_slice(&user_data.to_le_bytes());
        b[16..24].copy_from_slice(&offset.to_le_bytes());
        b[24..32].copy_from_slice(&data);
        b
    }

    #[test]
    fn read_record_is_byte_exact() {
        let cmd = Cmd::read(0x0102_0304_0506_0708, 0x10, 4).unwrap();
        #[rustfmt::skip]
        let expected: [u8; 32] = [
            0x00, 0x12, 0, 0, 0, 0, 0, 0,                     // read, 4 bytes (exp 2) | resp
            0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,   // user_data
            0x10, 0, 0, 0, 0, 0, 0, 0,                        // offset
            0, 0, 0, 0, 0, 0, 0, 0,                           // data
        ];
        assert_eq!(cmd.encode(), expected);
        assert_eq!(Cmd::decode(&expected).unwrap(), cmd);
    }

    #[test]
    fn write_record_is_byte_exact() {
        let cmd = Cmd::write(2, 0x1234, &[0xaa, 0xbb], false).unwrap();
        #[rustfmt::skip]
        let expected: [u8; 32] = [
            0x01, 0x01, 0, 0, 0, 0, 0, 0,                     // write, 2 bytes, posted
            2, 0, 0, 0, 0, 0, 0, 0,                           // user_data
            0x34, 0x12, 0, 0, 0, 0, 0, 0,                     // offset
            0xaa, 0xbb, 0, 0, 0, 0, 0, 0,                     // data, low bytes
        ];
        assert_eq!(cmd.encode(), expected);
        assert_eq!(cmd.data, 0xbbaa);
        assert_eq!(Cmd::decode(&expected).unwrap(), cmd);
    }

    #[test]
    fn every_size_and_response_bit_encode_as_documented() {
        let value = [1, 2, 3, 4, 5, 6, 7, 8];
        for (size, exponent) in [(1usize, 0u8), (2, 1), (4, 2), (8, 3)] {
            for response in [false, true] {
                let cmd = Cmd::write(0, 0, &value[..size], response).unwrap();
                let mut data = [0u8; 8];
                data[..size].copy_from_slice(&value[..size]);
                let info = exponent | if response { 0x10 } else { 0 };
                let expected = cmd_bytes(1, info, 0, 0, data);
                assert_eq!(cmd.encode(), expected, "size {size} response {response}");
                assert_eq!(Cmd::decode(&expected).unwrap(), cmd);
            }
        }
    }

    #[test]
    fn encode_zeroes_bytes_above_the_access_size() {
        let cmd = Cmd {
            access: Access::Write,
            size: 1,
            response: true,
            user_data: 0,
            offset: 0,
            data: 0xffff_ff42,
            sequence: 0,
            posted_before: 0,
        };
        assert_eq!(&cmd.encode()[24..32], &[0x42, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn a_read_carries_the_posted_writes_sent_before_it() {
        let mut cmd = Cmd::read(0, 0x14, 1).unwrap();
        assert_eq!(sent_before_of(&cmd.encode()), None, "says nothing");
        cmd.posted_before = 1 + 0x1_0000_0005;
        let rec = cmd.encode();
        assert_eq!(
            &rec[24..32],
            &0x1_0000_0006u64.to_le_bytes(),
            "not cut to 1 byte"
        );
        assert_eq!(sent_before_of(&rec), Some(SentBefore::All(0x1_0000_0005)));
        let back = Cmd::decode(&rec).unwrap();
        assert_eq!((back.data, back.posted_before), (0, 0x1_0000_0006));
    }

    #[test]
    fn a_write_of_up_to_4_bytes_carries_the_low_32_bits_of_the_count() {
        let plain = Cmd::write(0, 0x14, &[7], false).unwrap().encode();
        assert_eq!(sent_before_of(&plain), None, "says nothing");
        assert_eq!(Cmd::decode(&plain).unwrap().posted_before, 0);
        for data in [&[0xff][..], &[0xff; 2], &[0xff; 4]] {
            let mut cmd = Cmd::write(0, 0x14, data, false).unwrap();
            cmd.posted_before = 1 + 0x7_0000_0009;
            let rec = cmd.encode();
            assert_eq!(&rec[28..32], &10u32.to_le_bytes(), "{} bytes", data.len());
            assert_eq!(sent_before_of(&rec), Some(SentBefore::Low32(9)));
            let back = Cmd::decode(&rec).unwrap();
            assert_eq!(
                back.data,
                crate::bus::data_from_bytes(data),
                "data as written"
            );
            assert_eq!(back.posted_before, 10);
        }
        // An 8-byte write has no room: its data stays whole.
        let mut cmd = Cmd::write(0, 0x14, &[0xff; 8], false).unwrap();
        cmd.posted_before = 10;
        let rec = cmd.encode();
        assert_eq!(&rec[24..32], &[0xff; 8]);
        assert_eq!(sent_before_of(&rec), None);
        assert_eq!(Cmd::decode(&rec).unwrap().posted_before, 0);
        // 1 + a count of 2^32 - 1 wraps to 0: it says nothing.
        let mut cmd = Cmd::write(0, 0x14, &[1], false).unwrap();
        cmd.posted_before = 1 << 32;
        assert_eq!(sent_before_of(&cmd.encode()), None);
    }

    #[test]
    fn decode_masks_data_and_ignores_reserved_bits() {
        let mut b = cmd_bytes(1, 0x11, 7, 8, [0x42, 0x99, 0x99, 0, 0, 0, 0, 0x99]);
        b[1] |= 0xe0;
        let cmd = Cmd::decode(&b).unwrap();
        assert_eq!(cmd.data, 0x9942);
        assert_eq!(cmd.size, 2);
        assert!(cmd.response);
    }

    #[test]
    fn the_sequence_number_rides_in_bytes_2_to_8() {
        let mut cmd = Cmd::write(3, 0x10, &[7], false).unwrap();
        cmd.sequence = 0x0000_a1b2_c3d4_e5f6;
        let rec = cmd.encode();
        assert_eq!(&rec[2..8], &[0xf6, 0xe5, 0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(Cmd::decode(&rec).unwrap(), cmd);
        assert_eq!(sequence_of(&rec), Some(0xa1b2_c3d4_e5f6));
        // What KVM writes: zero padding, no sequence.
        let kernel = cmd_bytes(1, 0x00, 3, 0x10, [7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(sequence_of(&kernel), None);
        assert_eq!(Cmd::decode(&kernel).unwrap().sequence, 0);
        assert_eq!(sequence_of(&kernel[..5]), None, "too short to carry one");
    }

    #[test]
    fn sequence_numbers_compare_across_the_wrap() {
        assert!(sequence_precedes(1, 2));
        assert!(!sequence_precedes(2, 1));
        assert!(!sequence_precedes(5, 5));
        assert!(sequence_precedes(SEQUENCE_MASK - 1, SEQUENCE_MASK));
        assert!(sequence_precedes(SEQUENCE_MASK, 1), "1 follows the wrap");
        assert!(!sequence_precedes(1, SEQUENCE_MASK));
    }

    #[test]
    fn decode_rejects_malformed_records() {
        let good = cmd_bytes(0, 0x10, 0, 0, [0; 8]);
        assert_eq!(Cmd::decode(&good[..31]), Err(WireError::Length(31)));
        assert_eq!(Cmd::decode(&[0u8; 33]), Err(WireError::Length(33)));
        let mut b = good;
        b[0] = 2;
        assert_eq!(Cmd::decode(&b), Err(WireError::UnknownCmd(2)));
        let mut b = good;
        b[1] = 0x14;
        assert_eq!(Cmd::decode(&b), Err(WireError::SizeExponent(4)));
        let mut b = good;
        b[1] = 0x02;
        assert_eq!(Cmd::decode(&b), Err(WireError::ReadWithoutResponse));
    }

    #[test]
    fn constructors_reject_odd_sizes() {
        assert_eq!(Cmd::read(0, 0, 3), Err(WireError::AccessSize(3)));
        assert_eq!(Cmd::read(0, 0, 0), Err(WireError::AccessSize(0)));
        assert_eq!(
            Cmd::write(0, 0, &[0; 16], true),
            Err(WireError::AccessSize(16))
        );
    }

    #[test]
    fn wants_response_reads_bit_4_of_byte_1() {
        assert!(Cmd::wants_response(&[9, 0x1f]));
        assert!(!Cmd::wants_response(&[0, 0x0f, 0, 0]));
        assert!(!Cmd::wants_response(&[0]));
    }

    #[test]
    fn response_record_is_byte_exact() {
        let resp = Resp {
            data: 0x1122_3344_5566_7788,
        };
        let mut expected = [0u8; 32];
        expected[..8].copy_from_slice(&[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        assert_eq!(resp.encode(), expected);
        assert_eq!(Resp::decode(&expected).unwrap(), resp);
        assert_eq!(Resp::decode(&expected[..16]), Err(WireError::Length(16)));
        assert_eq!(Resp::decode(&[0u8; 40]), Err(WireError::Length(40)));
    }

    #[test]
    fn data_helpers_round_trip_each_size() {
        for size in [1usize, 2, 4, 8] {
            let bytes: Vec<u8> = (1..=size as u8).collect();
            let data = crate::bus::data_from_bytes(&bytes);
            assert_eq!(data, mask_to_size(0x0807_0605_0403_0201, size as u8));
            let mut out = vec![0u8; size];
            crate::bus::data_to_bytes(data, &mut out);
            assert_eq!(out, bytes);
        }
    }
}

#[cfg(test)]
mod record_io_tests {
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
