//! Posted writes through the register mirror page instead of a socket.
//!
//! A posted write sent on a region fd costs the vCPU thread a `sendto`
//! and the device a receive: on this host's PVM `/dev/kvm` that is nearly
//! all of what a posted write costs over a bare exit (the CPL3 probe's
//! posted write took 1.07x of an exit, and 0.99x with the send left out).
//! A device that offers it (`MIRROR_POSTED_RING`) has the VMM put the
//! same 32-byte records in a ring in its mirror page while the device is
//! awake, with no system call; the device applies them, in order with
//! those on its fds by their sequence numbers, as it applies a fd's.
//!
//! Who wakes the device: it sleeps in `epoll_wait` on its fds. Before it
//! does it raises `listening` and looks at the ring once more; a VMM that
//! finds `listening` raised takes it down and sends the record on the fd
//! instead (that send wakes the device), and one that put a record in
//! the ring and then finds it raised sends a copy marked as a wake-up
//! ([`mark_wake_up`]), which the device drops when it receives it: the
//! record itself is taken from the ring. Both sides put a full fence
//! between their store and their look at the other's word, so at least
//! one of them sees the other's (no record waits in the ring while the
//! device sleeps). A full ring, too, sends on the fd.
//!
//! The VMM is the only writer of the tail and of the slots; the device of
//! the head. The device trusts neither tail nor slot: a tail more than a
//! ring ahead of its head stops it taking from the ring, and every record
//! goes through the same checks as one received.

use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use crate::mirror::page::MirrorPage;
use crate::protocol::extensions::{
    MIRROR_RING_HEAD_OFFSET, MIRROR_RING_LISTENING_OFFSET, MIRROR_RING_OFFSET, MIRROR_RING_SLOTS,
    MIRROR_RING_TAIL_OFFSET,
};

/// The size of an ioregion record, the unit of the ring (`ioregion::drain`
/// checks that it is `ioregion::wire`'s).
pub const RECORD_SIZE: usize = 32;

/// Byte 1 of a record holds its size exponent (bits 0-3) and whether it
/// wants a response (bit 4); bit 5, ours, marks a copy sent only to wake
/// the device, whose original is in the ring.
const WAKE_UP_BIT: u8 = 1 << 5;

/// Marks `record` as a wake-up copy of one put in the ring.
pub fn mark_wake_up(record: &mut [u8; RECORD_SIZE]) {
    record[1] |= WAKE_UP_BIT;
}

/// Whether a received record is only a wake-up (see [`mark_wake_up`]).
pub fn is_wake_up(record: &[u8]) -> bool {
    record.get(1).is_some_and(|b| b & WAKE_UP_BIT != 0)
}

/// What the VMM does with a posted write after offering it to the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// In the ring, and the device will find it: nothing to send.
    Queued,
    /// In the ring, but the device may have gone to sleep without seeing
    /// it: send a wake-up copy on the fd.
    QueuedWakeUp,
    /// Not in the ring (the device sleeps, or the ring is full): send the
    /// record on the fd as usual.
    Send,
}

/// The ring in one mirror page, as either side maps it (writable).
pub struct PostedRing {
    page: Arc<MirrorPage>,
}

const SLOTS: u64 = MIRROR_RING_SLOTS as u64;
const TAIL: usize = MIRROR_RING_TAIL_OFFSET as usize;
const HEAD: usize = MIRROR_RING_HEAD_OFFSET as usize;
const LISTENING: usize = MIRROR_RING_LISTENING_OFFSET as usize;

impl PostedRing {
    /// The ring in `page`, which must be mapped writable.
    pub fn new(page: Arc<MirrorPage>) -> Option<Self> {
        page.writable().then_some(PostedRing { page })
    }

    /// Whether `page` is the page this ring lives in.
    pub fn lives_in(&self, page: &Arc<MirrorPage>) -> bool {
        Arc::ptr_eq(&self.page, page)
    }

    fn slot(index: u64) -> usize {
        MIRROR_RING_OFFSET as usize + (index % SLOTS) as usize * RECORD_SIZE
    }

    /// The VMM's side: puts `record` (a posted write) in the ring unless
    /// the device sleeps or the ring is full. Called under the lock that
    /// counts posted writes, so one writer at a time.
    pub fn put(&self, record: &[u8; RECORD_SIZE]) -> Put {
        if self.wake_listener() {
            return Put::Send;
        }
        if !self.queue(record) {
            return Put::Send;
        }
        // Against the device's store of `listening` and look at the tail.
        fence(Ordering::SeqCst);
        if self.wake_listener() {
            Put::QueuedWakeUp
        } else {
            Put::Queued
        }
    }

    /// Puts `record` in the next slot and moves the tail past it; false
    /// when the ring is full.
    fn queue(&self, record: &[u8; RECORD_SIZE]) -> bool {
        let tail = self.page.load_u64(TAIL);
        let head = self.page.load_u64(HEAD);
        // A head past the tail (a device that lies) wraps to a full ring.
        if tail.wrapping_sub(head) >= SLOTS {
            return false;
        }
        let at = Self::slot(tail);
        for (i, word) in record.chunks_exact(8).enumerate() {
            let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            self.page.store_u64(at + i * 8, word);
        }
        self.page.store_u64(TAIL, tail.wrapping_add(1));
        true
    }

    /// Takes `listening` down; whether it was up.
    fn wake_listener(&self) -> bool {
        self.page.swap_u64(LISTENING, 0) == 1
    }

    /// Records put in and not yet taken, and records put in so far, for
    /// the VMM's watchdog.
    pub fn backlog(&self) -> (u64, u64) {
        let tail = self.page.load_u64(TAIL);
        (tail.wrapping_sub(self.page.load_u64(HEAD)), tail)
    }

    /// The device's side, when it hands the page out: empty, and asleep
    /// until the VMM's first record arrives on a fd.
    pub fn reset(&self) {
        self.page.store_u64(HEAD, 0);
        self.page.store_u64(TAIL, 0);
        self.page.store_u64(LISTENING, 1);
    }

    /// The record at the head, not taken yet; `Err` when the tail is more
    /// than a ring ahead of the head (the ring can no longer be trusted).
    pub fn peek(&self) -> Result<Option<[u8; RECORD_SIZE]>, RingBroken> {
        let head = self.page.load_u64(HEAD);
        let tail = self.page.load_u64(TAIL);
        match tail.wrapping_sub(head) {
            0 => Ok(None),
            n if n > SLOTS => Err(RingBroken { head, tail }),
            _ => {
                let at = Self::slot(head);
                let mut record = [0u8; RECORD_SIZE];
                for (i, word) in record.chunks_exact_mut(8).enumerate() {
                    word.copy_from_slice(&self.page.load_u64(at + i * 8).to_le_bytes());
                }
                Ok(Some(record))
            }
        }
    }

    /// The record at the head has been taken: its slot is the VMM's again.
    pub fn advance(&self) {
        let head = self.page.load_u64(HEAD);
        self.page.store_u64(HEAD, head.wrapping_add(1));
    }

    /// Before the device sleeps: raises `listening` and says whether the
    /// ring is empty (if not, the device must take what is there first).
    pub fn listen(&self) -> bool {
        self.page.store_u64(LISTENING, 1);
        // Against the VMM's store of the tail and look at `listening`.
        fence(Ordering::SeqCst);
        self.page.load_u64(TAIL) == self.page.load_u64(HEAD)
    }

    /// The device is awake: records may go in the ring without a wake-up.
    pub fn stop_listening(&self) {
        self.page.store_u64(LISTENING, 0);
    }
}

/// The VMM's tail ran more than a ring ahead of the device's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the posted-write ring's tail {tail} is more than a ring ahead of its head {head}")]
pub struct RingBroken {
    pub head: u64,
    pub tail: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::writer::RegisterMirror;

    fn ring_pair() -> (PostedRing, PostedRing) {
        let remote = RegisterMirror::new().unwrap();
        let map = || Arc::new(MirrorPage::map(&remote.file().unwrap(), true).unwrap());
        let device = PostedRing::new(map()).unwrap();
        device.reset();
        (PostedRing::new(map()).unwrap(), device)
    }

    fn record(n: u8) -> [u8; RECORD_SIZE] {
        let mut r = [0u8; RECORD_SIZE];
        r[0] = 1;
        r[8] = n;
        r[31] = n;
        r
    }

    #[test]
    fn a_sleeping_device_gets_the_record_on_its_fd_then_the_ring_is_used() {
        let (vmm, device) = ring_pair();
        assert_eq!(vmm.put(&record(1)), Put::Send, "asleep after reset");
        assert_eq!(vmm.put(&record(2)), Put::Queued, "the send woke it");
        assert_eq!(vmm.put(&record(3)), Put::Queued);
        assert_eq!(device.peek(), Ok(Some(record(2))));
        device.advance();
        assert_eq!(device.peek(), Ok(Some(record(3))));
        assert!(!device.listen(), "not empty: take the rest first");
        assert_eq!(
            vmm.put(&record(4)),
            Put::Send,
            "listening: the record wakes it"
        );
        device.advance();
        assert!(device.listen());
        assert_eq!(device.peek(), Ok(None));
    }

    #[test]
    fn a_record_queued_as_the_device_lies_down_sends_a_wake_up() {
        let (vmm, device) = ring_pair();
        device.stop_listening();
        // The VMM found `listening` down and queues; meanwhile the device
        // found the ring empty and raised it: the VMM's second look sees it.
        assert!(device.listen());
        assert!(vmm.queue(&record(1)));
        assert!(vmm.wake_listener(), "QueuedWakeUp");
        assert!(!vmm.wake_listener(), "taken down");
        assert_eq!(device.peek(), Ok(Some(record(1))), "the original");
        // The other order: the record is in before the device looks.
        assert_eq!(vmm.put(&record(2)), Put::Queued);
        assert!(!device.listen(), "the device sees it and stays up");
    }

    #[test]
    fn a_full_ring_sends_and_wraps_once_taken() {
        let (vmm, device) = ring_pair();
        device.stop_listening();
        for n in 0..SLOTS {
            assert_eq!(vmm.put(&record(n as u8)), Put::Queued, "slot {n}");
        }
        assert_eq!(vmm.put(&record(0xff)), Put::Send, "full");
        assert_eq!(vmm.backlog(), (SLOTS, SLOTS));
        for n in 0..SLOTS {
            assert_eq!(device.peek(), Ok(Some(record(n as u8))));
            device.advance();
        }
        assert_eq!(vmm.put(&record(7)), Put::Queued, "wrapped to slot 0");
        assert_eq!(device.peek(), Ok(Some(record(7))));
        assert_eq!(vmm.backlog(), (1, SLOTS + 1));
    }

    #[test]
    fn a_tail_more_than_a_ring_ahead_is_refused() {
        let (vmm, device) = ring_pair();
        vmm.page.store_u64(TAIL, SLOTS + 1);
        assert_eq!(
            device.peek(),
            Err(RingBroken {
                head: 0,
                tail: SLOTS + 1
            })
        );
        device.page.store_u64(HEAD, 5);
        vmm.page.store_u64(TAIL, 4);
        assert!(device.peek().is_err(), "a tail behind the head");
        assert_eq!(vmm.put(&record(1)), Put::Send, "nor does the VMM put");
    }

    #[test]
    fn wake_up_copies_are_marked_and_nothing_else_is() {
        let mut r = record(1);
        r[1] = 0x12; // 4 bytes, response wanted
        assert!(!is_wake_up(&r));
        mark_wake_up(&mut r);
        assert!(is_wake_up(&r));
        assert_eq!(r[1] & 0x1f, 0x12, "size and response bit kept");
        assert!(!is_wake_up(&[]));
    }

    /// The device sleeps (on a channel standing for its fd) whenever it
    /// finds the ring empty after raising `listening`; the VMM sends on
    /// the channel when `put` says so. Every record must arrive once, and
    /// the device must never sleep with a record in the ring.
    #[test]
    fn no_record_waits_in_the_ring_while_the_device_sleeps() {
        use std::sync::mpsc;
        const RECORDS: u32 = 20_000;
        let (vmm, device) = ring_pair();
        let (fd, woken) = mpsc::channel::<([u8; RECORD_SIZE], bool)>();
        let taker = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let take = |r: [u8; RECORD_SIZE], seen: &mut Vec<u32>| {
                seen.push(u32::from_le_bytes(r[8..12].try_into().unwrap()));
            };
            loop {
                while let Some(r) = device.peek().unwrap() {
                    take(r, &mut seen);
                    device.advance();
                }
                if !device.listen() {
                    continue;
                }
                let Ok((r, wake_up)) = woken.recv() else {
                    break;
                };
                device.stop_listening();
                // A wake-up copy's original is in the ring.
                if !wake_up {
                    take(r, &mut seen);
                }
            }
            while let Some(r) = device.peek().unwrap() {
                take(r, &mut seen);
                device.advance();
            }
            seen
        });
        for n in 0..RECORDS {
            let mut r = [0u8; RECORD_SIZE];
            r[8..12].copy_from_slice(&n.to_le_bytes());
            match vmm.put(&r) {
                Put::Queued => {}
                Put::QueuedWakeUp => fd.send((r, true)).unwrap(),
                Put::Send => fd.send((r, false)).unwrap(),
            }
            if n % 64 == 0 {
                std::thread::yield_now();
            }
        }
        // A record left in the ring while the device sleeps stays there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while vmm.backlog().0 != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "a record waited in the ring while the device slept"
            );
            std::thread::yield_now();
        }
        drop(fd);
        let mut seen = taker.join().unwrap();
        // The order across the fd and the ring is the sequence numbers'
        // business (`ioregion::device_end`); here: each record once.
        seen.sort_unstable();
        assert_eq!(seen, (0..RECORDS).collect::<Vec<_>>());
    }
}
