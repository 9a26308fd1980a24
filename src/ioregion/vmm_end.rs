//! The VMM's end of a region fd: what a vCPU thread does with a guest
//! access to a BAR range that a remote serves over ioregion fds.
//!
//! [`IoRegionPath`] is the range as the PCI bus sees it: a read of a
//! mirrored register is answered from the remote's page, any other access
//! goes to this vCPU's [`RegionFd`], and a failure cuts the device off. On
//! the kernel path it registers the range with KVM_SET_IOREGION instead,
//! on a fd of KVM's own, and no exit reaches us, except for the mirrored
//! registers, which KVM leaves to us when it can count the posted writes
//! it sends (our kernel/ module can): their reads exit, to be answered
//! from the page, and the rare access that must reach the device then
//! goes on this vCPU's fd, never on KVM's. [`RegionFd`] sends the same
//! 32-byte record KVM would have sent and waits for the response, so the
//! device process serves both paths alike (`device_end`).
//!
//! Ordering: a device sees accesses in the order they were sent on one fd,
//! and a response carries no request id, so only one command may be in
//! flight per fd. `RegionFd` holds a lock across send + receive; vCPU
//! threads sharing one `RegionFd` take turns, and a read queued behind
//! posted writes reaches the device after them. The lock does not cover
//! other writers: do not register the same fd with KVM
//! (`KVM_SET_IOREGION`) while this path uses it.
//!
//! Across fds, order comes from a number instead: every command sent
//! here carries the next number of one VM-wide sequence
//! ([`wire::next_sequence`]), taken under the fd's lock just before the send. A
//! device process serves one fd per vCPU per range, and the number is
//! what lets it apply posted writes that one vCPU sent to two ranges, or
//! that two vCPUs sent one after the other, in the order they were issued
//! (`device_end`). KVM's records carry none.
//!
//! An access here has a timeout, so a hung device process fails it
//! instead of holding the vCPU (KVM gives up after its own timeout and
//! hands the access to us as an exit, which lands here).
//!
//! A device process that stops taking posted writes must be noticed: a
//! posted write returns as soon as it is queued, so nobody waits on it: without
//! a look at the queue, a frozen device would only be found out at the
//! next access that waits for an answer, which for a driver that posts
//! its doorbell and sleeps until an interrupt can be minutes away.
//!
//! Each record sent on a unix socket stays charged to the sender
//! (SIOCOUTQ) until the receiver has taken it. So a queue that is not
//! empty, has not shrunk and has had nothing added since the last look
//! is standing still; [`StallClock`] measures for how long.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use super::dispatch_error::DispatchError;
use super::dispatch_error::map_io;
use super::kernel_path::KernelPath;
use super::reply_poll::{Polled, ReplyPoll};
use super::wire::{
    self, Cmd, RECORD_SIZE, RECV_BUF_SIZE, Received, Resp, peer_hung_up, recv_before, recv_record,
    send_before,
};
use crate::bus::{SharedBusDevice, current_vcpu};
use crate::mirror::posted::PostedSent;
use crate::mirror::reader::{MirrorRead, RangeMirror};
use crate::mirror::ring::{PostedRing, Put, mark_wake_up};
use crate::pci::{Attached, BarFastPath};
use crate::protocol::extensions::{SUB_REGION_POSTED_WRITES, SubRegion};
use crate::proxy::cut_off::{CUT_OFF_NOTE, CUT_OFF_REGISTERS, FailFlag};
use crate::proxy::stats::{DeviceStats, bump};
use crate::proxy::watchdog::{Backlog, StallClock};

/// One BAR range served over ioregion fds.
pub struct IoRegionPath {
    pub(super) label: String,
    offset: u64,
    size: u64,
    pio: bool,
    posted: bool,
    user_data: u64,
    /// The fds of vCPU threads, indexed by vCPU.
    pub(super) fds: Vec<RegionFd>,
    pub(super) kernel: Option<KernelPath>,
    stats: Arc<DeviceStats>,
    pub(super) failed: FailFlag,
    /// One per fd, then the ring's: how long posted writes have gone untaken.
    pub(super) stalls: Mutex<Vec<StallClock>>,
    /// Registers whose reads the remote's mirror page answers.
    mirror: Option<RangeMirror>,
    /// The device's count of posted writes sent, on every range.
    pub(super) posted_sent: Option<Arc<PostedSent>>,
}

impl IoRegionPath {
    /// The range `range` of a BAR, served over `fds` (one per vCPU) on the
    /// userspace path, or registered with `kernel` when KVM serves it.
    pub fn new(
        label: String,
        range: &SubRegion,
        pio: bool,
        fds: Vec<RegionFd>,
        kernel: Option<KernelPath>,
        stats: Arc<DeviceStats>,
        failed: FailFlag,
    ) -> Self {
        // One more for the posted-write ring, if the device has one.
        let stalls = (0..=fds.len()).map(|_| StallClock::default()).collect();
        IoRegionPath {
            label,
            offset: range.offset,
            size: range.size,
            pio,
            posted: range.flags & SUB_REGION_POSTED_WRITES != 0,
            user_data: range.user_data,
            fds,
            kernel,
            stats,
            failed,
            stalls: Mutex::new(stalls),
            mirror: None,
            posted_sent: None,
        }
    }

    /// Reads of `mirror`'s registers are answered from the remote's page.
    pub fn with_mirror(mut self, mirror: Option<RangeMirror>) -> Self {
        self.mirror = mirror;
        self
    }

    /// Each posted write sent adds one to `sent`, which the device's
    /// mirror compares with the count of posted writes applied.
    pub fn counting_posted_writes(mut self, sent: Arc<PostedSent>) -> Self {
        self.posted_sent = Some(sent);
        self
    }

    /// Whether the watchdog has anything to look at here: posted writes,
    /// or KVM's commands on the kernel path.
    pub fn needs_watching(&self) -> bool {
        self.posted || self.kernel.is_some()
    }

    /// Whether this range's writes are posted and served from vCPU
    /// threads, the case where a stalled device goes unseen by the vCPUs.
    /// With KVM serving the range, the mirrored registers still exit to us.
    pub fn posts_writes_from_userspace(&self) -> bool {
        let in_kvm = self.kernel.as_ref().is_some_and(|k| k.is_registered());
        self.posted && (!in_kvm || self.mirror.is_some())
    }

    fn fd(&self) -> &RegionFd {
        &self.fds[current_vcpu() % self.fds.len()]
    }

    pub(super) fn fault(&self, e: DispatchError) {
        bump(&self.stats.errors);
        if self.failed.fail() {
            log::error!("{}: {e}; {CUT_OFF_NOTE}", self.label);
            if e.is_a_hang() {
                self.say_where_the_device_sleeps();
            }
        }
        self.leave_kvm();
    }

    /// Takes the range back from KVM once the device is cut off, so that no
    /// vCPU waits on it in the kernel: their accesses exit to us instead.
    pub(super) fn leave_kvm(&self) {
        if let Some(k) = &self.kernel
            && k.unregister(None, &self.label)
        {
            log::info!(
                "{}: KVM no longer serves the range; its accesses exit to the VMM",
                self.label
            );
        }
    }
}

impl SharedBusDevice for IoRegionPath {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if self.failed.is_failed() {
            data.fill(CUT_OFF_REGISTERS);
            return;
        }
        if let Some(mirror) = &self.mirror {
            match mirror.read(offset, data) {
                MirrorRead::Answered => {
                    bump(&self.stats.mirror_reads);
                    return;
                }
                MirrorRead::AnsweredAhead => {
                    bump(&self.stats.mirror_reads);
                    bump(&self.stats.mirror_ahead);
                    return;
                }
                MirrorRead::Behind => bump(&self.stats.mirror_behind),
                MirrorRead::NotMirrored => {}
            }
        }
        let posted_sent = self.posted_sent.as_ref().map(|s| s.total());
        match self.fd().read_after(offset, data, posted_sent) {
            Ok(()) => bump(&self.stats.ioregion_reads),
            Err(e) => {
                data.fill(CUT_OFF_REGISTERS);
                self.fault(e);
            }
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if self.failed.is_failed() {
            return;
        }
        let mirrored = self.mirror.as_ref().and_then(|m| m.write(offset, data));
        // A doorbell on a range with posted writes may be waited for
        // (`mirror::doorbell`).
        let doorbell = (mirrored.as_ref())
            .filter(|_| self.posted)
            .and_then(|w| w.ring());
        let wait = doorbell.is_some_and(|(_, wait)| wait);
        let send = |before, ring: Option<&PostedRing>| {
            let kind = self.fd().write_waiting(offset, data, wait, before, ring)?;
            Ok(kind == WriteKind::Posted)
        };
        let sent = match &self.posted_sent {
            // Counted in the order the device applies them (see
            // `mirror::posted`).
            Some(sent) if self.posted => sent.post(mirrored.as_ref().and_then(|w| w.known()), send),
            _ => send(
                self.posted_sent.as_ref().and_then(|s| s.before_a_write()),
                None,
            ),
        };
        match sent {
            Ok(posted) => {
                bump(&self.stats.ioregion_writes);
                if mirrored.is_some() {
                    bump(&self.stats.mirrored_writes);
                }
                if posted {
                    bump(&self.stats.posted_writes);
                }
                match doorbell {
                    Some((doorbells, _)) if posted => {
                        doorbells.posted(self.posted_sent.as_ref().map_or(0, |s| s.total()));
                    }
                    Some(_) => bump(&self.stats.waited_doorbells),
                    None => {}
                }
            }
            Err(e) => self.fault(e),
        }
    }
}

impl BarFastPath for IoRegionPath {
    fn range(&self) -> (u64, u64) {
        (self.offset, self.size)
    }

    fn attach(self: Arc<Self>, bar_addr: u64) -> Attached {
        if let Some(k) = &self.kernel
            && !self.failed.is_failed()
        {
            let holes = (self.mirror.as_ref())
                .map(|m| m.registers())
                .unwrap_or_default();
            let at = bar_addr + self.offset;
            let regions = k.regions(at, self.size, self.user_data, self.pio, &holes);
            match k.register(bar_addr, regions) {
                // On the bus too: for the mirrored registers' accesses, and
                // for accesses KVM gives back (the device closed its end,
                // or the range was taken back from KVM meanwhile).
                Ok(()) => {
                    return Attached {
                        bus: Some(self),
                        in_kernel: true,
                    };
                }
                Err(e) => log::error!(
                    "{}: KVM refused the ioregion ({e}); serving it from vCPU threads",
                    self.label
                ),
            }
        }
        Attached::bus(self)
    }

    fn detach(&self, bar_addr: u64) {
        if let Some(k) = &self.kernel {
            k.unregister(Some(bar_addr), &self.label);
        }
    }
}

/// How long a vCPU waits for a device by default: generous, since a device
/// may do real I/O in a register access, but finite.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What happened to a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// Queued on the fd; the device will process it before any later command.
    Posted,
    /// The device answered, so it has processed the write.
    Acknowledged,
}

/// One end of a region's SOCK_SEQPACKET socket, used by vCPU threads.
#[derive(Debug)]
pub struct RegionFd {
    fd: OwnedFd,
    user_data: u64,
    posted_writes: bool,
    timeout: Duration,
    /// Held from sending a command until its response is in.
    exchange: Mutex<Exchange>,
    /// SO_RCVTIMEO bounds a blocking recv.
    bounded_recv: bool,
    /// Posted writes sent so far, for telling a stalled queue from a busy one.
    posted_sent: AtomicU64,
    stats: Option<Arc<DeviceStats>>,
}

impl RegionFd {
    /// `user_data` goes into every command (e.g. the BAR index); with
    /// `posted_writes` a write returns once the command is queued.
    pub fn new(fd: OwnedFd, user_data: u64, posted_writes: bool) -> Self {
        RegionFd {
            fd,
            user_data,
            posted_writes,
            timeout: DEFAULT_TIMEOUT,
            exchange: Mutex::new(Exchange {
                desynchronized: false,
                poll: ReplyPoll::off(),
            }),
            bounded_recv: false,
            posted_sent: AtomicU64::new(0),
            stats: None,
        }
        .with_timeout(DEFAULT_TIMEOUT)
    }

    /// Replaces the response timeout (default [`DEFAULT_TIMEOUT`]). It also
    /// bounds how long a send may wait for room in a full socket queue.
    ///
    /// The wait for a response is a blocking recv bounded by the socket's
    /// SO_RCVTIMEO: one syscall, where poll + recv would be two on every
    /// access. (The kernel path waits inside KVM instead, which gives up
    /// after its own timeout, `kvm.ioregion_timeout_ms`; see `kernel_path`.)
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        let set = crate::sys::set_recv_timeout(self.fd.as_fd(), timeout);
        self.bounded_recv = set.is_ok();
        if let Err(e) = set {
            log::warn!("ioregion: cannot set a receive timeout ({e}); waiting with poll instead");
        }
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Polls for each answer for up to `window` before sleeping on it
    /// (`reply_poll`); zero never polls, the default. `stats` counts the
    /// answers caught and the polls that came back empty.
    pub fn with_reply_poll(mut self, window: Duration, stats: Option<Arc<DeviceStats>>) -> Self {
        self.exchange
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .poll = ReplyPoll::new(window);
        self.stats = stats;
        self
    }

    /// Answers caught by polling and polls that came back empty, so far.
    pub fn reply_polls(&self) -> (u64, u64) {
        let exchange = self
            .exchange
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (exchange.poll.caught, exchange.poll.missed)
    }

    /// How much of what was sent the device process has yet to take.
    pub fn backlog(&self) -> io::Result<Backlog> {
        Backlog::look(self.fd.as_fd(), Some(&self.posted_sent))
    }

    /// Reads `data.len()` bytes (1, 2, 4 or 8) at `offset` in the region.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), DispatchError> {
        self.read_after(offset, data, None)
    }

    /// As `read`, telling the device that `posted_sent` posted writes had
    /// been sent to it (on any fd) before this read, when that is known.
    pub fn read_after(
        &self,
        offset: u64,
        data: &mut [u8],
        posted_sent: Option<u64>,
    ) -> Result<(), DispatchError> {
        let mut cmd = Cmd::read(self.user_data, offset, data.len())
            .map_err(|_| DispatchError::AccessSize(data.len()))?;
        cmd.posted_before = posted_sent.map_or(0, |n| n.wrapping_add(1));
        let mut state = self.lock()?;
        // Under the lock, so the numbers on one fd rise in queue order.
        cmd.sequence = wire::next_sequence();
        let deadline = Instant::now() + self.timeout;
        self.send(&cmd.encode(), deadline)?;
        let resp = self.await_response(&mut state, &cmd, deadline)?;
        crate::bus::data_to_bytes(resp.data, data);
        Ok(())
    }

    /// Writes `data` (1, 2, 4 or 8 bytes) at `offset` in the region.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<WriteKind, DispatchError> {
        self.write_waiting(offset, data, false, None, None)
    }

    /// As `write`, waiting for the device if `wait`, even on a fd whose
    /// writes are posted, and telling it that `posted_sent` posted writes
    /// had been sent to it before this one, when that is known. A posted
    /// write goes through `ring` instead of the fd when the ring takes it.
    pub fn write_waiting(
        &self,
        offset: u64,
        data: &[u8],
        wait: bool,
        posted_sent: Option<u64>,
        ring: Option<&PostedRing>,
    ) -> Result<WriteKind, DispatchError> {
        let mut cmd = Cmd::write(self.user_data, offset, data, wait || !self.posted_writes)
            .map_err(|_| DispatchError::AccessSize(data.len()))?;
        cmd.posted_before = posted_sent.map_or(0, |n| n.wrapping_add(1));
        let mut state = self.lock()?;
        cmd.sequence = wire::next_sequence();
        let deadline = Instant::now() + self.timeout;
        let mut record = cmd.encode();
        match ring.filter(|_| !cmd.response).map(|r| r.put(&record)) {
            Some(Put::Queued) => return Ok(WriteKind::Posted),
            Some(Put::QueuedWakeUp) => mark_wake_up(&mut record),
            Some(Put::Send) | None => {}
        }
        self.send(&record, deadline)?;
        if !cmd.response {
            self.posted_sent.fetch_add(1, Ordering::Relaxed);
            return Ok(WriteKind::Posted);
        }
        // The content is ignored: devices echo the written data.
        self.await_response(&mut state, &cmd, deadline)?;
        Ok(WriteKind::Acknowledged)
    }

    /// Takes the exchange lock, unless an earlier timeout made the fd unusable.
    fn lock(&self) -> Result<MutexGuard<'_, Exchange>, DispatchError> {
        // The flag stays meaningful even if a holder panicked, so a
        // poisoned lock is still usable.
        let guard = self
            .exchange
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.desynchronized {
            return Err(DispatchError::Desynchronized);
        }
        Ok(guard)
    }

    /// Waits for the response to `cmd`; after a timeout the fd is given up.
    fn await_response(
        &self,
        exchange: &mut Exchange,
        cmd: &Cmd,
        deadline: Instant,
    ) -> Result<Resp, DispatchError> {
        let result = self.recv(deadline, &mut exchange.poll);
        if let Err(DispatchError::Timeout(t)) = &result {
            exchange.desynchronized = true;
            log::error!(
                "ioregion user_data {:#x}: no response within {t:?} to {:?} at offset {:#x}; \
                 giving up on this fd",
                self.user_data,
                cmd.access,
                cmd.offset
            );
        }
        result
    }

    fn send(&self, record: &[u8], deadline: Instant) -> Result<(), DispatchError> {
        match send_before(self.fd.as_fd(), record, deadline) {
            Ok(true) => Ok(()),
            Ok(false) => Err(DispatchError::SendTimeout(self.timeout)),
            Err(e) => Err(map_io("send", e)),
        }
    }

    /// Sleeps until a record comes, the peer hangs up or `deadline` passes.
    fn recv_asleep(&self, buf: &mut [u8], deadline: Instant) -> io::Result<Received> {
        if !self.bounded_recv {
            return recv_before(self.fd.as_fd(), buf, deadline);
        }
        match recv_record(self.fd.as_fd(), buf, 0) {
            Ok(0) => match peer_hung_up(self.fd.as_fd()) {
                Ok(true) => Ok(Received::Closed),
                Ok(false) => Ok(Received::Record(0)),
                Err(e) => Err(e),
            },
            Ok(n) => Ok(Received::Record(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Received::TimedOut),
            Err(e) => Err(e),
        }
    }

    fn recv(&self, deadline: Instant, poll: &mut ReplyPoll) -> Result<Resp, DispatchError> {
        let mut buf = [0u8; RECV_BUF_SIZE];
        let polled = poll.poll(|| {
            match recv_record(self.fd.as_fd(), &mut buf, libc::MSG_DONTWAIT) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                // An empty record or a hang-up: the blocking path tells them apart.
                Ok(0) => None,
                Ok(n) => Some(Ok(Received::Record(n))),
                Err(e) => Some(Err(e)),
            }
        });
        let count = |counter: fn(&DeviceStats) -> &AtomicU64| {
            if let Some(stats) = &self.stats {
                bump(counter(stats));
            }
        };
        let received = match polled {
            Polled::Caught(received) => {
                count(|s| &s.answers_polled);
                received
            }
            Polled::Empty => {
                count(|s| &s.polls_empty);
                self.recv_asleep(&mut buf, deadline)
            }
            Polled::Not => self.recv_asleep(&mut buf, deadline),
        };
        match received {
            Ok(Received::Record(RECORD_SIZE)) => Ok(Resp::decode(&buf[..RECORD_SIZE])?),
            Ok(Received::Record(n)) if n < RECORD_SIZE => Err(DispatchError::ShortResponse(n)),
            Ok(Received::Record(n)) => Err(DispatchError::OversizedResponse(n)),
            Ok(Received::Closed) => Err(DispatchError::PeerClosed),
            Ok(Received::TimedOut) => Err(DispatchError::Timeout(self.timeout)),
            Err(e) => Err(map_io("recv", e)),
        }
    }
}

/// What one command's exchange on a fd holds.
#[derive(Debug)]
struct Exchange {
    /// Set after a timeout: a response may still arrive, and with no
    /// request ids it would be taken as the answer to the next command.
    desynchronized: bool,
    poll: ReplyPoll,
}

impl From<RegionFd> for OwnedFd {
    fn from(fd: RegionFd) -> OwnedFd {
        fd.fd
    }
}

impl AsFd for RegionFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::{Access, send_record, socket_pair};
    use super::*;
    use std::sync::Arc;
    use std::thread;

    /// Receives one raw record on the fake remote's end.
    fn recv_raw(fd: &OwnedFd) -> Vec<u8> {
        let mut buf = [0u8; RECV_BUF_SIZE];
        let n = recv_record(fd.as_fd(), &mut buf, 0).unwrap();
        buf[..n].to_vec()
    }

    fn recv_cmd(fd: &OwnedFd) -> Cmd {
        Cmd::decode(&recv_raw(fd)).unwrap()
    }

    fn answer(fd: &OwnedFd, data: u64) {
        send_record(fd.as_fd(), &Resp { data }.encode(), 0).unwrap();
    }

    /// A region with user_data 5 and the fake remote's end of its socket.
    fn pair(posted: bool) -> (RegionFd, OwnedFd) {
        let (vmm, dev) = socket_pair().unwrap();
        (RegionFd::new(vmm, 5, posted), dev)
    }

    /// A fake remote that serves `n` commands with `reply` and returns them.
    fn remote(dev: OwnedFd, n: usize, reply: fn(&Cmd) -> u64) -> thread::JoinHandle<Vec<Cmd>> {
        thread::spawn(move || {
            (0..n)
                .map(|_| {
                    let cmd = recv_cmd(&dev);
                    if cmd.response {
                        answer(&dev, reply(&cmd));
                    }
                    cmd
                })
                .collect()
        })
    }

    const SIZES: [usize; 4] = [1, 2, 4, 8];

    #[test]
    fn reads_return_the_low_bytes_for_each_size() {
        let (region, dev) = pair(false);
        let remote = remote(dev, 4, |_| 0x8877_6655_4433_2211);
        for size in SIZES {
            let mut buf = vec![0u8; size];
            region.read(0x40 + size as u64, &mut buf).unwrap();
            assert_eq!(
                buf,
                [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88][..size]
            );
        }
        for (cmd, size) in remote.join().unwrap().iter().zip(SIZES) {
            let want = Cmd::read(5, 0x40 + size as u64, size).unwrap();
            assert_eq!(
                *cmd,
                Cmd {
                    sequence: cmd.sequence,
                    ..want
                }
            );
        }
    }

    /// An answer that comes while the vCPU polls and one that comes after
    /// it gave up and slept are read alike.
    #[test]
    fn polled_and_slept_for_answers_are_the_same_answers() {
        let (region, dev) = pair(false);
        let stats = Arc::new(DeviceStats::default());
        let region = region.with_reply_poll(Duration::from_secs(5), Some(stats.clone()));
        let remote = remote(dev, 2, |cmd| cmd.offset * 3);
        let mut buf = [0u8; 4];
        region.read(0x10, &mut buf).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0x30);
        assert_eq!(region.write(0x20, &[1]).unwrap(), WriteKind::Acknowledged);
        assert_eq!(region.reply_polls(), (2, 0));
        assert_eq!(stats.answers_polled.load(Ordering::Relaxed), 2);
        remote.join().unwrap();

        let (region, dev) = pair(false);
        let region = region.with_reply_poll(Duration::from_micros(1), Some(stats.clone()));
        let late = thread::spawn(move || {
            let cmd = recv_cmd(&dev);
            thread::sleep(Duration::from_millis(20));
            answer(&dev, cmd.offset + 1);
        });
        region.read(0x40, &mut buf).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0x41);
        assert_eq!(region.reply_polls(), (0, 1));
        assert_eq!(stats.polls_empty.load(Ordering::Relaxed), 1);
        late.join().unwrap();
    }

    #[test]
    fn writes_arrive_with_offset_data_and_size() {
        let (region, dev) = pair(false);
        let remote = remote(dev, 4, |cmd| cmd.data);
        let value = [0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18];
        for size in SIZES {
            let kind = region.write(size as u64 * 0x100, &value[..size]).unwrap();
            assert_eq!(kind, WriteKind::Acknowledged);
        }
        for (cmd, size) in remote.join().unwrap().iter().zip(SIZES) {
            assert_eq!(cmd.access, Access::Write);
            assert_eq!(usize::from(cmd.size), size);
            assert_eq!(cmd.offset, size as u64 * 0x100);
            assert_eq!(cmd.data, crate::bus::data_from_bytes(&value[..size]));
            assert!(cmd.response);
        }
    }

    #[test]
    fn posted_writes_ask_for_no_response_and_do_not_wait() {
        let (region, dev) = pair(true);
        // Nobody reads `dev` until the write has returned.
        assert_eq!(region.write(8, &[1, 2, 3, 4]).unwrap(), WriteKind::Posted);
        let raw = recv_raw(&dev);
        assert_eq!(raw.len(), RECORD_SIZE);
        assert_eq!(raw[1] & 0x10, 0, "response bit set on a posted write");
        let cmd = Cmd::decode(&raw).unwrap();
        assert_eq!((cmd.offset, cmd.data, cmd.size), (8, 0x0403_0201, 4));
    }

    #[test]
    fn a_write_can_wait_on_a_fd_whose_writes_are_posted() {
        let (region, dev) = pair(true);
        let remote = remote(dev, 1, |cmd| cmd.data);
        assert_eq!(
            region
                .write_waiting(0x14, &[0x20], true, None, None)
                .unwrap(),
            WriteKind::Acknowledged
        );
        let cmd = remote.join().unwrap()[0];
        assert!(cmd.response && cmd.access == Access::Write);
        assert_eq!((cmd.offset, cmd.data), (0x14, 0x20));
    }

    #[test]
    fn a_read_after_posted_writes_reaches_the_device_after_them() {
        let (region, dev) = pair(true);
        let remote = remote(dev, 4, |_| 0x77);
        for offset in [0u64, 4, 8] {
            let kind = region.write(offset, &[offset as u8]).unwrap();
            assert_eq!(kind, WriteKind::Posted);
        }
        let mut buf = [0u8; 1];
        region.read(12, &mut buf).unwrap();
        assert_eq!(buf, [0x77]);
        let order: Vec<_> = remote
            .join()
            .unwrap()
            .iter()
            .map(|c| (c.access, c.offset))
            .collect();
        let writes = [0, 4, 8].map(|o| (Access::Write, o));
        assert_eq!(order, [&writes[..], &[(Access::Read, 12)]].concat());
    }

    #[test]
    fn every_command_carries_a_rising_sequence_number() {
        let (posted, dev_posted) = pair(true);
        let (waited, dev_waited) = pair(false);
        let remote = remote(dev_waited, 2, |_| 0);
        posted.write(0, &[1]).unwrap();
        waited.write(0, &[2]).unwrap();
        posted.write(0, &[3]).unwrap();
        waited.read(0, &mut [0u8; 4]).unwrap();
        let on_posted: Vec<u64> = (0..2).map(|_| recv_cmd(&dev_posted).sequence).collect();
        let on_waited: Vec<u64> = remote.join().unwrap().iter().map(|c| c.sequence).collect();
        let issued = [on_posted[0], on_waited[0], on_posted[1], on_waited[1]];
        assert!(issued.iter().all(|s| *s != 0), "{issued:?}");
        for w in issued.windows(2) {
            assert!(wire::sequence_precedes(w[0], w[1]), "{issued:?}");
        }
    }

    #[test]
    fn a_remote_that_closes_gives_peer_closed() {
        // Closes after taking the command: the read must not hang.
        let (region, dev) = pair(false);
        let remote = thread::spawn(move || {
            recv_cmd(&dev);
            drop(dev);
        });
        let err = region.read(0, &mut [0u8; 4]).unwrap_err();
        assert!(matches!(err, DispatchError::PeerClosed), "{err:?}");
        remote.join().unwrap();
        // Already closed: the send itself fails.
        let err = region.write(0, &[1]).unwrap_err();
        assert!(matches!(err, DispatchError::PeerClosed), "{err:?}");
    }

    #[test]
    fn a_silent_remote_gives_timeout_then_desynchronized() {
        let (region, dev) = pair(false);
        let region = region.with_timeout(Duration::from_millis(200));
        let start = Instant::now();
        let err = region.read(0, &mut [0u8; 2]).unwrap_err();
        let waited = start.elapsed();
        assert!(matches!(err, DispatchError::Timeout(_)), "{err:?}");
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        // A late answer must not be taken for the next command's.
        answer(&dev, 1);
        let err = region.read(0, &mut [0u8; 2]).unwrap_err();
        assert!(matches!(err, DispatchError::Desynchronized), "{err:?}");
    }

    #[test]
    fn short_and_oversized_responses_are_errors() {
        let (region, dev) = pair(false);
        let remote = thread::spawn(move || {
            for len in [16, 40] {
                recv_cmd(&dev);
                send_record(dev.as_fd(), &vec![0u8; len], 0).unwrap();
            }
            dev
        });
        let err = region.read(0, &mut [0u8; 4]).unwrap_err();
        assert!(matches!(err, DispatchError::ShortResponse(16)), "{err:?}");
        let err = region.write(0, &[0u8; 4]).unwrap_err();
        let oversized = matches!(err, DispatchError::OversizedResponse(40));
        assert!(oversized, "{err:?}");
        remote.join().unwrap();
    }

    #[test]
    fn odd_access_sizes_are_rejected_before_sending() {
        let (region, dev) = pair(false);
        let err = region.read(0, &mut [0u8; 3]).unwrap_err();
        assert!(matches!(err, DispatchError::AccessSize(3)), "{err:?}");
        let err = region.write(0, &[0u8; 16]).unwrap_err();
        assert!(matches!(err, DispatchError::AccessSize(16)), "{err:?}");
        let mut buf = [0u8; RECV_BUF_SIZE];
        let err = recv_record(dev.as_fd(), &mut buf, libc::MSG_DONTWAIT).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn threads_sharing_a_region_never_interleave_commands() {
        let (region, dev) = pair(false);
        let region = Arc::new(region);
        let remote = thread::spawn(move || {
            // Answers each read with its offset, after checking that no
            // second command is already queued behind it.
            for _ in 0..200 {
                let cmd = recv_cmd(&dev);
                let mut extra = [0u8; RECV_BUF_SIZE];
                let queued = recv_record(dev.as_fd(), &mut extra, libc::MSG_DONTWAIT);
                assert!(queued.is_err(), "two commands in flight on one fd");
                answer(&dev, cmd.offset);
            }
        });
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                let region = Arc::clone(&region);
                thread::spawn(move || {
                    for offset in t * 1000..t * 1000 + 50 {
                        let mut buf = [0u8; 8];
                        region.read(offset, &mut buf).unwrap();
                        assert_eq!(u64::from_le_bytes(buf), offset);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        remote.join().unwrap();
    }
}
