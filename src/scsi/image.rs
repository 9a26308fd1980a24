//! The image behind a disk: raw or qcow2, block reads and writes, flushes,
//! a block pattern repeated over a range (WRITE SAME), and deallocation
//! that reads back as zeros (UNMAP).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::qcow2::{self, Qcow2Image};
use crate::device_model::memory::DeviceMemory;

pub const BLOCK_SIZE: u32 = 512;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot open disk image {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk image {path} is {size} bytes, not a whole number of {BLOCK_SIZE}-byte blocks")]
    Unaligned { path: PathBuf, size: u64 },
    #[error("cannot open qcow2 image {path}: {source}")]
    Qcow2 {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// WRITE SAME writes at most this much per system call.
const FILL_CHUNK: usize = 1 << 20;

/// What an image file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The disk's blocks, byte for byte.
    Raw,
    /// QEMU's copy-on-write format (version 2 or 3), with backing files.
    Qcow2,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        })
    }
}

pub struct Image {
    kind: Kind,
    /// Size of the disk the image holds, in bytes.
    size: u64,
}

enum Kind {
    Raw(RawFile),
    Qcow2(Qcow2Image),
}

struct RawFile {
    file: File,
    /// Set once the file system refused to punch a hole: discards write
    /// zeros from then on, and the log says so once.
    no_holes: AtomicBool,
    /// The file is on tmpfs or ramfs: no access waits for a device.
    in_memory: bool,
    /// Set once the file system refused RWF_NOWAIT: no more asking
    /// whether a read is cached.
    no_cached_reads: AtomicBool,
}

impl Image {
    /// Opens `path` as `format`, or as what its first bytes say when no
    /// format is given. A qcow2 image only opens the files it refers to
    /// (backing image, data file) when its format was given by name.
    pub fn open(path: &Path, format: Option<Format>, readonly: bool) -> Result<Image, ImageError> {
        let open_err = |source| ImageError::Open {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(path)
            .map_err(open_err)?;
        let detected = || {
            let mut magic = [0u8; 4];
            match file.read_exact_at(&mut magic, 0) {
                Ok(()) if magic == qcow2::MAGIC => Ok(Format::Qcow2),
                Ok(()) => Ok(Format::Raw),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Format::Raw),
                Err(e) => Err(open_err(e)),
            }
        };
        let image = match format.map_or_else(detected, Ok)? {
            Format::Raw => {
                let size = file.metadata().map_err(open_err)?.len();
                Image::raw(file, size)
            }
            Format::Qcow2 => {
                drop(file);
                let q = Qcow2Image::open(path, readonly, format.is_some()).map_err(|source| {
                    ImageError::Qcow2 {
                        path: path.to_owned(),
                        source,
                    }
                })?;
                Image {
                    size: q.size(),
                    kind: Kind::Qcow2(q),
                }
            }
        };
        if image.size % u64::from(BLOCK_SIZE) != 0 {
            return Err(ImageError::Unaligned {
                path: path.to_owned(),
                size: image.size,
            });
        }
        Ok(image)
    }

    /// A raw image on an open file, `size` bytes long.
    pub fn raw(file: File, size: u64) -> Self {
        let in_memory = crate::sys::in_memory_file_system(&file).unwrap_or(false);
        Image {
            kind: Kind::Raw(RawFile {
                file,
                no_holes: AtomicBool::new(false),
                in_memory,
                no_cached_reads: AtomicBool::new(false),
            }),
            size,
        }
    }

    /// Whether no read or write of this image waits for a device: a raw
    /// image on tmpfs or ramfs. (A qcow2 image on one would qualify too,
    /// but its metadata cache takes locks a worker may hold for long.)
    pub fn in_memory(&self) -> bool {
        matches!(&self.kind, Kind::Raw(r) if r.in_memory)
    }

    /// Reads `len` bytes at `offset` if the page cache holds all of them,
    /// without waiting for the device; None when it does not (or the file
    /// system cannot tell, or the read failed): then read them with
    /// `read`, which also reports any error.
    pub fn read_cached(&self, len: usize, offset: u64) -> Option<Vec<u8>> {
        let Kind::Raw(raw) = &self.kind else {
            return None;
        };
        if raw.no_cached_reads.load(Ordering::Relaxed) {
            return None;
        }
        match crate::sys::read_new(&raw.file, len, offset, true) {
            Ok(buf) => (buf.len() == len).then_some(buf),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
                ) =>
            {
                if !raw.no_cached_reads.swap(true, Ordering::Relaxed) {
                    log::debug!(
                        "the disk image's file system cannot read without waiting ({e}): \
                         every read goes to a disk worker"
                    );
                }
                None
            }
            Err(_) => None,
        }
    }

    /// Reads `len` bytes at `offset` into a new buffer.
    pub fn read(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        match &self.kind {
            Kind::Raw(r) => {
                let buf = crate::sys::read_new(&r.file, len, offset, false)?;
                if buf.len() < len {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(buf)
            }
            Kind::Qcow2(q) => {
                let mut buf = vec![0u8; len];
                q.read_at(&mut buf, offset)?;
                Ok(buf)
            }
        }
    }

    pub fn format(&self) -> Format {
        match self.kind {
            Kind::Raw(_) => Format::Raw,
            Kind::Qcow2(_) => Format::Qcow2,
        }
    }

    /// Size of the disk in bytes (for qcow2, the virtual size).
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.kind {
            Kind::Raw(r) => r.file.read_exact_at(buf, offset),
            Kind::Qcow2(q) => q.read_at(buf, offset),
        }
    }

    /// Writes `buf` at `offset`. When it returns, the data and what the
    /// format needs to find it (qcow2 metadata) are in the file, not yet
    /// synced: the write survives the remote's death, as on a raw image,
    /// which is what lets `restart=on` lose no completed write.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_cached(buf, offset)?;
        self.write_back()
    }

    /// Reads `len` bytes at `offset` into guest RAM at `addr`: a raw image
    /// straight into the guest's pages, a qcow2 image through a copy.
    pub fn read_guest(
        &self,
        memory: &DeviceMemory,
        addr: u64,
        len: usize,
        offset: u64,
    ) -> io::Result<()> {
        match &self.kind {
            Kind::Raw(r) => memory.read_from_file(&r.file, offset, addr, len),
            Kind::Qcow2(_) => {
                let buf = self.read(len, offset)?;
                memory.write(addr, &buf).map_err(io::Error::other)
            }
        }
    }

    /// Writes guest RAM at `spans` (address, length) at `offset`, as
    /// `write_at` does: a raw image straight from the guest's pages, a
    /// qcow2 image through a copy (its clusters need not be contiguous).
    pub fn write_guest(
        &self,
        memory: &DeviceMemory,
        spans: &[(u64, usize)],
        offset: u64,
    ) -> io::Result<()> {
        match &self.kind {
            Kind::Raw(r) => memory.write_to_file(spans, &r.file, offset),
            Kind::Qcow2(_) => {
                let buf = memory.gather(spans).map_err(io::Error::other)?;
                self.write_at(&buf, offset)
            }
        }
    }

    fn write_cached(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match &self.kind {
            Kind::Raw(r) => r.file.write_all_at(buf, offset),
            Kind::Qcow2(q) => q.write_at(buf, offset),
        }
    }

    pub fn flush(&self) -> io::Result<()> {
        match &self.kind {
            Kind::Raw(r) => r.file.sync_data(),
            Kind::Qcow2(q) => q.flush(),
        }
    }

    /// What the format keeps in memory (qcow2 metadata) written into the
    /// file, not synced. Costs 20 us per allocating 4 KiB write on tmpfs
    /// against 4 us without (8192 random writes to a new image, this
    /// host); rewrites of allocated clusters leave nothing to write.
    fn write_back(&self) -> io::Result<()> {
        match &self.kind {
            Kind::Raw(_) => Ok(()),
            Kind::Qcow2(q) => q.write_back(),
        }
    }

    /// Gives `len` bytes at `offset` back to the host; they read as zeros
    /// afterwards. A raw image punches a hole, or writes zeros where its
    /// file system cannot; qcow2 frees whole clusters and zeroes the rest.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let raw = match &self.kind {
            Kind::Raw(r) => r,
            Kind::Qcow2(q) => {
                q.discard(offset, len)?;
                return self.write_back();
            }
        };
        if !raw.no_holes.load(Ordering::Relaxed) {
            match crate::sys::punch_hole(&raw.file, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if cannot_punch(&e) => {
                    if !raw.no_holes.swap(true, Ordering::Relaxed) {
                        log::info!(
                            "the disk image's file system cannot punch holes ({e}): \
                             discarded blocks are written with zeros and keep their space"
                        );
                    }
                }
                Err(e) => return Err(e),
            }
        }
        self.fill(offset, len, &[0u8; BLOCK_SIZE as usize])
    }

    /// Writes `pattern` (one block) over and over across `len` bytes at
    /// `offset`; `len` is a multiple of the pattern's length. Zeros on
    /// qcow2 become zero clusters where they cover whole ones.
    pub fn fill(&self, offset: u64, len: u64, pattern: &[u8]) -> io::Result<()> {
        debug_assert!(!pattern.is_empty() && len.is_multiple_of(pattern.len() as u64));
        if let Kind::Qcow2(q) = &self.kind
            && pattern.iter().all(|&b| b == 0)
        {
            q.write_zeroes(offset, len)?;
            return self.write_back();
        }
        let per_chunk = (FILL_CHUNK / pattern.len()).max(1);
        let chunk = pattern.repeat(per_chunk.min((len / pattern.len() as u64) as usize));
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(chunk.len() as u64) as usize;
            self.write_cached(&chunk[..n], offset + done)?;
            done += n as u64;
        }
        self.write_back()
    }
}

/// Errors that say the file (system) has no hole punching at all, as
/// opposed to a failure of this one request.
fn cannot_punch(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::ENODEV)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_image(len: u64) -> (Image, std::path::PathBuf) {
        let (file, path) = temp_file(len);
        (Image::raw(file, len), path)
    }

    fn temp_file(len: u64) -> (File, std::path::PathBuf) {
        use std::sync::atomic::AtomicU64;
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "vmm-image-{}-{}.img",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(len).unwrap();
        (file, path)
    }

    fn next_hole(path: &Path, offset: u64) -> u64 {
        crate::sys::next_hole(&File::open(path).unwrap(), offset).unwrap()
    }

    fn no_holes(image: &Image) -> bool {
        match &image.kind {
            Kind::Raw(r) => r.no_holes.load(Ordering::Relaxed),
            Kind::Qcow2(_) => false,
        }
    }

    #[test]
    fn a_discarded_range_becomes_a_hole_that_reads_as_zeros() {
        let (image, path) = temp_image(1 << 20);
        image.fill(0, 1 << 20, &[0xa5; 512]).unwrap();
        assert_eq!(next_hole(&path, 0), 1 << 20, "fully written: no hole");
        image.discard(256 << 10, 128 << 10).unwrap();
        if no_holes(&image) {
            eprintln!("{} cannot punch holes: zeros were written", path.display());
        } else {
            assert_eq!(next_hole(&path, 0), 256 << 10, "the hole starts there");
        }
        let mut back = vec![0xffu8; 1 << 20];
        image.read_at(&mut back, 0).unwrap();
        assert!(back[..256 << 10].iter().all(|&b| b == 0xa5));
        assert!(back[256 << 10..384 << 10].iter().all(|&b| b == 0));
        assert!(back[384 << 10..].iter().all(|&b| b == 0xa5));
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            1 << 20,
            "size kept"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn an_image_in_memory_is_known_and_a_cached_read_returns_the_data() {
        let memfd = crate::sys::memfd(c"vmm-image-test", false).unwrap();
        assert!(Image::raw(memfd, 4096).in_memory());
        let (image, path) = temp_image(8192);
        image.write_at(&[0x3c; 4096], 4096).unwrap();
        // Where the file system answers RWF_NOWAIT the page cache holds
        // what was just written; where it cannot, the read is refused,
        // never half done.
        if let Some(buf) = image.read_cached(4096, 4096) {
            assert_eq!(buf, [0x3c; 4096]);
        }
        assert!(
            image.read_cached(512, 8192).is_none(),
            "nothing there to read"
        );
        assert_eq!(image.read(4096, 4096).unwrap(), [0x3c; 4096]);
        assert_eq!(
            image.read(1024, 7680).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn fill_repeats_the_block_across_chunks() {
        let (image, path) = temp_image(4 << 20);
        let block: Vec<u8> = (0..512u32).map(|i| i as u8).collect();
        // More than one chunk, not a whole number of them.
        image.fill(512, (3 << 20) + 1024, &block).unwrap();
        let raw = std::fs::read(&path).unwrap();
        assert!(raw[..512].iter().all(|&b| b == 0));
        for b in raw[512..512 + (3 << 20) + 1024].chunks(512) {
            assert_eq!(b, &block[..]);
        }
        assert!(raw[512 + (3 << 20) + 1024..].iter().all(|&b| b == 0));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_file_that_cannot_punch_gets_zeros_written() {
        // /dev/zero takes writes and refuses fallocate.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/zero")
            .unwrap();
        let image = Image::raw(file, 1 << 20);
        image.discard(0, 4096).unwrap();
        assert!(no_holes(&image));
    }
}
