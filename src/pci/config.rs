//! A type-0 PCI configuration space: 64 dword registers plus a mask of the
//! bits the guest may write, with BAR sizing falling out of the masks.

pub const NUM_REGS: usize = 64;
pub const NUM_BARS: usize = 6;

pub const REG_ID: usize = 0;
pub const REG_COMMAND: usize = 1;
pub const REG_CLASS: usize = 2;
pub const REG_HEADER: usize = 3;
pub const REG_BAR0: usize = 4;
pub const REG_SUBSYSTEM: usize = 11;
pub const REG_ROM: usize = 12;
pub const REG_INTERRUPT: usize = 15;

pub const COMMAND_IO: u16 = 0x1;
pub const COMMAND_MEMORY: u16 = 0x2;
pub const COMMAND_BUS_MASTER: u16 = 0x4;
pub const COMMAND_INTX_DISABLE: u16 = 0x400;

const BAR_IO: u32 = 0x1;
const BAR_IO_ADDR_MASK: u32 = !0x3;
const BAR_MEM_ADDR_MASK: u32 = !0xf;
const BAR_MEM_TYPE_64: u32 = 0x4;

/// What a BAR says when read back after the sizing write of all ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizedBar {
    /// Not implemented (reads back zero, or all ones from a missing device).
    Absent,
    /// A 64-bit memory BAR, which spans two registers.
    Memory64,
    Sized(BarSpec),
}

/// Decodes a sizing read-back: the kind from the low bits, the size from
/// the address bits that stayed zero.
pub fn sized_bar(raw: u32) -> SizedBar {
    if raw == 0 || raw == u32::MAX {
        return SizedBar::Absent;
    }
    let (kind, mask) = if raw & BAR_IO != 0 {
        (BarKind::Io, BAR_IO_ADDR_MASK)
    } else {
        (BarKind::Memory, BAR_MEM_ADDR_MASK)
    };
    if kind == BarKind::Memory && raw & BAR_MEM_TYPE_64 != 0 {
        return SizedBar::Memory64;
    }
    let size = u64::from((!(raw & mask)).wrapping_add(1));
    SizedBar::Sized(BarSpec { kind, size })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Memory,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarSpec {
    pub kind: BarKind,
    pub size: u64,
}

/// A BAR the device currently decodes: enabled in the command register and
/// placed at a nonzero address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveBar {
    pub index: u8,
    pub kind: BarKind,
    pub addr: u64,
    pub size: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("BAR {0} does not exist")]
    BadIndex(usize),
    #[error("BAR size {0:#x} is not a power of two of at least 4 (I/O) or 16 (memory) bytes")]
    BadSize(u64),
}

#[derive(Clone)]
pub struct ConfigSpace {
    regs: [u32; NUM_REGS],
    writable: [u32; NUM_REGS],
    bars: [Option<BarSpec>; NUM_BARS],
}

impl ConfigSpace {
    /// A type-0 header with the given identity; `class` is the 24-bit class code.
    pub fn new(vendor: u16, device: u16, class: u32, revision: u8) -> Self {
        let mut regs = [0u32; NUM_REGS];
        let mut writable = [0u32; NUM_REGS];
        regs[REG_ID] = u32::from(vendor) | (u32::from(device) << 16);
        regs[REG_CLASS] = (class << 8) | u32::from(revision);
        writable[REG_COMMAND] =
            u32::from(COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE);
        // Cache line size and latency timer.
        writable[REG_HEADER] = 0x0000_ffff;
        // Interrupt line.
        writable[REG_INTERRUPT] = 0x0000_00ff;
        ConfigSpace {
            regs,
            writable,
            bars: [None; NUM_BARS],
        }
    }

    /// Overwrites a register without the writable mask: the device's own view.
    pub fn set_reg(&mut self, reg: usize, value: u32) {
        self.regs[reg] = value;
    }

    pub fn set_bar(&mut self, index: usize, spec: BarSpec) -> Result<(), ConfigError> {
        if index >= NUM_BARS {
            return Err(ConfigError::BadIndex(index));
        }
        let min = match spec.kind {
            BarKind::Io => 4,
            BarKind::Memory => 16,
        };
        if !spec.size.is_power_of_two() || spec.size < min || spec.size > 1 << 31 {
            return Err(ConfigError::BadSize(spec.size));
        }
        let size_mask = !(spec.size as u32 - 1);
        let (type_bits, addr_mask) = match spec.kind {
            BarKind::Io => (BAR_IO, BAR_IO_ADDR_MASK),
            BarKind::Memory => (0, BAR_MEM_ADDR_MASK),
        };
        self.regs[REG_BAR0 + index] = type_bits;
        self.writable[REG_BAR0 + index] = size_mask & addr_mask;
        self.bars[index] = Some(spec);
        Ok(())
    }

    pub fn bar_spec(&self, index: usize) -> Option<BarSpec> {
        self.bars.get(index).copied().flatten()
    }

    /// Every implemented BAR with its index.
    pub fn bar_specs(&self) -> Vec<(usize, BarSpec)> {
        (0..NUM_BARS)
            .filter_map(|i| self.bar_spec(i).map(|s| (i, s)))
            .collect()
    }

    /// INTx pin (1 = INTA#) and the line firmware routed it to.
    pub fn set_interrupt(&mut self, pin: u8, line: u8) {
        self.regs[REG_INTERRUPT] = (u32::from(pin) << 8) | u32::from(line);
    }

    pub fn read(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(0xffff_ffff)
    }

    /// Writes `data` at byte `offset` of dword `reg`, honouring the mask.
    /// Writing all ones to a BAR then reads back its size mask.
    pub fn write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        if reg >= NUM_REGS || offset + data.len() > 4 || data.is_empty() {
            return;
        }
        let mut value = 0u32;
        let mut byte_mask = 0u32;
        for (i, b) in data.iter().enumerate() {
            let shift = (offset + i) * 8;
            value |= u32::from(*b) << shift;
            byte_mask |= 0xff << shift;
        }
        let mask = self.writable[reg] & byte_mask;
        self.regs[reg] = (self.regs[reg] & !mask) | (value & mask);
    }

    pub fn command(&self) -> u16 {
        self.regs[REG_COMMAND] as u16
    }

    pub fn bar_addr(&self, index: usize) -> Option<u64> {
        let spec = self.bar_spec(index)?;
        let raw = self.regs[REG_BAR0 + index];
        Some(u64::from(match spec.kind {
            BarKind::Io => raw & BAR_IO_ADDR_MASK,
            BarKind::Memory => raw & BAR_MEM_ADDR_MASK,
        }))
    }

    /// Places BAR `index` at `addr`, as firmware does before boot.
    pub fn set_bar_addr(&mut self, index: usize, addr: u64) {
        let mask = self.writable[REG_BAR0 + index];
        self.regs[REG_BAR0 + index] = (self.regs[REG_BAR0 + index] & !mask) | (addr as u32 & mask);
    }

    /// BARs that decode right now.
    pub fn active_bars(&self) -> Vec<ActiveBar> {
        let cmd = self.command();
        (0..NUM_BARS)
            .filter_map(|i| {
                let spec = self.bar_spec(i)?;
                let enabled = match spec.kind {
                    BarKind::Io => cmd & COMMAND_IO != 0,
                    BarKind::Memory => cmd & COMMAND_MEMORY != 0,
                };
                let addr = self.bar_addr(i)?;
                // An all-ones (sizing) or zero address is not a placement.
                let placed = addr != 0 && (addr | (spec.size - 1)) as u32 != u32::MAX;
                (enabled && placed).then_some(ActiveBar {
                    index: i as u8,
                    kind: spec.kind,
                    addr,
                    size: spec.size,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsi_like() -> ConfigSpace {
        let mut c = ConfigSpace::new(0x1000, 0x0012, 0x010000, 0);
        c.set_bar(
            0,
            BarSpec {
                kind: BarKind::Io,
                size: 256,
            },
        )
        .unwrap();
        c.set_bar(
            1,
            BarSpec {
                kind: BarKind::Memory,
                size: 1024,
            },
        )
        .unwrap();
        c.set_bar(
            2,
            BarSpec {
                kind: BarKind::Memory,
                size: 8192,
            },
        )
        .unwrap();
        c
    }

    #[test]
    fn identity_is_read_only() {
        let mut c = lsi_like();
        c.write(REG_ID, 0, &[0, 0, 0, 0]);
        assert_eq!(c.read(REG_ID), 0x0012_1000);
        assert_eq!(c.read(REG_CLASS) >> 8, 0x010000);
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut c = lsi_like();
        c.write(REG_BAR0, 0, &[0xff; 4]);
        assert_eq!(c.read(REG_BAR0), 0xffff_ff01, "256-byte I/O BAR");
        c.write(REG_BAR0 + 1, 0, &[0xff; 4]);
        assert_eq!(c.read(REG_BAR0 + 1), 0xffff_fc00, "1 KiB memory BAR");
        c.write(REG_BAR0 + 2, 0, &[0xff; 4]);
        assert_eq!(c.read(REG_BAR0 + 2), 0xffff_e000, "8 KiB memory BAR");
        c.write(REG_BAR0 + 3, 0, &[0xff; 4]);
        assert_eq!(c.read(REG_BAR0 + 3), 0, "unimplemented BAR");
        assert_eq!(c.read(REG_ROM), 0);
        // And the read-backs decode to what was set.
        for bar in 0..4 {
            c.write(REG_BAR0 + bar, 0, &[0xff; 4]);
            let expected = match c.bar_spec(bar) {
                Some(spec) => SizedBar::Sized(spec),
                None => SizedBar::Absent,
            };
            assert_eq!(sized_bar(c.read(REG_BAR0 + bar)), expected, "BAR{bar}");
        }
        assert_eq!(sized_bar(0xffff_f00c), SizedBar::Memory64);
        assert_eq!(sized_bar(u32::MAX), SizedBar::Absent);
    }

    #[test]
    fn bars_decode_only_when_enabled_and_placed() {
        let mut c = lsi_like();
        c.set_bar_addr(0, 0xc000);
        c.set_bar_addr(1, 0xc000_0000);
        assert!(c.active_bars().is_empty());
        c.write(REG_COMMAND, 0, &[COMMAND_MEMORY as u8]);
        let active = c.active_bars();
        assert_eq!(active.len(), 1);
        assert_eq!(
            active[0],
            ActiveBar {
                index: 1,
                kind: BarKind::Memory,
                addr: 0xc000_0000,
                size: 1024
            }
        );
        c.write(REG_COMMAND, 0, &[(COMMAND_MEMORY | COMMAND_IO) as u8]);
        assert_eq!(c.active_bars().len(), 2);
        // Sizing while enabled does not count as a placement.
        c.write(REG_BAR0 + 1, 0, &[0xff; 4]);
        assert_eq!(c.active_bars().len(), 1);
    }

    #[test]
    fn partial_writes_touch_only_their_bytes() {
        let mut c = lsi_like();
        c.write(REG_BAR0 + 2, 0, &[0xff; 4]);
        c.write(REG_BAR0 + 2, 2, &[0x34, 0x12]);
        assert_eq!(c.read(REG_BAR0 + 2), 0x1234_e000);
        c.write(REG_INTERRUPT, 0, &[11, 4]);
        c.set_interrupt(1, 16);
        c.write(REG_INTERRUPT, 1, &[7]);
        assert_eq!(
            c.read(REG_INTERRUPT) & 0xffff,
            0x0110,
            "pin read-only, line writable"
        );
    }

    #[test]
    fn bad_bars_are_refused() {
        let mut c = lsi_like();
        assert_eq!(
            c.set_bar(
                6,
                BarSpec {
                    kind: BarKind::Io,
                    size: 4
                }
            ),
            Err(ConfigError::BadIndex(6))
        );
        assert_eq!(
            c.set_bar(
                0,
                BarSpec {
                    kind: BarKind::Memory,
                    size: 24
                }
            ),
            Err(ConfigError::BadSize(24))
        );
        assert_eq!(
            c.set_bar(
                0,
                BarSpec {
                    kind: BarKind::Memory,
                    size: 8
                }
            ),
            Err(ConfigError::BadSize(8))
        );
    }
}
