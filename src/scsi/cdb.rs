//! Parsing command descriptor blocks into commands, and which way their
//! data flows. Everything a guest can put in a CDB is checked here, so the
//! disk only ever sees well-formed requests.

use super::sense::Sense;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    TestUnitReady,
    RequestSense {
        alloc: u32,
    },
    Inquiry {
        evpd: bool,
        page: u8,
        alloc: u32,
    },
    ReportLuns {
        alloc: u32,
    },
    ReadCapacity10,
    ReadCapacity16 {
        alloc: u32,
    },
    ModeSense {
        ten: bool,
        dbd: bool,
        control: u8,
        page: u8,
        subpage: u8,
        alloc: u32,
    },
    Read {
        lba: u64,
        blocks: u32,
    },
    Write {
        lba: u64,
        blocks: u32,
        fua: bool,
    },
    Verify {
        lba: u64,
        blocks: u32,
        bytchk: bool,
    },
    SyncCache,
    StartStopUnit,
    /// Accepted and ignored: a fixed disk has no medium to lock.
    PreventAllowMediumRemoval,
    /// One block of data (or zeros, with NDOB) written to every block of
    /// the range; with `unmap`, the range may be deallocated instead when
    /// that reads back the same.
    WriteSame {
        lba: u64,
        blocks: u32,
        unmap: bool,
        ndob: bool,
    },
    /// Deallocate the block ranges in a parameter list of this length.
    Unmap {
        param_len: u32,
    },
    ReportSupportedOpcodes(OpcodeQuery),
}

/// REPORT SUPPORTED OPERATION CODES: all commands, or one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpcodeQuery {
    /// Reporting options: 0 all, 1 one opcode, 2 one opcode and service
    /// action, 3 one opcode with or without a service action.
    pub options: u8,
    /// Append a command timeouts descriptor to each entry.
    pub rctd: bool,
    pub opcode: u8,
    pub service_action: u16,
    pub alloc: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirection {
    None,
    /// Data from the target to the initiator (DATA IN), at most this many bytes.
    FromDevice(u32),
    /// Data from the initiator (DATA OUT), exactly this many bytes.
    ToDevice(u32),
}

/// The largest READ, WRITE or VERIFY in blocks (4 MiB of 512-byte
/// blocks); the disk advertises it in its Block Limits page.
pub const MAX_TRANSFER_BLOCKS: u32 = 8192;

const OP_TEST_UNIT_READY: u8 = 0x00;
const OP_REQUEST_SENSE: u8 = 0x03;
const OP_READ_6: u8 = 0x08;
const OP_WRITE_6: u8 = 0x0a;
const OP_INQUIRY: u8 = 0x12;
const OP_MODE_SENSE_6: u8 = 0x1a;
const OP_START_STOP_UNIT: u8 = 0x1b;
const OP_PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
const OP_READ_CAPACITY_10: u8 = 0x25;
const OP_READ_10: u8 = 0x28;
const OP_WRITE_10: u8 = 0x2a;
const OP_VERIFY_10: u8 = 0x2f;
const OP_SYNC_CACHE_10: u8 = 0x35;
const OP_WRITE_SAME_10: u8 = 0x41;
const OP_UNMAP: u8 = 0x42;
const OP_MODE_SENSE_10: u8 = 0x5a;
const OP_READ_16: u8 = 0x88;
const OP_WRITE_16: u8 = 0x8a;
const OP_VERIFY_16: u8 = 0x8f;
const OP_SYNC_CACHE_16: u8 = 0x91;
const OP_WRITE_SAME_16: u8 = 0x93;
pub(super) const OP_SERVICE_ACTION_IN_16: u8 = 0x9e;
pub(super) const SA_READ_CAPACITY_16: u8 = 0x10;
const OP_REPORT_LUNS: u8 = 0xa0;
pub(super) const OP_MAINTENANCE_IN: u8 = 0xa3;
pub(super) const SA_REPORT_SUPPORTED_OPCODES: u8 = 0x0c;
const OP_READ_12: u8 = 0xa8;
const OP_WRITE_12: u8 = 0xaa;

const FUA: u8 = 0x08;
/// WRITE SAME: the UNMAP bit, and NDOB (no data-out buffer: zeros).
const WS_UNMAP: u8 = 0x08;
const WS_NDOB: u8 = 0x01;
/// UNMAP: ANCHOR, which asks for anchored (not deallocated) blocks.
const UNMAP_ANCHOR: u8 = 0x01;

/// Length of the CDB an opcode's group implies.
pub fn cdb_len(opcode: u8) -> usize {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 6,
    }
}

fn be16(b: &[u8]) -> u32 {
    u32::from(u16::from_be_bytes([b[0], b[1]]))
}
fn be24(b: &[u8]) -> u32 {
    u32::from_be_bytes([0, b[0], b[1], b[2]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

impl Command {
    pub fn parse(cdb: &[u8]) -> Result<Command, Sense> {
        let op = *cdb.first().ok_or(Sense::INVALID_OPCODE)?;
        if cdb.len() < cdb_len(op) {
            return Err(Sense::INVALID_FIELD);
        }
        Ok(match op {
            OP_TEST_UNIT_READY => Command::TestUnitReady,
            OP_REQUEST_SENSE => Command::RequestSense {
                alloc: u32::from(cdb[4]),
            },
            OP_INQUIRY => {
                let evpd = cdb[1] & 1 != 0;
                if !evpd && cdb[2] != 0 {
                    return Err(Sense::INVALID_FIELD);
                }
                Command::Inquiry {
                    evpd,
                    page: cdb[2],
                    alloc: be16(&cdb[3..]),
                }
            }
            OP_REPORT_LUNS => Command::ReportLuns {
                alloc: be32(&cdb[6..]),
            },
            OP_READ_CAPACITY_10 => Command::ReadCapacity10,
            OP_SERVICE_ACTION_IN_16 if cdb[1] & 0x1f == SA_READ_CAPACITY_16 => {
                Command::ReadCapacity16 {
                    alloc: be32(&cdb[10..]),
                }
            }
            OP_MODE_SENSE_6 | OP_MODE_SENSE_10 => {
                let ten = op == OP_MODE_SENSE_10;
                Command::ModeSense {
                    ten,
                    dbd: cdb[1] & 0x08 != 0,
                    control: cdb[2] >> 6,
                    page: cdb[2] & 0x3f,
                    subpage: cdb[3],
                    alloc: if ten {
                        be16(&cdb[7..])
                    } else {
                        u32::from(cdb[4])
                    },
                }
            }
            OP_READ_6 | OP_WRITE_6 => {
                let lba = u64::from(be24(&cdb[1..]) & 0x1f_ffff);
                // A 6-byte transfer length of 0 means 256 blocks.
                let blocks = if cdb[4] == 0 { 256 } else { u32::from(cdb[4]) };
                if op == OP_READ_6 {
                    Command::Read { lba, blocks }
                } else {
                    Command::Write {
                        lba,
                        blocks,
                        fua: false,
                    }
                }
            }
            OP_READ_10 | OP_WRITE_10 | OP_VERIFY_10 => {
                let (lba, blocks) = (u64::from(be32(&cdb[2..])), be16(&cdb[7..]));
                rw(op, cdb[1], lba, blocks)?
            }
            OP_READ_12 | OP_WRITE_12 => {
                rw(op, cdb[1], u64::from(be32(&cdb[2..])), be32(&cdb[6..]))?
            }
            OP_READ_16 | OP_WRITE_16 | OP_VERIFY_16 => {
                rw(op, cdb[1], be64(&cdb[2..]), be32(&cdb[10..]))?
            }
            OP_SYNC_CACHE_10 | OP_SYNC_CACHE_16 => Command::SyncCache,
            OP_START_STOP_UNIT => Command::StartStopUnit,
            OP_PREVENT_ALLOW_MEDIUM_REMOVAL => Command::PreventAllowMediumRemoval,
            OP_WRITE_SAME_10 => Command::WriteSame {
                lba: u64::from(be32(&cdb[2..])),
                blocks: be16(&cdb[7..]),
                unmap: cdb[1] & WS_UNMAP != 0,
                // WRITE SAME(10) has no NDOB bit.
                ndob: false,
            },
            OP_WRITE_SAME_16 => Command::WriteSame {
                lba: be64(&cdb[2..]),
                blocks: be32(&cdb[10..]),
                unmap: cdb[1] & WS_UNMAP != 0,
                ndob: cdb[1] & WS_NDOB != 0,
            },
            OP_UNMAP => {
                if cdb[1] & UNMAP_ANCHOR != 0 {
                    return Err(Sense::INVALID_FIELD);
                }
                Command::Unmap {
                    param_len: be16(&cdb[7..]),
                }
            }
            OP_MAINTENANCE_IN if cdb[1] & 0x1f == SA_REPORT_SUPPORTED_OPCODES => {
                let options = cdb[2] & 0x07;
                if options > 3 {
                    return Err(Sense::INVALID_FIELD);
                }
                Command::ReportSupportedOpcodes(OpcodeQuery {
                    options,
                    rctd: cdb[2] & 0x80 != 0,
                    opcode: cdb[3],
                    service_action: be16(&cdb[4..]) as u16,
                    alloc: be32(&cdb[6..]),
                })
            }
            // A known opcode with a service action we do not have.
            OP_MAINTENANCE_IN | OP_SERVICE_ACTION_IN_16 => return Err(Sense::INVALID_FIELD),
            _ => return Err(Sense::INVALID_OPCODE),
        })
    }

    /// Commands that wait on the backing file, worth running off the
    /// device's thread while the initiator gets on with other work.
    pub fn touches_medium(&self) -> bool {
        matches!(
            self,
            Command::Read { .. }
                | Command::Write { .. }
                | Command::Verify { .. }
                | Command::SyncCache
                | Command::WriteSame { .. }
                | Command::Unmap { .. }
        )
    }

    /// Which way data flows and how much of it, for a given block size.
    pub fn direction(&self, block_size: u32) -> DataDirection {
        let bytes = |blocks: u32| blocks.saturating_mul(block_size);
        match *self {
            Command::TestUnitReady
            | Command::SyncCache
            | Command::StartStopUnit
            | Command::PreventAllowMediumRemoval
            | Command::WriteSame { ndob: true, .. }
            | Command::Verify { bytchk: false, .. } => DataDirection::None,
            Command::WriteSame { ndob: false, .. } => DataDirection::ToDevice(block_size),
            Command::Unmap { param_len } => DataDirection::ToDevice(param_len),
            Command::RequestSense { alloc }
            | Command::Inquiry { alloc, .. }
            | Command::ReportLuns { alloc }
            | Command::ReadCapacity16 { alloc }
            | Command::ModeSense { alloc, .. } => DataDirection::FromDevice(alloc),
            Command::ReadCapacity10 => DataDirection::FromDevice(8),
            Command::ReportSupportedOpcodes(q) => DataDirection::FromDevice(q.alloc),
            Command::Read { blocks, .. } => DataDirection::FromDevice(bytes(blocks)),
            Command::Write { blocks, .. }
            | Command::Verify {
                blocks,
                bytchk: true,
                ..
            } => DataDirection::ToDevice(bytes(blocks)),
        }
    }
}

/// A READ, WRITE or VERIFY, refused past the largest transfer the disk
/// advertises: the length is the guest's word, and the remote would
/// otherwise hold a buffer as large as the disk for one command.
fn rw(op: u8, flags: u8, lba: u64, blocks: u32) -> Result<Command, Sense> {
    if blocks > MAX_TRANSFER_BLOCKS {
        return Err(Sense::INVALID_FIELD);
    }
    Ok(match op {
        OP_READ_10 | OP_READ_12 | OP_READ_16 => Command::Read { lba, blocks },
        OP_VERIFY_10 | OP_VERIFY_16 => Command::Verify {
            lba,
            blocks,
            bytchk: flags & 0x06 != 0,
        },
        _ => Command::Write {
            lba,
            blocks,
            fua: flags & FUA != 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_cdbs_decode_lba_length_and_fua() {
        let read10 = [0x28, 0, 0, 0, 0x12, 0x34, 0, 0, 8, 0];
        assert_eq!(
            Command::parse(&read10),
            Ok(Command::Read {
                lba: 0x1234,
                blocks: 8
            })
        );
        let write10_fua = [0x2a, 0x08, 0, 0, 0, 1, 0, 0, 1, 0];
        assert_eq!(
            Command::parse(&write10_fua),
            Ok(Command::Write {
                lba: 1,
                blocks: 1,
                fua: true
            })
        );
        let mut read16 = [0u8; 16];
        read16[0] = 0x88;
        read16[2..10].copy_from_slice(&0x1_0000_0000u64.to_be_bytes());
        read16[10..14].copy_from_slice(&16u32.to_be_bytes());
        assert_eq!(
            Command::parse(&read16),
            Ok(Command::Read {
                lba: 1 << 32,
                blocks: 16
            })
        );
        let write6 = [0x0a, 0x01, 0x02, 0x03, 0, 0];
        assert_eq!(
            Command::parse(&write6),
            Ok(Command::Write {
                lba: 0x10203,
                blocks: 256,
                fua: false
            })
        );
        let read12 = [0xa8, 0, 0, 0, 0, 9, 0, 0, 0, 2, 0, 0];
        assert_eq!(
            Command::parse(&read12),
            Ok(Command::Read { lba: 9, blocks: 2 })
        );
    }

    #[test]
    fn directions_follow_the_command() {
        assert_eq!(
            Command::Read { lba: 0, blocks: 2 }.direction(512),
            DataDirection::FromDevice(1024)
        );
        assert_eq!(
            Command::Write {
                lba: 0,
                blocks: 3,
                fua: false
            }
            .direction(512),
            DataDirection::ToDevice(1536)
        );
        assert_eq!(Command::TestUnitReady.direction(512), DataDirection::None);
        assert_eq!(
            Command::ReadCapacity10.direction(512),
            DataDirection::FromDevice(8)
        );
    }

    #[test]
    fn bad_cdbs_get_the_right_sense() {
        assert_eq!(Command::parse(&[]), Err(Sense::INVALID_OPCODE));
        assert_eq!(
            Command::parse(&[0xff, 0, 0, 0, 0, 0]),
            Err(Sense::INVALID_OPCODE)
        );
        assert_eq!(
            Command::parse(&[0x28, 0, 0]),
            Err(Sense::INVALID_FIELD),
            "short CDB"
        );
        assert_eq!(
            Command::parse(&[0x12, 0, 0x80, 0, 36, 0]),
            Err(Sense::INVALID_FIELD),
            "page without EVPD"
        );
        let mut sai = [0u8; 16];
        sai[0] = 0x9e;
        sai[1] = 0x11;
        assert_eq!(
            Command::parse(&sai),
            Err(Sense::INVALID_FIELD),
            "unknown service action of a known opcode"
        );
        assert_eq!(
            Command::parse(&[0x42, 0x01, 0, 0, 0, 0, 0, 0, 24, 0]),
            Err(Sense::INVALID_FIELD),
            "anchored UNMAP"
        );
        let mut rsoc = [0u8; 12];
        rsoc[0] = 0xa3;
        rsoc[1] = 0x0c;
        rsoc[2] = 0x04;
        assert_eq!(
            Command::parse(&rsoc),
            Err(Sense::INVALID_FIELD),
            "reporting option 4"
        );
    }

    #[test]
    fn transfers_past_the_advertised_limit_are_refused() {
        let rw16 = |op: u8, blocks: u32| {
            let mut cdb = [0u8; 16];
            cdb[0] = op;
            cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
            Command::parse(&cdb)
        };
        for op in [0x88, 0x8a, 0x8f] {
            assert!(
                rw16(op, MAX_TRANSFER_BLOCKS).is_ok(),
                "op {op:#x} at the limit"
            );
            assert_eq!(
                rw16(op, MAX_TRANSFER_BLOCKS + 1),
                Err(Sense::INVALID_FIELD),
                "op {op:#x} one block past"
            );
            assert_eq!(rw16(op, u32::MAX), Err(Sense::INVALID_FIELD));
        }
        let mut write12 = [0u8; 12];
        write12[0] = 0xaa;
        write12[6..10].copy_from_slice(&(MAX_TRANSFER_BLOCKS + 1).to_be_bytes());
        assert_eq!(Command::parse(&write12), Err(Sense::INVALID_FIELD));
        let read10_max = [0x28, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0];
        assert_eq!(Command::parse(&read10_max), Err(Sense::INVALID_FIELD));
    }

    #[test]
    fn discard_cdbs_decode() {
        let ws10 = [0x41, 0x08, 0, 0, 0x10, 0, 0, 0, 8, 0];
        assert_eq!(
            Command::parse(&ws10),
            Ok(Command::WriteSame {
                lba: 0x1000,
                blocks: 8,
                unmap: true,
                ndob: false
            })
        );
        let mut ws16 = [0u8; 16];
        ws16[0] = 0x93;
        ws16[1] = 0x01;
        ws16[2..10].copy_from_slice(&(1u64 << 33).to_be_bytes());
        ws16[10..14].copy_from_slice(&0x10000u32.to_be_bytes());
        let ws16 = Command::parse(&ws16).unwrap();
        assert_eq!(
            ws16,
            Command::WriteSame {
                lba: 1 << 33,
                blocks: 0x10000,
                unmap: false,
                ndob: true
            }
        );
        assert_eq!(ws16.direction(512), DataDirection::None, "NDOB: no data");
        let unmap = Command::parse(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]).unwrap();
        assert_eq!(unmap, Command::Unmap { param_len: 24 });
        assert_eq!(unmap.direction(512), DataDirection::ToDevice(24));
        assert!(unmap.touches_medium());
        assert_eq!(
            Command::parse(&[0x1e, 0, 0, 0, 1, 0]),
            Ok(Command::PreventAllowMediumRemoval)
        );
    }

    #[test]
    fn cdb_lengths_by_group() {
        assert_eq!(cdb_len(0x00), 6);
        assert_eq!(cdb_len(0x28), 10);
        assert_eq!(cdb_len(0x5a), 10);
        assert_eq!(cdb_len(0x88), 16);
        assert_eq!(cdb_len(0xa8), 12);
    }
}
