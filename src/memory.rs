//! Guest RAM: one memfd, mapped shared, so that remote device processes
//! can map the very same pages later.

use std::fs::File;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionError;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::layout;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Guest memory size below the minimum.
    #[error("guest memory of {0} MiB is too small (need at least {min} MiB)", min = layout::MIN_MEM_SIZE >> 20)]
    TooSmall(u64),
    /// Guest memory size not a whole number of pages.
    #[error("guest memory size {0:#x} is not a multiple of 4 KiB")]
    Unaligned(u64),
    #[error("cannot create the guest RAM memfd: {0}")]
    Memfd(#[source] std::io::Error),
    #[error("cannot size the guest RAM memfd to {size} bytes: {source}")]
    Resize {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot map guest RAM: {0}")]
    Map(#[source] MmapRegionError),
    #[error("guest RAM regions overlap or are out of order")]
    Regions,
}

/// Guest RAM together with the memfd that backs it.
pub struct GuestRam {
    pub memory: GuestMemoryMmap,
    pub memfd: Arc<File>,
    /// (guest address, size, offset in the memfd) of each region.
    pub regions: Vec<RamRegion>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRegion {
    pub guest_addr: u64,
    pub size: u64,
    pub file_offset: u64,
}

impl GuestRam {
    pub fn new(mem_size: u64) -> Result<Self, MemoryError> {
        if mem_size < layout::MIN_MEM_SIZE {
            return Err(MemoryError::TooSmall(mem_size >> 20));
        }
        if !mem_size.is_multiple_of(4096) {
            return Err(MemoryError::Unaligned(mem_size));
        }
        let memfd = Arc::new(create_memfd("vmm-guest-ram")?);
        memfd
            .set_len(mem_size)
            .map_err(|source| MemoryError::Resize {
                size: mem_size,
                source,
            })?;

        let mut regions = Vec::new();
        let mut mapped = Vec::new();
        let mut file_offset = 0;
        for (guest_addr, size) in layout::ram_ranges(mem_size) {
            let mapping = MmapRegion::from_file(
                FileOffset::from_arc(memfd.clone(), file_offset),
                size as usize,
            )
            .map_err(MemoryError::Map)?;
            let region = GuestRegionMmap::new(mapping, GuestAddress(guest_addr))
                .ok_or(MemoryError::Regions)?;
            mapped.push(Arc::new(region));
            regions.push(RamRegion {
                guest_addr,
                size,
                file_offset,
            });
            file_offset += size;
        }
        let memory = GuestMemoryMmap::from_arc_regions(mapped).map_err(|_| MemoryError::Regions)?;
        Ok(GuestRam {
            memory,
            memfd,
            regions,
        })
    }

    /// The regions as SYNC_SYSMEM describes them to a remote.
    pub fn sysmem_regions(&self) -> Vec<crate::protocol::mpqemu::SysmemRegion> {
        self.regions
            .iter()
            .map(|r| crate::protocol::mpqemu::SysmemRegion {
                gpa: r.guest_addr,
                size: r.size,
                offset: r.file_offset,
            })
            .collect()
    }
}

fn create_memfd(name: &str) -> Result<File, MemoryError> {
    let name = std::ffi::CString::new(name).expect("memfd name has no NUL");
    crate::sys::memfd(&name, false).map_err(MemoryError::Memfd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn rejects_tiny_and_unaligned_sizes() {
        assert!(matches!(
            GuestRam::new(1 << 20),
            Err(MemoryError::TooSmall(1))
        ));
        assert!(matches!(
            GuestRam::new((64 << 20) + 1),
            Err(MemoryError::Unaligned(_))
        ));
    }

    #[test]
    fn ram_is_shared_through_the_memfd() {
        use std::os::unix::fs::FileExt;
        let ram = GuestRam::new(64 << 20).unwrap();
        ram.memory
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        let mut buf = [0u8; 4];
        ram.memfd.read_exact_at(&mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        assert_eq!(ram.memory.num_regions(), 1);
    }
}
