//! Our REGISTER_MIRROR extension command ([`Command::RegisterMirror`]),
//! sent only to a server whose VERSION reply offered it: which registers
//! of a BAR the server keeps in a shared page, so that the client answers
//! the guest's reads of them without a round trip. The same page and the
//! same register records as mpqemu's CMD_REGISTER_MIRROR.
//!
//! Request (8 bytes, little-endian): region index u32 (a BAR, 0 to 5),
//! flags u32 (0). Reply: count u32, flags u32 (bit 0: the page's last 8
//! bytes count the posted writes applied; bit 1: write effects follow;
//! bit 2: the server reads the client's count of posted writes sent in
//! the 8 bytes before them), then per register offset in
//! the region u64, size u32, offset in the page u32; with the page's memfd
//! as the one fd when count is not 0. See `docs/vfio-user.md`.

use std::fs::File;

use super::WireError;
use super::header::Command;
use crate::protocol::decode::{DecodeError, Payload};
use crate::protocol::extensions::{self, MirrorLayout};

const QUERY_SIZE: usize = 8;

pub fn encode_query(index: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(QUERY_SIZE);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out
}

/// The region a request asks about.
pub fn decode_query(bytes: &[u8]) -> Result<u32, WireError> {
    if bytes.len() != QUERY_SIZE {
        return Err(WireError::PayloadSize {
            command: Command::RegisterMirror,
            size: bytes.len(),
            expected: "8 bytes",
        });
    }
    if bytes[4..] != [0; 4] {
        return Err(WireError::Field {
            command: Command::RegisterMirror,
            what: "flags must be 0",
        });
    }
    Ok(u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")))
}

/// The reply's registers, each checked as mpqemu's are, and the page.
pub fn decode_reply(
    bytes: &[u8],
    mut fds: Vec<File>,
) -> Result<Option<(MirrorLayout, File)>, DecodeError> {
    let payload = Payload::new(Command::RegisterMirror as i32, bytes, fds.len());
    let layout = extensions::decode_mirrored(&payload)?;
    Ok(fds.pop().map(|page| (layout, page)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::extensions::MirroredRegister;

    #[test]
    fn a_query_names_its_region_and_nothing_else() {
        assert_eq!(decode_query(&encode_query(1)), Ok(1));
        assert!(decode_query(&[1, 0, 0, 0]).is_err(), "short");
        assert!(decode_query(&[1, 0, 0, 0, 1, 0, 0, 0]).is_err(), "flags");
    }

    #[test]
    fn a_reply_is_checked_like_mpqemus() {
        let layout = MirrorLayout {
            registers: vec![MirroredRegister::new(0x14, 1, 0)],
            counts_posted_writes: true,
            reads_sent_count: true,
            posted_ring: true,
        };
        let bytes = extensions::encode_mirrored(&layout);
        let page = File::open("/dev/null").unwrap();
        let (back, _) = decode_reply(&bytes, vec![page]).unwrap().unwrap();
        assert_eq!(back, layout);
        assert!(
            decode_reply(&bytes, vec![]).is_err(),
            "registers need the page"
        );
        let none = extensions::encode_mirrored(&MirrorLayout::default());
        assert!(decode_reply(&none, vec![]).unwrap().is_none());
        let mut bad = bytes.clone();
        bad[8 + 8] = 3; // size 3
        let page = File::open("/dev/null").unwrap();
        assert!(decode_reply(&bad, vec![page]).is_err());
    }
}
