//! qcow2 images, through the `imago` crate (by a QEMU block-layer
//! maintainer; the same format code QEMU users' images were made for):
//! reads, writes, zeroing and discard map to the format's own operations,
//! flushes write its metadata back and sync the file.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use imago::file::File as ImagoFile;
use imago::format::gate::ImplicitOpenGate;
use imago::qcow2::Qcow2;
use imago::{
    FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate, Storage, StorageOpenOptions,
};

/// The first four bytes of every qcow2 image.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

pub struct Qcow2Image {
    /// Reads and writes share the image; a discard takes it alone, since
    /// it may free clusters that a concurrent access has looked up.
    access: RwLock<FormatAccess<ImagoFile>>,
}

/// Opens what an image refers to (a backing image, an external data
/// file) only when the user named the format: a raw image whose guest
/// wrote a qcow2 header must not get to name host files to open.
struct Dependencies {
    allowed: bool,
}

impl Dependencies {
    fn check(&mut self, path: Option<PathBuf>) -> io::Result<()> {
        let path = path.unwrap_or_default();
        if !self.allowed {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the image refers to {}; give format=qcow2 to open it",
                    path.display()
                ),
            ));
        }
        log::info!("opening {}, which the image refers to", path.display());
        Ok(())
    }
}

impl ImplicitOpenGate<ImagoFile> for Dependencies {
    fn open_format<F: FormatDriverBuilder<ImagoFile>>(
        &mut self,
        builder: F,
    ) -> io::Result<FormatAccess<ImagoFile>> {
        self.check(builder.get_image_path())?;
        PermissiveImplicitOpenGate::default().open_format(builder)
    }

    fn open_storage(&mut self, options: StorageOpenOptions) -> io::Result<ImagoFile> {
        self.check(options.get_filename().map(Path::to_path_buf))?;
        PermissiveImplicitOpenGate::default().open_storage(options)
    }
}

impl Qcow2Image {
    /// Opens `path`; `named` says the user asked for qcow2 by name, which
    /// lets the image open its backing file.
    pub fn open(path: &Path, readonly: bool, named: bool) -> io::Result<Self> {
        // Opened here, not by the builder, so that the gate below only
        // sees what the image itself names.
        let storage = ImagoFile::open(StorageOpenOptions::new().filename(path).write(!readonly))?;
        let qcow2 = Qcow2::<ImagoFile>::builder(storage)
            .write(!readonly)
            .open(Dependencies { allowed: named })?;
        Ok(Qcow2Image {
            access: RwLock::new(FormatAccess::new(qcow2)),
        })
    }

    pub fn size(&self) -> u64 {
        self.read_lock().size()
    }

    fn read_lock(&self) -> std::sync::RwLockReadGuard<'_, FormatAccess<ImagoFile>> {
        // A panic elsewhere cannot leave the image half-changed in a way a
        // later access could make worse: imago keeps its own state sound.
        self.access.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_lock().read(buf, offset)
    }

    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.read_lock().write(buf, offset)
    }

    /// Metadata back into the file, then the file onto the disk.
    pub fn flush(&self) -> io::Result<()> {
        let access = self.read_lock();
        access.flush()?;
        access.sync()
    }

    /// Metadata back into the file, without syncing it.
    pub fn write_back(&self) -> io::Result<()> {
        self.read_lock().flush()
    }

    /// Frees the clusters the range covers whole and zeroes the rest.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.access
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .discard_to_zero(offset, len)
    }

    /// Zero clusters where the range covers them whole: nothing written.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.read_lock().write_zeroes(offset, len)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use imago::FormatCreateBuilder;

    pub(crate) fn temp_path(tag: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        std::env::temp_dir().join(format!(
            "vmm-qcow2-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ))
    }

    /// A new qcow2 image of `size` bytes made by imago, optionally over a
    /// raw backing file.
    pub(crate) fn make_qcow2(size: u64, backing: Option<&Path>) -> PathBuf {
        let path = temp_path("img");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let storage = ImagoFile::try_from(file).unwrap();
        let mut builder = Qcow2::<ImagoFile>::create_builder(storage).size(size);
        if let Some(b) = backing {
            builder = builder.backing(b.display().to_string(), "raw".into());
        }
        builder.create().unwrap();
        path
    }
}
