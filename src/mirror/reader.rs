//! The VMM's side of the register mirror (see `mirror::writer`): the
//! remote's page, mapped read-only, and the registers of one ioregion
//! range whose reads it answers.
//!
//! A read answered here costs the exit and nothing else; one that goes to
//! the remote adds two context switches. The remote is not trusted: its
//! page must be a memfd sealed against shrinking (a shorter file would
//! turn our reads into SIGBUS), and every register it names must lie in a
//! range whose writes we wait for. With posted writes, a read could
//! overtake a write still queued for the remote and see its old value.

use std::fs::File;
use std::sync::Arc;

use crate::mirror::page::MirrorPage;
use crate::protocol::extensions::{MIRROR_PAGE_SIZE, MirroredRegister};

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

/// Maps the remote's mirror page read-only, once it is known that the
/// page cannot shrink under us.
pub fn map_page(file: &File) -> Result<MirrorPage, MirrorError> {
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
    MirrorPage::map(file, false).map_err(MirrorError::Map)
}

/// The mirrored registers of one BAR, by offset in the BAR.
pub struct BarMirror {
    pub page: Arc<MirrorPage>,
    pub registers: Vec<MirroredRegister>,
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
        })
    }
}

/// The mirrored registers of one ioregion range, by offset in the range.
pub struct RangeMirror {
    page: Arc<MirrorPage>,
    registers: Vec<MirroredRegister>,
}

impl RangeMirror {
    /// Answers a read of exactly one mirrored register; false otherwise.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> bool {
        let Some(r) = self
            .registers
            .iter()
            .find(|r| r.offset == offset && r.size as usize == data.len())
        else {
            return false;
        };
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.page.load(r.page_offset as usize + i);
        }
        true
    }
}

/// Every register must lie inside one of `ranges` (offset, size, posted
/// writes) whose writes are waited for.
pub fn check_registers(
    registers: &[MirroredRegister],
    ranges: &[(u64, u64, bool)],
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
        if range.2 {
            return Err(bad("lies in a range with posted writes"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_model::RegisterMirror;

    fn register(offset: u64, size: u32, page_offset: u32) -> MirroredRegister {
        MirroredRegister {
            offset,
            size,
            page_offset,
        }
    }

    #[test]
    fn reads_of_a_mirrored_register_come_from_the_remotes_page() {
        let remote = RegisterMirror::new().unwrap();
        let page = Arc::new(map_page(&remote.file().unwrap()).unwrap());
        let bar = BarMirror {
            page,
            registers: vec![register(0x14, 1, 8), register(0x300, 1, 9)],
        };
        let mirror = bar.range(0, 0x80).unwrap();
        remote.set(8, 0x0c);
        let mut byte = [0u8; 1];
        assert!(mirror.read(0x14, &mut byte));
        assert_eq!(byte, [0x0c]);
        remote.set(8, 0x04);
        assert!(mirror.read(0x14, &mut byte));
        assert_eq!(byte, [0x04], "the page is live");
        // Other registers, other sizes, the other range's register.
        assert!(!mirror.read(0x15, &mut byte));
        assert!(!mirror.read(0x14, &mut [0u8; 4]));
        assert!(!mirror.read(0x300, &mut byte));
        assert!(bar.range(0x100, 0x80).is_none());
        assert_eq!(
            bar.range(0x2f0, 0x20).unwrap().registers[0].offset,
            0x10,
            "by offset in the range"
        );
    }

    #[test]
    fn an_unsealed_or_short_page_is_refused() {
        let plain = tempfile_of(4096);
        assert!(matches!(map_page(&plain), Err(MirrorError::NotSealed(_))));
        let short = crate::sys::memfd(c"short", true).unwrap();
        short.set_len(100).unwrap();
        crate::sys::add_seals(&short, libc::F_SEAL_SHRINK).unwrap();
        assert!(matches!(
            map_page(&short),
            Err(MirrorError::NotSealed("it is too short"))
        ));
    }

    fn tempfile_of(len: u64) -> File {
        let file = crate::sys::memfd(c"plain", false).unwrap();
        file.set_len(len).unwrap();
        file
    }

    #[test]
    fn registers_outside_waited_ranges_are_refused() {
        let ranges = [(0, 0x80, false), (0x100, 0x100, true)];
        assert!(check_registers(&[register(0x14, 1, 0)], &ranges).is_ok());
        assert!(check_registers(&[register(0x7f, 2, 0)], &ranges).is_err());
        assert!(check_registers(&[register(0x90, 1, 0)], &ranges).is_err());
        assert!(check_registers(&[register(0x110, 1, 0)], &ranges).is_err());
    }
}
