//! Guest RAM as the remote sees it: the VMM's memfd regions mapped shared,
//! behind one checked accessor, so a guest-programmed address outside RAM
//! is an error for the device model to report, never a wild access.

use std::fs::File;
use std::sync::Arc;

use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::protocol::mpqemu::SysmemRegion;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map guest RAM region {gpa:#x}+{size:#x}: {source}")]
    Map {
        gpa: u64,
        size: u64,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("guest RAM regions overlap")]
    Overlap,
    #[error(
        "guest RAM region {gpa:#x}+{size:#x} needs bytes {offset:#x}..{end:#x} of its fd, \
         which is {what}"
    )]
    BadFile {
        gpa: u64,
        size: u64,
        offset: u64,
        end: u64,
        what: String,
    },
    #[error("guest address {addr:#x}+{len:#x} is outside guest RAM")]
    OutOfRange { addr: u64, len: usize },
}

#[derive(Clone, Default)]
pub struct DeviceMemory {
    memory: Option<Arc<GuestMemoryMmap>>,
}

impl DeviceMemory {
    pub fn map(regions: &[SysmemRegion], fds: Vec<File>) -> Result<Self, MemoryError> {
        let mut mapped = Vec::with_capacity(regions.len());
        for (r, fd) in regions.iter().zip(fds) {
            check_file(r, &fd)?;
            let map_err = |source| MemoryError::Map {
                gpa: r.gpa,
                size: r.size,
                source,
            };
            let region = MmapRegion::from_file(FileOffset::new(fd, r.offset), r.size as usize)
                .map_err(map_err)?;
            let region =
                GuestRegionMmap::new(region, GuestAddress(r.gpa)).ok_or(MemoryError::Overlap)?;
            mapped.push(Arc::new(region));
        }
        let memory = GuestMemoryMmap::from_arc_regions(mapped).map_err(|_| MemoryError::Overlap)?;
        Ok(DeviceMemory {
            memory: Some(Arc::new(memory)),
        })
    }

    /// Reads guest RAM; fails without touching anything if any byte is outside.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let out = || MemoryError::OutOfRange {
            addr,
            len: buf.len(),
        };
        let mem = self.memory.as_ref().ok_or_else(out)?;
        mem.read_slice(buf, GuestAddress(addr))
            .map_err(|_| MemoryError::OutOfRange {
                addr,
                len: buf.len(),
            })
    }

    pub fn write(&self, addr: u64, buf: &[u8]) -> Result<(), MemoryError> {
        let out = || MemoryError::OutOfRange {
            addr,
            len: buf.len(),
        };
        let mem = self.memory.as_ref().ok_or_else(out)?;
        mem.write_slice(buf, GuestAddress(addr)).map_err(|_| out())
    }
}

/// A region's fd must be a regular file (a memfd is one) that holds all of
/// the region: past its end a mapping faults (SIGBUS) on the first DMA.
fn check_file(r: &SysmemRegion, fd: &File) -> Result<(), MemoryError> {
    let end = r.offset.checked_add(r.size);
    let bad = |what: String| MemoryError::BadFile {
        gpa: r.gpa,
        size: r.size,
        offset: r.offset,
        end: end.unwrap_or(u64::MAX),
        what,
    };
    let len = crate::sys::regular_file_len(fd)
        .map_err(|e| bad(format!("unreadable ({e})")))?
        .ok_or_else(|| bad("not a regular file".into()))?;
    match end {
        Some(end) if end <= len => Ok(()),
        _ => Err(bad(format!("{len:#x} bytes long"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;

    #[test]
    fn remote_sees_the_vmm_ram_and_refuses_outside() {
        let ram = GuestRam::new(64 << 20).unwrap();
        let regions = ram.sysmem_regions();
        let remote = DeviceMemory::map(&regions, vec![ram.memfd.try_clone().unwrap()]).unwrap();
        ram.memory
            .write_slice(b"from the vmm", GuestAddress(0x10_0000))
            .unwrap();
        let mut buf = [0u8; 12];
        remote.read(0x10_0000, &mut buf).unwrap();
        assert_eq!(&buf, b"from the vmm");
        remote.write(0x20_0000, b"dma").unwrap();
        let mut back = [0u8; 3];
        ram.memory
            .read_slice(&mut back, GuestAddress(0x20_0000))
            .unwrap();
        assert_eq!(&back, b"dma");
        assert!(
            remote.read((64 << 20) - 2, &mut buf).is_err(),
            "straddles the end"
        );
        assert!(remote.write(0xfee0_0000, b"x").is_err());
        assert!(DeviceMemory::default().read(0, &mut buf).is_err());
    }

    #[test]
    fn a_short_file_or_one_that_is_not_a_file_is_refused_before_mapping() {
        let short = crate::sys::memfd(c"short", false).unwrap();
        short.set_len(0x1000).unwrap();
        let region = |offset, size| SysmemRegion {
            gpa: 0,
            size,
            offset,
        };
        let e = DeviceMemory::map(&[region(0, 0x2000)], vec![short.try_clone().unwrap()])
            .err()
            .unwrap();
        assert!(e.to_string().contains("0x1000 bytes long"), "{e}");
        assert!(
            DeviceMemory::map(&[region(0x800, 0x1000)], vec![short.try_clone().unwrap()]).is_err()
        );
        assert!(
            DeviceMemory::map(&[region(u64::MAX, 2)], vec![short.try_clone().unwrap()]).is_err()
        );
        assert!(DeviceMemory::map(&[region(0, 0x1000)], vec![short]).is_ok());
        let (sock, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let not_a_file = File::from(std::os::fd::OwnedFd::from(sock));
        let e = DeviceMemory::map(&[region(0, 0x1000)], vec![not_a_file])
            .err()
            .unwrap();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}
