//! Sense data: what went wrong, in the fixed format `sd` reads back with
//! REQUEST SENSE after a CHECK CONDITION.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

pub const KEY_NO_SENSE: u8 = 0x00;
pub const KEY_MEDIUM_ERROR: u8 = 0x03;
pub const KEY_HARDWARE_ERROR: u8 = 0x04;
pub const KEY_ILLEGAL_REQUEST: u8 = 0x05;
pub const KEY_DATA_PROTECT: u8 = 0x07;
pub const KEY_ABORTED_COMMAND: u8 = 0x0b;
pub const KEY_MISCOMPARE: u8 = 0x0e;

impl Sense {
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        Sense { key, asc, ascq }
    }

    pub const NO_SENSE: Sense = Sense::new(KEY_NO_SENSE, 0, 0);
    pub const INVALID_OPCODE: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x20, 0);
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x21, 0);
    pub const INVALID_FIELD: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x24, 0);
    pub const PARAMETER_LIST_LENGTH_ERROR: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x1a, 0);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x26, 0);
    pub const LUN_NOT_SUPPORTED: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x25, 0);
    pub const SAVING_NOT_SUPPORTED: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x39, 0);
    pub const WRITE_PROTECTED: Sense = Sense::new(KEY_DATA_PROTECT, 0x27, 0);
    pub const READ_ERROR: Sense = Sense::new(KEY_MEDIUM_ERROR, 0x11, 0);
    pub const WRITE_ERROR: Sense = Sense::new(KEY_MEDIUM_ERROR, 0x0c, 0);
    /// No space left to write (ENOSPC on the image's file system).
    pub const SPACE_EXHAUSTED: Sense = Sense::new(KEY_DATA_PROTECT, 0x27, 0x07);
    pub const MISCOMPARE: Sense = Sense::new(KEY_MISCOMPARE, 0x1d, 0);
    pub const INTERNAL_FAILURE: Sense = Sense::new(KEY_HARDWARE_ERROR, 0x44, 0);
    pub const ABORTED: Sense = Sense::new(KEY_ABORTED_COMMAND, 0, 0);

    /// Fixed-format sense data (18 bytes), current error.
    pub fn fixed(&self) -> [u8; 18] {
        let mut d = [0u8; 18];
        d[0] = 0x70;
        d[2] = self.key & 0x0f;
        d[7] = 10; // additional length
        d[12] = self.asc;
        d[13] = self.ascq;
        d
    }

    /// Sense for a failed read or write of the backing file.
    pub fn from_io_error(e: &std::io::Error, write: bool) -> Sense {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Sense::SPACE_EXHAUSTED,
            Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM) => Sense::WRITE_PROTECTED,
            _ if write => Sense::WRITE_ERROR,
            _ => Sense::READ_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_layout() {
        let d = Sense::LBA_OUT_OF_RANGE.fixed();
        assert_eq!(d[0], 0x70);
        assert_eq!(d[2], KEY_ILLEGAL_REQUEST);
        assert_eq!(d[7], 10);
        assert_eq!((d[12], d[13]), (0x21, 0));
    }

    #[test]
    fn io_errors_map_to_sense() {
        let e = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(Sense::from_io_error(&e, true), Sense::SPACE_EXHAUSTED);
        let e = std::io::Error::from_raw_os_error(libc::EIO);
        assert_eq!(Sense::from_io_error(&e, false), Sense::READ_ERROR);
        assert_eq!(Sense::from_io_error(&e, true), Sense::WRITE_ERROR);
    }
}
