//! Guest RAM as the remote sees it: the VMM's memfd regions mapped shared,
//! behind one checked accessor, so a guest-programmed address outside RAM
//! is an error for the device model to report, never a wild access. Where
//! the peer shares RAM without an fd (a vfio-user client's DMA_MAP without
//! one), those ranges are reached through the peer, by message.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap,
    MmapRegion,
};

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
    #[error("DMA at {addr:#x}+{len:#x} through the peer failed: {why}")]
    ByMessage { addr: u64, len: usize, why: String },
}

/// Guest RAM the device reaches by asking its peer to copy (vfio-user's
/// DMA_READ and DMA_WRITE): slow, one round trip per access, but the only
/// way into RAM the peer shares without an fd.
pub trait DmaByMessage: Send + Sync {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), String>;
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), String>;
}

/// Ranges (start, size) served by `port`.
#[derive(Clone)]
struct MessageRanges {
    ranges: Vec<(u64, u64)>,
    port: Arc<dyn DmaByMessage>,
}

#[derive(Clone, Default)]
pub struct DeviceMemory {
    memory: Option<Arc<GuestMemoryMmap>>,
    by_message: Option<MessageRanges>,
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
            by_message: None,
        })
    }

    /// Adds `ranges` (start, size), reached through `port`. An access must
    /// lie whole in mapped RAM or whole in one of these ranges.
    pub fn with_message_ranges(
        mut self,
        ranges: Vec<(u64, u64)>,
        port: Arc<dyn DmaByMessage>,
    ) -> Self {
        self.by_message = (!ranges.is_empty()).then_some(MessageRanges { ranges, port });
        self
    }

    /// The port whose ranges hold `addr..addr+len` whole.
    fn port_for(&self, addr: u64, len: usize) -> Option<&dyn DmaByMessage> {
        let m = self.by_message.as_ref()?;
        let end = addr.checked_add(len as u64)?;
        m.ranges
            .iter()
            .any(|&(start, size)| start <= addr && end <= start.saturating_add(size))
            .then_some(&*m.port)
    }

    /// Reads guest RAM; fails without touching anything if any byte is outside.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len();
        if let Some(mem) = &self.memory
            && mem.read_slice(buf, GuestAddress(addr)).is_ok()
        {
            return Ok(());
        }
        let port = self
            .port_for(addr, len)
            .ok_or(MemoryError::OutOfRange { addr, len })?;
        port.read(addr, buf)
            .map_err(|why| MemoryError::ByMessage { addr, len, why })
    }

    pub fn write(&self, addr: u64, buf: &[u8]) -> Result<(), MemoryError> {
        let len = buf.len();
        if let Some(mem) = &self.memory
            && mem.write_slice(buf, GuestAddress(addr)).is_ok()
        {
            return Ok(());
        }
        let port = self
            .port_for(addr, len)
            .ok_or(MemoryError::OutOfRange { addr, len })?;
        port.write(addr, buf)
            .map_err(|why| MemoryError::ByMessage { addr, len, why })
    }
}

impl DeviceMemory {
    /// Whether `addr..addr+len` lies whole in RAM this process maps, where
    /// [`Self::write_to_file`] can reach it without a copy of ours.
    pub fn is_mapped(&self, addr: u64, len: usize) -> bool {
        self.memory
            .as_ref()
            .is_some_and(|mem| mem.check_range(GuestAddress(addr), len))
    }

    /// The guest RAM at `spans` (address, length), in order, copied into
    /// one buffer.
    pub fn gather(&self, spans: &[(u64, usize)]) -> Result<Vec<u8>, MemoryError> {
        let mut out = vec![0u8; spans.iter().map(|&(_, len)| len).sum()];
        let mut at = 0;
        for &(addr, len) in spans {
            self.read(addr, &mut out[at..at + len])?;
            at += len;
        }
        Ok(out)
    }

    /// Writes the guest RAM at `spans` (address, length), in order, to
    /// `file` at `offset`: the kernel copies straight out of the mapping,
    /// where a bounce buffer cost a copy of every byte written. Every span
    /// must be mapped ([`Self::is_mapped`]).
    pub fn write_to_file(
        &self,
        spans: &[(u64, usize)],
        file: &File,
        offset: u64,
    ) -> io::Result<()> {
        self.file_io(spans, file, offset, Direction::ToFile)
    }

    /// Reads `len` bytes of `file` at `offset` into guest RAM at `addr`,
    /// which must be mapped: the kernel copies straight into the guest's
    /// pages. A file that ends first is an UnexpectedEof error.
    pub fn read_from_file(
        &self,
        file: &File,
        offset: u64,
        addr: u64,
        len: usize,
    ) -> io::Result<()> {
        self.file_io(&[(addr, len)], file, offset, Direction::FromFile)
    }

    fn file_io(
        &self,
        spans: &[(u64, usize)],
        file: &File,
        offset: u64,
        direction: Direction,
    ) -> io::Result<()> {
        let outside = |addr, len| io::Error::other(MemoryError::OutOfRange { addr, len });
        let mem = self.memory.as_ref().ok_or_else(|| outside(0, 0))?;
        let mut slices = Vec::with_capacity(spans.len());
        for &(addr, len) in spans {
            for slice in mem.get_slices(GuestAddress(addr), len) {
                slices.push(slice.map_err(|_| outside(addr, len))?);
            }
        }
        // The guards keep each pointer valid until the transfer is done.
        let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard_mut()).collect();
        let mut iov: Vec<libc::iovec> = guards
            .iter()
            .map(|g| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: g.len(),
            })
            .collect();
        let mut at = offset;
        let mut first = 0;
        while first < iov.len() {
            let batch = &iov[first..iov.len().min(first + MAX_IOVECS)];
            let pos = libc::off_t::try_from(at)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            let (fd, count) = (file.as_raw_fd(), batch.len() as libc::c_int);
            // SAFETY: every iovec points into guest RAM mapped by `mem`,
            // which `self` keeps alive, for its length (vm-memory checked
            // the spans against the regions); nothing of ours holds a
            // reference into those bytes while the kernel copies.
            let n = unsafe {
                match direction {
                    Direction::ToFile => libc::pwritev(fd, batch.as_ptr(), count, pos),
                    Direction::FromFile => libc::preadv(fd, batch.as_ptr(), count, pos),
                }
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(match direction {
                    Direction::ToFile => io::ErrorKind::WriteZero.into(),
                    Direction::FromFile => io::ErrorKind::UnexpectedEof.into(),
                });
            }
            at += n as u64;
            // Step past what was done: whole iovecs, then into one.
            let mut left = n as usize;
            while left > 0 && left >= iov[first].iov_len {
                left -= iov[first].iov_len;
                first += 1;
            }
            if left > 0 {
                let v = &mut iov[first];
                v.iov_base = v.iov_base.cast::<u8>().wrapping_add(left).cast();
                v.iov_len -= left;
            }
        }
        drop(guards);
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Direction {
    ToFile,
    FromFile,
}

/// Iovecs per `pwritev` or `preadv`: Linux's IOV_MAX.
const MAX_IOVECS: usize = 1024;

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
