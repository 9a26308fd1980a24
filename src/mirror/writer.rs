//! The remote's side of the register mirror: a page of shared memory where
//! the device keeps the current value of registers that are read often and
//! have no read side effect. The VMM maps the same page read-only and
//! answers the guest's reads of those registers from it, saving a round
//! trip to this process (see `mirror::reader`).
//!
//! The page is a memfd sealed against resizing, so the VMM can map it
//! without fearing a SIGBUS from a remote that truncates it later.

use std::fs::File;

use crate::mirror::page::MirrorPage;
use crate::protocol::extensions::MIRROR_PAGE_SIZE;
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("creating the mirror page: {0}")]
    Create(#[source] std::io::Error),
    #[error("sizing or sealing the mirror page: {0}")]
    Seal(#[source] std::io::Error),
    #[error("mapping the mirror page: {0}")]
    Map(#[source] std::io::Error),
}

/// What a device tells the VMM it mirrors in one BAR.
pub struct MirrorOffer {
    pub registers: Vec<crate::protocol::extensions::MirroredRegister>,
    /// The page's memfd.
    pub page: File,
}

/// One mirror page, writable here.
pub struct RegisterMirror {
    file: File,
    page: MirrorPage,
}

impl RegisterMirror {
    pub fn new() -> Result<Self, MirrorError> {
        let file = sys::memfd(c"vmm-register-mirror", true).map_err(MirrorError::Create)?;
        file.set_len(MIRROR_PAGE_SIZE).map_err(MirrorError::Seal)?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        sys::add_seals(&file, seals).map_err(MirrorError::Seal)?;
        let page = MirrorPage::map(&file, true).map_err(MirrorError::Map)?;
        Ok(RegisterMirror { file, page })
    }

    /// The memfd, to send to the VMM.
    pub fn file(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    /// Publishes one byte. Callers publish before anything that lets the
    /// guest see the change another way (a reply, an interrupt).
    pub fn set(&self, page_offset: usize, value: u8) {
        self.page.store(page_offset, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn the_page_is_sealed_and_shows_what_was_set() {
        let mirror = RegisterMirror::new().unwrap();
        mirror.set(0x14, 0x04);
        let file = mirror.file().unwrap();
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, 0x14).unwrap();
        assert_eq!(byte, [0x04]);
        assert!(file.set_len(0).is_err(), "it cannot shrink");
        let seals = sys::seals(&file).unwrap();
        assert_ne!(seals & libc::F_SEAL_SHRINK, 0);
    }
}
