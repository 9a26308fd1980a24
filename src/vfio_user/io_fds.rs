//! DEVICE_GET_REGION_IO_FDS: which ranges of a region the server serves
//! over file descriptors of its own, so that KVM (or the client's vCPU
//! threads) reach it without a message on the main socket. Sub-region type
//! 1, ioregionfd, is the one this project implements on both sides; the
//! byte layout we read and write is in `docs/vfio-user-region-io-fds.md`.
//!
//! Request (16 bytes): argsz (the most reply the client takes), flags (0),
//! index (the region), count (0).
//!
//! Reply: the same four u32 (argsz now the size of the whole reply, count
//! the number of entries), then `count` entries of 40 bytes:
//!
//! | bytes  | field                                                        |
//! | ------ | ------------------------------------------------------------ |
//! | 0..8   | offset in the region                                         |
//! | 8..16  | size                                                         |
//! | 16..20 | fd_index: which of the reply's fds                           |
//! | 20..24 | type: 0 ioeventfd, 1 ioregionfd                              |
//! | 24..28 | flags: ioeventfd: KVM_IOEVENTFD_FLAG_*; ioregionfd: PIO (1), |
//! |        | POSTED_WRITES (2)                                           |
//! | 28..32 | padding, zero                                                |
//! | 32..40 | ioeventfd: datamatch; ioregionfd: user_data                  |
//!
//! The entries' stride is (argsz - 16) / count: the specification's text
//! divides by the wrong head size (32), and libvfio-user's ioeventfd
//! entries are 48 bytes (two shadow-memory fields after the 40 above). We
//! write 40-byte entries and read any stride from 40 to 64 bytes that
//! argsz gives exactly, using the first 40 bytes of each.

use super::WireError;
use super::header::Command;

pub const IO_FD_IOEVENTFD: u32 = 0;
pub const IO_FD_IOREGIONFD: u32 = 1;
/// ioregionfd flags, as KVM_SET_IOREGION names them.
pub const IOREGION_PIO: u32 = 1 << 0;
pub const IOREGION_POSTED_WRITES: u32 = 1 << 1;

const HEAD: usize = 16;
pub const ENTRY_SIZE: usize = 40;
/// The widest entry we read (libvfio-user's is 48).
const MAX_STRIDE: usize = 64;
/// More sub-regions than this in one region is a lie, not a device.
pub const MAX_SUB_REGIONS: u32 = 64;

/// The request for region `index`, taking a reply of up to `argsz` bytes.
pub fn encode_query(index: u32, argsz: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD);
    for v in [argsz, 0, index, 0] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// The region a request asks about, and the largest reply it takes.
pub fn decode_query(bytes: &[u8]) -> Result<(u32, u32), WireError> {
    if bytes.len() != HEAD {
        return Err(WireError::PayloadSize {
            command: Command::DeviceGetRegionIoFds,
            size: bytes.len(),
            expected: "16 bytes",
        });
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    Ok((u32_at(8), u32_at(0)))
}

/// How guest accesses to one sub-region reach its fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoFdKind {
    /// Writes (matching `datamatch` with KVM_IOEVENTFD_FLAG_DATAMATCH)
    /// signal an eventfd.
    IoEventFd { datamatch: u64 },
    /// Every access is a 32-byte ioregionfd record on the fd, carrying
    /// `user_data`.
    IoRegionFd { user_data: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubRegion {
    pub offset: u64,
    pub size: u64,
    pub fd_index: u32,
    pub flags: u32,
    pub kind: IoFdKind,
}

/// A reply: `regions` of region `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionIoFds {
    pub index: u32,
    pub regions: Vec<SubRegion>,
}

/// The size of a reply with `count` entries, which its argsz says.
pub fn reply_size(count: usize) -> u32 {
    (HEAD + ENTRY_SIZE * count) as u32
}

/// A reply's fixed part alone: what a client that left too little room
/// gets, with the argsz it needs, to ask again.
pub fn encode_head(index: u32, count: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(reply_size(count) as usize);
    for v in [reply_size(count), 0, index, count as u32] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

impl RegionIoFds {
    /// The whole reply, which is what its argsz says; a client that took
    /// less (`max_reply`) gets the fixed part alone, with that argsz, and
    /// asks again.
    pub fn encode(&self, max_reply: u32) -> Vec<u8> {
        let mut out = encode_head(self.index, self.regions.len());
        if reply_size(self.regions.len()) > max_reply {
            return out;
        }
        for r in &self.regions {
            let (kind, value) = match r.kind {
                IoFdKind::IoEventFd { datamatch } => (IO_FD_IOEVENTFD, datamatch),
                IoFdKind::IoRegionFd { user_data } => (IO_FD_IOREGIONFD, user_data),
            };
            out.extend_from_slice(&r.offset.to_le_bytes());
            out.extend_from_slice(&r.size.to_le_bytes());
            for v in [r.fd_index, kind, r.flags, 0] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&value.to_le_bytes());
        }
        out
    }

    /// Reads a reply. `Truncated` means the reply says it needs more than
    /// the client allowed: ask again with its argsz.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let command = Command::DeviceGetRegionIoFds;
        let size_error = |expected| WireError::PayloadSize {
            command,
            size: bytes.len(),
            expected,
        };
        let field = |what| WireError::Field { command, what };
        if bytes.len() < HEAD {
            return Err(size_error("at least 16 bytes"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let (argsz, flags, index, count) = (u32_at(0), u32_at(4), u32_at(8), u32_at(12));
        if flags != 0 {
            return Err(field("flags are not zero"));
        }
        if count > MAX_SUB_REGIONS {
            return Err(field("too many sub-regions"));
        }
        if bytes.len() == HEAD && argsz as usize > HEAD {
            return Err(WireError::Truncated {
                command,
                needed: argsz,
            });
        }
        if argsz as usize != bytes.len() {
            return Err(size_error("as many bytes as argsz says"));
        }
        let regions = if count == 0 {
            Vec::new()
        } else {
            let body = bytes.len() - HEAD;
            let stride = body / count as usize;
            if !body.is_multiple_of(count as usize) || !(ENTRY_SIZE..=MAX_STRIDE).contains(&stride)
            {
                return Err(size_error("16 bytes and 40 to 64 per entry, as argsz says"));
            }
            (0..count as usize)
                .map(|i| {
                    let o = HEAD + i * stride;
                    let value = u64_at(o + 32);
                    let kind = match u32_at(o + 20) {
                        IO_FD_IOEVENTFD => IoFdKind::IoEventFd { datamatch: value },
                        IO_FD_IOREGIONFD => IoFdKind::IoRegionFd { user_data: value },
                        _ => return Err(field("a sub-region of unknown type")),
                    };
                    let region = SubRegion {
                        offset: u64_at(o),
                        size: u64_at(o + 8),
                        fd_index: u32_at(o + 16),
                        flags: u32_at(o + 24),
                        kind,
                    };
                    if region.offset.checked_add(region.size).is_none() {
                        return Err(field("a sub-region wraps around"));
                    }
                    Ok(region)
                })
                .collect::<Result<_, _>>()?
        };
        Ok(RegionIoFds { index, regions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsi_bar1() -> RegionIoFds {
        RegionIoFds {
            index: 1,
            regions: vec![SubRegion {
                offset: 0,
                size: 0x80,
                fd_index: 0,
                flags: IOREGION_POSTED_WRITES,
                kind: IoFdKind::IoRegionFd {
                    user_data: 0x1_0000_0000,
                },
            }],
        }
    }

    #[test]
    fn a_reply_byte_by_byte() {
        let bytes = lsi_bar1().encode(4096);
        let mut want = Vec::new();
        for v in [56u32, 0, 1, 1] {
            want.extend_from_slice(&v.to_le_bytes());
        }
        want.extend_from_slice(&0u64.to_le_bytes());
        want.extend_from_slice(&0x80u64.to_le_bytes());
        for v in [0u32, 1, 2, 0] {
            want.extend_from_slice(&v.to_le_bytes());
        }
        want.extend_from_slice(&0x1_0000_0000u64.to_le_bytes());
        assert_eq!(bytes, want);
        assert_eq!(RegionIoFds::decode(&bytes).unwrap(), lsi_bar1());
    }

    #[test]
    fn a_short_argsz_gets_the_head_and_the_size_needed() {
        let bytes = lsi_bar1().encode(16);
        assert_eq!(bytes.len(), 16);
        assert_eq!(
            RegionIoFds::decode(&bytes),
            Err(WireError::Truncated {
                command: Command::DeviceGetRegionIoFds,
                needed: 56
            })
        );
    }

    #[test]
    fn wider_entries_are_read_by_their_stride() {
        // libvfio-user's 48-byte ioeventfd entries: two of them.
        let mut bytes = Vec::new();
        for v in [16 + 2 * 48u32, 0, 0, 2] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        for i in 0..2u64 {
            bytes.extend_from_slice(&(i * 8).to_le_bytes());
            bytes.extend_from_slice(&4u64.to_le_bytes());
            for v in [i as u32, IO_FD_IOEVENTFD, 0, 0] {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            bytes.extend_from_slice(&(0xd0 + i).to_le_bytes());
            bytes.extend_from_slice(&[0xee; 8]);
        }
        let reply = RegionIoFds::decode(&bytes).unwrap();
        assert_eq!(reply.regions.len(), 2);
        assert_eq!(reply.regions[1].offset, 8);
        assert_eq!(
            reply.regions[1].kind,
            IoFdKind::IoEventFd { datamatch: 0xd1 }
        );
    }

    #[test]
    fn lying_replies_are_refused() {
        let good = lsi_bar1().encode(4096);
        let with = |o: usize, v: u32| {
            let mut b = good.clone();
            b[o..o + 4].copy_from_slice(&v.to_le_bytes());
            b
        };
        for (bytes, what) in [
            (with(0, 60), "argsz beyond the bytes"),
            (with(4, 1), "flags"),
            (with(12, 2), "count beyond the bytes"),
            (with(12, 1000), "too many entries"),
            (with(16 + 20, 7), "unknown type"),
            (good[..50].to_vec(), "cut short"),
        ] {
            assert!(RegionIoFds::decode(&bytes).is_err(), "{what}");
        }
        let mut wraps = good.clone();
        wraps[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(RegionIoFds::decode(&wraps).is_err(), "wrapping range");
    }

    #[test]
    fn the_query_names_the_region_and_the_reply_room() {
        let q = encode_query(2, 4096);
        assert_eq!(q.len(), 16);
        assert_eq!(decode_query(&q).unwrap(), (2, 4096));
        assert!(decode_query(&q[..12]).is_err());
    }
}
