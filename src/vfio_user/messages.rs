//! The payloads of vfio-user messages, after the header, each encoded and
//! decoded byte by byte. Decoding checks sizes and fields a peer could get
//! wrong or lie about; what a field means for the device (is region 3
//! there? may this range be mapped?) is the caller's to judge.

use super::WireError;
use super::header::Command;

/// A payload being read: bounds are checked before any field is.
struct Fields<'a> {
    command: Command,
    bytes: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(command: Command, bytes: &'a [u8]) -> Self {
        Fields { command, bytes }
    }

    fn exactly(&self, len: usize, expected: &'static str) -> Result<(), WireError> {
        self.at_least(len, expected)?;
        if self.bytes.len() != len {
            return Err(self.size_error(expected));
        }
        Ok(())
    }

    fn at_least(&self, len: usize, expected: &'static str) -> Result<(), WireError> {
        if self.bytes.len() < len {
            return Err(self.size_error(expected));
        }
        Ok(())
    }

    fn size_error(&self, expected: &'static str) -> WireError {
        WireError::PayloadSize {
            command: self.command,
            size: self.bytes.len(),
            expected,
        }
    }

    fn field(&self, what: &'static str) -> WireError {
        WireError::Field {
            command: self.command,
            what,
        }
    }

    fn u32(&self, o: usize) -> u32 {
        u32::from_le_bytes(self.bytes[o..o + 4].try_into().expect("4 bytes"))
    }

    fn u64(&self, o: usize) -> u64 {
        u64::from_le_bytes(self.bytes[o..o + 8].try_into().expect("8 bytes"))
    }
}

/// Appends little-endian fields to a payload.
#[derive(Default)]
struct Out(Vec<u8>);

impl Out {
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
}

pub const DMA_READABLE: u32 = 1 << 0;
pub const DMA_WRITABLE: u32 = 1 << 1;

/// DMA_MAP: client memory the server may use, at `address` in the DMA
/// space. With an fd alongside, the memory is at `offset` in that file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMap {
    pub flags: u32,
    pub offset: u64,
    pub address: u64,
    pub size: u64,
}

impl DmaMap {
    const SIZE: usize = 32;

    pub fn encode(&self) -> Vec<u8> {
        Out::default()
            .u32(Self::SIZE as u32)
            .u32(self.flags)
            .u64(self.offset)
            .u64(self.address)
            .u64(self.size)
            .0
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let f = Fields::new(Command::DmaMap, bytes);
        f.exactly(Self::SIZE, "32 bytes")?;
        if (f.u32(0) as usize) < Self::SIZE {
            return Err(f.field("argsz is smaller than the request"));
        }
        let map = DmaMap {
            flags: f.u32(4),
            offset: f.u64(8),
            address: f.u64(16),
            size: f.u64(24),
        };
        if map.flags & !(DMA_READABLE | DMA_WRITABLE) != 0 {
            return Err(f.field("unknown flags"));
        }
        if map.size == 0 || map.address.checked_add(map.size).is_none() {
            return Err(f.field("the range is empty or wraps around"));
        }
        if map.offset.checked_add(map.size).is_none() {
            return Err(f.field("the file range wraps around"));
        }
        Ok(map)
    }
}

/// DMA_UNMAP, request and reply alike: the mapping at `address` of `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaUnmap {
    pub argsz: u32,
    pub flags: u32,
    pub address: u64,
    pub size: u64,
}

impl DmaUnmap {
    const SIZE: usize = 24;

    pub fn encode(&self) -> Vec<u8> {
        Out::default()
            .u32(self.argsz)
            .u32(self.flags)
            .u64(self.address)
            .u64(self.size)
            .0
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let f = Fields::new(Command::DmaUnmap, bytes);
        f.exactly(Self::SIZE, "24 bytes")?;
        Ok(DmaUnmap {
            argsz: f.u32(0),
            flags: f.u32(4),
            address: f.u64(8),
            size: f.u64(16),
        })
    }
}

pub const DEVICE_FLAGS_RESET: u32 = 1 << 0;
pub const DEVICE_FLAGS_PCI: u32 = 1 << 1;

/// DEVICE_GET_INFO, request (only `argsz` set) and reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    pub argsz: u32,
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
}

impl DeviceInfo {
    pub const SIZE: usize = 16;

    pub fn encode(&self) -> Vec<u8> {
        Out::default()
            .u32(self.argsz)
            .u32(self.flags)
            .u32(self.num_regions)
            .u32(self.num_irqs)
            .0
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let f = Fields::new(Command::DeviceGetInfo, bytes);
        f.exactly(Self::SIZE, "16 bytes")?;
        Ok(DeviceInfo {
            argsz: f.u32(0),
            flags: f.u32(4),
            num_regions: f.u32(8),
            num_irqs: f.u32(12),
        })
    }
}

pub const REGION_READ: u32 = 1 << 0;
pub const REGION_WRITE: u32 = 1 << 1;
pub const REGION_MMAP: u32 = 1 << 2;
pub const REGION_CAPS: u32 = 1 << 3;

/// The PCI regions' indexes: BARs 0 to 5, then these.
pub const PCI_ROM_REGION: u32 = 6;
pub const PCI_CONFIG_REGION: u32 = 7;
pub const PCI_VGA_REGION: u32 = 8;
pub const PCI_NUM_REGIONS: u32 = 9;

/// DEVICE_GET_REGION_INFO, request (`argsz` and `index` set) and reply,
/// whose capability chain (`caps`) follows the fixed part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfo {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub cap_offset: u32,
    pub size: u64,
    pub offset: u64,
    pub caps: Vec<u8>,
}

impl RegionInfo {
    pub const SIZE: usize = 32;

    pub fn query(index: u32) -> Self {
        RegionInfo {
            argsz: Self::SIZE as u32,
            flags: 0,
            index,
            cap_offset: 0,
            size: 0,
            offset: 0,
            caps: Vec::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        Out::default()
            .u32(self.argsz)
            .u32(self.flags)
            .u32(self.index)
            .u32(self.cap_offset)
            .u64(self.size)
            .u64(self.offset)
            .bytes(&self.caps)
            .0
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let f = Fields::new(Command::DeviceGetRegionInfo, bytes);
        f.at_least(Self::SIZE, "at least 32 bytes")?;
        Ok(RegionInfo {
            argsz: f.u32(0),
            flags: f.u32(4),
            index: f.u32(8),
            cap_offset: f.u32(12),
            size: f.u64(16),
            offset: f.u64(24),
            caps: bytes[Self::SIZE..].to_vec(),
        })
    }
}

/// DEVICE_GET_IRQ_INFO, request and reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfo {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub count: u32,
}

pub const IRQ_INFO_EVENTFD: u32 = 1 << 0;
pub const IRQ_INFO_MASKABLE: u32 = 1 << 1;
pub const IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
pub const IRQ_INFO_NORESIZE: u32 = 1 << 3;

/// The PCI interrupt types' indexes.
pub const PCI_INTX_IRQ: u32 = 0;
pub const PCI_MSI_IRQ: u32 = 1;
pub const PCI_MSIX_IRQ: u32 = 2;
pub const PCI_ERR_IRQ: u32 = 3;
pub const PCI_REQ_IRQ: u32 = 4;
pub const PCI_NUM_IRQS: u32 = 5;

impl IrqInfo {
    pub const SIZE: usize = 16;

    pub fn encode(&self) -> Vec<u8> {
        Out::default()
            .u32(self.argsz)
            .u32(self.flags)
            .u32(self.index)
            .u32(self.count)
            .0
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let f = Fields::new(Command::DeviceGetIrqInfo, bytes);
        f.exactly(Self::SIZE, "16 bytes")?;
        Ok(IrqInfo {
            argsz: f.u32(0),
            flags: f.u32(4),
            index: f.u32(8),
            count: f.u32(12),
        })
    }
}

pub const IRQ_SET_DATA_NONE: u32 = 1 << 0;
pub const IRQ_SET_DATA_BOOL: u32 = 1 << 1;
pub const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
pub const IRQ_SET_ACTION_MASK: u32 = 1 << 3;
pub const IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
pub const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
const IRQ_SET_DATA: u32 = IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_DATA_EVENTFD;
const IRQ_SET_ACTION: u32 = IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER;

/// DEVICE_SET_IRQS: `action` on interrupts `start..start + count` of type
/// `index`; with DATA_BOOL, `data` says which of them; with DATA_EVENTFD
/// the eventfds travel alongside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetIrqs {
    pub flags: u32,
    pub index: u32,
    pub start: u32,
    pub count: u32,
    pub data: Vec<u8>,
}

impl SetIrqs {
    const HEAD: usize = 20;

    pub fn encode(&self) -> Vec<u8> {
        Out::default()
            .u32((Self::HEAD + self.data.len()) as u32)
            .u32(self.flags)
            .u32(self.index)
            .u32(self.start)
            .u32(self.count)
            .bytes(&self.data)
            .0
    }

    /// One DATA flag and one ACTION flag, nothing else, and booleans for
    /// exactly the interrupts named when DATA_BOOL says so.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let f = Fields::new(Command::DeviceSetIrqs, bytes);
        f.at_least(Self::HEAD, "at least 20 bytes")?;
        let set = SetIrqs {
            flags: f.u32(4),
            index: f.u32(8),
            start: f.u32(12),
            count: f.u32(16),
            data: bytes[Self::HEAD..].to_vec(),
        };
        let (data, action) = (set.flags & IRQ_SET_DATA, set.flags & IRQ_SET_ACTION);
        if set.flags & !(IRQ_SET_DATA | IRQ_SET_ACTION) != 0
            || data.count_ones() != 1
            || action.count_ones() != 1
        {
            return Err(f.field("flags must name one kind of data and one action"));
        }
        if set.start.checked_add(set.count).is_none() {
            return Err(f.field("start + count wraps around"));
        }
        let want = if data == IRQ_SET_DATA_BOOL {
            set.count as usize
        } else {
            0
        };
        if set.data.len() != want {
            return Err(f.size_error("20 bytes, and one byte per interrupt with DATA_BOOL"));
        }
        Ok(set)
    }
}

/// REGION_READ and REGION_WRITE: `count` bytes at `offset` of region
/// `region`. `data` is empty in a read request and a write reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionAccess {
    pub offset: u64,
    pub region: u32,
    pub count: u32,
    pub data: Vec<u8>,
}

impl RegionAccess {
    const HEAD: usize = 16;

    pub fn encode(&self) -> Vec<u8> {
        Out::default()
            .u64(self.offset)
            .u32(self.region)
            .u32(self.count)
            .bytes(&self.data)
            .0
    }

    /// `with_data`: whether this message carries the `count` bytes (a read
    /// reply, a write request) or none (a read request, a write reply).
    /// `max_count` is the largest transfer we agreed to.
    pub fn decode(
        command: Command,
        bytes: &[u8],
        with_data: bool,
        max_count: u32,
    ) -> Result<Self, WireError> {
        let f = Fields::new(command, bytes);
        f.at_least(Self::HEAD, "at least 16 bytes")?;
        let access = RegionAccess {
            offset: f.u64(0),
            region: f.u32(8),
            count: f.u32(12),
            data: bytes[Self::HEAD..].to_vec(),
        };
        if access.count == 0 || access.count > max_count {
            return Err(f.field("count is 0 or over the agreed transfer size"));
        }
        let want = if with_data { access.count as usize } else { 0 };
        if access.data.len() != want {
            return Err(f.size_error("16 bytes, and the count's data where it belongs"));
        }
        Ok(access)
    }
}

/// DMA_READ and DMA_WRITE (server to client): `count` bytes at `address`
/// of the DMA space. `data` is empty in a read request and a write reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaAccess {
    pub address: u64,
    pub count: u64,
    pub data: Vec<u8>,
}

impl DmaAccess {
    const HEAD: usize = 16;

    pub fn encode(&self) -> Vec<u8> {
        Out::default()
            .u64(self.address)
            .u64(self.count)
            .bytes(&self.data)
            .0
    }

    pub fn decode(
        command: Command,
        bytes: &[u8],
        with_data: bool,
        max_count: u64,
    ) -> Result<Self, WireError> {
        let f = Fields::new(command, bytes);
        f.at_least(Self::HEAD, "at least 16 bytes")?;
        let access = DmaAccess {
            address: f.u64(0),
            count: f.u64(8),
            data: bytes[Self::HEAD..].to_vec(),
        };
        if access.count == 0 || access.count > max_count {
            return Err(f.field("count is 0 or over the agreed transfer size"));
        }
        if access.address.checked_add(access.count).is_none() {
            return Err(f.field("the range wraps around"));
        }
        let want = if with_data { access.count as usize } else { 0 };
        if access.data.len() != want {
            return Err(f.size_error("16 bytes, and the count's data where it belongs"));
        }
        Ok(access)
    }
}

/// One write of REGION_WRITE_MULTI: up to 8 bytes, in `data`'s low bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SingleWrite {
    pub offset: u64,
    pub region: u32,
    pub count: u32,
    pub data: u64,
}

/// REGION_WRITE_MULTI's request: writes to apply in order.
pub fn encode_write_multi(writes: &[SingleWrite]) -> Vec<u8> {
    let mut out = Out::default().u64(writes.len() as u64);
    for w in writes {
        out = out.u64(w.offset).u32(w.region).u32(w.count).u64(w.data);
    }
    out.0
}

pub fn decode_write_multi(bytes: &[u8]) -> Result<Vec<SingleWrite>, WireError> {
    const STRIDE: usize = 24;
    let f = Fields::new(Command::RegionWriteMulti, bytes);
    f.at_least(8, "8 bytes and 24 per write")?;
    let n = f.u64(0);
    if (bytes.len() - 8) as u64 != n.saturating_mul(STRIDE as u64) {
        return Err(f.size_error("8 bytes and 24 per write"));
    }
    (0..n as usize)
        .map(|i| {
            let o = 8 + i * STRIDE;
            let w = SingleWrite {
                offset: f.u64(o),
                region: f.u32(o + 8),
                count: f.u32(o + 12),
                data: f.u64(o + 16),
            };
            if !matches!(w.count, 1 | 2 | 4 | 8) {
                return Err(f.field("a write is not 1, 2, 4 or 8 bytes"));
            }
            Ok(w)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le(fields: &[(u64, usize)]) -> Vec<u8> {
        fields
            .iter()
            .flat_map(|&(v, n)| v.to_le_bytes()[..n].to_vec())
            .collect()
    }

    #[test]
    fn dma_map_byte_by_byte_and_its_lies() {
        let map = DmaMap {
            flags: DMA_READABLE | DMA_WRITABLE,
            offset: 0x1000,
            address: 0x10_0000,
            size: 0x20_0000,
        };
        let bytes = map.encode();
        assert_eq!(
            bytes,
            le(&[(32, 4), (3, 4), (0x1000, 8), (0x10_0000, 8), (0x20_0000, 8)])
        );
        assert_eq!(DmaMap::decode(&bytes).unwrap(), map);
        let with = |m: DmaMap| m.encode();
        for (bytes, what) in [
            (with(DmaMap { flags: 4, ..map }), "unknown flag"),
            (with(DmaMap { size: 0, ..map }), "empty"),
            (
                with(DmaMap {
                    address: u64::MAX,
                    ..map
                }),
                "wraps",
            ),
            (bytes[..31].to_vec(), "short"),
            (
                le(&[(16, 4), (3, 4), (0, 8), (0, 8), (1, 8)]),
                "small argsz",
            ),
        ] {
            assert!(DmaMap::decode(&bytes).is_err(), "{what}");
        }
    }

    #[test]
    fn region_accesses_carry_data_only_where_it_belongs() {
        let read = RegionAccess {
            offset: 0x14,
            region: 1,
            count: 4,
            data: Vec::new(),
        };
        let bytes = read.encode();
        assert_eq!(bytes, le(&[(0x14, 8), (1, 4), (4, 4)]));
        let c = Command::RegionRead;
        assert_eq!(RegionAccess::decode(c, &bytes, false, 8).unwrap(), read);
        assert!(RegionAccess::decode(c, &bytes, true, 8).is_err(), "no data");
        let reply = RegionAccess {
            data: vec![1, 2, 3, 4],
            ..read.clone()
        };
        assert_eq!(
            RegionAccess::decode(c, &reply.encode(), true, 8).unwrap(),
            reply
        );
        assert!(
            RegionAccess::decode(c, &reply.encode(), true, 2).is_err(),
            "over the limit"
        );
        let empty = RegionAccess {
            count: 0,
            ..read.clone()
        };
        assert!(RegionAccess::decode(c, &empty.encode(), false, 8).is_err());
    }

    #[test]
    fn set_irqs_wants_one_data_kind_and_one_action() {
        let intx = SetIrqs {
            flags: IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
            index: PCI_INTX_IRQ,
            start: 0,
            count: 1,
            data: Vec::new(),
        };
        let bytes = intx.encode();
        assert_eq!(bytes, le(&[(20, 4), (0x24, 4), (0, 4), (0, 4), (1, 4)]));
        assert_eq!(SetIrqs::decode(&bytes).unwrap(), intx);
        let bools = SetIrqs {
            flags: IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_MASK,
            count: 2,
            data: vec![1, 0],
            ..intx.clone()
        };
        assert_eq!(SetIrqs::decode(&bools.encode()).unwrap(), bools);
        for bad in [
            SetIrqs {
                flags: IRQ_SET_DATA_EVENTFD | IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER,
                ..intx.clone()
            },
            SetIrqs {
                flags: IRQ_SET_DATA_NONE,
                ..intx.clone()
            },
            SetIrqs {
                flags: IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER | (1 << 9),
                ..intx.clone()
            },
            SetIrqs {
                data: vec![1],
                ..bools.clone()
            },
            SetIrqs {
                start: u32::MAX,
                ..intx.clone()
            },
        ] {
            assert!(SetIrqs::decode(&bad.encode()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn region_info_keeps_its_capability_chain() {
        let info = RegionInfo {
            argsz: 48,
            flags: REGION_READ | REGION_WRITE | REGION_CAPS,
            index: 2,
            cap_offset: 32,
            size: 0x2000,
            offset: 0,
            caps: vec![9; 16],
        };
        let bytes = info.encode();
        assert_eq!(&bytes[..16], &le(&[(48, 4), (11, 4), (2, 4), (32, 4)])[..]);
        assert_eq!(RegionInfo::decode(&bytes).unwrap(), info);
        assert!(RegionInfo::decode(&bytes[..31]).is_err());
        assert_eq!(RegionInfo::query(7).encode().len(), 32);
    }

    #[test]
    fn fixed_size_payloads_round_trip() {
        let info = DeviceInfo {
            argsz: 16,
            flags: DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET,
            num_regions: PCI_NUM_REGIONS,
            num_irqs: PCI_NUM_IRQS,
        };
        assert_eq!(info.encode(), le(&[(16, 4), (3, 4), (9, 4), (5, 4)]));
        assert_eq!(DeviceInfo::decode(&info.encode()).unwrap(), info);
        let irq = IrqInfo {
            argsz: 16,
            flags: IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED,
            index: PCI_INTX_IRQ,
            count: 1,
        };
        assert_eq!(IrqInfo::decode(&irq.encode()).unwrap(), irq);
        let unmap = DmaUnmap {
            argsz: 24,
            flags: 0,
            address: 0x1000,
            size: 0x1000,
        };
        assert_eq!(DmaUnmap::decode(&unmap.encode()).unwrap(), unmap);
        assert!(DeviceInfo::decode(&[0; 15]).is_err());
        assert!(IrqInfo::decode(&[0; 17]).is_err());
        assert!(DmaUnmap::decode(&[0; 23]).is_err());
    }

    #[test]
    fn dma_accesses_and_write_multi() {
        let write = DmaAccess {
            address: 0x8000,
            count: 3,
            data: vec![7, 8, 9],
        };
        let c = Command::DmaWrite;
        assert_eq!(
            DmaAccess::decode(c, &write.encode(), true, 1 << 20).unwrap(),
            write
        );
        assert!(DmaAccess::decode(c, &write.encode(), false, 1 << 20).is_err());
        let wrap = DmaAccess {
            address: u64::MAX - 1,
            count: 3,
            data: Vec::new(),
        };
        assert!(DmaAccess::decode(Command::DmaRead, &wrap.encode(), false, 1 << 20).is_err());
        let writes = [
            SingleWrite {
                offset: 0x14,
                region: 1,
                count: 1,
                data: 0x80,
            },
            SingleWrite {
                offset: 0x2c,
                region: 1,
                count: 4,
                data: 0xdead_beef,
            },
        ];
        let bytes = encode_write_multi(&writes);
        assert_eq!(bytes.len(), 8 + 48);
        assert_eq!(decode_write_multi(&bytes).unwrap(), writes);
        assert!(
            decode_write_multi(&bytes[..40]).is_err(),
            "count beyond the bytes"
        );
        let mut odd = bytes.clone();
        odd[8 + 12] = 3;
        assert!(decode_write_multi(&odd).is_err(), "a 3-byte write");
    }
}
