//! QEMU's multiprocess control protocol (mpqemu), byte-compatible with
//! `x-pci-proxy-dev` and `x-remote-object`: a 16-byte header (i32 command,
//! 4 bytes padding, u64 payload size), then the payload, host-endian with
//! x86-64 struct layout; fds travel as SCM_RIGHTS with the header.

use std::fs::File;

pub use super::decode::DecodeError;
use super::decode::Payload;
use super::extensions::{
    self, CMD_REGION_IO_FDS, CMD_REGION_IO_FDS_REPLY, CMD_REGISTER_MIRROR,
    CMD_REGISTER_MIRROR_REPLY, MirrorLayout, SubRegion,
};

pub const HEADER_SIZE: usize = 16;
/// The largest payload (SyncSysmemMsg).
pub const MAX_PAYLOAD: usize = 192;
/// QEMU accepts fewer than this many fds on one message.
pub const MAX_FDS: usize = 8;
/// RAM regions one SYNC_SYSMEM can describe.
pub const MAX_SYSMEM_REGIONS: usize = 8;
/// The error value of a RET payload.
pub const RET_ERROR: u64 = u64::MAX;

pub const CMD_SYNC_SYSMEM: i32 = 0;
pub const CMD_RET: i32 = 1;
pub const CMD_PCI_CFGWRITE: i32 = 2;
pub const CMD_PCI_CFGREAD: i32 = 3;
pub const CMD_BAR_WRITE: i32 = 4;
pub const CMD_BAR_READ: i32 = 5;
pub const CMD_SET_IRQFD: i32 = 6;
pub const CMD_DEVICE_RESET: i32 = 7;
/// From QEMU's ioregionfd RFC (never merged): only sent to remotes known to
/// support it.
pub const CMD_BAR_INFO: i32 = 8;
/// Every command this module decodes: QEMU's, the RFC's and ours.
pub const COMMANDS: &[i32] = &[
    CMD_SYNC_SYSMEM,
    CMD_RET,
    CMD_PCI_CFGWRITE,
    CMD_PCI_CFGREAD,
    CMD_BAR_WRITE,
    CMD_BAR_READ,
    CMD_SET_IRQFD,
    CMD_DEVICE_RESET,
    CMD_BAR_INFO,
    CMD_REGION_IO_FDS,
    CMD_REGION_IO_FDS_REPLY,
    CMD_REGISTER_MIRROR,
    CMD_REGISTER_MIRROR_REPLY,
];

const PCI_CONF_SIZE: usize = 12;
const BAR_ACCESS_SIZE: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysmemRegion {
    pub gpa: u64,
    pub size: u64,
    pub offset: u64,
}

#[derive(Debug)]
pub enum Message {
    /// Guest RAM: one fd per region.
    SyncSysmem {
        regions: Vec<SysmemRegion>,
        fds: Vec<File>,
    },
    /// A reply; `None` is the empty RET that DEVICE_RESET gets.
    Ret(Option<u64>),
    PciCfgWrite {
        addr: u32,
        val: u32,
        len: u32,
    },
    PciCfgRead {
        addr: u32,
        len: u32,
    },
    /// `addr` is the absolute guest address (memory) or port (I/O).
    BarWrite {
        addr: u64,
        val: u64,
        size: u32,
        memory: bool,
    },
    BarRead {
        addr: u64,
        size: u32,
        memory: bool,
    },
    SetIrqfd {
        irqfd: File,
        resamplefd: File,
    },
    DeviceReset,
    BarInfo {
        bar: u32,
        memory: bool,
    },
    /// Asks for BAR `bar`'s ioregionfd sub-regions, with fds for vCPU `vcpu`.
    RegionIoFdsQuery {
        bar: u32,
        vcpu: u32,
    },
    /// The answer: one fd per sub-region (`fd_index` names it).
    RegionIoFds {
        regions: Vec<SubRegion>,
        fds: Vec<File>,
    },
    /// Asks which registers of BAR `bar` the remote mirrors.
    RegisterMirrorQuery {
        bar: u32,
    },
    /// The answer: the registers, and the page's memfd if there are any.
    RegisterMirror {
        layout: MirrorLayout,
        fds: Vec<File>,
    },
}

/// A message as bytes plus the fds to send with it.
pub struct Encoded<'a> {
    pub bytes: Vec<u8>,
    pub fds: Vec<&'a File>,
}

fn header(cmd: i32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_SIZE + payload.len());
    out.extend_from_slice(&cmd.to_ne_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(payload.len() as u64).to_ne_bytes());
    out.extend_from_slice(payload);
    out
}

fn pci_conf(addr: u32, val: u32, len: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(PCI_CONF_SIZE);
    p.extend_from_slice(&addr.to_ne_bytes());
    p.extend_from_slice(&val.to_ne_bytes());
    p.extend_from_slice(&(len as i32).to_ne_bytes());
    p
}

fn bar_access(addr: u64, val: u64, size: u32, memory: bool) -> Vec<u8> {
    let mut p = Vec::with_capacity(BAR_ACCESS_SIZE);
    p.extend_from_slice(&addr.to_ne_bytes());
    p.extend_from_slice(&val.to_ne_bytes());
    p.extend_from_slice(&size.to_ne_bytes());
    p.extend_from_slice(&[u8::from(memory), 0, 0, 0]);
    p
}

impl Message {
    pub fn command(&self) -> i32 {
        match self {
            Message::SyncSysmem { .. } => CMD_SYNC_SYSMEM,
            Message::Ret(_) => CMD_RET,
            Message::PciCfgWrite { .. } => CMD_PCI_CFGWRITE,
            Message::PciCfgRead { .. } => CMD_PCI_CFGREAD,
            Message::BarWrite { .. } => CMD_BAR_WRITE,
            Message::BarRead { .. } => CMD_BAR_READ,
            Message::SetIrqfd { .. } => CMD_SET_IRQFD,
            Message::DeviceReset => CMD_DEVICE_RESET,
            Message::BarInfo { .. } => CMD_BAR_INFO,
            Message::RegionIoFdsQuery { .. } => CMD_REGION_IO_FDS,
            Message::RegionIoFds { .. } => CMD_REGION_IO_FDS_REPLY,
            Message::RegisterMirrorQuery { .. } => CMD_REGISTER_MIRROR,
            Message::RegisterMirror { .. } => CMD_REGISTER_MIRROR_REPLY,
        }
    }

    pub fn encode(&self) -> Encoded<'_> {
        let (payload, fds): (Vec<u8>, Vec<&File>) = match self {
            Message::SyncSysmem { regions, fds } => {
                let mut p = vec![0u8; MAX_PAYLOAD];
                for (i, r) in regions.iter().enumerate().take(MAX_SYSMEM_REGIONS) {
                    p[i * 8..i * 8 + 8].copy_from_slice(&r.gpa.to_ne_bytes());
                    p[64 + i * 8..72 + i * 8].copy_from_slice(&r.size.to_ne_bytes());
                    p[128 + i * 8..136 + i * 8].copy_from_slice(&r.offset.to_ne_bytes());
                }
                (p, fds.iter().collect())
            }
            Message::Ret(Some(v)) => (v.to_ne_bytes().to_vec(), vec![]),
            Message::Ret(None) | Message::DeviceReset => (vec![], vec![]),
            Message::PciCfgWrite { addr, val, len } => (pci_conf(*addr, *val, *len), vec![]),
            Message::PciCfgRead { addr, len } => (pci_conf(*addr, 0, *len), vec![]),
            Message::BarWrite {
                addr,
                val,
                size,
                memory,
            } => (bar_access(*addr, *val, *size, *memory), vec![]),
            Message::BarRead { addr, size, memory } => {
                (bar_access(*addr, 0, *size, *memory), vec![])
            }
            Message::SetIrqfd { irqfd, resamplefd } => (vec![], vec![irqfd, resamplefd]),
            Message::BarInfo { bar, memory } => (
                (u64::from(*bar) | (u64::from(*memory) << 32))
                    .to_ne_bytes()
                    .to_vec(),
                vec![],
            ),
            Message::RegionIoFdsQuery { bar, vcpu } => {
                ([bar.to_ne_bytes(), vcpu.to_ne_bytes()].concat(), vec![])
            }
            Message::RegionIoFds { regions, fds } => (
                extensions::encode_sub_regions(regions),
                fds.iter().collect(),
            ),
            Message::RegisterMirrorQuery { bar } => ([bar.to_ne_bytes(), [0; 4]].concat(), vec![]),
            Message::RegisterMirror { layout, fds } => {
                (extensions::encode_mirrored(layout), fds.iter().collect())
            }
        };
        Encoded {
            bytes: header(self.command(), &payload),
            fds,
        }
    }

    /// Validates and decodes one message. `fds` are owned and dropped
    /// (closed) when the message is refused.
    pub fn decode(cmd: i32, payload: &[u8], fds: Vec<File>) -> Result<Message, DecodeError> {
        let p = Payload::new(cmd, payload, fds.len());
        let size = p.size();
        let want_size = |expected, name| p.want_size(expected, name);
        let want_fds = |n, name| p.want_fds(n, name);
        let u32_at = |o| p.u32_at(o);
        let u64_at = |o| p.u64_at(o);
        match cmd {
            CMD_SYNC_SYSMEM => {
                want_size(MAX_PAYLOAD, "192")?;
                if fds.is_empty() || fds.len() > MAX_SYSMEM_REGIONS {
                    return Err(DecodeError::BadFds {
                        cmd,
                        got: fds.len(),
                        expected: "1 to 8",
                    });
                }
                let regions = (0..fds.len())
                    .map(|i| {
                        let r = SysmemRegion {
                            gpa: u64_at(i * 8),
                            size: u64_at(64 + i * 8),
                            offset: u64_at(128 + i * 8),
                        };
                        let ok = r.size > 0
                            && r.gpa.checked_add(r.size).is_some()
                            && r.offset.checked_add(r.size).is_some();
                        ok.then_some(r).ok_or(DecodeError::BadRegion { index: i })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Message::SyncSysmem { regions, fds })
            }
            CMD_RET => {
                want_fds(0, "none")?;
                match payload.len() {
                    0 => Ok(Message::Ret(None)),
                    8 => Ok(Message::Ret(Some(u64_at(0)))),
                    _ => Err(DecodeError::BadSize {
                        cmd,
                        size,
                        expected: "0 or 8",
                    }),
                }
            }
            CMD_PCI_CFGWRITE | CMD_PCI_CFGREAD => {
                want_size(PCI_CONF_SIZE, "12")?;
                want_fds(0, "none")?;
                let (addr, val, len) = (u32_at(0), u32_at(4), u32_at(8) as i32);
                if !matches!(len, 1 | 2 | 4) || addr.checked_add(len as u32).is_none_or(|e| e > 256)
                {
                    return Err(DecodeError::BadConfigAccess { addr, len });
                }
                let len = len as u32;
                Ok(if cmd == CMD_PCI_CFGWRITE {
                    Message::PciCfgWrite { addr, val, len }
                } else {
                    Message::PciCfgRead { addr, len }
                })
            }
            CMD_BAR_WRITE | CMD_BAR_READ => {
                want_size(BAR_ACCESS_SIZE, "24")?;
                want_fds(0, "none")?;
                let (addr, val, size) = (u64_at(0), u64_at(8), u32_at(16));
                let memory = payload[20] != 0;
                if !matches!(size, 1 | 2 | 4 | 8) {
                    return Err(DecodeError::BadAccessSize(size));
                }
                Ok(if cmd == CMD_BAR_WRITE {
                    Message::BarWrite {
                        addr,
                        val,
                        size,
                        memory,
                    }
                } else {
                    Message::BarRead { addr, size, memory }
                })
            }
            CMD_SET_IRQFD => {
                want_size(0, "0")?;
                want_fds(2, "2")?;
                let mut fds = fds.into_iter();
                let irqfd = fds.next().expect("2 fds");
                let resamplefd = fds.next().expect("2 fds");
                Ok(Message::SetIrqfd { irqfd, resamplefd })
            }
            CMD_DEVICE_RESET => {
                want_size(0, "0")?;
                want_fds(0, "none")?;
                Ok(Message::DeviceReset)
            }
            CMD_BAR_INFO => {
                want_size(8, "8")?;
                want_fds(0, "none")?;
                let v = u64_at(0);
                Ok(Message::BarInfo {
                    bar: v as u32,
                    memory: v >> 32 & 1 != 0,
                })
            }
            CMD_REGION_IO_FDS => {
                want_size(8, "8")?;
                want_fds(0, "none")?;
                Ok(Message::RegionIoFdsQuery {
                    bar: u32_at(0),
                    vcpu: u32_at(4),
                })
            }
            CMD_REGION_IO_FDS_REPLY => {
                let regions = extensions::decode_sub_regions(&p)?;
                Ok(Message::RegionIoFds { regions, fds })
            }
            CMD_REGISTER_MIRROR => {
                want_size(8, "8")?;
                want_fds(0, "none")?;
                Ok(Message::RegisterMirrorQuery { bar: u32_at(0) })
            }
            CMD_REGISTER_MIRROR_REPLY => {
                let layout = extensions::decode_mirrored(&p)?;
                Ok(Message::RegisterMirror { layout, fds })
            }
            other => Err(DecodeError::UnknownCommand(other)),
        }
    }
}

/// Parses a header into (command, payload size), refusing oversize payloads.
pub fn parse_header(bytes: &[u8; HEADER_SIZE]) -> Result<(i32, usize), DecodeError> {
    let cmd = i32::from_ne_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let size = u64::from_ne_bytes(bytes[8..16].try_into().expect("8 bytes"));
    if !COMMANDS.contains(&cmd) {
        return Err(DecodeError::UnknownCommand(cmd));
    }
    if size > MAX_PAYLOAD as u64 {
        return Err(DecodeError::BadSize {
            cmd,
            size,
            expected: "at most 192",
        });
    }
    Ok((cmd, size as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::extensions::{MirroredRegister, SUB_REGION_POSTED_WRITES};

    fn roundtrip(msg: &Message, fds: Vec<File>) -> Message {
        let enc = msg.encode();
        let (cmd, size) = parse_header(enc.bytes[..16].try_into().unwrap()).unwrap();
        assert_eq!(size, enc.bytes.len() - HEADER_SIZE);
        Message::decode(cmd, &enc.bytes[16..], fds).unwrap()
    }

    fn file() -> File {
        File::open("/dev/null").unwrap()
    }

    #[test]
    fn layouts_match_qemu_byte_for_byte() {
        let enc = Message::BarRead {
            addr: 0xc000_0014,
            size: 4,
            memory: true,
        }
        .encode();
        let mut want = vec![5, 0, 0, 0, 0, 0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(&0xc000_0014u64.to_le_bytes());
        want.extend_from_slice(&[0; 8]);
        want.extend_from_slice(&[4, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(enc.bytes, want);
        let enc = Message::PciCfgWrite {
            addr: 0x04,
            val: 0x7,
            len: 2,
        }
        .encode();
        assert_eq!(
            &enc.bytes[..16],
            &[2, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(&enc.bytes[16..], &[4, 0, 0, 0, 7, 0, 0, 0, 2, 0, 0, 0]);
        let enc = Message::BarInfo {
            bar: 2,
            memory: true,
        }
        .encode();
        assert_eq!(&enc.bytes[16..], &[2, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(Message::DeviceReset.encode().bytes.len(), 16);
        let sysmem = Message::SyncSysmem {
            regions: vec![SysmemRegion {
                gpa: 0x1_0000_0000,
                size: 0x4000_0000,
                offset: 0xc000_0000,
            }],
            fds: vec![file()],
        };
        let enc = sysmem.encode();
        assert_eq!(enc.bytes.len(), 16 + 192);
        assert_eq!(&enc.bytes[16..24], &0x1_0000_0000u64.to_le_bytes());
        assert_eq!(&enc.bytes[80..88], &0x4000_0000u64.to_le_bytes());
        assert_eq!(&enc.bytes[144..152], &0xc000_0000u64.to_le_bytes());
        assert_eq!(enc.fds.len(), 1);
    }

    #[test]
    fn region_io_fds_layout_and_validation() {
        let enc = Message::RegionIoFdsQuery { bar: 1, vcpu: 3 }.encode();
        assert_eq!(&enc.bytes[..4], &64i32.to_le_bytes());
        assert_eq!(&enc.bytes[16..], &[1, 0, 0, 0, 3, 0, 0, 0]);
        let region = SubRegion {
            offset: 0x80,
            size: 0x100,
            fd_index: 0,
            flags: SUB_REGION_POSTED_WRITES,
            user_data: 0x1_0000_0080,
        };
        let reply = Message::RegionIoFds {
            regions: vec![region],
            fds: vec![file()],
        };
        let enc = reply.encode();
        assert_eq!(enc.bytes.len(), 16 + 8 + 40);
        let p = &enc.bytes[16..];
        assert_eq!(&p[..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&p[8..16], &0x80u64.to_le_bytes());
        assert_eq!(&p[16..24], &0x100u64.to_le_bytes());
        assert_eq!(&p[24..28], &0u32.to_le_bytes(), "fd index");
        assert_eq!(&p[28..32], &1u32.to_le_bytes(), "type ioregionfd");
        assert_eq!(&p[32..36], &1u32.to_le_bytes(), "posted writes");
        assert_eq!(&p[40..48], &0x1_0000_0080u64.to_le_bytes());
        match Message::decode(65, &enc.bytes[16..], vec![file()]).unwrap() {
            Message::RegionIoFds { regions, fds } => {
                assert_eq!(regions, vec![region]);
                assert_eq!(fds.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        // A missing fd, an fd index out of range, an unknown type.
        assert!(Message::decode(65, &enc.bytes[16..], vec![]).is_err());
        let mut bad = enc.bytes[16..].to_vec();
        bad[24] = 1;
        assert!(Message::decode(65, &bad, vec![file()]).is_err());
        let mut bad = enc.bytes[16..].to_vec();
        bad[28] = 2;
        assert!(Message::decode(65, &bad, vec![file()]).is_err());
        assert!(Message::decode(65, &[9, 0, 0, 0, 0, 0, 0, 0], vec![]).is_err());
    }

    #[test]
    fn register_mirror_layout_and_validation() {
        let enc = Message::RegisterMirrorQuery { bar: 1 }.encode();
        assert_eq!(&enc.bytes[..4], &66i32.to_le_bytes());
        assert_eq!(&enc.bytes[16..], &[1, 0, 0, 0, 0, 0, 0, 0]);
        let istat = MirroredRegister::new(0x14, 1, 0x40);
        let reply = Message::RegisterMirror {
            layout: MirrorLayout {
                registers: vec![istat],
                counts_posted_writes: false,
                reads_sent_count: false,
                posted_ring: false,
            },
            fds: vec![file()],
        };
        let enc = reply.encode();
        assert_eq!(enc.bytes.len(), 16 + 8 + 16);
        let p = &enc.bytes[16..];
        assert_eq!(&p[..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&p[8..16], &0x14u64.to_le_bytes());
        assert_eq!(&p[16..20], &1u32.to_le_bytes());
        assert_eq!(&p[20..24], &0x40u32.to_le_bytes());
        match Message::decode(67, p, vec![file()]).unwrap() {
            Message::RegisterMirror { layout, fds } => {
                assert_eq!(layout.registers, vec![istat]);
                assert!(!layout.counts_posted_writes);
                assert_eq!(fds.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        // The second word: flag 1, the page counts the posted writes
        // applied in its last 8 bytes, which no register may then use.
        let mut counted = p.to_vec();
        counted[4] = 1;
        match Message::decode(67, &counted, vec![file()]).unwrap() {
            Message::RegisterMirror { layout, .. } => assert!(layout.counts_posted_writes),
            other => panic!("{other:?}"),
        }
        let mut over_count = counted.clone();
        over_count[20..24].copy_from_slice(&4088u32.to_le_bytes());
        assert!(Message::decode(67, &over_count, vec![file()]).is_err());
        let mut unknown_flag = p.to_vec();
        unknown_flag[4] = 4;
        assert_eq!(
            Message::decode(67, &unknown_flag, vec![file()]).unwrap_err(),
            DecodeError::BadMirrorFlags(4)
        );
        assert!(
            Message::decode(67, &[0, 0, 0, 0, 1, 0, 0, 0], vec![]).is_err(),
            "a count without a page"
        );
        // No registers, no page.
        assert!(matches!(
            Message::decode(67, &[0; 8], vec![]).unwrap(),
            Message::RegisterMirror { layout, .. } if layout.registers.is_empty()
        ));
        assert!(Message::decode(67, &[0; 8], vec![file()]).is_err());
        // Registers without their page; a size of 3; one past the page.
        assert!(Message::decode(67, p, vec![]).is_err());
        let mut bad = p.to_vec();
        bad[16] = 3;
        assert!(Message::decode(67, &bad, vec![file()]).is_err());
        let mut bad = p.to_vec();
        bad[20..24].copy_from_slice(&4096u32.to_le_bytes());
        assert!(Message::decode(67, &bad, vec![file()]).is_err());
        let mut hdr = [0u8; 16];
        hdr[0] = 67;
        assert!(parse_header(&hdr).is_ok());
        hdr[0] = 68;
        assert!(parse_header(&hdr).is_err());
    }

    #[test]
    fn messages_round_trip() {
        assert!(matches!(
            roundtrip(
                &Message::BarWrite {
                    addr: 0xc010,
                    val: 0xab,
                    size: 1,
                    memory: false
                },
                vec![]
            ),
            Message::BarWrite {
                addr: 0xc010,
                val: 0xab,
                size: 1,
                memory: false
            }
        ));
        assert!(matches!(
            roundtrip(&Message::Ret(Some(7)), vec![]),
            Message::Ret(Some(7))
        ));
        assert!(matches!(
            roundtrip(&Message::Ret(None), vec![]),
            Message::Ret(None)
        ));
        assert!(matches!(
            roundtrip(&Message::PciCfgRead { addr: 0x3c, len: 1 }, vec![]),
            Message::PciCfgRead { addr: 0x3c, len: 1 }
        ));
        assert!(matches!(
            roundtrip(
                &Message::BarInfo {
                    bar: 5,
                    memory: false
                },
                vec![]
            ),
            Message::BarInfo {
                bar: 5,
                memory: false
            }
        ));
        let irq = Message::SetIrqfd {
            irqfd: file(),
            resamplefd: file(),
        };
        assert!(matches!(
            roundtrip(&irq, vec![file(), file()]),
            Message::SetIrqfd { .. }
        ));
        let sysmem = Message::SyncSysmem {
            regions: vec![
                SysmemRegion {
                    gpa: 0,
                    size: 0xc000_0000,
                    offset: 0,
                },
                SysmemRegion {
                    gpa: 1 << 32,
                    size: 1 << 30,
                    offset: 0xc000_0000,
                },
            ],
            fds: vec![file(), file()],
        };
        match roundtrip(&sysmem, vec![file(), file()]) {
            Message::SyncSysmem { regions, .. } => assert_eq!(regions[1].offset, 0xc000_0000),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_command_list_is_what_decode_knows() {
        for cmd in -1i32..=80 {
            let mut header = [0u8; HEADER_SIZE];
            header[..4].copy_from_slice(&cmd.to_ne_bytes());
            let known = parse_header(&header).is_ok();
            let decodes = !matches!(
                Message::decode(cmd, &[], vec![]),
                Err(DecodeError::UnknownCommand(_))
            );
            assert_eq!(known, COMMANDS.contains(&cmd), "header of command {cmd}");
            assert_eq!(decodes, known, "decode of command {cmd}");
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        let bad = |cmd, payload: &[u8], fds| Message::decode(cmd, payload, fds).unwrap_err();
        assert_eq!(bad(9, &[], vec![]), DecodeError::UnknownCommand(9));
        assert!(matches!(
            bad(CMD_BAR_READ, &[0; 23], vec![]),
            DecodeError::BadSize { .. }
        ));
        assert!(matches!(
            bad(CMD_BAR_READ, &[0; 24], vec![file()]),
            DecodeError::BadFds { .. }
        ));
        let mut access = Message::BarRead {
            addr: 0,
            size: 4,
            memory: true,
        }
        .encode()
        .bytes;
        access[16 + 16] = 3;
        assert_eq!(
            bad(CMD_BAR_READ, &access[16..], vec![]),
            DecodeError::BadAccessSize(3)
        );
        let cfg = Message::PciCfgRead { addr: 0xfe, len: 4 }.encode().bytes;
        assert!(matches!(
            bad(CMD_PCI_CFGREAD, &cfg[16..], vec![]),
            DecodeError::BadConfigAccess { .. }
        ));
        assert!(matches!(
            bad(CMD_SET_IRQFD, &[], vec![file()]),
            DecodeError::BadFds { .. }
        ));
        assert!(matches!(
            bad(CMD_SYNC_SYSMEM, &[0; 192], vec![]),
            DecodeError::BadFds { .. }
        ));
        assert!(matches!(
            bad(CMD_SYNC_SYSMEM, &[0; 192], vec![file()]),
            DecodeError::BadRegion { index: 0 }
        ));
        assert!(matches!(
            bad(CMD_RET, &[0; 4], vec![]),
            DecodeError::BadSize { .. }
        ));
        let mut hdr = [0u8; 16];
        hdr[8] = 193;
        assert!(matches!(
            parse_header(&hdr),
            Err(DecodeError::BadSize { .. })
        ));
        hdr[0..4].copy_from_slice(&[0xff; 4]);
        assert!(matches!(
            parse_header(&hdr),
            Err(DecodeError::UnknownCommand(-1))
        ));
    }
}
