//! The device process's end of its region fds: for each range a device
//! model offers and each vCPU, a SOCK_SEQPACKET pair whose far end goes to
//! the VMM (or, through it, to KVM), served here by a thread that receives
//! the command records, applies them to the model in the order the guest
//! issued them, and answers when asked: one thread for all of a device's
//! fds with posted writes, woken by an epoll set of them, and one for
//! each other fd.
//!
//! KVM and the VMM's vCPU threads send identical records, so one loop
//! serves both dispatch paths. Records on one fd are handled strictly in
//! arrival order: a read is answered only after every write queued before
//! it has been applied.
//!
//! One fd per vCPU per sub-region keeps vCPUs from queueing behind each
//! other on a socket, but it spreads what one vCPU issued over several
//! queues. The order we owe, as PCI does:
//!
//! - a read or a non-posted write sees every posted write sent before it,
//!   whichever fd that went to;
//! - posted writes are applied in the order they were issued, both one
//!   vCPU's writes to different ranges and writes that the guest ordered
//!   between vCPUs (through memory, e.g. a lock).
//!
//! Records on posted-write fds are only ever received under the `Hub`
//! lock, and every taker drains all of them there before it applies
//! anything of its own. The VMM's vCPU threads stamp each record with a
//! number from one VM-wide sequence (`wire::next_sequence`),
//! taken after every access ordered before it was sent. So the drain looks
//! at the head of every fd and applies records by number; it applies a
//! record only once it is sure that nothing numbered before it can still
//! turn up ([`drain_in_order`] says why that holds).
//!
//! Records without a number are those KVM writes on the kernel path
//! (`KVM_SET_IOREGION`). There, all vCPUs share one fd per range and KVM
//! puts each access on it in order. KVM posts writes only where the VMM
//! posts none (`proxy::ioregion_setup`): its posted writes go before any
//! numbered record (a vCPU thread's read, which cannot come before them),
//! and the first rule holds within one range and across ranges (a waited
//! access drains every posted fd before it is applied), but the order of
//! KVM's posted writes to two different ranges is not known here and is
//! not guaranteed. Where the VMM posts writes (through the ring), KVM
//! sends reads and waited writes only, and those go after every numbered
//! record in sight, among them the posted writes sent before them
//! (`drain::Place`).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::applied::AppliedCount;
#[cfg(test)]
use super::drain::BURST;
use super::drain::{Handler, PostedEnd, Source, apply_covered_heads, drain_in_order};
use super::reply_poll::{Polled, ReplyPoll};
use super::wire::{self, Access, Cmd, Incoming, answer, receive, socket_pair};
pub use super::wire::{ERROR_DATA, RECV_BUF_SIZE, ServeEnd, ServeError};
use crate::device_model::{DeviceModel, IoRegionSpec, SharedIrq};
use crate::mirror::page::MirrorPage;
use crate::mirror::ring::PostedRing;
use crate::protocol::extensions::{MAX_SUB_REGIONS, SUB_REGION_POSTED_WRITES, SubRegion};

type SharedDevice = Arc<Mutex<dyn DeviceModel>>;

/// The ordering point of one device's region fds.
#[derive(Default)]
pub struct Hub {
    posted: Mutex<Posted>,
    /// Every posted-write fd, for the one thread that serves them all.
    /// One thread rather than one per fd: every taker drains all of them
    /// anyway, and on the kernel path a posted write on KVM's fd followed
    /// by a read on a vCPU thread's fd woke two threads where one does.
    ready: OnceLock<Epoll>,
    /// The posted ranges' handlers, by user data and size, for the records
    /// of a ring (which carries every range's).
    ranges: Arc<Mutex<Vec<(u64, u64, Handler)>>>,
    /// How long a serving thread looks for the next record before it
    /// sleeps (`reply_poll`; zero: it sleeps at once).
    poll_window: Duration,
}

/// The posted-write fds and what was applied from them, under one lock.
#[derive(Default)]
struct Posted {
    ends: Vec<PostedEnd>,
    applied: AppliedCount,
    /// A thread serves `ends` (it ends when the last of them has gone).
    served: bool,
    /// The device's interrupt line, once the server hands its
    /// acknowledgements to the thread (see [`Hub::take_acknowledgements`]),
    /// and the watch fd of it in the epoll set.
    acknowledged: Option<(SharedIrq, RawFd)>,
    /// The posted-write thread waits in `epoll_wait`, its rings empty and
    /// `listening` raised (see [`Posted::after_another_drain`]).
    asleep: bool,
}

/// The token of the interrupt line's acknowledgements in the hub's epoll
/// set (the others are fds).
const ACKNOWLEDGED: u64 = u64::MAX;

impl Posted {
    /// Applies the queued posted writes in order (see [`drain_in_order`]),
    /// looking first at `ends[first]` (the fd that woke its taker, or a
    /// ring), whose records that need no look at the others go first
    /// ([`apply_covered_heads`]). Returns the ends found closed or failed,
    /// by index. No other end is looked at if that leaves nothing owed:
    /// when `first` named one and its record was covered. With
    /// `catching_up` (before an interrupt acknowledgement or a message is
    /// handled) only what the VMM counted before it is owed
    /// ([`AppliedCount::owes_nothing_more`]): `first`'s and the rings'
    /// covered records, and nothing once they are all applied. Records sent
    /// after it (the next doorbell) then wait for their own turn, after
    /// the acknowledgement, as the guest made them. Such a record taken off
    /// `first` before the catch-up stopped stays held there, off its fd:
    /// the caller answers it (`serve_wake_up`). Without `catching_up`
    /// nothing taken off a fd is left held.
    fn drain(&mut self, first: Option<usize>, catching_up: bool) -> Vec<usize> {
        let woke = first.filter(|&i| i < self.ends.len());
        if catching_up {
            // What is owed may be split between the fd that woke us and
            // the rings: each in turn, while that takes something.
            let mut progress = true;
            while progress && !self.applied.has_all_the_vmm_sent() {
                let before = self.applied.count;
                if let Some(i) = woke {
                    apply_covered_heads(&mut self.ends[i], &mut self.applied);
                }
                self.apply_covered_ring_heads();
                progress = self.applied.count != before;
            }
            if self.applied.owes_nothing_more(true) {
                return Vec::new();
            }
        } else {
            let covered =
                woke.is_none_or(|i| apply_covered_heads(&mut self.ends[i], &mut self.applied));
            if woke.is_some() && covered {
                return Vec::new();
            }
        }
        drain_in_order(&mut self.ends, woke.unwrap_or(0), &mut self.applied)
    }

    /// What the posted-write thread does when woken: `woke` is the first
    /// posted-write fd epoll reported, `acknowledged` whether the guest's
    /// acknowledgement of the interrupt was among what it reported.
    fn serve_wake_up(&mut self, woke: Option<RawFd>, acknowledged: bool) {
        self.asleep = false;
        for end in &self.ends {
            if let Source::Ring(ring, _) = &end.source {
                ring.stop_listening();
            }
        }
        // The posted writes the guest sent before it acknowledged first:
        // the line's level must show them.
        let first = woke.and_then(|fd| self.ends.iter().position(|e| e.raw_fd() == Some(fd)));
        let done = self.drain(first, acknowledged);
        self.remove(done);
        if acknowledged && let Some((irq, _)) = &self.acknowledged {
            irq.lock().expect("irq lock poisoned").resample();
        }
        // A catch-up may take a read off the fd that woke us, find it owes
        // a posted write still in a ring, apply that one and stop there,
        // every write the VMM counted being applied: the read, no longer on
        // its fd, would wake nobody again, and its vCPU would wait for the
        // answer until it gave the device up (the hostile guest's chip
        // reset, ISTAT then MBOX1, did in 3 of 14 runs). It is answered
        // now, after the acknowledgement, as the guest sent it.
        while let Some(i) = self.ends.iter().position(PostedEnd::holds_a_taken_record) {
            let done = self.drain(Some(i), false);
            self.remove(done);
        }
    }

    /// Before the posted-write thread sleeps: applies what is left in the
    /// rings, and returns once every ring is empty with `listening` raised
    /// (so that its VMM wakes the thread for the next record).
    fn empty_the_rings(&mut self) {
        while let Some(i) = (self.ends.iter()).position(|e| match &e.source {
            Source::Ring(ring, _) => !ring.listen(),
            Source::Fd(_) => false,
        }) {
            let done = self.drain(Some(i), false);
            self.remove(done);
        }
    }

    /// Applies the records at the head of each ring that owe nothing to a
    /// posted write not applied yet ([`apply_covered_heads`]).
    fn apply_covered_ring_heads(&mut self) {
        for end in &mut self.ends {
            if let Source::Ring(..) = end.source {
                apply_covered_heads(end, &mut self.applied);
            }
        }
    }

    /// What the posted-write thread does before it waits again.
    fn lie_down(&mut self) {
        self.empty_the_rings();
        self.asleep = true;
    }

    /// After a drain by another thread than the posted-write one, which
    /// may have taken the record a VMM sent to wake that thread, taking
    /// `listening` down as it sent it: woken for nothing, the thread would
    /// sleep on while the VMM puts records in the ring. So the rings are
    /// emptied and `listening` raised again on its behalf.
    fn after_another_drain(&mut self) {
        if self.asleep {
            self.empty_the_rings();
        }
    }

    fn remove(&mut self, done: Vec<usize>) {
        for &i in done.iter().rev() {
            self.ends.remove(i);
        }
    }

    /// Whether a fd is left for the thread to wait on.
    fn has_fds(&self) -> bool {
        self.ends.iter().any(|e| e.raw_fd().is_some())
    }
}

/// Applies a record from a ring with the handler of the posted range its
/// user data falls in.
fn ring_handler(ranges: Arc<Mutex<Vec<(u64, u64, Handler)>>>) -> Handler {
    Arc::new(move |cmd: &Cmd| {
        let handler = (ranges.lock().expect("ranges lock poisoned").iter())
            .find(|(user_data, size, _)| cmd.user_data.wrapping_sub(*user_data) < *size)
            .map(|(_, _, handler)| handler.clone());
        match handler {
            Some(handler) => handler(cmd),
            None => {
                log::warn!(
                    "ioregion: a posted write in the ring names no posted range (user data {:#x})",
                    cmd.user_data
                );
                ERROR_DATA
            }
        }
    })
}

/// The `user_data` of BAR `bar`'s range at `offset`: every command on the
/// range's fd carries it. On the kernel path the VMM may hand KVM pieces
/// of the range (leaving out the registers it answers from the mirror);
/// a piece starting `d` bytes into the range carries `user_data + d`, and
/// the command's offset counts from the piece's start.
fn region_user_data(bar: u8, offset: u64) -> u64 {
    (u64::from(bar) << 32) | offset
}

/// Applies one command to BAR `bar` at `base` + the record's offset.
fn handler(device: SharedDevice, bar: u8, spec: IoRegionSpec) -> Handler {
    let base = region_user_data(bar, spec.offset);
    Arc::new(move |cmd: &Cmd| {
        let size = usize::from(cmd.size);
        // Where the access falls in the range: where its piece starts, plus
        // its offset in the piece. A user_data below ours wraps to a huge
        // start and is refused like any other access outside the range.
        let at = cmd.user_data.wrapping_sub(base).checked_add(cmd.offset);
        let Some(at) = at.filter(|&at| crate::bus::fits(at, size as u64, spec.size)) else {
            log::warn!(
                "ioregion BAR{bar}+{:#x}: access at {:#x} of the piece with user data {:#x} \
                 ({size} bytes) is outside the region",
                spec.offset,
                cmd.offset,
                cmd.user_data
            );
            return ERROR_DATA;
        };
        let offset = spec.offset + at;
        let mut dev = device.lock().expect("device lock poisoned");
        match cmd.access {
            Access::Read => dev.bar_read_value(bar, offset, size),
            Access::Write => {
                dev.bar_write_value(bar, offset, size, cmd.data);
                cmd.data
            }
        }
    })
}

/// Opens BAR `bar`'s sub-regions for vCPU `vcpu`: returns the records and
/// the fds to send to the VMM; a fd without posted writes gets a serving
/// thread of its own, one with posted writes joins the hub's set.
pub fn open(
    device: &SharedDevice,
    hub: &Arc<Hub>,
    bar: u8,
    vcpu: u32,
) -> std::io::Result<(Vec<SubRegion>, Vec<File>)> {
    let specs = device.lock().expect("device lock poisoned").ioregions(bar);
    let mut regions = Vec::new();
    let mut fds = Vec::new();
    for spec in specs.into_iter().take(MAX_SUB_REGIONS) {
        let (ours, theirs) = socket_pair()?;
        let ours = Arc::new(ours);
        let handle = handler(device.clone(), bar, spec);
        if spec.posted_writes {
            let user_data = region_user_data(bar, spec.offset);
            let mut ranges = hub.ranges.lock().expect("ranges lock poisoned");
            if !ranges.iter().any(|(known, _, _)| *known == user_data) {
                ranges.push((user_data, spec.size, handle.clone()));
            }
            drop(ranges);
            serve_posted_end(hub, PostedEnd::new(Source::Fd(ours), handle))?;
        } else {
            let hub = hub.clone();
            std::thread::Builder::new()
                .name(format!("ioregion-{bar}-{:x}-{vcpu}", spec.offset))
                .spawn(move || {
                    if let Err(e) = serve_synchronous(&hub, &ours, &handle) {
                        log::error!("ioregion: {e}; this region fd is no longer served");
                    }
                })?;
        }
        regions.push(SubRegion {
            offset: spec.offset,
            size: spec.size,
            fd_index: fds.len() as u32,
            flags: if spec.posted_writes {
                SUB_REGION_POSTED_WRITES
            } else {
                0
            },
            user_data: region_user_data(bar, spec.offset),
        });
        fds.push(File::from(theirs));
    }
    Ok((regions, fds))
}

/// Adds a posted-write fd to the hub's set, and starts the thread that
/// serves the set if none runs.
fn serve_posted_end(hub: &Arc<Hub>, end: PostedEnd) -> io::Result<()> {
    let ready = hub.ready()?;
    let mut posted = hub.posted.lock().expect("hub lock poisoned");
    let fd = end.raw_fd().expect("a fd's end");
    ready.ctl(
        ControlOperation::Add,
        fd,
        EpollEvent::new(EventSet::IN, fd as u64),
    )?;
    posted.ends.push(end);
    if !posted.served {
        let serving = hub.clone();
        std::thread::Builder::new()
            .name("ioregion-posted".into())
            .spawn(move || serve_posted(&serving))
            .inspect_err(|_| {
                posted.ends.pop();
            })?;
        posted.served = true;
    }
    Ok(())
}

impl Hub {
    /// A hub whose threads look for the next record for `window` before
    /// they sleep: with a CPU of their own, a record the VMM sends then
    /// costs no wake-up, and one it puts in a ring no send.
    pub fn polling(window: Duration) -> Self {
        Hub {
            poll_window: window,
            ..Hub::default()
        }
    }

    fn ready(&self) -> io::Result<&Epoll> {
        if let Some(ready) = self.ready.get() {
            return Ok(ready);
        }
        let made = Epoll::new()?;
        // Another caller may have been first: one set either way.
        let _ = self.ready.set(made);
        Ok(self.ready.get().expect("set above"))
    }

    /// Hands the guest's acknowledgements of `irq`'s interrupt, readable
    /// on `watch_fd` (its `InterruptLine::watch_fd`), to the thread that
    /// serves the posted-write fds. Returns whether that thread runs and
    /// serves them now; if not, the caller must, as it did before. The
    /// thread still ends with the last posted-write fd: the VMM closes
    /// those only when it leaves or sets the device up again, and either
    /// wakes the caller's loop, which then sees the thread gone; an
    /// acknowledgement in between stays readable until then.
    ///
    /// Why: a driver that posts its interrupt clear and does not read it
    /// back acknowledges the interrupt before we have applied the clear,
    /// so the line is still high and the acknowledgement must be looked
    /// at. Taken here, the one wake-up that applies the clear takes the
    /// acknowledgement after it (and finds the line low); taken by the
    /// control loop, two threads woke for it.
    ///
    /// Called from the server's loop, the only thread that replaces the
    /// line's fds, without the line's lock held (the thread takes the hub's
    /// lock, then the line's). The line's watch fd is its own for as long
    /// as the line lives, and the line lives while we hold it here, so the
    /// same line with the same fd is in the set already: no call then,
    /// which matters because the loop calls this on every pass (with
    /// `disk-io=workers`, one per disk command). Another line's fd is
    /// added; the fd of a line no longer held left the set when it closed.
    pub fn take_acknowledgements(&self, irq: &SharedIrq, watch_fd: RawFd) -> bool {
        let ready = match self.ready() {
            Ok(ready) => ready,
            Err(e) => {
                log::warn!("ioregion: cannot make the posted-write epoll set: {e}");
                return false;
            }
        };
        let mut posted = self.posted.lock().expect("hub lock poisoned");
        let known = (posted.acknowledged.as_ref())
            .is_some_and(|(line, fd)| Arc::ptr_eq(line, irq) && *fd == watch_fd);
        if known {
            return posted.served;
        }
        let event = EpollEvent::new(EventSet::IN, ACKNOWLEDGED);
        match ready.ctl(ControlOperation::Add, watch_fd, event) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                log::warn!("ioregion: cannot wait for interrupt acknowledgements: {e}");
                return false;
            }
        }
        posted.acknowledged = Some((irq.clone(), watch_fd));
        posted.served
    }

    /// Applies the posted writes sent so far ([`Posted::drain`], catching
    /// up): whatever the control socket or the interrupt acknowledgement
    /// brings next must see them.
    pub fn catch_up(&self) {
        let mut posted = self.posted.lock().expect("hub lock poisoned");
        posted.drain(None, true);
        posted.after_another_drain();
    }

    /// For the remote's exit summary ([`AppliedCount::summary`]).
    pub fn summary(&self) -> String {
        let posted = self.posted.lock().expect("hub lock poisoned");
        posted.applied.summary()
    }

    /// From now on the count of posted writes applied is kept at
    /// `MIRROR_POSTED_COUNT_OFFSET` of `page` (a register mirror page,
    /// mapped writable) as well; false, and the page dropped, once
    /// `MAX_COUNTED_PAGES` are kept ([`AppliedCount::keep_in`]).
    pub fn count_posted_writes_in(&self, page: MirrorPage) -> bool {
        let mut posted = self.posted.lock().expect("hub lock poisoned");
        posted.applied.keep_in(page)
    }

    /// Takes posted writes from the ring in `file`'s page (a register
    /// mirror page, `mirror::ring`) from now on, unless they are taken
    /// from it already (one page offered for two BARs); false when the
    /// page cannot be mapped for it or `MAX_COUNTED_PAGES` rings are kept.
    pub fn take_posted_writes_from(&self, file: &File) -> bool {
        let page = match crate::sys::file_identity(file) {
            Ok(identity) => identity,
            Err(e) => {
                log::warn!("cannot offer the posted-write ring: {e}");
                return false;
            }
        };
        let mut posted = self.posted.lock().expect("hub lock poisoned");
        // A ring found broken has left `ends`: a later mirror query that
        // offers its page again (the VMM asks once per BAR, and may ask
        // again) gets a new ring, not the answer that the dead one is served.
        if posted.ends.iter().any(|e| e.is_ring_in(page)) {
            return true;
        }
        let rings = (posted.ends.iter())
            .filter(|e| matches!(e.source, Source::Ring(..)))
            .count();
        if rings >= super::applied::MAX_COUNTED_PAGES {
            return false;
        }
        let ring = match MirrorPage::map(file, true) {
            Ok(mapped) => PostedRing::new(Arc::new(mapped)).expect("mapped writable"),
            Err(e) => {
                log::warn!("cannot offer the posted-write ring: {e}");
                return false;
            }
        };
        // Asleep until the VMM's first record arrives on a fd; the thread
        // is not told of the ring otherwise.
        ring.reset();
        let handler = ring_handler(self.ranges.clone());
        posted
            .ends
            .push(PostedEnd::new(Source::Ring(ring, page), handler));
        true
    }
}

/// A fd without posted writes: its vCPU waits for every answer, so the one
/// record received here (outside the lock) is the vCPU's latest access, and
/// any posted write it sent before is already queued on its fd. A record
/// that says how many posted writes were sent before it skips the look at
/// the posted fds once that many have been applied ([`AppliedCount::covers`]).
fn serve_synchronous(hub: &Hub, fd: &Arc<OwnedFd>, handle: &Handler) -> Result<(), ServeError> {
    let mut buf = [0u8; RECV_BUF_SIZE];
    let mut poll = ReplyPoll::new(hub.poll_window);
    loop {
        let polled = poll.poll(|| match receive(fd.as_fd(), &mut buf, false) {
            Ok(Incoming::Nothing) => None,
            other => Some(other),
        });
        let incoming = match polled {
            Polled::Caught(incoming) => incoming,
            Polled::Not | Polled::Empty => receive(fd.as_fd(), &mut buf, true),
        };
        let len = match incoming? {
            Incoming::Record(len) => len,
            Incoming::Nothing => continue,
            Incoming::Closed(_) => return Ok(()),
        };
        let mut posted = hub.posted.lock().expect("hub lock poisoned");
        let sent_before = wire::sent_before_of(&buf[..len.min(buf.len())]);
        if !posted.applied.covers(sent_before) {
            // The posted writes owed are often in a ring, which costs no
            // receive on each fd to look at.
            posted.apply_covered_ring_heads();
            if !posted.applied.covers(sent_before) {
                posted.drain(None, false);
            }
            posted.after_another_drain();
        }
        if answer(fd.as_fd(), &buf, len, &mut |c| handle(c))?.is_some() {
            return Ok(());
        }
    }
}

/// The hub's posted-write fds: records queue up on them while the vCPUs
/// go on, so they are only ever received under the lock, in order across
/// the fds. Ends found closed or failed leave the set (closing them takes
/// them out of the epoll set too); the thread ends with the last of them,
/// and the next fd opened starts another.
///
/// With a poll window the thread stays up after it served something,
/// `listening` down, looking at the epoll set and the rings for the next
/// record, and lies down only when the window passed with nothing.
fn serve_posted(hub: &Hub) {
    let ready = hub.ready.get().expect("made before the thread");
    let mut events = [EpollEvent::default(); 8];
    let mut poll = ReplyPoll::new(hub.poll_window);
    hub.posted.lock().expect("hub lock poisoned").lie_down();
    let mut lying_down = true;
    loop {
        let polled = if lying_down {
            Polled::Not
        } else {
            poll.poll(|| match ready.wait(0, &mut events) {
                Ok(0) => {
                    let posted = hub.posted.lock().expect("hub lock poisoned");
                    (posted.ends.iter().any(PostedEnd::ring_holds_records)).then_some(Ok(0))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
                result => Some(result),
            })
        };
        let waited = match polled {
            Polled::Caught(result) => result,
            Polled::Not | Polled::Empty => {
                if !lying_down {
                    hub.posted.lock().expect("hub lock poisoned").lie_down();
                    lying_down = true;
                }
                ready.wait(-1, &mut events)
            }
        };
        let woken = match waited {
            Ok(n) => &events[..n],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!(
                    "ioregion: waiting for posted writes failed ({e}); no posted write is \
                     served until a reader drains them"
                );
                let mut posted = hub.posted.lock().expect("hub lock poisoned");
                (posted.served, posted.asleep) = (false, false);
                return;
            }
        };
        let woke = woken.iter().find(|e| e.data() != ACKNOWLEDGED);
        let acknowledged = woken.iter().any(|e| e.data() == ACKNOWLEDGED);
        let mut posted = hub.posted.lock().expect("hub lock poisoned");
        posted.serve_wake_up(woke.map(|e| e.fd()), acknowledged);
        if !posted.has_fds() {
            posted.served = false;
            return;
        }
        lying_down = poll.window().is_zero();
        if lying_down {
            posted.lie_down();
        }
    }
}

#[cfg(test)]
mod record_tests {
    use super::super::vmm_end::{RegionFd, WriteKind};
    use super::*;
    use crate::ioregion::wire::{Resp, mask_to_size, recv_record, send_record};
    use std::os::fd::{AsRawFd, BorrowedFd};
    use std::thread;
    use std::time::Duration;

    /// Blocks until `fd` has a record or a hang-up; false on a spurious
    /// wakeup.
    fn wait_readable(fd: BorrowedFd<'_>) -> Result<bool, ServeError> {
        match crate::sys::poll(&mut [crate::sys::pollin(Some(fd.as_raw_fd()))], -1) {
            Ok(n) => Ok(n > 0),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(false),
            Err(source) => Err(ServeError::Io { op: "poll", source }),
        }
    }

    /// How a `drain` ended.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Drained {
        /// Nothing more is queued.
        Idle,
        /// `limit` records were served; more may be queued.
        Limit,
        Closed(ServeEnd),
    }

    /// Serves up to `limit` records queued on `fd` right now, without
    /// blocking, in arrival order.
    fn drain(
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

    /// Serves commands on `fd` until the peer closes it: one fd alone,
    /// without the ordering across fds that `open`'s threads add.
    ///
    /// For a read the handler's return value is the data answered (masked to
    /// the access size); for a write its return value is ignored and a
    /// requested response echoes the written data, as QEMU's remote does. A
    /// record that does not decode is logged and, if it asked for a response,
    /// answered with [`ERROR_DATA`] so its sender is not left waiting; otherwise
    /// it is dropped.
    fn serve(fd: OwnedFd, mut handler: impl FnMut(&Cmd) -> u64) -> Result<ServeEnd, ServeError> {
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

    /// A device with four 64-bit registers at offsets 0, 8, 16, 24; an
    /// access of any size at a register's offset covers its low bytes.
    fn register_device(regs: &mut [u64; 4], cmd: &Cmd) -> u64 {
        let Some(reg) = regs.get_mut((cmd.offset / 8) as usize) else {
            return ERROR_DATA;
        };
        match cmd.access {
            Access::Read => *reg,
            Access::Write => {
                let keep = !mask_to_size(u64::MAX, cmd.size);
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

#[cfg(test)]
mod ordering_tests {
    use super::*;
    use crate::device_model::InterruptLine;
    use crate::device_model::{DeviceMemory, SharedIrq};
    use crate::ioregion::applied::MAX_COUNTED_PAGES;
    use crate::ioregion::{RegionFd, WriteKind};
    use crate::pci::{ConfigSpace, PciDevice};
    use crate::protocol::extensions::MIRROR_POSTED_COUNT_OFFSET;
    use crate::test_support::wait_until;
    use std::io::Write;
    use std::os::fd::OwnedFd;
    use std::time::Duration;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    /// A BAR of 16 bytes in two regions, 0..8 with posted writes and 8..16
    /// with posted writes or not. It logs every byte written, in the order
    /// it sees them, and a write to offset 8 "starts" work that snapshots
    /// bytes 0..8, which must hold every posted write sent before.
    struct Bank {
        config: ConfigSpace,
        mem: [u8; 16],
        second_posted: bool,
        writes: Vec<(u64, u8)>,
        snapshots: Vec<[u8; 8]>,
        /// A write at 15 sets its level.
        irq: Option<SharedIrq>,
    }

    impl PciDevice for Bank {
        fn config(&self) -> &ConfigSpace {
            &self.config
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.config
        }
        fn bar_read(&mut self, _bar: u8, offset: u64, data: &mut [u8]) {
            let o = offset as usize;
            data.copy_from_slice(&self.mem[o..o + data.len()]);
        }
        fn bar_write(&mut self, _bar: u8, offset: u64, data: &[u8]) {
            let o = offset as usize;
            self.mem[o..o + data.len()].copy_from_slice(data);
            self.writes.extend(data.iter().map(|b| (offset, *b)));
            if o == 8 {
                self.snapshots
                    .push(self.mem[..8].try_into().expect("8 bytes"));
            }
            if let (15, Some(irq)) = (o, &self.irq) {
                irq.lock().unwrap().set_level(data[0] != 0);
            }
        }
    }

    impl DeviceModel for Bank {
        fn reset(&mut self) {}
        fn set_memory(&mut self, _memory: DeviceMemory) {}
        fn set_interrupt(&mut self, line: SharedIrq) {
            self.irq = Some(line);
        }
        fn ioregions(&self, _bar: u8) -> Vec<IoRegionSpec> {
            vec![
                IoRegionSpec {
                    offset: 0,
                    size: 8,
                    posted_writes: true,
                },
                IoRegionSpec {
                    offset: 8,
                    size: 8,
                    posted_writes: self.second_posted,
                },
            ]
        }
    }

    /// The bank, the same device as the hub serves it, and its hub.
    fn bank(second_posted: bool) -> (Arc<Mutex<Bank>>, SharedDevice, Arc<Hub>) {
        let bank = Arc::new(Mutex::new(Bank {
            config: ConfigSpace::new(0x1234, 0x5678, 0, 0),
            mem: [0; 16],
            second_posted,
            writes: Vec::new(),
            snapshots: Vec::new(),
            irq: None,
        }));
        let device: SharedDevice = bank.clone();
        (bank, device, Arc::new(Hub::default()))
    }

    #[test]
    fn accesses_after_posted_writes_on_other_fds_see_them() {
        let (scratch, device, hub) = bank(false);
        // Two vCPUs: vCPU 0 posts the data, vCPU 1 starts the work.
        let (r0, f0) = open(&device, &hub, 1, 0).unwrap();
        let (r1, f1) = open(&device, &hub, 1, 1).unwrap();
        assert_eq!(r0.len(), 2);
        assert_eq!(r0[0].flags, SUB_REGION_POSTED_WRITES);
        assert_eq!(r1[1].user_data, (1 << 32) | 8);
        let fd = |f: &File| OwnedFd::from(f.try_clone().unwrap());
        let data0 = RegionFd::new(fd(&f0[0]), r0[0].user_data, true);
        let start1 = RegionFd::new(fd(&f1[1]), r1[1].user_data, false);
        for round in 1..=50u8 {
            for i in 0..8 {
                data0.write(i, &[round]).unwrap();
            }
            start1.write(0, &[1]).unwrap();
        }
        let snaps = scratch.lock().unwrap().snapshots.clone();
        assert_eq!(snaps.len(), 50);
        for (i, s) in snaps.iter().enumerate() {
            assert_eq!(*s, [i as u8 + 1; 8], "round {} saw stale data", i + 1);
        }
        let mut back = [0u8; 4];
        let read1 = RegionFd::new(fd(&f1[0]), r1[0].user_data, true);
        read1.read(4, &mut back).unwrap();
        assert_eq!(back, [50; 4]);
        // Outside the region: all ones, nothing touched.
        read1.read(6, &mut back).unwrap();
        assert_eq!(back, [0xff; 4]);
    }

    /// An interrupt line on new eventfds, with them: the one it writes to
    /// raise the line, the one the guest's acknowledgements arrive on.
    fn interrupt_line() -> (SharedIrq, EventFd, EventFd) {
        let (irqfd, resample) = (
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        );
        let file = |e: &EventFd| crate::sys::eventfd_file(e).unwrap();
        let line = InterruptLine::new(file(&irqfd), file(&resample));
        (Arc::new(Mutex::new(line)), irqfd, resample)
    }

    /// The VMM's ends of one vCPU's two posted regions.
    fn posted_pair(device: &SharedDevice, hub: &Arc<Hub>, vcpu: u32) -> (RegionFd, RegionFd) {
        let (r, f) = open(device, hub, 1, vcpu).unwrap();
        let fd = |i: usize| OwnedFd::from(f[r[i].fd_index as usize].try_clone().unwrap());
        (
            RegionFd::new(fd(0), r[0].user_data, true),
            RegionFd::new(fd(1), r[1].user_data, true),
        )
    }

    /// A read on a waited fd that names the posted writes sent before it
    /// is answered after them, whether the posted fd's own thread applied
    /// them first or the read's thread has to.
    #[test]
    fn a_read_naming_its_posted_writes_is_answered_after_them() {
        let (journal, device, hub) = bank(false);
        let (r, f) = open(&device, &hub, 1, 0).unwrap();
        let fd = |i: usize| OwnedFd::from(f[r[i].fd_index as usize].try_clone().unwrap());
        let data = RegionFd::new(fd(0), r[0].user_data, true);
        let waited = RegionFd::new(fd(1), r[1].user_data, false);
        for round in 1..=200u8 {
            data.write(3, &[round]).unwrap();
            let mut back = [0u8];
            waited
                .read_after(0, &mut back, Some(u64::from(round)))
                .unwrap();
            let last = journal.lock().unwrap().writes.last().copied();
            assert_eq!(last, Some((3, round)), "round {round}");
        }
    }

    /// The count of posted writes applied, in each page given to the hub:
    /// posted writes on any fd count, reads and waited writes do not.
    #[test]
    fn posted_writes_applied_are_counted_in_the_mirror_page() {
        let (_, device, hub) = bank(true);
        let (a, b) = posted_pair(&device, &hub, 0);
        a.write(0, &[1]).unwrap();
        hub.catch_up();
        let mirror = crate::mirror::RegisterMirror::new().unwrap();
        let writable = || MirrorPage::map(&mirror.file().unwrap(), true).unwrap();
        assert!(hub.count_posted_writes_in(writable()));
        let page = MirrorPage::map(&mirror.file().unwrap(), false).unwrap();
        let count = || page.load_u64(MIRROR_POSTED_COUNT_OFFSET as usize);
        assert_eq!(count(), 1, "what was applied before, too");
        let held = hub.posted.lock().unwrap();
        a.write(1, &[2]).unwrap();
        b.write(1, &[3]).unwrap();
        assert_eq!(count(), 1, "queued, not applied");
        drop(held);
        hub.catch_up();
        assert_eq!(count(), 3);
        let mut byte = [0u8];
        b.read(1, &mut byte).unwrap();
        assert_eq!(byte, [3]);
        assert_eq!(count(), 3, "a read is not a posted write");
        // A peer that asks for the mirror without end is refused a page
        // once the hub keeps its count in MAX_COUNTED_PAGES.
        for _ in 1..MAX_COUNTED_PAGES {
            assert!(hub.count_posted_writes_in(writable()));
        }
        assert!(!hub.count_posted_writes_in(writable()));
    }

    /// One thread serves every posted fd of a hub, with no reader to drain
    /// them; it ends with the last of them, and the next opened starts one.
    #[test]
    fn the_posted_fds_thread_serves_them_all_and_ends_with_the_last() {
        let (journal, device, hub) = bank(true);
        let writes = || journal.lock().unwrap().writes.len();
        let (a, b) = posted_pair(&device, &hub, 0);
        let (c, d) = posted_pair(&device, &hub, 1);
        for (i, fd) in [&a, &b, &c, &d].into_iter().enumerate() {
            fd.write(i as u64, &[i as u8]).unwrap();
        }
        wait_until("the four posted writes applied", || writes() == 4);
        assert!(hub.posted.lock().unwrap().served);
        drop((a, b, c));
        d.write(5, &[5]).unwrap();
        wait_until("the last fd still served", || writes() == 5);
        assert!(hub.posted.lock().unwrap().served);
        drop(d);
        wait_until("the thread ended with the last fd", || {
            !hub.posted.lock().unwrap().served
        });
        let (e, _f) = posted_pair(&device, &hub, 2);
        e.write(6, &[6]).unwrap();
        wait_until("a new fd served by a new thread", || writes() == 6);
        assert!(hub.posted.lock().unwrap().served);
    }

    /// Once handed the interrupt's acknowledgements, the posted-fds thread
    /// takes them, after the posted writes sent before them: a line still
    /// high is raised again; a posted write that lowers the line, queued
    /// before the acknowledgement, keeps it from being raised again.
    #[test]
    fn the_posted_fds_thread_takes_acknowledgements_after_the_writes_before_them() {
        let (journal, device, hub) = bank(true);
        let (line, irqfd, resample) = interrupt_line();
        device.lock().unwrap().set_interrupt(line.clone());
        let watch = line.lock().unwrap().watch_fd().unwrap();
        assert!(!hub.take_acknowledgements(&line, watch), "no thread yet");
        let (_, posted) = posted_pair(&device, &hub, 0);
        assert!(
            hub.take_acknowledgements(&line, watch),
            "the thread serves them"
        );
        assert!(hub.take_acknowledgements(&line, watch), "asked again");
        let again = || line.lock().unwrap().counts().raised_again;
        line.lock().unwrap().set_level(true);
        resample.write(1).unwrap();
        wait_until("raised again, still high", || again() == 1);
        // The device's lock held: the write to lower the line stays queued
        // while the acknowledgement arrives.
        let held = journal.lock().unwrap();
        posted.write(7, &[0]).unwrap(); // BAR offset 15
        resample.write(1).unwrap();
        drop(held);
        wait_until("the write applied", || !line.lock().unwrap().level());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(again(), 1, "acknowledged after the write that lowered it");
        assert_eq!(irqfd.read().unwrap(), 2, "raised, raised again");
    }

    /// The line handed over again costs no call; another line's fd joins
    /// the set.
    #[test]
    fn a_line_handed_over_again_is_not_added_again() {
        let (_, device, hub) = bank(true);
        let _posted = posted_pair(&device, &hub, 0);
        let (first, second) = (interrupt_line().0, interrupt_line().0);
        let watch = |l: &SharedIrq| l.lock().unwrap().watch_fd().unwrap();
        let in_set = |fd: RawFd| {
            let ready = hub.ready.get().unwrap();
            ready
                .ctl(ControlOperation::Delete, fd, EpollEvent::default())
                .is_ok()
        };
        assert!(hub.take_acknowledgements(&first, watch(&first)));
        assert!(in_set(watch(&first)), "added (and taken out again)");
        assert!(hub.take_acknowledgements(&first, watch(&first)));
        assert!(!in_set(watch(&first)), "not added again");
        assert!(hub.take_acknowledgements(&second, watch(&second)));
        assert!(in_set(watch(&second)));
    }

    #[test]
    fn posted_writes_of_one_vcpu_to_two_regions_apply_in_issue_order() {
        let (journal, device, hub) = bank(true);
        let (a, b) = posted_pair(&device, &hub, 0);
        // Holding the ordering point keeps every serving thread from taking
        // a record until all five are queued, so whichever thread goes
        // first finds both queues full: the worst case, every time.
        let held = hub.posted.lock().unwrap();
        a.write(0, &[1]).unwrap();
        b.write(0, &[2]).unwrap();
        a.write(1, &[3]).unwrap();
        b.write(1, &[4]).unwrap();
        a.write(2, &[5]).unwrap();
        drop(held);
        hub.catch_up();
        let writes = journal.lock().unwrap().writes.clone();
        assert_eq!(writes, [(0, 1), (8, 2), (1, 3), (9, 4), (2, 5)]);
    }

    /// vCPU 0's write happens before vCPU 1's (as if the guest passed a
    /// lock between them), so the device must end with vCPU 1's value.
    #[test]
    fn posted_writes_ordered_across_vcpus_apply_in_that_order() {
        for _ in 0..20 {
            let (journal, device, hub) = bank(true);
            let (a0, _) = posted_pair(&device, &hub, 0);
            let (a1, _) = posted_pair(&device, &hub, 1);
            let held = hub.posted.lock().unwrap();
            a0.write(4, &[1]).unwrap();
            a1.write(4, &[2]).unwrap();
            drop(held);
            hub.catch_up();
            assert_eq!(journal.lock().unwrap().writes, [(4, 1), (4, 2)]);
        }
    }

    /// Two vCPUs post to both regions as fast as they can while the
    /// serving threads race them: each vCPU's writes (vCPU 0 in bytes
    /// 0..4 of each region, vCPU 1 in 4..8) reach the device in its order.
    #[test]
    fn racing_posted_writes_keep_each_vcpus_order() {
        let (journal, device, hub) = bank(true);
        let vcpus: Vec<_> = (0..2u32)
            .map(|vcpu| {
                let (a, b) = posted_pair(&device, &hub, vcpu);
                std::thread::spawn(move || {
                    let mut issued = Vec::new();
                    let mut x = 0x9e37_79b9u32.wrapping_mul(vcpu + 1);
                    for n in 0..2000u32 {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        let offset = u64::from(vcpu * 4 + x % 4);
                        let value = n as u8;
                        if x & 0x100 == 0 {
                            a.write(offset, &[value]).unwrap();
                            issued.push((offset, value));
                        } else {
                            b.write(offset, &[value]).unwrap();
                            issued.push((offset + 8, value));
                        }
                    }
                    issued
                })
            })
            .collect();
        let issued: Vec<Vec<(u64, u8)>> = vcpus.into_iter().map(|t| t.join().unwrap()).collect();
        hub.catch_up();
        let writes = journal.lock().unwrap().writes.clone();
        for (vcpu, issued) in issued.iter().enumerate() {
            let mine: Vec<_> = writes
                .iter()
                .copied()
                .filter(|(o, _)| (o % 8) / 4 == vcpu as u64)
                .collect();
            assert_eq!(&mine, issued, "vCPU {vcpu}");
        }
    }

    /// KVM's records carry no sequence number: still served, each fd in
    /// its own order, and a read after them sees them.
    #[test]
    fn records_without_a_sequence_number_are_served_in_fd_order() {
        use std::io::{Read, Write};
        let (journal, device, hub) = bank(true);
        let (r, f) = open(&device, &hub, 1, 0).unwrap();
        // One write() or read() on a SOCK_SEQPACKET socket is one record.
        let mut fd = f[r[0].fd_index as usize].try_clone().unwrap();
        for (offset, value) in [(3, 7u8), (3, 8), (5, 9)] {
            let cmd = Cmd::write(r[0].user_data, offset, &[value], false).unwrap();
            assert_eq!(cmd.sequence, 0);
            fd.write_all(&cmd.encode()).unwrap();
        }
        let read = Cmd::read(r[0].user_data, 3, 1).unwrap();
        fd.write_all(&read.encode()).unwrap();
        let mut buf = [0u8; RECV_BUF_SIZE];
        let n = fd.read(&mut buf).unwrap();
        assert_eq!(crate::ioregion::Resp::decode(&buf[..n]).unwrap().data, 8);
        assert_eq!(journal.lock().unwrap().writes, [(3, 7), (3, 8), (5, 9)]);
    }

    /// On the kernel path KVM sends pieces of a range on the range's one
    /// fd, each piece's commands with the range's user data plus where
    /// the piece starts.
    #[test]
    fn a_piece_of_a_range_says_where_it_starts_in_its_user_data() {
        use std::io::{Read, Write};
        let (journal, device, hub) = bank(true);
        let (r, f) = open(&device, &hub, 1, 0).unwrap();
        let (user_data, size) = (r[0].user_data, r[0].size);
        let mut fd = f[r[0].fd_index as usize].try_clone().unwrap();
        let mut ask = |user_data: u64, offset: u64| {
            let read = Cmd::read(user_data, offset, 1).unwrap();
            fd.write_all(&read.encode()).unwrap();
            let mut buf = [0u8; RECV_BUF_SIZE];
            let n = fd.read(&mut buf).unwrap();
            crate::ioregion::Resp::decode(&buf[..n]).unwrap().data
        };
        // Offset 1 of the piece that starts 4 bytes in: offset 5.
        let write = Cmd::write(user_data + 4, 1, &[6], false).unwrap();
        f[r[0].fd_index as usize]
            .try_clone()
            .unwrap()
            .write_all(&write.encode())
            .unwrap();
        assert_eq!(ask(user_data + 5, 0), 6);
        assert_eq!(ask(user_data, 5), 6);
        // A piece before the range, past its end, or running off it.
        // (A one-byte read of ERROR_DATA answers its low byte.)
        assert_eq!(ask(user_data - 1, 0), 0xff);
        assert_eq!(ask(user_data + size, 0), 0xff);
        assert_eq!(ask(user_data + 4, size - 4), 0xff);
        assert_eq!(ask(u64::MAX, 1), 0xff);
        assert_eq!(journal.lock().unwrap().writes, [(5, 6)]);
    }

    #[test]
    fn catching_up_applies_every_posted_write_sent_before() {
        let (scratch, device, hub) = bank(false);
        let (r, f) = open(&device, &hub, 1, 0).unwrap();
        let posted = RegionFd::new(
            OwnedFd::from(f[0].try_clone().unwrap()),
            r[0].user_data,
            true,
        );
        for round in 1..=200u8 {
            posted.write(u64::from(round % 8), &[round]).unwrap();
            // What the control loop does before a message or a resample.
            hub.catch_up();
            let mem = scratch.lock().unwrap().mem;
            assert_eq!(mem[usize::from(round % 8)], round, "round {round}");
        }
    }

    /// The VMM's ends of one vCPU's two posted regions as raw sockets, and
    /// how to send a write or a read record with a chosen number on them.
    struct RawPair {
        fds: Vec<File>,
        user_data: [u64; 2],
    }

    impl RawPair {
        fn open(device: &SharedDevice, hub: &Arc<Hub>, vcpu: u32) -> RawPair {
            let (r, f) = open(device, hub, 1, vcpu).unwrap();
            RawPair {
                fds: r
                    .iter()
                    .map(|r| f[r.fd_index as usize].try_clone().unwrap())
                    .collect(),
                user_data: [r[0].user_data, r[1].user_data],
            }
        }

        fn send(&self, i: usize, mut cmd: Cmd, sequence: u64) {
            use std::io::Write;
            cmd.sequence = sequence;
            (&self.fds[i]).write_all(&cmd.encode()).unwrap();
        }

        fn write(&self, i: usize, offset: u64, value: u8, sequence: u64) {
            let cmd = Cmd::write(self.user_data[i], offset, &[value], false).unwrap();
            self.send(i, cmd, sequence);
        }

        /// A posted write that says `posted_before` posted writes were sent
        /// before it.
        fn counted_write(
            &self,
            i: usize,
            offset: u64,
            value: u8,
            posted_before: u64,
            sequence: u64,
        ) {
            let mut cmd = Cmd::write(self.user_data[i], offset, &[value], false).unwrap();
            cmd.posted_before = posted_before + 1;
            self.send(i, cmd, sequence);
        }

        /// A read that says `posted_before` posted writes were sent before it.
        fn read(&self, i: usize, offset: u64, posted_before: u64, sequence: u64) {
            let mut cmd = Cmd::read(self.user_data[i], offset, 1).unwrap();
            cmd.posted_before = posted_before + 1;
            self.send(i, cmd, sequence);
        }

        /// The answer waiting on fd `i`, if there is one.
        fn answered(&self, i: usize) -> Option<u64> {
            let mut buf = [0u8; RECV_BUF_SIZE];
            let n = wire::recv_record(self.fds[i].as_fd(), &mut buf, libc::MSG_DONTWAIT).ok()?;
            Some(crate::ioregion::Resp::decode(&buf[..n]).unwrap().data)
        }
    }

    /// A bank with two posted regions, opened for two vCPUs as raw sockets.
    fn two_vcpus() -> (Arc<Mutex<Bank>>, Arc<Hub>, RawPair, RawPair) {
        let (journal, device, hub) = bank(true);
        let vcpu0 = RawPair::open(&device, &hub, 0);
        let vcpu1 = RawPair::open(&device, &hub, 1);
        (journal, hub, vcpu0, vcpu1)
    }

    /// A read at the head of the fd that woke the thread, with every posted
    /// write sent before it applied, is answered without a look at the
    /// other fds; one that is not waits for what they hold.
    #[test]
    fn a_covered_read_is_answered_without_looking_at_the_other_fds() {
        let (journal, hub, vcpu0, vcpu1) = two_vcpus();
        let mut posted = hub.posted.lock().unwrap();
        let woke = Some(0);
        // vCPU 1's posted write, which vCPU 0's read was not sent after.
        vcpu1.write(0, 1, 5, 1);
        vcpu0.read(0, 1, 0, 2);
        assert!(posted.drain(woke, false).is_empty());
        assert_eq!(vcpu0.answered(0), Some(0));
        assert!(journal.lock().unwrap().writes.is_empty(), "left queued");
        // Sent after that write: answered once it is applied.
        vcpu0.read(0, 1, 1, 3);
        assert!(posted.drain(woke, false).is_empty());
        assert_eq!(vcpu0.answered(0), Some(5));
        assert_eq!(journal.lock().unwrap().writes, [(1, 5)]);
        assert_eq!(posted.applied.count, 1);
    }

    /// A posted write at the head of the fd that woke the thread, saying as
    /// many posted writes were sent before it as were applied, is the next
    /// one owed: applied without a look at the other fds. One that says
    /// more goes through the drain, which takes the other fds' writes first
    /// by number.
    #[test]
    fn the_next_posted_write_is_applied_without_looking_at_the_other_fds() {
        let (journal, hub, vcpu0, vcpu1) = two_vcpus();
        let mut posted = hub.posted.lock().unwrap();
        let woke = Some(0);
        // Numbered lower, on vCPU 1's fd, but not counted before vCPU 0's
        // two writes: the count is what tells the device. Both of those go
        // in one wake-up.
        vcpu1.write(0, 1, 5, 1);
        vcpu0.counted_write(0, 2, 6, 0, 2);
        vcpu0.counted_write(0, 3, 7, 1, 3);
        assert!(posted.drain(woke, false).is_empty());
        let writes = || journal.lock().unwrap().writes.clone();
        assert_eq!(writes(), [(2, 6), (3, 7)], "vCPU 1's left queued");
        assert_eq!(posted.applied.count, 2);
        // Says three were sent before it, two are applied: the drain
        // applies vCPU 1's write (numbered 1) and then this one.
        vcpu0.counted_write(0, 4, 8, 3, 4);
        assert!(posted.drain(woke, false).is_empty());
        assert_eq!(writes()[2..], [(1, 5), (4, 8)]);
        assert_eq!(posted.applied.count, 4);
        // Without a count: through the drain as before.
        vcpu1.write(0, 1, 9, 5);
        vcpu0.write(0, 3, 10, 6);
        assert!(posted.drain(woke, false).is_empty());
        assert_eq!(writes()[4..], [(1, 9), (3, 10)]);
        // A burst longer than BURST: the rest waits for the next wake-up.
        let sent = BURST as u64 + 3;
        for k in 0..sent {
            vcpu0.counted_write(0, 5, k as u8, 6 + k, 7 + k);
        }
        assert!(posted.drain(woke, false).is_empty());
        assert_eq!(posted.applied.count, 6 + BURST as u64);
        assert!(posted.drain(woke, false).is_empty());
        assert_eq!(posted.applied.count, 6 + sent);
        assert_eq!(writes().len(), 6 + sent as usize);
    }

    /// An interrupt line and the eventfd its acknowledgements arrive on.
    type LineAndAcks = (SharedIrq, EventFd);

    /// A bank with two posted regions and an interrupt line whose
    /// acknowledgements the hub's thread takes, opened for two vCPUs as raw
    /// sockets; with the eventfd the acknowledgements arrive on.
    fn acknowledging_bank() -> (Arc<Mutex<Bank>>, Arc<Hub>, LineAndAcks, RawPair, RawPair) {
        let (journal, device, hub) = bank(true);
        let (line, _irqfd, resample) = interrupt_line();
        device.lock().unwrap().set_interrupt(line.clone());
        let vcpu0 = RawPair::open(&device, &hub, 0);
        let vcpu1 = RawPair::open(&device, &hub, 1);
        let watch = line.lock().unwrap().watch_fd().unwrap();
        assert!(hub.take_acknowledgements(&line, watch));
        (journal, hub, (line, resample), vcpu0, vcpu1)
    }

    /// A wake-up that brings the guest's acknowledgement applies every
    /// posted write first, even with a read at its first fd that could be
    /// answered at once: the acknowledgement must find the line as those
    /// writes left it.
    #[test]
    fn an_acknowledgement_finds_every_posted_write_applied() {
        let (_, hub, (line, resample), vcpu0, vcpu1) = acknowledging_bank();
        line.lock().unwrap().set_level(true);
        let mut posted = hub.posted.lock().unwrap();
        // vCPU 1 lowers the line (BAR offset 15) and acknowledges; vCPU 0's
        // read was not sent after that write.
        vcpu1.write(1, 7, 0, 1);
        resample.write(1).unwrap();
        vcpu0.read(0, 0, 0, 2);
        let woke = posted.ends[0].raw_fd();
        posted.serve_wake_up(woke, true);
        assert_eq!(vcpu0.answered(0), Some(0));
        assert!(!line.lock().unwrap().level(), "the write applied");
        assert_eq!(line.lock().unwrap().counts().raised_again, 0);
    }

    /// With every counted posted write applied, an acknowledgement's
    /// wake-up applies nothing before it resamples the line, not even the
    /// record at the head of the fd that woke it: what the guest sent
    /// after acknowledging (its next doorbell, waited for) comes after.
    #[test]
    fn an_acknowledgement_is_taken_before_what_the_guest_sent_after_it() {
        let (journal, hub, (line, resample), vcpu0, _) = acknowledging_bank();
        let mirror = crate::mirror::RegisterMirror::new().unwrap();
        let map = || MirrorPage::map(&mirror.file().unwrap(), true).unwrap();
        assert!(hub.count_posted_writes_in(map()));
        map().show_sent_count(0);
        let mut posted = hub.posted.lock().unwrap();
        line.lock().unwrap().set_level(true);
        resample.write(1).unwrap();
        let doorbell = Cmd::write(vcpu0.user_data[1], 7, &[1], true).unwrap();
        vcpu0.send(1, doorbell, 1);
        let woke = posted.ends[1].raw_fd();
        posted.serve_wake_up(woke, true);
        assert!(journal.lock().unwrap().writes.is_empty(), "left queued");
        assert_eq!(vcpu0.answered(1), None);
        assert_eq!(line.lock().unwrap().counts().raised_again, 1, "resampled");
        posted.serve_wake_up(woke, false);
        assert_eq!(journal.lock().unwrap().writes, [(15, 1)]);
        assert_eq!(vcpu0.answered(1), Some(1));
    }

    /// With the VMM's count of posted writes sent in a mirror page, an
    /// acknowledgement needs only that many applied: a write sent since
    /// (not counted yet) stays queued, and an acknowledgement alone, with
    /// the count reached, looks at no fd at all. A burst on one fd stops
    /// at the count too: the rest keeps the fd readable.
    #[test]
    fn an_acknowledgement_needs_only_the_posted_writes_the_vmm_counted() {
        let (journal, hub, (line, resample), vcpu0, vcpu1) = acknowledging_bank();
        let mirror = crate::mirror::RegisterMirror::new().unwrap();
        let map = || MirrorPage::map(&mirror.file().unwrap(), true).unwrap();
        assert!(hub.count_posted_writes_in(map()));
        let vmm = map();
        let mut posted = hub.posted.lock().unwrap();
        let writes = || journal.lock().unwrap().writes.clone();
        let raised_again = || line.lock().unwrap().counts().raised_again;
        let acknowledged = |posted: &mut Posted, woke: Option<RawFd>| {
            resample.write(1).unwrap();
            posted.serve_wake_up(woke, true);
        };
        line.lock().unwrap().set_level(true);
        // vCPU 0 lowers the line, the VMM counts it and the guest
        // acknowledges; vCPU 1's write is on its way, not counted yet.
        vcpu0.counted_write(1, 7, 0, 0, 1);
        vmm.show_sent_count(1);
        vcpu1.write(0, 2, 9, 2);
        let second = posted.ends[1].raw_fd();
        acknowledged(&mut posted, second);
        assert_eq!(writes(), [(15, 0)], "vCPU 1's write left queued");
        assert!(!line.lock().unwrap().level());
        assert_eq!(raised_again(), 0);
        // The line high again and acknowledged, nothing more counted.
        line.lock().unwrap().set_level(true);
        acknowledged(&mut posted, None);
        assert_eq!(writes(), [(15, 0)], "no fd looked at");
        assert_eq!(raised_again(), 1);
        // vCPU 1's write counted: the next acknowledgement applies it.
        vmm.store_sent_count(2);
        acknowledged(&mut posted, None);
        assert_eq!(writes(), [(15, 0), (2, 9)]);
        // Two writes on one fd, the second not counted yet.
        vcpu0.counted_write(0, 4, 1, 2, 3);
        vcpu0.counted_write(0, 5, 2, 3, 4);
        vmm.store_sent_count(3);
        assert!(posted.drain(Some(0), false).is_empty());
        assert_eq!(writes()[2..], [(4, 1)]);
        vmm.store_sent_count(4);
        assert!(posted.drain(Some(0), false).is_empty());
        assert_eq!(writes()[2..], [(4, 1), (5, 2)]);
        // Without the VMM's word that it keeps the count (a page handed
        // out again, whose count a VMM before kept), every fd is drained.
        drop(posted);
        assert!(hub.count_posted_writes_in(map()));
        let mut posted = hub.posted.lock().unwrap();
        vcpu1.write(0, 3, 4, 5);
        acknowledged(&mut posted, None);
        assert_eq!(writes()[4..], [(3, 4)]);
    }

    /// "posted writes: N applied, K of them from the ring; ..." -> K.
    fn from_the_ring(hub: &Hub) -> u64 {
        let summary = hub.summary();
        let (_, rest) = summary.split_once(" applied, ").expect("summary");
        rest.split(' ').next().unwrap().parse().unwrap()
    }

    /// A ring found broken (a VMM wrote its tail past a ring's length) is
    /// no longer served, and its page, offered again by a later mirror
    /// query, is served as a new ring rather than taken for the old one.
    #[test]
    fn a_broken_ring_is_dropped_and_its_page_served_anew_when_offered_again() {
        use crate::protocol::extensions::{MIRROR_RING_SLOTS, MIRROR_RING_TAIL_OFFSET};
        let Ringed {
            journal,
            hub,
            a,
            mirror,
            ring,
            ..
        } = ringed_bank();
        let rings = |hub: &Hub| {
            (hub.posted.lock().unwrap().ends.iter())
                .filter(|e| e.raw_fd().is_none())
                .count()
        };
        let page = MirrorPage::map(&mirror.file().unwrap(), true).unwrap();
        page.store_u64(
            MIRROR_RING_TAIL_OFFSET as usize,
            u64::from(MIRROR_RING_SLOTS) + 1,
        );
        // A posted write on a fd wakes the thread, whose drain looks at
        // the ring.
        a.write_waiting(0, &[1], false, Some(0), None).unwrap();
        wait_until("the write applied", || {
            journal.lock().unwrap().writes.len() == 1
        });
        wait_until("the broken ring dropped", || rings(&hub) == 0);
        assert!(hub.take_posted_writes_from(&mirror.file().unwrap()));
        assert_eq!(rings(&hub), 1, "served anew");
        // And it serves: the first record goes on a fd to wake the device,
        // the next into the ring while the device is held busy.
        let busy = hub.posted.lock().unwrap();
        for n in 1..4u64 {
            let kind = a.write_waiting(n, &[n as u8], false, Some(n), Some(&ring));
            assert_eq!(kind.unwrap(), WriteKind::Posted);
        }
        drop(busy);
        wait_until("every posted write applied", || {
            journal.lock().unwrap().writes.len() == 4
        });
        assert_eq!(
            journal.lock().unwrap().writes,
            [(0, 1), (1, 1), (2, 2), (3, 3)]
        );
        assert!(from_the_ring(&hub) >= 1, "{}", hub.summary());
    }

    /// Posted writes through the ring in a mirror page (`mirror::ring`)
    /// are applied with those on the fds in the order they were sent: the
    /// first goes on a fd (the device sleeps), the next fill the ring while
    /// the device is busy, the rest go on the fds again (the ring is full).
    /// A wake-up copy on a fd is dropped and its original applied once.
    #[test]
    fn posted_writes_through_the_ring_apply_in_order_with_the_fds() {
        use crate::mirror::ring::{Put, mark_wake_up};
        use crate::protocol::extensions::MIRROR_RING_SLOTS;
        let Ringed {
            journal,
            device,
            hub,
            a,
            b,
            mirror,
            ring,
        } = ringed_bank();
        assert!(
            hub.take_posted_writes_from(&mirror.file().unwrap()),
            "again"
        );
        let rings = (hub.posted.lock().unwrap().ends.iter())
            .filter(|e| e.raw_fd().is_none())
            .count();
        assert_eq!(rings, 1, "one page offered twice is one ring");
        let writes = 150u64;
        let busy = hub.posted.lock().unwrap();
        for n in 0..writes {
            let (fd, offset) = if n % 3 == 0 { (&b, 0) } else { (&a, n % 8) };
            let kind = fd.write_waiting(offset, &[n as u8], false, Some(n), Some(&ring));
            assert_eq!(kind.unwrap(), WriteKind::Posted);
        }
        drop(busy);
        wait_until("every posted write applied", || {
            journal.lock().unwrap().writes.len() == writes as usize
        });
        let expected: Vec<(u64, u8)> = (0..writes)
            .map(|n| (if n % 3 == 0 { 8 } else { n % 8 }, n as u8))
            .collect();
        assert_eq!(journal.lock().unwrap().writes, expected);
        assert_eq!(from_the_ring(&hub), u64::from(MIRROR_RING_SLOTS));
        // The device asleep with `listening` down, as in the instant after
        // it looked at an empty ring: a record queued then needs the copy.
        wait_until("the device asleep", || ring.backlog().0 == 0);
        ring.stop_listening();
        let cmd = {
            let mut cmd = Cmd::write(a_user_data(&hub), 1, &[0xaa], false).unwrap();
            cmd.sequence = wire::next_sequence();
            cmd.posted_before = writes + 1;
            cmd
        };
        let mut record = cmd.encode();
        assert_eq!(ring.put(&record), Put::Queued);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(journal.lock().unwrap().writes.len(), writes as usize);
        mark_wake_up(&mut record);
        let raw = RawPair::open(&device, &hub, 1);
        (&raw.fds[0]).write_all(&record).unwrap();
        wait_until("the queued write applied", || {
            journal.lock().unwrap().writes.len() == writes as usize + 1
        });
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(journal.lock().unwrap().writes.last(), Some(&(1, 0xaa)));
        assert_eq!(
            journal.lock().unwrap().writes.len(),
            writes as usize + 1,
            "once"
        );
        assert_eq!(from_the_ring(&hub), u64::from(MIRROR_RING_SLOTS) + 1);
    }

    /// A thread other than the posted-write one that drains while that
    /// thread sleeps may take the record a VMM sent to wake it (which took
    /// `listening` down): it raises `listening` again on its behalf, so the
    /// VMM's next posted write goes on a fd, not into a ring nobody reads.
    #[test]
    fn a_drain_by_another_thread_raises_listening_for_the_sleeper() {
        use crate::mirror::ring::Put;
        let Ringed {
            journal,
            hub,
            a,
            ring,
            ..
        } = ringed_bank();
        wait_until("the posted-write thread asleep", || {
            hub.posted.lock().unwrap().asleep
        });
        let mut posted = hub.posted.lock().unwrap();
        // Sent on the fd, `listening` taken down.
        a.write_waiting(0, &[1], false, Some(0), Some(&ring))
            .unwrap();
        let record = Cmd::write(a_user_data(&hub), 0, &[2], false)
            .unwrap()
            .encode();
        // What `Hub::catch_up` does, the posted-write thread still waiting.
        posted.drain(None, true);
        assert_eq!(journal.lock().unwrap().writes, [(0, 1)]);
        // Left alone, this one would wait in the ring for the sleeper.
        assert_eq!(ring.put(&record), Put::Queued);
        posted.after_another_drain();
        assert_eq!(journal.lock().unwrap().writes, [(0, 1), (0, 2)]);
        assert_eq!(ring.put(&record), Put::Send, "listening again");
    }

    /// On the kernel path with the VMM posting writes through the ring,
    /// KVM sends the reads and waited writes of other registers, without
    /// a number: such a record waits for the posted writes in the ring,
    /// which the guest made before it, and a posted write KVM sends (none
    /// while the VMM posts) still goes before a numbered record.
    #[test]
    fn a_record_kvm_waits_for_goes_after_the_posted_writes_in_the_ring() {
        use crate::mirror::ring::Put;
        let Ringed {
            journal,
            device,
            hub,
            ring,
            ..
        } = ringed_bank();
        let kvm = RawPair::open(&device, &hub, 1);
        wait_until("the device asleep", || ring.backlog().0 == 0);
        for (value, read) in [(0x11u8, true), (0x22, false)] {
            let busy = hub.posted.lock().unwrap();
            ring.stop_listening();
            let mut cmd = Cmd::write(a_user_data(&hub), 3, &[value], false).unwrap();
            cmd.sequence = wire::next_sequence();
            assert_eq!(ring.put(&cmd.encode()), Put::Queued);
            if read {
                kvm.send(0, Cmd::read(kvm.user_data[0], 3, 1).unwrap(), 0);
            } else {
                kvm.send(
                    0,
                    Cmd::write(kvm.user_data[0], 3, &[0x33], true).unwrap(),
                    0,
                );
            }
            drop(busy);
            wait_until("KVM's record answered", || kvm.answered(0).is_some());
        }
        let writes = journal.lock().unwrap().writes.clone();
        assert_eq!(writes, [(3, 0x11), (3, 0x22), (3, 0x33)]);
        let (_, device, hub) = bank(true);
        let (kvm, vcpu) = (
            RawPair::open(&device, &hub, 0),
            RawPair::open(&device, &hub, 1),
        );
        // The read counts KVM's posted write (`PostedSent::total`).
        let busy = hub.posted.lock().unwrap();
        vcpu.read(0, 3, 1, wire::next_sequence());
        kvm.write(0, 3, 0x44, 0);
        drop(busy);
        wait_until("the read answered", || {
            vcpu.answered(0).is_some_and(|v| {
                assert_eq!(v, 0x44, "KVM's posted write first");
                true
            })
        });
    }

    /// A wake-up that brings the guest's acknowledgement and a read on a
    /// fd, the read behind a posted write still in the ring: the catch-up
    /// takes the read off its fd, finds it owed the ring's write, applies
    /// that one and, with every write the VMM counted applied, stops. The
    /// read is answered all the same, after the acknowledgement: nothing
    /// is left on its fd to wake the thread for it.
    #[test]
    fn a_read_taken_off_its_fd_by_a_catch_up_is_answered() {
        use crate::mirror::ring::Put;
        let bank = ringed_bank();
        let vcpu1 = RawPair::open(&bank.device, &bank.hub, 1);
        let vmm = vmm_counting_in(&bank.hub, &bank.mirror);
        let mut posted = bank.hub.posted.lock().unwrap();
        // As after the device looked at an empty ring: the write stays there.
        bank.ring.stop_listening();
        let mut write = Cmd::write(vcpu1.user_data[0], 3, &[7], false).unwrap();
        write.sequence = wire::next_sequence();
        write.posted_before = 1;
        assert_eq!(bank.ring.put(&write.encode()), Put::Queued);
        vmm.store_sent_count(1);
        vcpu1.read(0, 3, 1, wire::next_sequence());
        // vCPU 0's two fds, the ring, then vCPU 1's.
        let woke = posted.ends[3].raw_fd();
        assert!(woke.is_some(), "vCPU 1's first fd");
        posted.serve_wake_up(woke, true);
        assert_eq!(bank.journal.lock().unwrap().writes, [(3, 7)]);
        assert_eq!(vcpu1.answered(0), Some(7), "the read answered");
        assert!(!posted.ends.iter().any(PostedEnd::holds_a_taken_record));
    }

    /// A posted-write thread that polls (`Hub::polling`) stays up after
    /// a wake-up with `listening` down: the VMM's next posted writes go
    /// in the ring with no wake-up, and the thread takes them there. A
    /// read on a fd then finds them applied.
    #[test]
    fn a_polling_posted_write_thread_takes_the_ring_with_no_wake_up() {
        use crate::mirror::ring::Put;
        let (journal, device, _) = bank(true);
        let hub = Arc::new(Hub::polling(Duration::from_secs(30)));
        let (a, _b) = posted_pair(&device, &hub, 0);
        let mirror = crate::mirror::RegisterMirror::new().unwrap();
        assert!(hub.take_posted_writes_from(&mirror.file().unwrap()));
        let page = Arc::new(MirrorPage::map(&mirror.file().unwrap(), true).unwrap());
        let ring = PostedRing::new(page).unwrap();
        // Asleep, listening: the first write goes on the fd and wakes it.
        a.write_waiting(0, &[1], false, Some(0), Some(&ring))
            .unwrap();
        wait_until("the first write applied", || {
            journal.lock().unwrap().writes.len() == 1
        });
        for n in 1..40u64 {
            let mut cmd = Cmd::write(a_user_data(&hub), n % 8, &[n as u8 + 1], false).unwrap();
            cmd.sequence = wire::next_sequence();
            cmd.posted_before = n + 1;
            assert_eq!(
                ring.put(&cmd.encode()),
                Put::Queued,
                "write {n}: no wake-up"
            );
        }
        wait_until("every write applied", || {
            journal.lock().unwrap().writes.len() == 40
        });
        let expected: Vec<(u64, u8)> = (0..40u64).map(|n| (n % 8, n as u8 + 1)).collect();
        assert_eq!(journal.lock().unwrap().writes, expected);
        assert_eq!(from_the_ring(&hub), 39);
        assert!(!hub.posted.lock().unwrap().asleep, "still polling");
        let mut data = [0u8; 1];
        a.read_after(7, &mut data, Some(40)).unwrap();
        assert_eq!(data, [40]);
    }

    /// Random interleavings of what a hub sees from two vCPUs: posted
    /// writes through the ring or on their fds, reads on their fds or, as
    /// on the kernel path, sent by KVM without a number on its own fds (a
    /// vCPU waits for its read before it goes on), the posted-write thread's
    /// wake-ups with and without the guest's acknowledgement, and other
    /// threads' catch-ups. After every step no record taken off a fd is
    /// held (nothing would wake the hub for it again); in the end every
    /// write is applied once, in the order sent, and every read answered
    /// with what the writes sent before it left, or a later write's value.
    #[test]
    fn random_interleavings_lose_no_record_and_keep_the_order() {
        use crate::mirror::ring::{Put, mark_wake_up};
        for seed in 1..=100u64 {
            let bank = ringed_bank();
            let vcpus = [
                RawPair::open(&bank.device, &bank.hub, 1),
                RawPair::open(&bank.device, &bank.hub, 2),
            ];
            // KVM's fds: one read in flight on them at a time.
            let kvm = RawPair::open(&bank.device, &bank.hub, 3);
            let vmm = vmm_counting_in(&bank.hub, &bank.mirror);
            let mut posted = bank.hub.posted.lock().unwrap();
            bank.ring.stop_listening();
            let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut next = |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let mut sent: Vec<(u64, u8)> = Vec::new();
            // Per vCPU: its read waiting for an answer (fd, BAR offset,
            // the writes sent before it, whether KVM sent it).
            let mut waiting: [Option<(usize, usize, usize, bool)>; 2] = [None, None];
            for step in 0..400 {
                let v = next(2) as usize;
                let (i, o) = (next(2) as usize, next(8));
                let at = i * 8 + o as usize;
                match next(9) {
                    0..=3 if waiting[v].is_none() => {
                        let value = sent.len() as u8;
                        let mut cmd =
                            Cmd::write(vcpus[v].user_data[i], o, &[value], false).unwrap();
                        cmd.sequence = wire::next_sequence();
                        cmd.posted_before = sent.len() as u64 + 1;
                        let mut record = cmd.encode();
                        let put = if next(2) == 0 {
                            bank.ring.put(&record)
                        } else {
                            Put::Send
                        };
                        if put != Put::Queued {
                            if put == Put::QueuedWakeUp {
                                mark_wake_up(&mut record);
                            }
                            (&vcpus[v].fds[i]).write_all(&record).unwrap();
                        }
                        sent.push((at as u64, value));
                        vmm.store_sent_count(sent.len() as u64);
                    }
                    4..=5 if waiting[v].is_none() => {
                        let by_kvm = next(3) == 0 && !waiting.iter().flatten().any(|w| w.3);
                        if by_kvm {
                            kvm.send(i, Cmd::read(kvm.user_data[i], o, 1).unwrap(), 0);
                        } else {
                            vcpus[v].read(i, o, sent.len() as u64, wire::next_sequence());
                        }
                        waiting[v] = Some((i, at, sent.len(), by_kvm));
                    }
                    6..=7 => {
                        let end = next(posted.ends.len() as u64) as usize;
                        let woke = posted.ends[end].raw_fd();
                        posted.serve_wake_up(woke, next(2) == 0);
                    }
                    8 => {
                        posted.drain(None, true);
                        posted.after_another_drain();
                    }
                    _ => {}
                }
                assert!(
                    !posted.ends.iter().any(PostedEnd::holds_a_taken_record),
                    "seed {seed} step {step}: a record taken off a fd is held"
                );
                for (v, vcpu) in vcpus.iter().enumerate() {
                    let Some((i, at, before, by_kvm)) = waiting[v] else {
                        continue;
                    };
                    let Some(answer) = (if by_kvm { &kvm } else { vcpu }).answered(i) else {
                        continue;
                    };
                    let at_send = sent[..before].iter().rev().find(|(o, _)| *o == at as u64);
                    let later = sent[before..].iter().filter(|(o, _)| *o == at as u64);
                    let mut legal = vec![u64::from(at_send.map_or(0, |(_, value)| *value))];
                    legal.extend(later.map(|(_, value)| u64::from(*value)));
                    assert!(
                        legal.contains(&answer),
                        "seed {seed} step {step}: vCPU {} read {answer} at {at}, not one of {legal:?}",
                        v + 1
                    );
                    waiting[v] = None;
                }
            }
            // What is left: the posted-write thread's next wake-ups.
            let fds: Vec<Option<RawFd>> = posted.ends.iter().map(PostedEnd::raw_fd).collect();
            for woke in fds {
                posted.serve_wake_up(woke, false);
            }
            posted.drain(None, false);
            assert_eq!(
                bank.journal.lock().unwrap().writes,
                sent,
                "seed {seed}: applied in order"
            );
            for (v, vcpu) in vcpus.iter().enumerate() {
                if let Some((i, _, _, by_kvm)) = waiting[v] {
                    assert!(
                        (if by_kvm { &kvm } else { vcpu }).answered(i).is_some(),
                        "seed {seed}: vCPU {}'s last read",
                        v + 1
                    );
                }
            }
        }
    }

    /// A bank whose hub takes posted writes from the ring in a mirror
    /// page, with vCPU 0's two posted fds and the ring as the VMM maps it.
    struct Ringed {
        journal: Arc<Mutex<Bank>>,
        device: SharedDevice,
        hub: Arc<Hub>,
        a: RegionFd,
        b: RegionFd,
        mirror: crate::mirror::RegisterMirror,
        ring: PostedRing,
    }

    fn ringed_bank() -> Ringed {
        let (journal, device, hub) = bank(true);
        let (a, b) = posted_pair(&device, &hub, 0);
        let mirror = crate::mirror::RegisterMirror::new().unwrap();
        assert!(hub.take_posted_writes_from(&mirror.file().unwrap()));
        let page = Arc::new(MirrorPage::map(&mirror.file().unwrap(), true).unwrap());
        let ring = PostedRing::new(page).unwrap();
        Ringed {
            journal,
            device,
            hub,
            a,
            b,
            mirror,
            ring,
        }
    }

    /// The hub keeps its count of posted writes applied in `mirror`'s
    /// page, and the VMM (the page returned) its count sent, from 0;
    /// returns once the posted-write thread sleeps.
    fn vmm_counting_in(hub: &Hub, mirror: &crate::mirror::RegisterMirror) -> MirrorPage {
        let map = || MirrorPage::map(&mirror.file().unwrap(), true).unwrap();
        assert!(hub.count_posted_writes_in(map()));
        let vmm = map();
        vmm.show_sent_count(0);
        wait_until("the posted-write thread asleep", || {
            hub.posted.lock().unwrap().asleep
        });
        vmm
    }

    /// The user data of the bank's first range.
    fn a_user_data(hub: &Hub) -> u64 {
        let ranges = hub.ranges.lock().unwrap();
        ranges
            .iter()
            .map(|(user_data, _, _)| *user_data)
            .min()
            .unwrap()
    }
}
