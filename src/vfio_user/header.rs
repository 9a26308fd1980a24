//! The 16-byte header in front of every vfio-user message, and the command
//! numbers it carries.
//!
//! | bytes | field                                                       |
//! | ----- | ----------------------------------------------------------- |
//! | 0..2  | message id, chosen by the sender, echoed in the reply        |
//! | 2..4  | command                                                     |
//! | 4..8  | message size, header included                               |
//! | 8..12 | flags: bits 0-3 type (0 command, 1 reply), bit 4 no reply,   |
//! |       | bit 5 error                                                 |
//! | 12..16| error: an errno, meaningful in a reply with the error bit    |
//!
//! The protocol says "host byte order"; we run on x86_64 only, so the
//! wire is little-endian and the code says so rather than relying on it.

use super::WireError;

pub const HEADER_SIZE: usize = 16;

const TYPE_MASK: u32 = 0xf;
const TYPE_COMMAND: u32 = 0;
const TYPE_REPLY: u32 = 1;
const FLAG_NO_REPLY: u32 = 1 << 4;
const FLAG_ERROR: u32 = 1 << 5;
const KNOWN_FLAGS: u32 = TYPE_MASK | FLAG_NO_REPLY | FLAG_ERROR;

/// The commands of the protocol, by number (14, DIRTY_PAGES, is gone from
/// the specification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Command {
    Version = 1,
    DmaMap = 2,
    DmaUnmap = 3,
    DeviceGetInfo = 4,
    DeviceGetRegionInfo = 5,
    DeviceGetRegionIoFds = 6,
    DeviceGetIrqInfo = 7,
    DeviceSetIrqs = 8,
    RegionRead = 9,
    RegionWrite = 10,
    DmaRead = 11,
    DmaWrite = 12,
    DeviceReset = 13,
    RegionWriteMulti = 15,
    DeviceFeature = 16,
    MigDataRead = 17,
    MigDataWrite = 18,
    /// Our extension, sent only to a server whose VERSION reply offered
    /// it (`vmm_register_mirror`): which registers of a BAR the server
    /// keeps in a shared page, with the page's memfd. Numbered far from
    /// the specification's own commands.
    RegisterMirror = 0x7f00,
}

impl Command {
    pub const ALL: [Command; 18] = [
        Command::Version,
        Command::DmaMap,
        Command::DmaUnmap,
        Command::DeviceGetInfo,
        Command::DeviceGetRegionInfo,
        Command::DeviceGetRegionIoFds,
        Command::DeviceGetIrqInfo,
        Command::DeviceSetIrqs,
        Command::RegionRead,
        Command::RegionWrite,
        Command::DmaRead,
        Command::DmaWrite,
        Command::DeviceReset,
        Command::RegionWriteMulti,
        Command::DeviceFeature,
        Command::MigDataRead,
        Command::MigDataWrite,
        Command::RegisterMirror,
    ];

    pub fn from_number(number: u16) -> Option<Command> {
        Command::ALL.into_iter().find(|c| *c as u16 == number)
    }
}

/// Whether a message asks or answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A command; `no_reply` says the sender wants no answer.
    Command { no_reply: bool },
    /// A reply; `error` holds the errno when the command failed (which may
    /// be 0: the error bit alone says it failed).
    Reply { error: Option<u32> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    /// The raw number: a command we do not know still gets an error reply
    /// with its id.
    pub command: u16,
    /// The whole message, header included.
    pub size: u32,
    pub kind: Kind,
}

impl Header {
    pub fn command(id: u16, command: Command, payload_len: usize, no_reply: bool) -> Header {
        Header {
            id,
            command: command as u16,
            size: (HEADER_SIZE + payload_len) as u32,
            kind: Kind::Command { no_reply },
        }
    }

    /// The reply to `request`, with `payload_len` bytes after the header.
    pub fn reply_to(request: &Header, payload_len: usize) -> Header {
        Header {
            id: request.id,
            command: request.command,
            size: (HEADER_SIZE + payload_len) as u32,
            kind: Kind::Reply { error: None },
        }
    }

    /// A failed reply to `request`: the header alone, as the protocol wants.
    pub fn error_reply_to(request: &Header, errno: u32) -> Header {
        Header {
            id: request.id,
            command: request.command,
            size: HEADER_SIZE as u32,
            kind: Kind::Reply { error: Some(errno) },
        }
    }

    pub fn payload_len(&self) -> usize {
        self.size as usize - HEADER_SIZE
    }

    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let (flags, error) = match self.kind {
            Kind::Command { no_reply } => {
                (TYPE_COMMAND | if no_reply { FLAG_NO_REPLY } else { 0 }, 0)
            }
            Kind::Reply { error: None } => (TYPE_REPLY, 0),
            Kind::Reply { error: Some(e) } => (TYPE_REPLY | FLAG_ERROR, e),
        };
        let mut out = [0u8; HEADER_SIZE];
        out[0..2].copy_from_slice(&self.id.to_le_bytes());
        out[2..4].copy_from_slice(&self.command.to_le_bytes());
        out[4..8].copy_from_slice(&self.size.to_le_bytes());
        out[8..12].copy_from_slice(&flags.to_le_bytes());
        out[12..16].copy_from_slice(&error.to_le_bytes());
        out
    }

    /// Checks what the header alone can tell: its size covers itself and
    /// stays under `max_size`, the type is known, no unknown flag is set,
    /// and only a reply carries the error bit.
    pub fn decode(bytes: &[u8; HEADER_SIZE], max_size: usize) -> Result<Header, WireError> {
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let (id, command, size, flags, error) =
            (u16_at(0), u16_at(2), u32_at(4), u32_at(8), u32_at(12));
        if (size as usize) < HEADER_SIZE || size as usize > max_size {
            return Err(WireError::MessageSize {
                size,
                max: max_size,
            });
        }
        if flags & !KNOWN_FLAGS != 0 {
            return Err(WireError::Flags(flags));
        }
        let kind = match flags & TYPE_MASK {
            TYPE_COMMAND if flags & FLAG_ERROR == 0 => Kind::Command {
                no_reply: flags & FLAG_NO_REPLY != 0,
            },
            TYPE_REPLY if flags & FLAG_NO_REPLY == 0 => Kind::Reply {
                error: (flags & FLAG_ERROR != 0).then_some(error),
            },
            _ => return Err(WireError::Flags(flags)),
        };
        Ok(Header {
            id,
            command,
            size,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_header_byte_by_byte() {
        let h = Header::command(0x1234, Command::RegionWrite, 20, true);
        assert_eq!(
            h.encode(),
            [0x34, 0x12, 10, 0, 36, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(Header::decode(&h.encode(), 4096).unwrap(), h);
    }

    #[test]
    fn an_error_reply_is_the_header_alone_with_its_errno() {
        let request = Header::command(7, Command::DmaMap, 32, false);
        let reply = Header::error_reply_to(&request, libc::EEXIST as u32);
        let bytes = reply.encode();
        assert_eq!(bytes[..8], [7, 0, 2, 0, 16, 0, 0, 0]);
        assert_eq!(
            bytes[8..12],
            [0x21, 0, 0, 0],
            "reply type with the error bit"
        );
        assert_eq!(u32::from_le_bytes(bytes[12..].try_into().unwrap()), 17);
        assert_eq!(Header::decode(&bytes, 16).unwrap(), reply);
    }

    #[test]
    fn lying_headers_are_refused() {
        let good = Header::command(1, Command::Version, 8, false).encode();
        let with = |o: usize, v: u32| {
            let mut b = good;
            b[o..o + 4].copy_from_slice(&v.to_le_bytes());
            b
        };
        for (bytes, what) in [
            (with(4, 15), "smaller than a header"),
            (with(4, 1 << 30), "larger than the limit"),
            (with(8, 2), "an unknown type"),
            (with(8, 1 << 6), "an unknown flag"),
            (with(8, FLAG_ERROR), "a command with the error bit"),
            (
                with(8, TYPE_REPLY | FLAG_NO_REPLY),
                "a reply that wants no reply",
            ),
        ] {
            assert!(Header::decode(&bytes, 1 << 20).is_err(), "{what}");
        }
    }

    #[test]
    fn every_command_number_round_trips() {
        for c in Command::ALL {
            assert_eq!(Command::from_number(c as u16), Some(c));
        }
        assert_eq!(Command::from_number(14), None);
        assert_eq!(Command::from_number(0), None);
    }
}
