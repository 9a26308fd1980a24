//! The register mirror's page as both sides map it: one page of a memfd,
//! shared, accessed through atomics: register values byte by byte, the
//! count of posted writes applied as one aligned u64. The remote maps it
//! writable and stores register values (Release) before it replies,
//! raises an interrupt or counts the write that changed them; the VMM
//! maps it read-only and loads them (Acquire). A device that reads the
//! VMM's count of posted writes sent (`MIRROR_READS_SENT_COUNT`) has the
//! VMM map it writable, to keep that count in its own two words.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use crate::protocol::extensions::{
    MIRROR_PAGE_SIZE, MIRROR_SENT_COUNT_OFFSET, MIRROR_SENT_SHOWN, MIRROR_SENT_SHOWN_OFFSET,
};

/// Whether a count of posted writes applied has reached `sent`, the count
/// of those sent; both wrap around together.
pub fn caught_up(applied: u64, sent: u64) -> bool {
    (applied.wrapping_sub(sent) as i64) >= 0
}

pub struct MirrorPage {
    page: *mut u8,
    writable: bool,
}

// SAFETY: the page is only ever accessed through atomics.
unsafe impl Send for MirrorPage {}
// SAFETY: as for Send: shared access goes through atomics only.
unsafe impl Sync for MirrorPage {}

impl MirrorPage {
    /// Maps the first MIRROR_PAGE_SIZE bytes of `file`, which must be at
    /// least that long and unable to shrink (or a later access would fault).
    pub fn map(file: &File, writable: bool) -> std::io::Result<Self> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping; the caller vouches for the length.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MIRROR_PAGE_SIZE as usize,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if page == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(MirrorPage {
            page: page.cast(),
            writable,
        })
    }

    fn cell(&self, at: usize) -> &AtomicU8 {
        assert!(at < MIRROR_PAGE_SIZE as usize);
        // SAFETY: inside the mapping, which lives as long as `self`; u8
        // atomics have no alignment needs.
        unsafe { AtomicU8::from_ptr(self.page.add(at)) }
    }

    fn word(&self, at: usize) -> &AtomicU64 {
        assert!(at.is_multiple_of(8) && at + 8 <= MIRROR_PAGE_SIZE as usize);
        // SAFETY: inside the mapping, which lives as long as `self`, and
        // 8-aligned (the mapping is page-aligned).
        unsafe { AtomicU64::from_ptr(self.page.add(at).cast()) }
    }

    pub fn load(&self, at: usize) -> u8 {
        self.cell(at).load(Ordering::Acquire)
    }

    pub fn store(&self, at: usize, value: u8) {
        assert!(self.writable, "the mirror page is mapped read-only");
        self.cell(at).store(value, Ordering::Release);
    }

    /// The u64 at `at`, which must be 8-aligned.
    pub fn load_u64(&self, at: usize) -> u64 {
        self.word(at).load(Ordering::Acquire)
    }

    pub fn store_u64(&self, at: usize, value: u64) {
        assert!(self.writable, "the mirror page is mapped read-only");
        self.word(at).store(value, Ordering::Release);
    }

    /// Stores `value` at `at` (8-aligned) and returns what was there, as
    /// one sequentially consistent step.
    pub fn swap_u64(&self, at: usize, value: u64) -> u64 {
        assert!(self.writable, "the mirror page is mapped read-only");
        self.word(at).swap(value, Ordering::SeqCst)
    }

    pub fn writable(&self) -> bool {
        self.writable
    }

    /// The VMM's count of posted writes sent, once it says it keeps it here.
    pub fn sent_count(&self) -> Option<u64> {
        let shown = self.load_u64(MIRROR_SENT_SHOWN_OFFSET as usize) == MIRROR_SENT_SHOWN;
        shown.then(|| self.load_u64(MIRROR_SENT_COUNT_OFFSET as usize))
    }

    /// The VMM keeps its count here from now on, starting at `count`.
    pub fn show_sent_count(&self, count: u64) {
        self.store_sent_count(count);
        self.store_u64(MIRROR_SENT_SHOWN_OFFSET as usize, MIRROR_SENT_SHOWN);
    }

    pub fn store_sent_count(&self, count: u64) {
        self.store_u64(MIRROR_SENT_COUNT_OFFSET as usize, count);
    }

    /// The device hands the page out: a count a VMM kept there before is
    /// not this one's.
    pub fn forget_sent_count(&self) {
        self.store_u64(MIRROR_SENT_SHOWN_OFFSET as usize, 0);
    }
}

impl Drop for MirrorPage {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.page.cast(), MIRROR_PAGE_SIZE as usize) };
    }
}
