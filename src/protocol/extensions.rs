//! Our extension commands to mpqemu, sent only to remotes of our own
//! dialect: which sub-ranges of a BAR the remote serves over ioregion fds
//! (64/65, after vfio-user's GET_REGION_IO_FDS), and which registers it
//! mirrors in a shared page (66/67). Their payloads, byte by byte.

use super::decode::{DecodeError, Payload};

/// Our extension, after vfio-user's GET_REGION_IO_FDS: which sub-ranges of
/// a BAR the remote serves over ioregionfd, with the remote's fds for one
/// vCPU. Only sent to remotes of our own dialect.
pub const CMD_REGION_IO_FDS: i32 = 64;
/// The answer to CMD_REGION_IO_FDS: sub-region records plus their fds.
pub const CMD_REGION_IO_FDS_REPLY: i32 = 65;
/// Sub-regions one reply can carry (40 bytes each after an 8-byte count).
pub const MAX_SUB_REGIONS: usize = 4;
const SUB_REGION_SIZE: usize = 40;
/// Sub-region type: served over ioregionfd records (vfio-user also has
/// ioeventfd sub-regions, which we do not use).
const SUB_REGION_IOREGIONFD: u32 = 1;
/// Sub-region flag: writes are posted (no response record).
pub const SUB_REGION_POSTED_WRITES: u32 = 1;
/// Our extension: which registers of a BAR the remote mirrors in a shared
/// page, so that the VMM can answer reads of them without a round trip.
/// Only sent to remotes of our own dialect.
pub const CMD_REGISTER_MIRROR: i32 = 66;
/// The answer: register records plus the page's memfd (none without records).
pub const CMD_REGISTER_MIRROR_REPLY: i32 = 67;
/// Registers one reply can name (16 bytes each after an 8-byte count).
pub const MAX_MIRRORED_REGISTERS: usize = 8;
const MIRRORED_REGISTER_SIZE: usize = 16;
/// The mirror page's size; every register lies inside it.
pub const MIRROR_PAGE_SIZE: u64 = 4096;
/// Mirror flag (the reply's second word): the page's last 8 bytes count,
/// as a native-endian u64, the posted writes the remote has applied, so
/// that the VMM can answer a read from the page once every posted write
/// it sent has been applied, even in a range whose writes are posted.
pub const MIRROR_COUNTS_POSTED_WRITES: u32 = 1;
/// Where the page keeps that count.
pub const MIRROR_POSTED_COUNT_OFFSET: u32 = MIRROR_PAGE_SIZE as u32 - 8;

/// What a remote's CMD_REGISTER_MIRROR_REPLY says about one BAR.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MirrorLayout {
    pub registers: Vec<MirroredRegister>,
    /// The page counts the posted writes applied
    /// ([`MIRROR_COUNTS_POSTED_WRITES`]).
    pub counts_posted_writes: bool,
}

/// A register whose current value the remote keeps at `page_offset` of its
/// mirror page. Reading it has no side effect, so a copy will do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirroredRegister {
    /// From the start of the BAR.
    pub offset: u64,
    pub size: u32,
    pub page_offset: u32,
}

/// One range of a BAR served over ioregionfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubRegion {
    /// From the start of the BAR.
    pub offset: u64,
    pub size: u64,
    pub fd_index: u32,
    pub flags: u32,
    /// Echoed in every command record on the fd.
    pub user_data: u64,
}

/// CMD_REGION_IO_FDS_REPLY's payload: a count, then 40 bytes per sub-region.
pub fn encode_sub_regions(regions: &[SubRegion]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + regions.len() * SUB_REGION_SIZE);
    p.extend_from_slice(&(regions.len() as u32).to_ne_bytes());
    p.extend_from_slice(&[0; 4]);
    for r in regions {
        p.extend_from_slice(&r.offset.to_ne_bytes());
        p.extend_from_slice(&r.size.to_ne_bytes());
        p.extend_from_slice(&r.fd_index.to_ne_bytes());
        p.extend_from_slice(&SUB_REGION_IOREGIONFD.to_ne_bytes());
        p.extend_from_slice(&r.flags.to_ne_bytes());
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(&r.user_data.to_ne_bytes());
    }
    p
}

/// CMD_REGISTER_MIRROR_REPLY's payload: a count, the flags, then 16 bytes
/// per register.
pub fn encode_mirrored(layout: &MirrorLayout) -> Vec<u8> {
    let registers = &layout.registers;
    let flags = if layout.counts_posted_writes {
        MIRROR_COUNTS_POSTED_WRITES
    } else {
        0
    };
    let mut p = Vec::with_capacity(8 + registers.len() * MIRRORED_REGISTER_SIZE);
    p.extend_from_slice(&(registers.len() as u32).to_ne_bytes());
    p.extend_from_slice(&flags.to_ne_bytes());
    for r in registers {
        p.extend_from_slice(&r.offset.to_ne_bytes());
        p.extend_from_slice(&r.size.to_ne_bytes());
        p.extend_from_slice(&r.page_offset.to_ne_bytes());
    }
    p
}

/// The sub-regions of a CMD_REGION_IO_FDS_REPLY, each checked: not empty,
/// not wrapping, naming one of the message's fds, of the ioregionfd type,
/// with no flag we do not know.
pub fn decode_sub_regions(p: &Payload) -> Result<Vec<SubRegion>, DecodeError> {
    let count = p.counted(
        MAX_SUB_REGIONS,
        SUB_REGION_SIZE,
        "8 + 40 per sub-region, at most 4",
    )?;
    p.want_fds(count, "one per sub-region")?;
    (0..count)
        .map(|i| {
            let o = 8 + i * SUB_REGION_SIZE;
            let r = SubRegion {
                offset: p.u64_at(o),
                size: p.u64_at(o + 8),
                fd_index: p.u32_at(o + 16),
                flags: p.u32_at(o + 24),
                user_data: p.u64_at(o + 32),
            };
            let ok = r.size > 0
                && r.offset.checked_add(r.size).is_some()
                && (r.fd_index as usize) < count
                && p.u32_at(o + 20) == SUB_REGION_IOREGIONFD
                && r.flags & !SUB_REGION_POSTED_WRITES == 0;
            ok.then_some(r)
                .ok_or(DecodeError::BadSubRegion { index: i })
        })
        .collect()
}

/// The registers of a CMD_REGISTER_MIRROR_REPLY, each checked: 1, 2, 4 or 8
/// bytes, not wrapping, inside the page and clear of the posted-write
/// count; one fd (the page) when there are registers, none without; no
/// flag we do not know, and no count without a page.
pub fn decode_mirrored(p: &Payload) -> Result<MirrorLayout, DecodeError> {
    let count = p.counted(
        MAX_MIRRORED_REGISTERS,
        MIRRORED_REGISTER_SIZE,
        "8 + 16 per register, at most 8",
    )?;
    p.want_fds(usize::from(count > 0), "one with registers, none without")?;
    let flags = p.u32_at(4);
    if flags & !MIRROR_COUNTS_POSTED_WRITES != 0 || (flags != 0 && count == 0) {
        return Err(DecodeError::BadMirrorFlags(flags));
    }
    let counts_posted_writes = flags & MIRROR_COUNTS_POSTED_WRITES != 0;
    let limit = if counts_posted_writes {
        u64::from(MIRROR_POSTED_COUNT_OFFSET)
    } else {
        MIRROR_PAGE_SIZE
    };
    let registers = (0..count)
        .map(|i| {
            let o = 8 + i * MIRRORED_REGISTER_SIZE;
            let r = MirroredRegister {
                offset: p.u64_at(o),
                size: p.u32_at(o + 8),
                page_offset: p.u32_at(o + 12),
            };
            let ok = matches!(r.size, 1 | 2 | 4 | 8)
                && r.offset.checked_add(u64::from(r.size)).is_some()
                && u64::from(r.page_offset) + u64::from(r.size) <= limit;
            ok.then_some(r)
                .ok_or(DecodeError::BadMirroredRegister { index: i })
        })
        .collect::<Result<_, _>>()?;
    Ok(MirrorLayout {
        registers,
        counts_posted_writes,
    })
}
