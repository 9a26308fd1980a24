//! Decoding a control message's payload: its size and fd count checked
//! against what the command needs, fields read at fixed offsets, and the
//! error that says which check failed.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unknown command {0}")]
    UnknownCommand(i32),
    #[error("command {cmd} with a {size}-byte payload (expected {expected})")]
    BadSize {
        cmd: i32,
        size: u64,
        expected: &'static str,
    },
    #[error("command {cmd} with {got} fds (expected {expected})")]
    BadFds {
        cmd: i32,
        got: usize,
        expected: &'static str,
    },
    #[error("access size {0} is not 1, 2, 4 or 8")]
    BadAccessSize(u32),
    #[error("config access at {addr:#x} of {len} bytes is outside the 256-byte config space")]
    BadConfigAccess { addr: u32, len: i32 },
    #[error("RAM region {index} is empty or wraps around")]
    BadRegion { index: usize },
    #[error(
        "ioregion sub-region {index} is malformed (empty, wrapping, unknown type or flags, or a bad fd index)"
    )]
    BadSubRegion { index: usize },
    #[error(
        "mirrored register {index} is malformed (size not 1, 2, 4 or 8, wrapping, outside the page, \
         or over the posted-write count)"
    )]
    BadMirroredRegister { index: usize },
    #[error("register mirror flags {0:#x}: unknown, or a posted-write count without a page")]
    BadMirrorFlags(u32),
}

/// A payload being decoded: its bytes, how many fds came with it, and the
/// command it is for (named in every error).
pub struct Payload<'a> {
    cmd: i32,
    bytes: &'a [u8],
    fds: usize,
}

impl<'a> Payload<'a> {
    pub fn new(cmd: i32, bytes: &'a [u8], fds: usize) -> Self {
        Payload { cmd, bytes, fds }
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Exactly `expected` bytes (`name` says so in the error).
    pub fn want_size(&self, expected: usize, name: &'static str) -> Result<(), DecodeError> {
        if self.bytes.len() == expected {
            return Ok(());
        }
        Err(DecodeError::BadSize {
            cmd: self.cmd,
            size: self.size(),
            expected: name,
        })
    }

    /// Exactly `n` fds.
    pub fn want_fds(&self, n: usize, name: &'static str) -> Result<(), DecodeError> {
        if self.fds == n {
            return Ok(());
        }
        Err(DecodeError::BadFds {
            cmd: self.cmd,
            got: self.fds,
            expected: name,
        })
    }

    /// A count at offset 0, then `count` records of `stride` bytes after an
    /// 8-byte head, at most `max` of them: the count.
    pub fn counted(
        &self,
        max: usize,
        stride: usize,
        name: &'static str,
    ) -> Result<usize, DecodeError> {
        let count = if self.bytes.len() >= 8 {
            self.u32_at(0) as usize
        } else {
            usize::MAX
        };
        if count > max || self.bytes.len() != 8 + count * stride {
            return Err(DecodeError::BadSize {
                cmd: self.cmd,
                size: self.size(),
                expected: name,
            });
        }
        Ok(count)
    }

    /// The caller has checked the size.
    pub fn u32_at(&self, o: usize) -> u32 {
        u32::from_ne_bytes(self.bytes[o..o + 4].try_into().expect("4 bytes"))
    }

    pub fn u64_at(&self, o: usize) -> u64 {
        u64::from_ne_bytes(self.bytes[o..o + 8].try_into().expect("8 bytes"))
    }
}
