//! A test device: a 256-byte (or so) I/O BAR and a 1 KiB memory BAR of
//! plain registers, offered over region fds and a register mirror, with
//! an interrupt line driven by BAR0's last byte. The proxy's tests serve it
//! over mpqemu, the vfio-user server's over vfio-user.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use crate::device_model::{DeviceMemory, DeviceModel, SharedIrq};
use crate::pci::{BarKind, BarSpec, ConfigSpace, PciDevice};

/// A remote device with a 256-byte I/O BAR and a 1 KiB memory BAR of
/// plain registers.
pub struct Scratch {
    pub config: ConfigSpace,
    pub regs: [u8; 1024],
    pub resets: u32,
    /// How many times the server had it serve background work.
    pub background_runs: u32,
    /// The command register when the interrupt was last wired.
    pub wired_at_command: Option<u32>,
    /// Mirrors the byte at this offset of BAR1 (at page offset 0).
    pub mirror: Option<(crate::device_model::RegisterMirror, u64)>,
    /// A reset says so on the first and then waits for the second: a
    /// remote that is slow in the middle of the handshake.
    pub reset_gate: Option<(Sender<()>, Receiver<()>)>,
    /// Guest RAM as last given, and the interrupt line once wired: a
    /// write to BAR0's last byte (or to BAR1's, in its range with posted
    /// writes) sets the line's level.
    pub memory: Option<DeviceMemory>,
    pub irq: Option<SharedIrq>,
}

/// BAR0's last byte, which drives the interrupt line.
pub const SCRATCH_IRQ_LEVEL: u64 = 0xff;
/// The same in BAR1, in the range whose writes are posted.
pub const SCRATCH_POSTED_IRQ_LEVEL: u64 = 0x2ff;
/// A write to this byte of BAR0 copies 16 bytes of guest RAM, from the
/// address in registers 0..8 to the one in 8..16, as a device's DMA would.
pub const SCRATCH_DMA_COPY: u64 = 0xfe;
/// Where the copy's outcome lands: 1 done, 0xff failed.
pub const SCRATCH_DMA_STATUS: usize = 0xfd;

impl PciDevice for Scratch {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn bar_read(&mut self, _bar: u8, offset: u64, data: &mut [u8]) {
        let o = offset as usize;
        data.copy_from_slice(&self.regs[o..o + data.len()]);
    }
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        let o = offset as usize;
        self.regs[o..o + data.len()].copy_from_slice(data);
        let level = (bar == 0 && offset == SCRATCH_IRQ_LEVEL)
            || (bar == 1 && offset == SCRATCH_POSTED_IRQ_LEVEL);
        if level && let Some(irq) = &self.irq {
            irq.lock().unwrap().set_level(data[0] != 0);
        }
        if bar == 0 && offset == SCRATCH_DMA_COPY {
            self.regs[SCRATCH_DMA_STATUS] = if self.dma_copy().is_ok() { 1 } else { 0xff };
        }
        if let Some((mirror, at)) = &self.mirror
            && let Some(value) = self.regs.get(*at as usize)
        {
            mirror.set(0, *value);
        }
    }
}

impl Scratch {
    fn dma_copy(&self) -> Result<(), crate::device_model::memory::MemoryError> {
        let at = |i: usize| u64::from_le_bytes(self.regs[i..i + 8].try_into().expect("8 bytes"));
        let memory = self.memory.clone().unwrap_or_default();
        let mut buf = [0u8; 16];
        memory.read(at(0), &mut buf)?;
        memory.write(at(8), &buf)
    }
}

impl DeviceModel for Scratch {
    fn register_mirror(&self, bar: u8) -> Option<crate::device_model::MirrorOffer> {
        let (mirror, claimed_at) = self.mirror.as_ref().filter(|_| bar == 1)?;
        // Writes store the byte; one with bit 7 set is declared opaque, for
        // tests of reads behind writes whose effect is unknown.
        let register = crate::protocol::extensions::MirroredRegister {
            effects: Some(crate::protocol::extensions::WriteEffects {
                clears: 0,
                follows: 0xff,
                opaque: 0x80,
            }),
            ..crate::protocol::extensions::MirroredRegister::new(*claimed_at, 1, 0)
        };
        Some(crate::device_model::MirrorOffer {
            registers: vec![register],
            page: mirror.file().unwrap(),
        })
    }
    fn reset(&mut self) {
        self.resets += 1;
        if let Some((reached, release)) = &self.reset_gate {
            let _ = reached.send(());
            let _ = release.recv();
        }
    }
    fn set_memory(&mut self, memory: DeviceMemory) {
        self.memory = Some(memory);
    }
    fn service_background(&mut self) {
        self.background_runs += 1;
    }
    fn set_interrupt(&mut self, line: SharedIrq) {
        self.wired_at_command = Some(self.config.read(crate::pci::config::REG_COMMAND));
        self.irq = Some(line);
    }
    /// Two ranges of BAR1 over region fds; the rest over messages.
    fn ioregions(&self, bar: u8) -> Vec<crate::device_model::IoRegionSpec> {
        let spec = |offset, posted_writes| crate::device_model::IoRegionSpec {
            offset,
            size: 0x100,
            posted_writes,
        };
        match bar {
            1 => vec![spec(0, false), spec(0x200, true)],
            _ => vec![],
        }
    }
}

pub fn scratch(io_size: u64) -> Arc<Mutex<Scratch>> {
    let mut config = ConfigSpace::new(0x1000, 0x0012, 0x010000, 1);
    config
        .set_bar(
            0,
            BarSpec {
                kind: BarKind::Io,
                size: io_size,
            },
        )
        .unwrap();
    config
        .set_bar(
            1,
            BarSpec {
                kind: BarKind::Memory,
                size: 1024,
            },
        )
        .unwrap();
    Arc::new(Mutex::new(Scratch {
        config,
        regs: [0; 1024],
        resets: 0,
        background_runs: 0,
        wired_at_command: None,
        mirror: None,
        reset_gate: None,
        memory: None,
        irq: None,
    }))
}
