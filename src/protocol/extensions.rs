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
/// Registers one reply can name (16 bytes each after an 8-byte count, 48
/// with [`MIRROR_WRITE_EFFECTS`]).
pub const MAX_MIRRORED_REGISTERS: usize = 8;
const MIRRORED_REGISTER_SIZE: usize = 16;
const MIRRORED_REGISTER_WITH_EFFECTS_SIZE: usize = 48;
/// The mirror page's size; every register lies inside it.
pub const MIRROR_PAGE_SIZE: u64 = 4096;
/// Mirror flag (the reply's second word): the page's last 8 bytes count,
/// as a native-endian u64, the posted writes the remote has applied, so
/// that the VMM can answer a read from the page once every posted write
/// it sent has been applied, even in a range whose writes are posted.
pub const MIRROR_COUNTS_POSTED_WRITES: u32 = 1;
/// Where the page keeps that count.
pub const MIRROR_POSTED_COUNT_OFFSET: u32 = MIRROR_PAGE_SIZE as u32 - 8;
/// Mirror flag: each register record goes on with what a write of the
/// register does to it ([`WriteEffects`]), so that the VMM can answer a
/// read from the page with its own posted writes still queued, applying
/// them itself. Only with [`MIRROR_COUNTS_POSTED_WRITES`].
pub const MIRROR_WRITE_EFFECTS: u32 = 2;
/// Mirror flag: the device reads, at [`MIRROR_SENT_COUNT_OFFSET`], the
/// count of posted writes the VMM sent it, which the VMM keeps there (a
/// native-endian u64) once it has written [`MIRROR_SENT_SHOWN`] at
/// [`MIRROR_SENT_SHOWN_OFFSET`]. What the guest does after a posted write
/// (acknowledge the interrupt, a message on the control socket) then
/// needs only the writes counted there applied, and the device need not
/// look at each of its posted-write fds for more. Only with
/// [`MIRROR_COUNTS_POSTED_WRITES`]; registers then stay clear of both.
pub const MIRROR_READS_SENT_COUNT: u32 = 4;
/// Where the VMM keeps its count of posted writes sent.
pub const MIRROR_SENT_COUNT_OFFSET: u32 = MIRROR_PAGE_SIZE as u32 - 16;
/// Where the VMM says it keeps that count: [`MIRROR_SENT_SHOWN`] once it
/// does; the device puts anything else there when it hands the page out.
pub const MIRROR_SENT_SHOWN_OFFSET: u32 = MIRROR_PAGE_SIZE as u32 - 24;
pub const MIRROR_SENT_SHOWN: u64 = 1;
/// Mirror flag: the VMM may put its posted writes, the same 32-byte
/// records it would send on a region fd, in a ring in the page instead
/// ([`MIRROR_RING_SLOTS`] slots from [`MIRROR_RING_OFFSET`], three
/// native-endian u64 words below the sent count: the tail the VMM moves,
/// the head the device moves, and `listening`, 1 while the device may
/// sleep; `mirror::ring` has the rules). Only with
/// [`MIRROR_READS_SENT_COUNT`]; registers then stay below the ring.
pub const MIRROR_POSTED_RING: u32 = 8;
pub const MIRROR_RING_OFFSET: u32 = 1024;
pub const MIRROR_RING_SLOTS: u32 = 94;
pub const MIRROR_RING_TAIL_OFFSET: u32 = MIRROR_PAGE_SIZE as u32 - 32;
pub const MIRROR_RING_HEAD_OFFSET: u32 = MIRROR_PAGE_SIZE as u32 - 40;
pub const MIRROR_RING_LISTENING_OFFSET: u32 = MIRROR_PAGE_SIZE as u32 - 48;
const KNOWN_MIRROR_FLAGS: u32 = MIRROR_COUNTS_POSTED_WRITES
    | MIRROR_WRITE_EFFECTS
    | MIRROR_READS_SENT_COUNT
    | MIRROR_POSTED_RING;
const _: () = assert!(
    MIRROR_RING_OFFSET + MIRROR_RING_SLOTS * 32 <= MIRROR_RING_LISTENING_OFFSET,
    "the ring's slots end below its words"
);

/// What a remote's CMD_REGISTER_MIRROR_REPLY says about one BAR.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MirrorLayout {
    pub registers: Vec<MirroredRegister>,
    /// The page counts the posted writes applied
    /// ([`MIRROR_COUNTS_POSTED_WRITES`]).
    pub counts_posted_writes: bool,
    /// The device reads the VMM's count of posted writes sent
    /// ([`MIRROR_READS_SENT_COUNT`]); only with `counts_posted_writes`.
    pub reads_sent_count: bool,
    /// The VMM may put posted writes in the page's ring
    /// ([`MIRROR_POSTED_RING`]); only with `reads_sent_count`.
    pub posted_ring: bool,
}

/// A register whose current value the remote keeps at `page_offset` of its
/// mirror page. Reading it has no side effect, so a copy will do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirroredRegister {
    /// From the start of the BAR.
    pub offset: u64,
    pub size: u32,
    pub page_offset: u32,
    /// What a write of exactly this register (same offset, same size) does
    /// to it, when the device says; `None`: anything.
    pub effects: Option<WriteEffects>,
}

/// What writing value `w` to a mirrored register does to it, bit by bit:
/// a 1 in `clears` clears the bit, `follows` bits take the written value,
/// the other bits stay as they were; and a write with a 1 in `opaque`
/// does more than that (it starts or resets something), so its effect is
/// unknown. `clears` and `follows` do not overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteEffects {
    pub clears: u64,
    pub follows: u64,
    pub opaque: u64,
}

impl WriteEffects {
    /// The register's value after `written` was written to `value`, or
    /// `None` when the write is opaque.
    pub fn apply(&self, value: u64, written: u64) -> Option<u64> {
        if written & self.opaque != 0 {
            return None;
        }
        let cleared = value & !(written & self.clears);
        Some((cleared & !self.follows) | (written & self.follows))
    }
}

impl MirroredRegister {
    /// A register whose writes the device does not describe.
    pub fn new(offset: u64, size: u32, page_offset: u32) -> Self {
        MirroredRegister {
            offset,
            size,
            page_offset,
            effects: None,
        }
    }
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
/// per register; 48 when some register's writes are described (and the
/// page counts posted writes): a known flag u32 (1 when they are), 4 zero
/// bytes, then clears, follows and opaque as u64s.
pub fn encode_mirrored(layout: &MirrorLayout) -> Vec<u8> {
    let registers = &layout.registers;
    let with_effects = layout.counts_posted_writes && registers.iter().any(|r| r.effects.is_some());
    let mut flags = 0;
    if layout.counts_posted_writes {
        flags |= MIRROR_COUNTS_POSTED_WRITES;
    }
    if with_effects {
        flags |= MIRROR_WRITE_EFFECTS;
    }
    if layout.counts_posted_writes && layout.reads_sent_count {
        flags |= MIRROR_READS_SENT_COUNT;
        if layout.posted_ring {
            flags |= MIRROR_POSTED_RING;
        }
    }
    let mut p = Vec::with_capacity(8 + registers.len() * MIRRORED_REGISTER_WITH_EFFECTS_SIZE);
    p.extend_from_slice(&(registers.len() as u32).to_ne_bytes());
    p.extend_from_slice(&flags.to_ne_bytes());
    for r in registers {
        p.extend_from_slice(&r.offset.to_ne_bytes());
        p.extend_from_slice(&r.size.to_ne_bytes());
        p.extend_from_slice(&r.page_offset.to_ne_bytes());
        if with_effects {
            let e = r.effects.unwrap_or(WriteEffects {
                clears: 0,
                follows: 0,
                opaque: 0,
            });
            p.extend_from_slice(&u32::from(r.effects.is_some()).to_ne_bytes());
            p.extend_from_slice(&[0; 4]);
            for mask in [e.clears, e.follows, e.opaque] {
                p.extend_from_slice(&mask.to_ne_bytes());
            }
        }
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
/// bytes, not wrapping, inside the page and clear of the counts at its
/// end, their write effects (if any) inside the register and not both
/// clearing and following a bit; one fd (the page) when there are
/// registers, none without; no flag we do not know, no count without a
/// page, and no write effects or sent count without a count.
pub fn decode_mirrored(p: &Payload) -> Result<MirrorLayout, DecodeError> {
    let flags = if p.size() >= 8 { p.u32_at(4) } else { 0 };
    let with_effects = flags & MIRROR_WRITE_EFFECTS != 0;
    let count = if with_effects {
        p.counted(
            MAX_MIRRORED_REGISTERS,
            MIRRORED_REGISTER_WITH_EFFECTS_SIZE,
            "8 + 48 per register with write effects, at most 8",
        )?
    } else {
        p.counted(
            MAX_MIRRORED_REGISTERS,
            MIRRORED_REGISTER_SIZE,
            "8 + 16 per register, at most 8",
        )?
    };
    p.want_fds(usize::from(count > 0), "one with registers, none without")?;
    let reads_sent_count = flags & MIRROR_READS_SENT_COUNT != 0;
    let posted_ring = flags & MIRROR_POSTED_RING != 0;
    let without_count = ((with_effects || reads_sent_count)
        && flags & MIRROR_COUNTS_POSTED_WRITES == 0)
        || (posted_ring && !reads_sent_count);
    if flags & !KNOWN_MIRROR_FLAGS != 0 || (flags != 0 && count == 0) || without_count {
        return Err(DecodeError::BadMirrorFlags(flags));
    }
    let stride = if with_effects {
        MIRRORED_REGISTER_WITH_EFFECTS_SIZE
    } else {
        MIRRORED_REGISTER_SIZE
    };
    let counts_posted_writes = flags & MIRROR_COUNTS_POSTED_WRITES != 0;
    let limit = if posted_ring {
        u64::from(MIRROR_RING_OFFSET)
    } else if reads_sent_count {
        u64::from(MIRROR_SENT_SHOWN_OFFSET)
    } else if counts_posted_writes {
        u64::from(MIRROR_POSTED_COUNT_OFFSET)
    } else {
        MIRROR_PAGE_SIZE
    };
    let registers = (0..count)
        .map(|i| {
            let o = 8 + i * stride;
            let mut r = MirroredRegister::new(p.u64_at(o), p.u32_at(o + 8), p.u32_at(o + 12));
            let mut ok = matches!(r.size, 1 | 2 | 4 | 8)
                && r.offset.checked_add(u64::from(r.size)).is_some()
                && u64::from(r.page_offset) + u64::from(r.size) <= limit;
            if with_effects {
                let (known, pad) = (p.u32_at(o + 16), p.u32_at(o + 20));
                let e = WriteEffects {
                    clears: p.u64_at(o + 24),
                    follows: p.u64_at(o + 32),
                    opaque: p.u64_at(o + 40),
                };
                let outside = match r.size {
                    8 => 0,
                    size => u64::MAX << (size * 8),
                };
                let masks = e.clears | e.follows | e.opaque;
                ok &= pad == 0
                    && (known == 1 || (known == 0 && masks == 0))
                    && masks & outside == 0
                    && e.clears & e.follows == 0;
                r.effects = (known == 1).then_some(e);
            }
            ok.then_some(r)
                .ok_or(DecodeError::BadMirroredRegister { index: i })
        })
        .collect::<Result<_, _>>()?;
    Ok(MirrorLayout {
        registers,
        counts_posted_writes,
        reads_sent_count,
        posted_ring,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISTAT: WriteEffects = WriteEffects {
        clears: 0x04,
        follows: 0xf0,
        opaque: 0xe0,
    };

    fn decode(bytes: &[u8]) -> Result<MirrorLayout, DecodeError> {
        decode_mirrored(&Payload::new(CMD_REGISTER_MIRROR_REPLY, bytes, 1))
    }

    #[test]
    fn write_effects_clear_follow_or_make_the_write_opaque() {
        assert_eq!(
            ISTAT.apply(0x15, 0x04),
            Some(0x01),
            "INTF clear, SEM let go"
        );
        assert_eq!(ISTAT.apply(0x05, 0x14), Some(0x11), "INTF clear, SEM taken");
        assert_eq!(ISTAT.apply(0x0b, 0x00), Some(0x0b), "the low bits stay");
        assert_eq!(ISTAT.apply(0x00, 0x20), None, "SIGP starts SCRIPTS");
    }

    /// Registers with write effects take 48 bytes each, and the effects
    /// come back as they went; registers without them in the same reply
    /// say so with a known flag of 0.
    #[test]
    fn write_effects_go_through_and_are_checked() {
        let layout = MirrorLayout {
            registers: vec![
                MirroredRegister {
                    effects: Some(ISTAT),
                    ..MirroredRegister::new(0x14, 1, 0)
                },
                MirroredRegister::new(0x10, 4, 8),
            ],
            counts_posted_writes: true,
            reads_sent_count: false,
            posted_ring: false,
        };
        let bytes = encode_mirrored(&layout);
        assert_eq!(bytes.len(), 8 + 2 * 48);
        assert_eq!(
            u32::from_ne_bytes(bytes[4..8].try_into().unwrap()),
            MIRROR_COUNTS_POSTED_WRITES | MIRROR_WRITE_EFFECTS
        );
        assert_eq!(decode(&bytes), Ok(layout.clone()));
        // Without a count of posted writes applied, effects are not sent.
        let uncounted = MirrorLayout {
            counts_posted_writes: false,
            ..layout.clone()
        };
        let plain = encode_mirrored(&uncounted);
        assert_eq!(plain.len(), 8 + 2 * 16);
        let back = decode(&plain).unwrap();
        assert!(back.registers.iter().all(|r| r.effects.is_none()));
        // ...and a reply that names them without the count is refused.
        let mut no_count = bytes.clone();
        no_count[4] = MIRROR_WRITE_EFFECTS as u8;
        assert!(matches!(
            decode(&no_count),
            Err(DecodeError::BadMirrorFlags(_))
        ));
        let bad = |at: usize, value: u8| {
            let mut b = bytes.clone();
            b[at] = value;
            decode(&b).is_err()
        };
        let first = 8;
        assert!(bad(first + 16, 2), "known is 0 or 1");
        assert!(bad(first + 20, 1), "padding is 0");
        assert!(
            bad(first + 24 + 1, 1),
            "a clear mask past a 1-byte register"
        );
        assert!(bad(first + 32, 0x04), "a bit that clears and follows");
        let second = 8 + 48;
        assert!(bad(second + 40, 1), "masks on a register with none known");
        assert!(decode(&bytes[..bytes.len() - 8]).is_err(), "short");
    }

    /// A device that reads the VMM's count of posted writes sent says so
    /// (flag 4, only with the count of those applied), and no register may
    /// then lie in the two words before that count.
    #[test]
    fn the_sent_count_is_read_only_beside_the_applied_count_and_clear_of_registers() {
        let layout = MirrorLayout {
            registers: vec![MirroredRegister::new(0x14, 1, 0)],
            counts_posted_writes: true,
            reads_sent_count: true,
            posted_ring: false,
        };
        let bytes = encode_mirrored(&layout);
        let flags = u32::from_ne_bytes(bytes[4..8].try_into().unwrap());
        assert_eq!(flags, MIRROR_COUNTS_POSTED_WRITES | MIRROR_READS_SENT_COUNT);
        assert_eq!(decode(&bytes), Ok(layout.clone()));
        let uncounted = MirrorLayout {
            counts_posted_writes: false,
            ..layout.clone()
        };
        let back = decode(&encode_mirrored(&uncounted)).unwrap();
        assert!(!back.reads_sent_count, "not said without the applied count");
        let mut no_count = bytes.clone();
        no_count[4] = MIRROR_READS_SENT_COUNT as u8;
        assert_eq!(
            decode(&no_count),
            Err(DecodeError::BadMirrorFlags(MIRROR_READS_SENT_COUNT))
        );
        let at = |page_offset: u32, flags: u32| {
            let mut b = bytes.clone();
            b[4..8].copy_from_slice(&flags.to_ne_bytes());
            b[8 + 12..8 + 16].copy_from_slice(&page_offset.to_ne_bytes());
            decode(&b).is_ok()
        };
        let both = MIRROR_COUNTS_POSTED_WRITES | MIRROR_READS_SENT_COUNT;
        assert!(at(MIRROR_SENT_SHOWN_OFFSET - 1, both));
        assert!(!at(MIRROR_SENT_SHOWN_OFFSET, both), "on the shown flag");
        assert!(!at(MIRROR_SENT_COUNT_OFFSET, both), "on the sent count");
        assert!(
            at(MIRROR_SENT_SHOWN_OFFSET, MIRROR_COUNTS_POSTED_WRITES),
            "free for a device that does not read it"
        );
    }

    /// A device that offers the posted-write ring says so (flag 8, only
    /// with the sent count), and its registers then stay below the ring.
    #[test]
    fn the_ring_comes_only_with_the_sent_count_and_below_it_no_register() {
        let layout = MirrorLayout {
            registers: vec![MirroredRegister::new(0x14, 1, 0)],
            counts_posted_writes: true,
            reads_sent_count: true,
            posted_ring: true,
        };
        let bytes = encode_mirrored(&layout);
        let all = MIRROR_COUNTS_POSTED_WRITES | MIRROR_READS_SENT_COUNT | MIRROR_POSTED_RING;
        assert_eq!(u32::from_ne_bytes(bytes[4..8].try_into().unwrap()), all);
        assert_eq!(decode(&bytes), Ok(layout.clone()));
        let without_sent_count = MirrorLayout {
            reads_sent_count: false,
            ..layout.clone()
        };
        assert!(
            !decode(&encode_mirrored(&without_sent_count))
                .unwrap()
                .posted_ring
        );
        let at = |page_offset: u32, flags: u32| {
            let mut b = bytes.clone();
            b[4..8].copy_from_slice(&flags.to_ne_bytes());
            b[8 + 12..8 + 16].copy_from_slice(&page_offset.to_ne_bytes());
            decode(&b)
        };
        assert_eq!(
            at(0, all & !MIRROR_READS_SENT_COUNT),
            Err(DecodeError::BadMirrorFlags(all & !MIRROR_READS_SENT_COUNT))
        );
        assert!(at(MIRROR_RING_OFFSET - 1, all).is_ok());
        assert!(at(MIRROR_RING_OFFSET, all).is_err(), "in the ring");
        assert!(at(MIRROR_RING_OFFSET, all & !MIRROR_POSTED_RING).is_ok());
    }
}
