//! The posted writes the VMM sent to one device: how many, to compare with
//! the count of those applied that the device keeps in its mirror page,
//! and, for the last few sent by vCPU threads, what they do to mirrored
//! registers.
//!
//! A read of a mirrored register behind posted writes the device has not
//! applied yet would otherwise have to go to the device and wait for them.
//! `sym53c8xx` reads ISTAT right after posting its INTF clear, so about a
//! third of its ISTAT reads did. When every write not yet applied is a
//! write of that same register whose effect the device described
//! (`WriteEffects`: INTF written 1 clears INTF, SEM takes the written
//! value), the VMM works out the value itself from the page.
//!
//! That needs to know which writes are not applied yet. The device
//! applies the vCPU threads' posted writes in the order of their sequence
//! numbers (`ioregion::device_end`) and counts them; a vCPU thread takes
//! its number inside `post`, under the lock that also counts the write, so
//! the counts here rise in the same order and the writes not applied are
//! exactly the last `sent - applied`. (The lock also closes a window where
//! a write numbered later was counted before one numbered earlier, so that
//! the device's count could seem to cover a write it had not applied.)
//! KVM's posted writes carry no number and KVM does not tell us what they
//! were, so a read behind them always waits; that is why, on the kernel
//! path, KVM posts no writes to a device whose page counts them: the VMM
//! posts its mirrored registers' writes itself (`proxy::ioregion_setup`).
//!
//! The count of writes sent is also kept in the device's mirror pages
//! when the device reads it there (`MIRROR_READS_SENT_COUNT`), so that
//! the device knows when it has applied every posted write the guest made
//! before acknowledging its interrupt (`ioregion::applied`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::mirror::page::{MirrorPage, caught_up};
use crate::mirror::ring::PostedRing;
use crate::protocol::extensions::WriteEffects;

/// Posted writes whose effect `PostedSent` remembers, at most.
const REMEMBERED: usize = 8;

/// Which mirrored register: the page it lives in (its mapping's address
/// in this process) and its offset there.
pub type RegisterKey = (usize, u32);

/// A posted write of a mirrored register whose effect is known: the
/// device described it and `value` has no opaque bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownWrite {
    pub register: RegisterKey,
    pub value: u64,
    pub effects: WriteEffects,
}

/// The posted writes sent to one device, on all its fds: those the vCPU
/// threads sent, counted here, and on the kernel path those KVM sent,
/// which KVM counts itself in counters of ours, one per fd it writes to.
#[derive(Default)]
pub struct PostedSent {
    by_vcpus: AtomicU64,
    /// Set once, when the device's ranges are all set up (before the
    /// guest runs).
    by_kvm: OnceLock<Vec<&'static AtomicU64>>,
    /// The last writes the vCPU threads posted, oldest first: the count
    /// once each was sent, and its effect when known.
    recent: Mutex<VecDeque<(u64, Option<KnownWrite>)>>,
    /// The device's mirror pages that show the device `by_vcpus`, set
    /// once the ranges are set up (see [`PostedSent::show_in`]).
    shown_in: OnceLock<Vec<Arc<MirrorPage>>>,
    /// The ring in one of those pages that posted writes go through
    /// (`mirror::ring`), when the device offers one.
    ring: OnceLock<PostedRing>,
}

impl PostedSent {
    /// A counter for KVM to keep for one fd. Leaked: KVM writes to it for
    /// as long as a region naming it is assigned, and a counter freed
    /// before that would be memory KVM scribbles on. Eight bytes per
    /// range, once.
    pub fn leak_kvm_counter() -> &'static AtomicU64 {
        Box::leak(Box::new(AtomicU64::new(0)))
    }

    /// The counters KVM keeps for this device's fds; false if they were
    /// set before.
    pub fn set_kvm_counters(&self, counters: Vec<&'static AtomicU64>) -> bool {
        self.by_kvm.set(counters).is_ok()
    }

    /// Sends a write to the device with `send` (which takes the count of
    /// posted writes sent before it and the ring a posted write may go
    /// through, and says whether the write was posted) and counts
    /// it if it was, remembering `known`, what it does to a mirrored
    /// register. `send` is given the count of posted writes sent before
    /// this one ([`PostedSent::before_a_write`]), exact since they are
    /// counted under the lock `send` runs in. None when KVM posts writes
    /// too: it counts its own, and the device, finding that many applied,
    /// could not tell whether one of KVM's sent before was among them.
    pub fn post<E>(
        &self,
        known: Option<KnownWrite>,
        send: impl FnOnce(Option<u64>, Option<&PostedRing>) -> Result<bool, E>,
    ) -> Result<bool, E> {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let posted = send(self.before_a_write(), self.ring.get())?;
        if posted {
            let count = self.by_vcpus.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
            // Before the vCPU goes back to the guest, so before anything
            // the guest does after this write.
            for page in self.shown_in.get().into_iter().flatten() {
                page.store_sent_count(count);
            }
            if recent.len() == REMEMBERED {
                recent.pop_front();
            }
            recent.push_back((count, known));
        }
        Ok(posted)
    }

    /// Keeps the count of posted writes sent in `pages` (the device's
    /// mirror pages, mapped writable, whose device reads it) from now on.
    /// False, and nothing kept, when KVM posts writes too (it counts its
    /// own, which the device could not tell apart) or pages were given
    /// before. Called once the device's ranges are set up. Posted writes
    /// go through the ring in `ring` from then on too (one of `pages`,
    /// whose device offered it).
    pub fn show_in(&self, pages: Vec<Arc<MirrorPage>>, ring: Option<Arc<MirrorPage>>) -> bool {
        // Held so that no vCPU thread posts in between.
        let _recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if self.kvm_posts() || self.shown_in.get().is_some() {
            return false;
        }
        let count = self.by_vcpus.load(Ordering::Acquire);
        for page in &pages {
            page.show_sent_count(count);
        }
        let ring = ring.filter(|r| pages.iter().any(|p| Arc::ptr_eq(p, r)));
        if let Some(ring) = ring.and_then(PostedRing::new) {
            let _ = self.ring.set(ring);
        }
        self.shown_in.set(pages).is_ok()
    }

    /// The ring posted writes go through, if any (for the watchdog).
    pub fn ring(&self) -> Option<&PostedRing> {
        self.ring.get()
    }

    /// The count of posted writes a write says were sent before it: all
    /// of those sent so far, or None when KVM posts writes too. Exact in
    /// `post`; for a write sent outside it (one to a range whose writes
    /// are waited for), a write posted meanwhile by another vCPU may be
    /// missing, which nothing owes an order to since its own access has
    /// not returned to the guest yet.
    pub fn before_a_write(&self) -> Option<u64> {
        (!self.kvm_posts()).then(|| self.by_vcpus.load(Ordering::Acquire))
    }

    /// Whether KVM posts writes to this device as well (the kernel path).
    fn kvm_posts(&self) -> bool {
        self.by_kvm.get().is_some_and(|kvm| !kvm.is_empty())
    }

    /// Every posted write sent so far (wrapping, as the device's count).
    pub fn total(&self) -> u64 {
        let by_vcpus = self.by_vcpus.load(Ordering::Acquire);
        self.by_kvm.get().map_or(by_vcpus, |kvm| {
            kvm.iter().fold(by_vcpus, |sum, c| {
                sum.wrapping_add(c.load(Ordering::Acquire))
            })
        })
    }

    /// The value `register` will have once the device has applied every
    /// posted write sent, worked out from `look_at_page`'s (count of
    /// posted writes applied, register value), taken at one instant (it
    /// returns `None` when it cannot be sure of that). `None` also when
    /// one of the writes not applied yet is not a known write of this
    /// register, or is too old to be remembered, or KVM posts writes.
    pub fn value_once_applied(
        &self,
        register: RegisterKey,
        look_at_page: impl FnOnce() -> Option<(u64, u64)>,
    ) -> Option<u64> {
        if self.kvm_posts() {
            return None;
        }
        // Held while looking, so that no vCPU thread posts in between.
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let (applied, mut value) = look_at_page()?;
        let sent = self.by_vcpus.load(Ordering::Acquire);
        if caught_up(applied, sent) {
            return Some(value);
        }
        let unapplied = sent.wrapping_sub(applied) as usize;
        let first = recent.len().checked_sub(unapplied)?;
        for (i, (count, write)) in recent.iter().enumerate().skip(first) {
            // The remembered writes are the last ones, counted in order.
            debug_assert_eq!(*count, applied.wrapping_add((i - first) as u64 + 1));
            let write = write.filter(|w| w.register == register)?;
            value = write.effects.apply(value, write.value)?;
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISTAT: RegisterKey = (1, 0);
    const INTF_CLEAR: KnownWrite = KnownWrite {
        register: ISTAT,
        value: 0x04,
        effects: WriteEffects {
            clears: 0x04,
            follows: 0xf0,
            opaque: 0xe0,
        },
    };

    fn post(sent: &PostedSent, known: Option<KnownWrite>) {
        sent.post(known, |_, _| Ok::<_, ()>(true)).unwrap();
    }

    #[test]
    fn the_total_adds_kvms_counters_to_the_vcpus_count() {
        let sent = PostedSent::default();
        post(&sent, None);
        assert_eq!(sent.total(), 1);
        sent.post(None, |_, _| Ok::<_, ()>(false)).unwrap();
        assert_eq!(sent.total(), 1, "a waited write is not counted");
        assert_eq!(sent.post(None, |_, _| Err::<bool, _>("gone")), Err("gone"));
        assert_eq!(sent.total(), 1, "nor one that was not sent");
        let counters: Vec<_> = (0..3).map(|_| PostedSent::leak_kvm_counter()).collect();
        for (i, c) in counters.iter().enumerate() {
            c.store(i as u64 + 1, Ordering::Relaxed);
        }
        assert!(sent.set_kvm_counters(counters));
        assert!(!sent.set_kvm_counters(Vec::new()), "set once");
        assert_eq!(sent.total(), 1 + 1 + 2 + 3);
    }

    #[test]
    fn a_write_says_the_posted_writes_before_it_unless_kvm_posts_too() {
        let sent = PostedSent::default();
        let said = |sent: &PostedSent| {
            let mut before = None;
            sent.post(None, |b, _| {
                before = b;
                Ok::<_, ()>(true)
            })
            .unwrap();
            before
        };
        assert_eq!(said(&sent), Some(0));
        assert_eq!(said(&sent), Some(1));
        assert_eq!(sent.before_a_write(), Some(2));
        sent.set_kvm_counters(Vec::new());
        assert_eq!(said(&sent), Some(2), "no KVM ranges: still ours alone");
        let kvm = PostedSent::default();
        kvm.set_kvm_counters(vec![PostedSent::leak_kvm_counter()]);
        assert_eq!(said(&kvm), None);
        assert_eq!(kvm.before_a_write(), None);
        assert_eq!(kvm.total(), 1, "still counted");
    }

    /// `sym53c8xx`'s interrupt handler: ISTAT reads INTF|DIP (0x05), the
    /// driver posts INTF (with SEM 0) and reads ISTAT again at once.
    #[test]
    fn a_known_write_not_yet_applied_is_applied_to_the_page_value() {
        let sent = PostedSent::default();
        sent.set_kvm_counters(Vec::new());
        post(&sent, Some(INTF_CLEAR));
        assert_eq!(
            sent.value_once_applied(ISTAT, || Some((0, 0x15))),
            Some(0x01)
        );
        // Applied already: the page's value as it is.
        assert_eq!(
            sent.value_once_applied(ISTAT, || Some((1, 0x05))),
            Some(0x05)
        );
        // Two in a row, the second taking SEM.
        let sem = KnownWrite {
            value: 0x10,
            ..INTF_CLEAR
        };
        post(&sent, Some(sem));
        assert_eq!(
            sent.value_once_applied(ISTAT, || Some((1, 0x04))),
            Some(0x14)
        );
        post(&sent, Some(INTF_CLEAR));
        assert_eq!(
            sent.value_once_applied(ISTAT, || Some((1, 0x04))),
            Some(0x00)
        );
        // A page that could not be read at one instant.
        assert_eq!(sent.value_once_applied(ISTAT, || None), None);
    }

    #[test]
    fn a_read_behind_an_unknown_write_or_one_to_another_register_is_not_worked_out() {
        let sent = PostedSent::default();
        post(&sent, None);
        post(&sent, Some(INTF_CLEAR));
        assert_eq!(sent.value_once_applied(ISTAT, || Some((0, 0x04))), None);
        assert_eq!(
            sent.value_once_applied(ISTAT, || Some((1, 0x04))),
            Some(0),
            "the unknown one is applied"
        );
        let other = KnownWrite {
            register: (2, 0),
            ..INTF_CLEAR
        };
        post(&sent, Some(other));
        assert_eq!(sent.value_once_applied(ISTAT, || Some((2, 0x04))), None);
    }

    #[test]
    fn writes_too_old_to_be_remembered_are_not_worked_out() {
        let sent = PostedSent::default();
        for _ in 0..REMEMBERED + 1 {
            post(&sent, Some(INTF_CLEAR));
        }
        let n = REMEMBERED as u64 + 1;
        assert_eq!(sent.value_once_applied(ISTAT, || Some((0, 0x04))), None);
        assert_eq!(sent.value_once_applied(ISTAT, || Some((1, 0x04))), Some(0));
        assert_eq!(sent.value_once_applied(ISTAT, || Some((n, 0x04))), Some(4));
    }

    #[test]
    fn with_kvm_posting_writes_nothing_is_worked_out() {
        let sent = PostedSent::default();
        sent.set_kvm_counters(vec![PostedSent::leak_kvm_counter()]);
        post(&sent, Some(INTF_CLEAR));
        assert_eq!(sent.value_once_applied(ISTAT, || Some((0, 0x04))), None);
    }

    #[test]
    fn the_counts_wrap_around_together() {
        let sent = PostedSent::default();
        sent.by_vcpus.store(u64::MAX, Ordering::Relaxed);
        post(&sent, Some(INTF_CLEAR));
        assert_eq!(
            sent.value_once_applied(ISTAT, || Some((u64::MAX, 0x04))),
            Some(0)
        );
    }

    /// The count of posted writes sent goes into the pages given, from the
    /// count so far; not when KVM posts writes too, and pages are given once.
    #[test]
    fn the_count_sent_is_shown_in_the_pages_given_unless_kvm_posts_too() {
        let mirror = crate::mirror::RegisterMirror::new().unwrap();
        let page = || Arc::new(MirrorPage::map(&mirror.file().unwrap(), true).unwrap());
        let sent = PostedSent::default();
        post(&sent, None);
        sent.set_kvm_counters(Vec::new());
        let shown = page();
        assert_eq!(shown.sent_count(), None);
        assert!(sent.show_in(vec![shown.clone()], None));
        assert_eq!(shown.sent_count(), Some(1));
        post(&sent, None);
        sent.post(None, |_, _| Ok::<_, ()>(false)).unwrap();
        assert_eq!(shown.sent_count(), Some(2), "a waited write is not counted");
        assert!(!sent.show_in(vec![page()], None), "given once");
        let kvm = PostedSent::default();
        kvm.set_kvm_counters(vec![PostedSent::leak_kvm_counter()]);
        let other = crate::mirror::RegisterMirror::new().unwrap();
        let unshown = Arc::new(MirrorPage::map(&other.file().unwrap(), true).unwrap());
        assert!(!kvm.show_in(vec![unshown.clone()], None));
        post(&kvm, None);
        assert_eq!(unshown.sent_count(), None);
    }

    /// Posted writes are offered the ring of a page given, not of another.
    #[test]
    fn posted_writes_are_offered_the_ring_of_a_page_shown_the_count() {
        let mirror = crate::mirror::RegisterMirror::new().unwrap();
        let page = || Arc::new(MirrorPage::map(&mirror.file().unwrap(), true).unwrap());
        let (shown, elsewhere) = (page(), page());
        let sent = PostedSent::default();
        assert!(sent.show_in(vec![shown.clone()], Some(elsewhere)));
        assert!(sent.ring().is_none(), "not one of the pages shown");
        let sent = PostedSent::default();
        assert!(sent.show_in(vec![shown.clone()], Some(shown.clone())));
        let offered = sent.post(None, |_, ring| {
            Ok::<_, ()>(ring.is_some_and(|r| r.lives_in(&shown)))
        });
        assert_eq!(offered, Ok(true));
    }
}
