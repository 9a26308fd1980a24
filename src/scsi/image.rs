//! The image file behind a disk: block reads and writes, flushes, a block
//! pattern repeated over a range (WRITE SAME), and deallocation that reads
//! back as zeros (UNMAP).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

/// WRITE SAME writes at most this much per system call.
const FILL_CHUNK: usize = 1 << 20;

pub struct Image {
    file: File,
    /// Set once the file system refused to punch a hole: discards write
    /// zeros from then on, and the log says so once.
    no_holes: AtomicBool,
}

impl Image {
    pub fn new(file: File) -> Self {
        Image {
            file,
            no_holes: AtomicBool::new(false),
        }
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Gives `len` bytes at `offset` back to the host's file system; they
    /// read as zeros afterwards. Where the file system cannot punch holes
    /// the range is written with zeros instead, so the promise holds.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.no_holes.load(Ordering::Relaxed) {
            match crate::sys::punch_hole(&self.file, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if cannot_punch(&e) => {
                    if !self.no_holes.swap(true, Ordering::Relaxed) {
                        log::info!(
                            "the disk image's file system cannot punch holes ({e}): \
                             discarded blocks are written with zeros and keep their space"
                        );
                    }
                }
                Err(e) => return Err(e),
            }
        }
        self.fill(offset, len, &[0u8; 512])
    }

    /// Writes `pattern` (one block) over and over across `len` bytes at
    /// `offset`; `len` is a multiple of the pattern's length.
    pub fn fill(&self, offset: u64, len: u64, pattern: &[u8]) -> io::Result<()> {
        debug_assert!(!pattern.is_empty() && len.is_multiple_of(pattern.len() as u64));
        let per_chunk = (FILL_CHUNK / pattern.len()).max(1);
        let chunk = pattern.repeat(per_chunk.min((len / pattern.len() as u64) as usize));
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(chunk.len() as u64) as usize;
            self.write_at(&chunk[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
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
        (Image::new(file), path)
    }

    fn next_hole(image: &Image, offset: u64) -> u64 {
        crate::sys::next_hole(&image.file, offset).unwrap()
    }

    #[test]
    fn a_discarded_range_becomes_a_hole_that_reads_as_zeros() {
        let (image, path) = temp_image(1 << 20);
        image.fill(0, 1 << 20, &[0xa5; 512]).unwrap();
        assert_eq!(next_hole(&image, 0), 1 << 20, "fully written: no hole");
        image.discard(256 << 10, 128 << 10).unwrap();
        if image.no_holes.load(Ordering::Relaxed) {
            eprintln!("{} cannot punch holes: zeros were written", path.display());
        } else {
            assert_eq!(next_hole(&image, 0), 256 << 10, "the hole starts there");
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
        let image = Image::new(file);
        image.discard(0, 4096).unwrap();
        assert!(image.no_holes.load(Ordering::Relaxed));
    }
}
