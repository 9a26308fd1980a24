//! The device process's count of the posted writes it has applied, and
//! what a record's own count of those sent before it lets the device skip.
//!
//! The count is also kept in each register mirror page the VMM was given:
//! the VMM answers a read from a page only once that count has caught up
//! with the posted writes it sent, so a mirrored register can live in a
//! range whose writes are posted (`mirror::reader`).
//!
//! The VMM's vCPU threads say in each record how many posted writes they
//! had sent to the device before it (`wire::sent_before_of`). A record
//! whose count the device has reached owes nothing to a posted write still
//! queued on another fd, so the device applies it without receiving from
//! each of its other fds first (`device_end`).
//!
//! A VMM of ours also keeps its count of posted writes sent in those
//! pages. What comes after a posted write the guest made (its
//! acknowledgement of the interrupt, a message on the control socket)
//! then owes nothing more once that many are applied, where otherwise the
//! device would have to look at every posted-write fd for more.

use crate::ioregion::wire::SentBefore;
use crate::mirror::page::{MirrorPage, caught_up};
use crate::protocol::extensions::MIRROR_POSTED_COUNT_OFFSET;

/// Mirror pages a hub keeps its count in, at most: a VMM asks once per
/// BAR, again after a reconnect.
pub const MAX_COUNTED_PAGES: usize = 16;

/// How many posted writes the device has applied, and the mirror pages
/// that show it.
#[derive(Default)]
pub struct AppliedCount {
    pub count: u64,
    pages: Vec<MirrorPage>,
    /// Catch-ups ([`AppliedCount::owes_nothing_more`]), and those that
    /// found every posted write the VMM counted applied.
    catch_ups: (u64, u64),
    /// Posted writes taken from a ring in a mirror page (`mirror::ring`).
    from_rings: u64,
}

impl AppliedCount {
    /// Whether a record that says `sent` posted writes were sent before it
    /// (None when it did not say) owes nothing to one not applied yet. A
    /// read needs them all applied. A write says its count modulo 2^32 and
    /// must find exactly that many applied: it is then the next posted
    /// write owed. A write that finds more (a count that was not the
    /// VMM's alone, e.g. KVM's writes on the kernel path) goes the long
    /// way, through the drain. The counts wrap together.
    pub fn covers(&self, sent: Option<SentBefore>) -> bool {
        match sent {
            None => false,
            Some(SentBefore::All(sent)) => caught_up(self.count, sent),
            Some(SentBefore::Low32(sent)) => self.count as u32 == sent,
        }
    }

    /// After a posted write was applied, so that its effect on mirrored
    /// registers is in the page before the count says so.
    pub fn one_more(&mut self) {
        self.count = self.count.wrapping_add(1);
        for page in &self.pages {
            page.store_u64(MIRROR_POSTED_COUNT_OFFSET as usize, self.count);
        }
    }

    /// As [`AppliedCount::one_more`], for a posted write that came
    /// through a ring rather than a fd.
    pub fn one_more_from_the_ring(&mut self) {
        self.from_rings += 1;
        self.one_more();
    }

    /// Keeps the count in `page` (a mirror page mapped writable) from now
    /// on; false, and the page dropped, once [`MAX_COUNTED_PAGES`] are
    /// kept: each query for a mirror maps the page again, and a client
    /// that asks without end must not make the device map without end.
    pub fn keep_in(&mut self, page: MirrorPage) -> bool {
        if self.pages.len() >= MAX_COUNTED_PAGES {
            return false;
        }
        page.forget_sent_count();
        page.store_u64(MIRROR_POSTED_COUNT_OFFSET as usize, self.count);
        self.pages.push(page);
        true
    }

    /// Whether a catch-up (before an interrupt acknowledgement or a
    /// message is handled) may stop here: the records looked at so far
    /// were `covered`, and every posted write the VMM counted is applied.
    /// Counted for [`AppliedCount::summary`].
    pub fn owes_nothing_more(&mut self, covered: bool) -> bool {
        self.catch_ups.0 += 1;
        let done = covered && self.has_all_the_vmm_sent();
        self.catch_ups.1 += u64::from(done);
        done
    }

    /// The remote's exit summary of posted writes: how many were applied,
    /// and how many catch-ups needed no look at each fd.
    pub fn summary(&self) -> String {
        let (all, caught_up) = self.catch_ups;
        format!(
            "posted writes: {} applied, {} of them from the ring; {caught_up} of {all} \
             interrupt acknowledgements and messages found every one the VMM had counted \
             applied",
            self.count, self.from_rings
        )
    }

    /// Whether every posted write the VMM says it sent (in a page it keeps
    /// its count in) has been applied; false when no page says. Anything
    /// the guest did after its posted writes was done after the VMM
    /// counted them there.
    pub fn has_all_the_vmm_sent(&self) -> bool {
        let sent = self.pages.iter().find_map(MirrorPage::sent_count);
        sent.is_some_and(|sent| caught_up(self.count, sent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_says_what_was_posted_before_it_is_covered_once_applied() {
        let all = |n| Some(SentBefore::All(n));
        let mut applied = AppliedCount::default();
        assert!(
            !applied.covers(None),
            "saying nothing: look for posted writes"
        );
        assert!(applied.covers(all(0)));
        assert!(!applied.covers(all(1)));
        applied.one_more();
        assert!(applied.covers(all(1)));
        applied.count = u64::MAX;
        assert!(!applied.covers(all(0)), "the VMM's count wrapped ahead");
        assert!(applied.covers(all(u64::MAX - 3)));
    }

    #[test]
    fn a_write_is_covered_only_by_exactly_its_count() {
        let low = |n| Some(SentBefore::Low32(n));
        let mut applied = AppliedCount::default();
        assert!(applied.covers(low(0)));
        assert!(!applied.covers(low(1)), "one owed before it");
        applied.one_more();
        applied.one_more();
        assert!(!applied.covers(low(1)), "more applied than it says");
        assert!(applied.covers(low(2)));
        applied.count = 0x5_ffff_ffff;
        assert!(applied.covers(low(u32::MAX)), "modulo 2^32");
        applied.one_more();
        assert!(applied.covers(low(0)), "both wrapped");
    }

    /// The VMM's count of posted writes sent counts only once the VMM says
    /// it keeps it, and a page handed out again forgets what a VMM before
    /// said there.
    #[test]
    fn the_vmm_sent_count_is_trusted_once_shown_until_the_page_is_handed_out() {
        let mirror = crate::mirror::RegisterMirror::new().unwrap();
        let map = || MirrorPage::map(&mirror.file().unwrap(), true).unwrap();
        let vmm = map();
        let mut applied = AppliedCount::default();
        assert!(!applied.has_all_the_vmm_sent(), "no page");
        vmm.show_sent_count(0);
        assert!(applied.keep_in(map()));
        assert!(
            !applied.has_all_the_vmm_sent(),
            "shown before it was handed out"
        );
        vmm.show_sent_count(1);
        assert!(!applied.has_all_the_vmm_sent());
        applied.one_more();
        assert!(applied.has_all_the_vmm_sent());
        vmm.store_sent_count(2);
        assert!(!applied.has_all_the_vmm_sent());
        applied.one_more();
        applied.one_more();
        assert!(
            applied.has_all_the_vmm_sent(),
            "more applied than counted then"
        );
        assert!(applied.keep_in(map()));
        assert!(!applied.has_all_the_vmm_sent(), "handed out again");
    }

    /// A catch-up may stop only when what it looked at was covered and the
    /// VMM's count is reached; the summary counts both kinds.
    #[test]
    fn a_catch_up_stops_only_covered_and_caught_up_and_is_counted() {
        let mirror = crate::mirror::RegisterMirror::new().unwrap();
        let mut applied = AppliedCount::default();
        assert!(!applied.owes_nothing_more(true), "no page says");
        assert!(applied.keep_in(MirrorPage::map(&mirror.file().unwrap(), true).unwrap()));
        MirrorPage::map(&mirror.file().unwrap(), true)
            .unwrap()
            .show_sent_count(0);
        assert!(!applied.owes_nothing_more(false), "a record still owed");
        assert!(applied.owes_nothing_more(true));
        applied.one_more();
        assert_eq!(
            applied.summary(),
            "posted writes: 1 applied, 0 of them from the ring; 1 of 3 interrupt \
             acknowledgements and messages found every one the VMM had counted applied"
        );
    }
}
