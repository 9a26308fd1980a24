//! The VMM's side of the register mirror (see `mirror::writer`): the
//! remote's page, mapped read-only (writable only to keep our count of
//! posted writes sent there, `mirror::posted`), and the registers of one ioregion
//! range whose reads it answers.
//!
//! A read answered here costs the exit and nothing else; one that goes to
//! the remote adds two context switches. The remote is not trusted: its
//! page must be a memfd sealed against shrinking (a shorter file would
//! turn our reads into SIGBUS), and every register it names must lie in a
//! range whose writes we wait for, unless the page counts the posted
//! writes the remote has applied. With posted writes, a read could
//! overtake a write still queued for the remote and see its old value; so
//! a read is answered from the page only once that count has caught up
//! with the posted writes this VMM sent to the device (on any of its
//! fds), and goes to the remote otherwise, where it waits behind them;
//! unless every write not applied yet is a write of that register whose
//! effect the remote described, which the VMM then applies to the page's
//! value itself (`mirror::posted`).

use std::fs::File;
use std::sync::Arc;

use crate::mirror::doorbell::Doorbells;
use crate::mirror::page::{MirrorPage, caught_up};
use crate::mirror::posted::{KnownWrite, PostedSent, RegisterKey};
use crate::protocol::extensions::{MIRROR_PAGE_SIZE, MIRROR_POSTED_COUNT_OFFSET, MirroredRegister};

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("the mirror page is not a sealed memfd of at least 4 KiB ({0})")]
    NotSealed(&'static str),
    #[error("mapping the mirror page: {0}")]
    Map(#[source] std::io::Error),
    #[error("mirrored register {offset:#x} ({size} bytes) {why}")]
    BadRegister {
        offset: u64,
        size: u32,
        why: &'static str,
    },
}

/// Maps the remote's mirror page, once it is known that the page cannot
/// shrink under us: writable when `show_sent` (the remote reads our count
/// of posted writes sent there) and the page can be written, read-only
/// otherwise; a page sealed against writes then goes without the count.
pub fn map_page(file: &File, show_sent: bool) -> Result<MirrorPage, MirrorError> {
    let Ok(seals) = crate::sys::seals(file) else {
        return Err(MirrorError::NotSealed("it takes no seals"));
    };
    if seals & libc::F_SEAL_SHRINK == 0 {
        return Err(MirrorError::NotSealed("it can still shrink"));
    }
    let len = file.metadata().map_err(MirrorError::Map)?.len();
    if len < MIRROR_PAGE_SIZE {
        return Err(MirrorError::NotSealed("it is too short"));
    }
    if show_sent && let Ok(page) = MirrorPage::map(file, true) {
        return Ok(page);
    }
    MirrorPage::map(file, false).map_err(MirrorError::Map)
}

/// The mirrored registers of one BAR, by offset in the BAR.
pub struct BarMirror {
    pub page: Arc<MirrorPage>,
    pub registers: Vec<MirroredRegister>,
    /// Set when the page counts the posted writes applied: the device's
    /// count of posted writes sent, to compare with it.
    pub posted_sent: Option<Arc<PostedSent>>,
    /// The device's doorbell policy, for a range whose writes are posted.
    pub doorbells: Option<Arc<Doorbells>>,
    /// The device offered the ring in the page for posted writes
    /// (`mirror::ring`).
    pub posted_ring: bool,
}

impl BarMirror {
    /// The registers that fall in the range `start..start + size` of the
    /// BAR; `None` when there are none.
    pub fn range(&self, start: u64, size: u64) -> Option<RangeMirror> {
        let registers: Vec<MirroredRegister> = self
            .registers
            .iter()
            .filter(|r| r.offset >= start && r.offset + u64::from(r.size) <= start + size)
            .map(|r| MirroredRegister {
                offset: r.offset - start,
                ..*r
            })
            .collect();
        (!registers.is_empty()).then(|| RangeMirror {
            page: self.page.clone(),
            registers,
            posted_sent: self.posted_sent.clone(),
            doorbells: self.doorbells.clone(),
        })
    }
}

/// The mirrored registers of one ioregion range, by offset in the range.
pub struct RangeMirror {
    page: Arc<MirrorPage>,
    registers: Vec<MirroredRegister>,
    posted_sent: Option<Arc<PostedSent>>,
    doorbells: Option<Arc<Doorbells>>,
}

/// What the mirror made of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorRead {
    /// Answered from the page.
    Answered,
    /// Answered from the page with the posted writes not applied yet
    /// applied to it here (they are all known writes of the register).
    AnsweredAhead,
    /// A mirrored register, but posted writes sent to the device are not
    /// all applied yet: the remote must answer, after them.
    Behind,
    /// Not a mirrored register (or not this size).
    NotMirrored,
}

impl RangeMirror {
    /// Answers a read of exactly one mirrored register if the page is
    /// up to date with every posted write sent, or if the writes it is
    /// behind are known writes of this register.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> MirrorRead {
        let Some(r) = self.register(offset, data.len()) else {
            return MirrorRead::NotMirrored;
        };
        if let Some(sent) = &self.posted_sent {
            // The count first (Acquire): the register bytes loaded after it
            // are at least as new as the writes it counts.
            let applied = self.page.load_u64(MIRROR_POSTED_COUNT_OFFSET as usize);
            if !caught_up(applied, sent.total()) {
                return self.read_ahead(r, sent, data);
            }
        }
        crate::bus::data_to_bytes(self.load(r), data);
        MirrorRead::Answered
    }

    fn read_ahead(&self, r: &MirroredRegister, sent: &PostedSent, data: &mut [u8]) -> MirrorRead {
        if r.effects.is_none() {
            return MirrorRead::Behind;
        }
        let look_at_page = || {
            let count = || self.page.load_u64(MIRROR_POSTED_COUNT_OFFSET as usize);
            let applied = count();
            let value = self.load(r);
            // A write applied in between could have changed the value.
            (count() == applied).then_some((applied, value))
        };
        match sent.value_once_applied(self.key(r), look_at_page) {
            Some(value) => {
                crate::bus::data_to_bytes(value, data);
                MirrorRead::AnsweredAhead
            }
            None => MirrorRead::Behind,
        }
    }

    /// A write of `data` at `offset`, if it writes exactly one mirrored
    /// register: looked up once, for what the write does to it
    /// ([`MirroredWrite::known`]) and whether it rings a doorbell
    /// ([`MirroredWrite::ring`]).
    pub fn write(&self, offset: u64, data: &[u8]) -> Option<MirroredWrite<'_>> {
        let register = self.register(offset, data.len())?;
        Some(MirroredWrite {
            mirror: self,
            register,
            value: crate::bus::data_from_bytes(data),
        })
    }

    fn register(&self, offset: u64, size: usize) -> Option<&MirroredRegister> {
        self.registers
            .iter()
            .find(|r| r.offset == offset && r.size as usize == size)
    }

    fn key(&self, r: &MirroredRegister) -> RegisterKey {
        (Arc::as_ptr(&self.page) as usize, r.page_offset)
    }

    /// The register's bytes in the page, little-endian.
    fn load(&self, r: &MirroredRegister) -> u64 {
        (0..r.size as usize).fold(0, |v, i| {
            v | u64::from(self.page.load(r.page_offset as usize + i)) << (8 * i)
        })
    }

    /// (offset, size) of the mirrored registers in the range, by offset.
    pub fn registers(&self) -> Vec<(u64, u64)> {
        let mut registers: Vec<(u64, u64)> = self
            .registers
            .iter()
            .map(|r| (r.offset, u64::from(r.size)))
            .collect();
        registers.sort_unstable();
        registers
    }
}

/// Every register must lie inside one of `ranges` (offset, size, posted
/// writes), and one whose writes are waited for unless the page
/// `counts_posted_writes`.
pub fn check_registers(
    registers: &[MirroredRegister],
    ranges: &[(u64, u64, bool)],
    counts_posted_writes: bool,
) -> Result<(), MirrorError> {
    for r in registers {
        let bad = |why| MirrorError::BadRegister {
            offset: r.offset,
            size: r.size,
            why,
        };
        let end = r.offset + u64::from(r.size);
        let range = ranges
            .iter()
            .find(|(start, size, _)| r.offset >= *start && end <= start + size)
            .ok_or_else(|| bad("lies in no ioregion range"))?;
        if range.2 && !counts_posted_writes {
            return Err(bad(
                "lies in a range with posted writes, and the page does not count them",
            ));
        }
    }
    Ok(())
}

/// A guest write of one mirrored register (see [`RangeMirror::write`]).
pub struct MirroredWrite<'a> {
    mirror: &'a RangeMirror,
    register: &'a MirroredRegister,
    value: u64,
}

impl<'a> MirroredWrite<'a> {
    /// What the write does to the register, when the device said and the
    /// value starts nothing; `None` for any other write, whose effect on
    /// the registers is unknown.
    pub fn known(&self) -> Option<KnownWrite> {
        let effects = self.register.effects?;
        effects.apply(0, self.value)?;
        Some(KnownWrite {
            register: self.mirror.key(self.register),
            value: self.value,
            effects,
        })
    }

    /// When the write rings a doorbell (an opaque bit of the register,
    /// `mirror::doorbell`): the device's policy and whether to wait for
    /// this one.
    pub fn ring(&self) -> Option<(&'a Doorbells, bool)> {
        let doorbells = self.mirror.doorbells.as_deref()?;
        let effects = self.register.effects?;
        if effects.apply(0, self.value).is_some() {
            return None;
        }
        let page = &self.mirror.page;
        let applied = || {
            (self.mirror.posted_sent.as_ref())
                .map(|_| page.load_u64(MIRROR_POSTED_COUNT_OFFSET as usize))
        };
        Some((doorbells, doorbells.wait(applied)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_model::RegisterMirror;
    use std::sync::atomic::Ordering;

    fn register(offset: u64, size: u32, page_offset: u32) -> MirroredRegister {
        MirroredRegister::new(offset, size, page_offset)
    }

    /// ISTAT0 as the LSI describes it: INTF cleared by a write of 1,
    /// SIGP and ABRT start the device's work.
    fn istat() -> MirroredRegister {
        MirroredRegister {
            effects: Some(crate::protocol::extensions::WriteEffects {
                clears: 0x04,
                follows: 0xf0,
                opaque: 0xe0,
            }),
            ..register(0x14, 1, 8)
        }
    }

    /// Whether a write rings a doorbell, and if so whether it is waited for.
    fn rings(mirror: &RangeMirror, offset: u64, data: &[u8]) -> Option<bool> {
        mirror
            .write(offset, data)
            .and_then(|w| w.ring())
            .map(|r| r.1)
    }

    #[test]
    fn reads_of_a_mirrored_register_come_from_the_remotes_page() {
        let remote = RegisterMirror::new().unwrap();
        let page = Arc::new(map_page(&remote.file().unwrap(), false).unwrap());
        let bar = BarMirror {
            page,
            registers: vec![register(0x14, 1, 8), register(0x300, 1, 9)],
            posted_sent: None,
            doorbells: None,
            posted_ring: false,
        };
        let mirror = bar.range(0, 0x80).unwrap();
        remote.set(8, 0x0c);
        let mut byte = [0u8; 1];
        assert_eq!(mirror.read(0x14, &mut byte), MirrorRead::Answered);
        assert_eq!(byte, [0x0c]);
        remote.set(8, 0x04);
        assert_eq!(mirror.read(0x14, &mut byte), MirrorRead::Answered);
        assert_eq!(byte, [0x04], "the page is live");
        // Other registers, other sizes, the other range's register.
        let not = MirrorRead::NotMirrored;
        assert_eq!(mirror.read(0x15, &mut byte), not);
        assert_eq!(mirror.read(0x14, &mut [0u8; 4]), not);
        assert_eq!(mirror.read(0x300, &mut byte), not);
        assert!(bar.range(0x100, 0x80).is_none());
        assert_eq!(
            bar.range(0x2f0, 0x20).unwrap().registers[0].offset,
            0x10,
            "by offset in the range"
        );
    }

    /// With posted writes, the page answers only once it has applied
    /// every posted write sent; the remote answers in between.
    #[test]
    fn a_read_waits_for_the_remote_while_posted_writes_are_unapplied() {
        let remote = RegisterMirror::new().unwrap();
        let counter = MirrorPage::map(&remote.file().unwrap(), true).unwrap();
        let sent = Arc::new(PostedSent::default());
        let kvm = PostedSent::leak_kvm_counter();
        sent.set_kvm_counters(vec![kvm]);
        let bar = BarMirror {
            page: Arc::new(map_page(&remote.file().unwrap(), false).unwrap()),
            registers: vec![register(0x14, 1, 8)],
            posted_sent: Some(sent.clone()),
            doorbells: None,
            posted_ring: false,
        };
        let mirror = bar.range(0, 0x80).unwrap();
        let mut byte = [0u8; 1];
        remote.set(8, 0x0c);
        assert_eq!(mirror.read(0x14, &mut byte), MirrorRead::Answered);
        for _ in 0..2 {
            sent.post(None, |_, _| Ok::<_, ()>(true)).unwrap();
        }
        counter.store_u64(MIRROR_POSTED_COUNT_OFFSET as usize, 1);
        assert_eq!(mirror.read(0x14, &mut byte), MirrorRead::Behind);
        counter.store_u64(MIRROR_POSTED_COUNT_OFFSET as usize, 2);
        assert_eq!(mirror.read(0x14, &mut byte), MirrorRead::Answered);
        // KVM's posted writes (kernel path) count as well.
        kvm.store(3, Ordering::Relaxed);
        assert_eq!(mirror.read(0x14, &mut byte), MirrorRead::Behind);
        counter.store_u64(MIRROR_POSTED_COUNT_OFFSET as usize, 5);
        assert_eq!(mirror.read(0x14, &mut byte), MirrorRead::Answered);
        // The counts wrap around together.
        kvm.store(u64::MAX - 1, Ordering::Relaxed);
        counter.store_u64(MIRROR_POSTED_COUNT_OFFSET as usize, u64::MAX - 1);
        assert_eq!(mirror.read(0x14, &mut byte), MirrorRead::Behind);
        counter.store_u64(MIRROR_POSTED_COUNT_OFFSET as usize, 0);
        assert_eq!(mirror.read(0x14, &mut byte), MirrorRead::Answered);
    }

    /// Writable only for a remote that reads our count of posted writes
    /// sent, and only if its page can be written.
    #[test]
    fn a_page_is_mapped_writable_only_to_show_the_count_and_if_it_can_be() {
        let remote = RegisterMirror::new().unwrap();
        assert!(!map_page(&remote.file().unwrap(), false).unwrap().writable());
        assert!(map_page(&remote.file().unwrap(), true).unwrap().writable());
        let sealed = crate::sys::memfd(c"sealed", true).unwrap();
        sealed.set_len(MIRROR_PAGE_SIZE).unwrap();
        crate::sys::add_seals(&sealed, libc::F_SEAL_SHRINK | libc::F_SEAL_WRITE).unwrap();
        let page = map_page(&sealed, true).unwrap();
        assert!(!page.writable(), "sealed against writes: read-only");
    }

    #[test]
    fn an_unsealed_or_short_page_is_refused() {
        let plain = tempfile_of(4096);
        assert!(matches!(
            map_page(&plain, false),
            Err(MirrorError::NotSealed(_))
        ));
        let short = crate::sys::memfd(c"short", true).unwrap();
        short.set_len(100).unwrap();
        crate::sys::add_seals(&short, libc::F_SEAL_SHRINK).unwrap();
        assert!(matches!(
            map_page(&short, false),
            Err(MirrorError::NotSealed("it is too short"))
        ));
    }

    fn tempfile_of(len: u64) -> File {
        let file = crate::sys::memfd(c"plain", false).unwrap();
        file.set_len(len).unwrap();
        file
    }

    #[test]
    fn registers_outside_ranges_or_in_uncounted_posted_ones_are_refused() {
        let ranges = [(0, 0x80, false), (0x100, 0x100, true)];
        let check = |r, counted| check_registers(&[r], &ranges, counted);
        assert!(check(register(0x14, 1, 0), false).is_ok());
        assert!(check(register(0x7f, 2, 0), true).is_err());
        assert!(check(register(0x90, 1, 0), true).is_err());
        assert!(check(register(0x110, 1, 0), false).is_err());
        assert!(
            check(register(0x110, 1, 0), true).is_ok(),
            "posted writes are fine once the page counts them"
        );
    }

    /// A write is looked up once; what it does to the register is known
    /// only where the device described the register's writes and the
    /// value starts nothing.
    #[test]
    fn a_write_of_a_described_register_is_known_unless_it_starts_work() {
        let remote = RegisterMirror::new().unwrap();
        let istat = istat();
        let bar = BarMirror {
            page: Arc::new(map_page(&remote.file().unwrap(), false).unwrap()),
            registers: vec![istat, register(0x15, 1, 9)],
            posted_sent: None,
            doorbells: None,
            posted_ring: false,
        };
        let mirror = bar.range(0, 0x80).unwrap();
        let clear = mirror.write(0x14, &[0x04]).unwrap().known().unwrap();
        assert_eq!((clear.value, clear.effects), (0x04, istat.effects.unwrap()));
        assert!(
            mirror.write(0x14, &[0x20]).unwrap().known().is_none(),
            "SIGP starts the device's work"
        );
        assert!(
            mirror.write(0x15, &[0x04]).unwrap().known().is_none(),
            "effects not described"
        );
        assert!(mirror.write(0x14, &[0x04, 0]).is_none(), "another size");
        assert!(mirror.write(0x16, &[0x04]).is_none(), "not mirrored");
    }

    /// A write with an opaque bit of a register whose effects the device
    /// described is a doorbell; the policy then sees the page's count.
    #[test]
    fn writes_that_start_the_devices_work_ring_the_doorbell() {
        use crate::mirror::doorbell::{DoorbellMode, ENTER_AFTER};
        let remote = RegisterMirror::new().unwrap();
        let counter = MirrorPage::map(&remote.file().unwrap(), true).unwrap();
        let istat = istat();
        let bar = |mode, counts: bool| BarMirror {
            page: Arc::new(map_page(&remote.file().unwrap(), false).unwrap()),
            registers: vec![istat, register(0x15, 1, 9)],
            posted_sent: counts.then(|| Arc::new(PostedSent::default())),
            doorbells: Some(Arc::new(Doorbells::new(mode))),
            posted_ring: false,
        };
        let waited = bar(DoorbellMode::Waited, true).range(0, 0x80).unwrap();
        assert_eq!(rings(&waited, 0x14, &[0x20]), Some(true), "SIGP");
        assert_eq!(rings(&waited, 0x14, &[0x80]), Some(true), "ABRT");
        let none = |data: &[u8]| rings(&waited, 0x14, data);
        assert_eq!(none(&[0x04]), None, "an INTF clear starts nothing");
        assert_eq!(none(&[0x20, 0]), None, "another size");
        assert_eq!(rings(&waited, 0x15, &[0x20]), None, "effects not described");
        let no_policy = BarMirror {
            doorbells: None,
            posted_ring: false,
            ..bar(DoorbellMode::Waited, true)
        };
        let no_policy = no_policy.range(0, 0x80).unwrap();
        assert_eq!(rings(&no_policy, 0x14, &[0x20]), None);
        // Adaptive: each posted doorbell applied before the next.
        let adaptive = bar(DoorbellMode::Adaptive, true).range(0, 0x80).unwrap();
        let mut waits = Vec::new();
        for count in 1..=ENTER_AFTER + 1 {
            let (policy, wait) = adaptive
                .write(0x14, &[0x20])
                .and_then(|w| w.ring())
                .unwrap();
            waits.push(wait);
            policy.posted(u64::from(count));
            counter.store_u64(MIRROR_POSTED_COUNT_OFFSET as usize, u64::from(count));
        }
        assert_eq!(waits.last(), Some(&true), "{waits:?}");
        // A page that does not count posted writes gives it nothing to go by.
        let uncounted = bar(DoorbellMode::Adaptive, false).range(0, 0x80).unwrap();
        for _ in 0..2 * ENTER_AFTER {
            assert_eq!(rings(&uncounted, 0x14, &[0x20]), Some(false));
        }
    }
}
