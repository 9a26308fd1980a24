//! A command's data each way. DATA IN: the bytes a command produced, or
//! the image blocks a READ reads straight into guest RAM, leaving in the
//! initiator's block moves. DATA OUT: what the initiator
//! sent, as bytes copied in or, while the command is still on the bus,
//! only where they lie in guest RAM; a WRITE then reaches the image with
//! one copy, the kernel's, out of the guest's pages, where a buffer of
//! ours cost a zero fill and a copy more of every byte written.

use std::borrow::Cow;
use std::ops::{Deref, Range};
use std::sync::Arc;

use super::{ScsiDisk, Sense};
use crate::device_model::memory::{DeviceMemory, MemoryError};

/// DATA IN waiting for the initiator's block moves. A 128 KiB read
/// leaves in 32 moves; each takes a [`DataIn`] view of the shared buffer,
/// so the bytes are copied once, into guest memory, rather than into a
/// buffer per move first (draining a VecDeque moved them one at a time:
/// 121 us against 14 us per 128 KiB on the development host). A READ of
/// an image in memory has no buffer: each move reads its part of the
/// image straight into guest RAM.
#[derive(Default)]
pub(super) struct Outgoing {
    source: Source,
    len: usize,
    sent: usize,
}

enum Source {
    Bytes(Arc<Vec<u8>>),
    /// Blocks of `disk`'s image from `offset` on.
    Image {
        disk: Arc<ScsiDisk>,
        offset: u64,
    },
}

impl Default for Source {
    fn default() -> Self {
        Source::Bytes(Arc::default())
    }
}

impl Outgoing {
    /// `len` bytes of `disk`'s image at `offset`, read as they leave.
    pub(super) fn image(disk: Arc<ScsiDisk>, offset: u64, len: usize) -> Self {
        Outgoing {
            source: Source::Image { disk, offset },
            len,
            sent: 0,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.sent >= self.len
    }

    pub(super) fn clear(&mut self) {
        *self = Outgoing::default();
    }

    /// Up to `max` of the bytes not sent yet.
    pub(super) fn take(&mut self, max: usize) -> Result<DataIn, Sense> {
        let n = max.min(self.len - self.sent);
        let out = match &self.source {
            Source::Bytes(bytes) => DataIn {
                bytes: bytes.clone(),
                range: self.sent..self.sent + n,
            },
            Source::Image { disk, offset } => DataIn {
                bytes: Arc::new(disk.read_bytes(n, offset + self.sent as u64)?),
                range: 0..n,
            },
        };
        self.sent += n;
        Ok(out)
    }

    /// Up to `max` of the bytes not sent yet, read from the image straight
    /// into guest RAM at `addr`, which this process must map. None when
    /// the bytes are in a buffer already: [`Self::take`] them.
    pub(super) fn send_to_guest(
        &mut self,
        memory: &DeviceMemory,
        addr: u64,
        max: usize,
    ) -> Option<Result<usize, Sense>> {
        let Source::Image { disk, offset } = &self.source else {
            return None;
        };
        let n = max.min(self.len - self.sent);
        let read = disk.read_into_guest(memory, addr, n, offset + self.sent as u64);
        self.sent += n;
        Some(read.map(|()| n))
    }
}

impl From<Vec<u8>> for Outgoing {
    fn from(bytes: Vec<u8>) -> Self {
        Outgoing {
            len: bytes.len(),
            source: Source::Bytes(Arc::new(bytes)),
            sent: 0,
        }
    }
}

/// Bytes of one DATA IN move: a view of the command's data, which the
/// target goes on owning, so it can be read while the bus is borrowed.
#[derive(Default)]
pub struct DataIn {
    bytes: Arc<Vec<u8>>,
    range: Range<usize>,
}

impl Deref for DataIn {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[self.range.clone()]
    }
}

/// What the initiator sent in DATA OUT.
#[derive(Default)]
pub struct DataOut {
    /// Bytes copied in; empty while `spans` has any.
    bytes: Vec<u8>,
    /// (address, length) in guest RAM, in order.
    spans: Vec<(u64, usize)>,
    /// The RAM `spans` are in.
    memory: Option<DeviceMemory>,
}

impl From<Vec<u8>> for DataOut {
    fn from(bytes: Vec<u8>) -> Self {
        DataOut {
            bytes,
            ..DataOut::default()
        }
    }
}

impl DataOut {
    pub fn len(&self) -> usize {
        self.bytes.len() + self.spans.iter().map(|&(_, len)| len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Room for `additional` copied bytes.
    pub fn reserve(&mut self, additional: usize) {
        self.bytes.reserve(additional);
    }

    /// Adds `len` bytes at `addr` in `memory`. Where this process maps
    /// them they stay in guest RAM, read when the command runs: so the
    /// command must run before the initiator hears it is done, and one
    /// that leaves the bus takes a copy first ([`Self::gather`]).
    pub fn push_guest(
        &mut self,
        memory: &DeviceMemory,
        addr: u64,
        len: usize,
    ) -> Result<(), MemoryError> {
        if self.bytes.is_empty() && memory.is_mapped(addr, len) {
            match self.spans.last_mut() {
                Some((last, last_len)) if *last + *last_len as u64 == addr => *last_len += len,
                _ => self.spans.push((addr, len)),
            }
            self.memory.get_or_insert_with(|| memory.clone());
        } else {
            self.gather()?;
            let start = self.bytes.len();
            self.bytes.resize(start + len, 0);
            if let Err(e) = memory.read(addr, &mut self.bytes[start..]) {
                self.bytes.truncate(start);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Adds bytes copied by the initiator.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> Result<(), MemoryError> {
        self.gather()?;
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    /// Copies what is still in guest RAM into bytes of ours.
    pub fn gather(&mut self) -> Result<(), MemoryError> {
        if let Cow::Owned(bytes) = self.bytes()? {
            self.bytes = bytes;
            self.spans.clear();
            self.memory = None;
        }
        Ok(())
    }

    /// All of it as bytes: borrowed when copied in, read from guest RAM
    /// when not.
    pub fn bytes(&self) -> Result<Cow<'_, [u8]>, MemoryError> {
        let Some(memory) = self.memory.as_ref().filter(|_| !self.spans.is_empty()) else {
            return Ok(Cow::Borrowed(&self.bytes));
        };
        memory.gather(&self.spans).map(Cow::Owned)
    }

    /// The first `len` bytes, where they are still in guest RAM: the RAM
    /// and the spans that hold them. None when they were copied in.
    pub fn in_guest(&self, len: usize) -> Option<(&DeviceMemory, Vec<(u64, usize)>)> {
        let memory = self.memory.as_ref().filter(|_| !self.spans.is_empty())?;
        let mut left = len;
        let mut spans = Vec::with_capacity(self.spans.len());
        for &(addr, n) in &self.spans {
            if left == 0 {
                break;
            }
            spans.push((addr, n.min(left)));
            left -= n.min(left);
        }
        Some((memory, spans))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;
    use vm_memory::{Bytes, GuestAddress};

    fn ram() -> (GuestRam, DeviceMemory) {
        let ram = GuestRam::new(64 << 20).unwrap();
        let regions = ram.sysmem_regions();
        let dev = DeviceMemory::map(&regions, vec![ram.memfd.try_clone().unwrap()]).unwrap();
        (ram, dev)
    }

    #[test]
    fn spans_stay_in_guest_ram_until_bytes_arrive_then_everything_is_copied_in_order() {
        let (ram, mem) = ram();
        ram.memory
            .write_slice(b"abcdefgh", GuestAddress(0x1000))
            .unwrap();
        let mut out = DataOut::default();
        out.push_guest(&mem, 0x1000, 2).unwrap();
        out.push_guest(&mem, 0x1002, 2).unwrap();
        out.push_guest(&mem, 0x1006, 2).unwrap();
        let (_, spans) = out.in_guest(5).unwrap();
        assert_eq!(spans, [(0x1000, 4), (0x1006, 1)], "adjacent spans merge");
        assert_eq!(&*out.bytes().unwrap(), b"abcdgh");
        out.push_bytes(b"XY").unwrap();
        assert!(out.in_guest(8).is_none(), "copied in once bytes came");
        out.push_guest(&mem, 0x1004, 2).unwrap();
        assert_eq!(&*out.bytes().unwrap(), b"abcdghXYef");
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn a_span_outside_ram_is_refused_and_adds_nothing() {
        let (_ram, mem) = ram();
        let mut out = DataOut::from(b"ab".to_vec());
        assert!(out.push_guest(&mem, 64 << 20, 4).is_err());
        assert_eq!(&*out.bytes().unwrap(), b"ab");
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn written_to_a_file_straight_from_guest_ram() {
        let (ram, mem) = ram();
        ram.memory
            .write_slice(&[7u8; 8192], GuestAddress(0x4000))
            .unwrap();
        ram.memory
            .write_slice(&[9u8; 4096], GuestAddress(0x9000))
            .unwrap();
        let mut out = DataOut::default();
        out.push_guest(&mem, 0x4000, 8192).unwrap();
        out.push_guest(&mem, 0x9000, 4096).unwrap();
        let file = crate::sys::memfd(c"image", false).unwrap();
        let (memory, spans) = out.in_guest(10_000).unwrap();
        memory.write_to_file(&spans, &file, 512).unwrap();
        let mut back = vec![0u8; 10_512];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut back, 0).unwrap();
        assert!(back[..512].iter().all(|&b| b == 0));
        assert!(back[512..512 + 8192].iter().all(|&b| b == 7));
        assert!(back[512 + 8192..].iter().all(|&b| b == 9));
        assert!(
            mem.write_to_file(&[(64 << 20, 1)], &file, 0).is_err(),
            "outside RAM"
        );
    }
}
