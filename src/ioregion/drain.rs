//! The order posted writes are applied in: each posted-write fd of a
//! device, and the ring in its mirror page (`mirror::ring`), is a queue
//! whose head is taken off and held until applied; the drain applies the
//! heads by their sequence numbers (see `device_end` for the order owed
//! and [`drain_in_order`] for why it holds).

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::applied::AppliedCount;
use super::wire::{self, Cmd, Incoming, RECV_BUF_SIZE, ServeEnd, ServeError, answer, receive};
use crate::mirror::ring::{self, PostedRing, is_wake_up};

/// Applies one record to the device model; returns the data to answer.
pub(super) type Handler = Arc<dyn Fn(&Cmd) -> u64 + Send + Sync>;

const _: () = assert!(
    ring::RECORD_SIZE == wire::RECORD_SIZE,
    "a ring slot holds a record"
);

/// Where a queue's records come from.
pub(super) enum Source {
    /// A posted-write fd: records are received, and answered when asked.
    Fd(Arc<OwnedFd>),
    /// The ring in a mirror page (`mirror::ring`): posted writes only. With
    /// the page's identity (device and inode of its memfd): a page offered
    /// for two BARs is one ring.
    Ring(PostedRing, (u64, u64)),
}

pub(super) struct PostedEnd {
    pub(super) source: Source,
    handler: Handler,
    /// The record at the head, once taken off its queue and not applied
    /// yet: only inside a drain, and one at most, so that the rest stay
    /// queued where the VMM's watchdog sees them (a device stuck in the
    /// model leaves them there).
    head: Option<Record>,
}

impl PostedEnd {
    pub(super) fn new(source: Source, handler: Handler) -> Self {
        PostedEnd {
            source,
            handler,
            head: None,
        }
    }

    /// Whether a record was taken off this fd and is held, not applied
    /// yet. The fd no longer shows it to epoll: whoever took it must apply
    /// it.
    pub(super) fn holds_a_taken_record(&self) -> bool {
        self.head.is_some() && matches!(self.source, Source::Fd(_))
    }

    /// Whether a ring holds a record to apply (a broken ring counts: a
    /// drain finds out and drops it). A fd says so through epoll instead.
    pub(super) fn ring_holds_records(&self) -> bool {
        match &self.source {
            Source::Ring(ring, _) => self.head.is_some() || !matches!(ring.peek(), Ok(None)),
            Source::Fd(_) => false,
        }
    }

    /// Whether this is the ring in the page `page` identifies.
    pub(super) fn is_ring_in(&self, page: (u64, u64)) -> bool {
        matches!(self.source, Source::Ring(_, served) if served == page)
    }

    /// The fd records arrive on, if they arrive on one.
    pub(super) fn raw_fd(&self) -> Option<RawFd> {
        match &self.source {
            Source::Fd(fd) => Some(fd.as_raw_fd()),
            Source::Ring(..) => None,
        }
    }
}

/// One record as received: its buffer and real length (MSG_TRUNC).
struct Record {
    buf: [u8; RECV_BUF_SIZE],
    len: usize,
}

impl Record {
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len.min(RECV_BUF_SIZE)]
    }
}

/// What a drain knows of the record at the head of a posted-write fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// Not looked at since its head was applied, or empty when last looked.
    Unknown,
    /// A record waits there, to go in this place.
    Record(Place),
    /// Its peer is gone, or it failed.
    Done,
}

/// Where a record goes among the heads. The VMM's vCPU threads number
/// theirs; KVM's (the kernel path) carry no number, and KVM puts each
/// access on its fd only once the vCPU's accesses before it were sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// A posted write KVM sent: before any numbered head, which (a read,
    /// while KVM posts writes) cannot have been issued before it by the
    /// vCPU that sent it, since that vCPU waits for its read.
    First,
    /// A vCPU thread's record: by number.
    Numbered(u64),
    /// A read or waited write KVM sent: after every numbered head, among
    /// which are the posted writes the VMM sent before it (while the VMM
    /// posts writes, KVM posts none).
    Last,
}

impl Place {
    fn of(record: &[u8]) -> Place {
        match wire::sequence_of(record) {
            Some(s) => Place::Numbered(s),
            None if Cmd::wants_response(record) => Place::Last,
            None => Place::First,
        }
    }
}

/// Takes the posted writes queued on the device's fds and applies them in
/// the order they were issued, until none is left, starting each pass at
/// `ends[first]`. Returns the ends whose peer is gone or that failed.
///
/// A fd's head is taken off it when looked at and held until applied
/// (one record per fd: the rest stay queued, where the VMM's watchdog
/// looks). The head numbered lowest goes first, but only once nothing
/// numbered before it can still turn up: once a pass over every fd has
/// started after some head numbered no lower was seen. Why that is enough:
/// an access ordered before a record was sent before the record's number
/// was taken, so, for any record numbered up to one already seen, before
/// that pass started; the pass finds it, at the head of its fd or behind a
/// head numbered lower still. The first fd of a pass needs no second
/// pass (the others are looked at after its head), and the first is the
/// fd that woke its thread: one vCPU posting to one range takes one pass.
pub(super) fn drain_in_order(
    ends: &mut [PostedEnd],
    first: usize,
    applied: &mut AppliedCount,
) -> Vec<usize> {
    let mut heads = vec![Head::Unknown; ends.len()];
    // The latest number seen at a head so far.
    let mut latest: Option<u64> = None;
    loop {
        let mut bound = latest;
        for k in 0..ends.len() {
            let i = (first + k) % ends.len();
            if heads[i] == Head::Unknown {
                heads[i] = look(&mut ends[i]);
            }
            if let Head::Record(Place::Numbered(s)) = heads[i] {
                latest = Some(latest.map_or(s, |l| later(l, s)));
                if k == 0 {
                    bound = latest;
                }
            }
        }
        apply_ready(ends, &mut heads, bound, &mut latest, applied);
        if !heads.iter().any(|h| matches!(h, Head::Record(_))) {
            return (0..ends.len())
                .filter(|&i| heads[i] == Head::Done)
                .collect();
        }
    }
}

fn later(a: u64, b: u64) -> u64 {
    if wire::sequence_precedes(a, b) { b } else { a }
}

/// What is at the head of `end`: the record taken off it and not applied
/// yet, or else the next one queued, taken off now.
fn look(end: &mut PostedEnd) -> Head {
    if let Some(record) = &end.head {
        return Head::Record(Place::of(record.bytes()));
    }
    let mut buf = [0u8; RECV_BUF_SIZE];
    let taken = match &end.source {
        Source::Fd(fd) => receive_but_wake_ups(fd, &mut buf),
        Source::Ring(ring, _) => match ring.peek() {
            Ok(Some(record)) => {
                buf[..record.len()].copy_from_slice(&record);
                Ok(Incoming::Record(record.len()))
            }
            Ok(None) => Ok(Incoming::Nothing),
            Err(e) => {
                log::error!("ioregion: {e}; the ring is no longer served");
                Ok(Incoming::Closed(ServeEnd::PeerClosed))
            }
        },
    };
    match taken {
        Ok(Incoming::Record(len)) => {
            let record = end.head.insert(Record { buf, len });
            Head::Record(Place::of(record.bytes()))
        }
        Ok(Incoming::Nothing) => Head::Unknown,
        Ok(Incoming::Closed(_)) => Head::Done,
        Err(e) => {
            log::error!(
                "ioregion: looking for posted writes: {e}; this region fd is no longer served"
            );
            Head::Done
        }
    }
}

/// Receives the next record on `fd` that is not only a wake-up (a copy of
/// one in the ring, `mirror::ring::is_wake_up`), which is dropped.
fn receive_but_wake_ups(
    fd: &OwnedFd,
    buf: &mut [u8; RECV_BUF_SIZE],
) -> Result<Incoming, ServeError> {
    loop {
        match receive(fd.as_fd(), buf, false)? {
            Incoming::Record(len) if is_wake_up(&buf[..len.min(RECV_BUF_SIZE)]) => continue,
            taken => return Ok(taken),
        }
    }
}

/// Applies the record at the head of `end`, if one was taken, and counts
/// it if it was a posted write; returns whether `end` is done for.
fn apply_head(end: &mut PostedEnd, applied: &mut AppliedCount) -> bool {
    let Some(record) = end.head.take() else {
        return false;
    };
    let posted = !Cmd::wants_response(record.bytes());
    let outcome = match &end.source {
        Source::Fd(fd) => answer(fd.as_fd(), &record.buf, record.len, &mut |c| {
            (end.handler)(c)
        }),
        Source::Ring(ring, _) => {
            match Cmd::decode(record.bytes()) {
                Ok(cmd) if posted => {
                    (end.handler)(&cmd);
                }
                Ok(_) => log::warn!("ioregion: a record in the ring asks for an answer; dropped"),
                Err(e) => log::warn!("ioregion: a record in the ring: {e}; dropped"),
            }
            ring.advance();
            Ok(None)
        }
    };
    // Reads and waited writes are not counted: the VMM counts what it posted.
    match &end.source {
        Source::Ring(..) if posted => applied.one_more_from_the_ring(),
        _ if posted => applied.one_more(),
        _ => {}
    }
    match outcome {
        Ok(None) => false,
        Ok(Some(_)) => true,
        Err(e) => {
            log::error!("ioregion: serving posted writes: {e}; this region fd is no longer served");
            true
        }
    }
}

/// Applies the records at the head of `end` while they owe nothing to a
/// posted write not applied yet ([`AppliedCount::covers`]): a read sent
/// after every posted write counted before it had been applied, as a
/// synchronous fd's thread does, or the posted write that comes next. No
/// look at the other fds then. A burst of posted writes is taken in one
/// wake-up, up to [`BURST`] of them, or until the VMM's count of posted
/// writes sent is reached; after a read or a waited write, whose
/// sender waits for the answer, nothing more is looked for (a fd with
/// records queued stays readable in the thread's epoll set, which wakes
/// the thread again). Returns whether the drain may stop there: `end` is
/// empty, its last record was answered, or the burst was cut short.
pub(super) fn apply_covered_heads(end: &mut PostedEnd, applied: &mut AppliedCount) -> bool {
    for _ in 0..BURST {
        let posted = match look(end) {
            Head::Unknown => return true,
            Head::Done => return false,
            Head::Record(_) => match &end.head {
                Some(r) if applied.covers(wire::sent_before_of(r.bytes())) => {
                    !Cmd::wants_response(r.bytes())
                }
                _ => return false,
            },
        };
        if apply_head(end, applied) {
            return false;
        }
        // Once every write the VMM counted is applied, a record still
        // queued keeps the fd readable and wakes the thread again: no
        // receive to find the fd empty.
        if !posted || applied.has_all_the_vmm_sent() {
            return true;
        }
    }
    true
}

/// Posted writes one fd may have applied in one go without a look at the
/// others: a guest writing without pause must not keep the hub's lock (the
/// control loop's, and the other vCPUs' waited accesses) for longer.
pub(super) const BURST: usize = 64;

/// Applies head records by number, up to `bound`, looking at the next
/// record of each fd it takes one from; unnumbered records go in their
/// [`Place`], first or once no numbered record is at a head.
fn apply_ready(
    ends: &mut [PostedEnd],
    heads: &mut [Head],
    bound: Option<u64>,
    latest: &mut Option<u64>,
    applied: &mut AppliedCount,
) {
    loop {
        let mut next: Option<(usize, Place)> = None;
        for (i, head) in heads.iter().enumerate() {
            let Head::Record(place) = *head else {
                continue;
            };
            let better = match (next.map(|(_, best)| best), place) {
                (None, _) => true,
                (Some(Place::First), _) | (Some(_), Place::Last) => false,
                (Some(_), Place::First) | (Some(Place::Last), _) => true,
                (Some(Place::Numbered(best)), Place::Numbered(s)) => {
                    wire::sequence_precedes(s, best)
                }
            };
            if better {
                next = Some((i, place));
            }
        }
        let Some((i, place)) = next else { return };
        if let Place::Numbered(s) = place
            && bound.is_none_or(|b| wire::sequence_precedes(b, s))
        {
            return;
        }
        heads[i] = if apply_head(&mut ends[i], applied) {
            Head::Done
        } else {
            look(&mut ends[i])
        };
        if let Head::Record(Place::Numbered(s)) = heads[i] {
            *latest = Some(latest.map_or(s, |l| later(l, s)));
        }
    }
}
