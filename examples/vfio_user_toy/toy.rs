//! A toy PCI device for the rust-vmm `vfio_user` crate's server: someone
//! else's vfio-user implementation for our client to drive. Shared by
//! `tests/vfio_user_crate.rs` (in-process, on the host) and the
//! `vfio_user_toy` example (its own process, in the KVM test rig, where a
//! guest drives it through our VMM).
//!
//! BAR0 is 4 KiB of registers: plain scratch bytes, except
//! - `DMA_ADDRESS` (0x10, 64 bits): where the doorbell's DMA goes;
//! - `DOORBELL` (0x100): writing 1 copies `PAYLOAD` to the DMA address
//!   and sets the interrupt pending;
//! - `INTERRUPT` (0x104): reads 1 while the interrupt is pending; writing
//!   1 acknowledges it.
//!
//! INTx is level-triggered with PCI 2.3 masking, as Linux's
//! `uio_pci_generic` needs: the status register's interrupt bit shows the
//! pending interrupt, the command register's INTx-disable bit holds it
//! back, and the line is raised (the trigger eventfd written) whenever it
//! goes from low to high.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, vfio_region_info,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, IrqInfo, Server, ServerBackend, ServerRegion};
use vmm::pci::{BarKind, BarSpec, ConfigSpace};

pub const VENDOR: u16 = 0x1af4;
pub const DEVICE: u16 = 0x10ff;
pub const BAR_SIZE: u64 = 4096;
pub const DMA_ADDRESS: u64 = 0x10;
pub const DOORBELL: u64 = 0x100;
pub const INTERRUPT: u64 = 0x104;
pub const PAYLOAD: &[u8] = b"dma from the toy";

const CONFIG_REGION: u32 = 7;
const REG_COMMAND: usize = 1;
const COMMAND_INTX_DISABLE: u32 = 0x400;
/// The status register's "interrupt pending" bit, as seen in dword 1.
const STATUS_INTERRUPT: u32 = 0x8 << 16;

pub struct Toy {
    config: ConfigSpace,
    regs: [u8; BAR_SIZE as usize],
    /// (DMA address, size, file offset, file) of each mapping.
    ram: Vec<(u64, u64, u64, File)>,
    irq: Option<File>,
    pending: bool,
    /// Where the toy says what happened to it (the rig test reads it).
    events: Box<dyn Write + Send>,
    pub resets: u32,
}

impl Toy {
    pub fn new(events: Box<dyn Write + Send>) -> Self {
        let mut config = ConfigSpace::new(VENDOR, DEVICE, 0xff_00_00, 1);
        config
            .set_bar(
                0,
                BarSpec {
                    kind: BarKind::Memory,
                    size: BAR_SIZE,
                },
            )
            .expect("a 4 KiB memory BAR is valid");
        // INTA#, so that the client wires INTx and the guest sees a pin.
        config.set_interrupt(1, 0);
        Toy {
            config,
            regs: [0; BAR_SIZE as usize],
            ram: Vec::new(),
            irq: None,
            pending: false,
            events,
            resets: 0,
        }
    }

    fn note(&mut self, what: std::fmt::Arguments<'_>) {
        let _ = writeln!(self.events, "toy: {what}");
    }

    fn line_high(&self) -> bool {
        self.pending && self.config.read(REG_COMMAND) & COMMAND_INTX_DISABLE == 0
    }

    /// Runs `change` and raises INTx if it took the line from low to high.
    fn with_line(&mut self, change: impl FnOnce(&mut Self)) -> std::io::Result<()> {
        let was_high = self.line_high();
        change(self);
        if !was_high && self.line_high() {
            if let Some(mut irq) = self.irq.as_ref() {
                irq.write_all(&1u64.to_ne_bytes())?;
            }
            self.note(format_args!("INTx raised"));
        }
        Ok(())
    }

    fn doorbell(&mut self) -> std::io::Result<()> {
        let at = DMA_ADDRESS as usize;
        let target = u64::from_le_bytes(self.regs[at..at + 8].try_into().unwrap());
        let Some((address, _, file_offset, file)) = self
            .ram
            .iter()
            .find(|(a, s, _, _)| (*a..*a + *s).contains(&target))
        else {
            self.note(format_args!("doorbell: {target:#x} is not in guest RAM"));
            return Ok(());
        };
        file.write_all_at(PAYLOAD, file_offset + (target - address))?;
        self.note(format_args!(
            "doorbell: DMA of {} bytes to {target:#x}",
            PAYLOAD.len()
        ));
        self.with_line(|toy| toy.pending = true)
    }

    fn config_byte(&self, at: usize) -> u8 {
        let mut dword = self.config.read(at / 4);
        if at / 4 == REG_COMMAND && self.pending {
            dword |= STATUS_INTERRUPT;
        }
        (dword >> ((at % 4) * 8)) as u8
    }
}

impl ServerBackend for Toy {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset as usize + i;
            *b = match region {
                CONFIG_REGION => self.config_byte(at),
                0 if at == INTERRUPT as usize => u8::from(self.pending),
                0 => self.regs[at],
                _ => 0xff,
            };
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        match region {
            CONFIG_REGION => self.with_line(|toy| {
                for (i, b) in data.iter().enumerate() {
                    let at = offset as usize + i;
                    toy.config.write(at / 4, at % 4, &[*b]);
                }
            })?,
            0 if offset == DOORBELL && data.first() == Some(&1) => self.doorbell()?,
            0 if offset == INTERRUPT && data.first() == Some(&1) => {
                self.pending = false;
                self.note(format_args!("interrupt acknowledged"));
            }
            0 => {
                let at = offset as usize;
                self.regs[at..at + data.len()].copy_from_slice(data);
            }
            _ => {}
        }
        Ok(())
    }

    fn dma_map(
        &mut self,
        _flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> std::io::Result<()> {
        let has_fd = fd.is_some();
        if let Some(fd) = fd {
            self.ram.push((address, size, offset, fd));
        }
        self.note(format_args!(
            "DMA_MAP {address:#x} size {size:#x} {}",
            if has_fd {
                "with an fd"
            } else {
                "without an fd"
            }
        ));
        Ok(())
    }

    fn dma_unmap(
        &mut self,
        _flags: DmaUnmapFlags,
        address: u64,
        _size: u64,
    ) -> std::io::Result<()> {
        self.ram.retain(|(a, ..)| *a != address);
        Ok(())
    }

    fn reset(&mut self) -> std::io::Result<()> {
        self.resets += 1;
        self.pending = false;
        self.note(format_args!("reset"));
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        _start: u32,
        _count: u32,
        mut fds: Vec<File>,
    ) -> std::io::Result<()> {
        // The unmask eventfd (after the guest's EOI) needs no answer: the
        // line is raised again only by a new low-to-high change.
        if index == 0 && flags == VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER {
            self.irq = fds.pop();
            self.note(format_args!("INTx trigger eventfd set"));
        }
        Ok(())
    }
}

fn region(index: u32, size: u64) -> ServerRegion {
    ServerRegion {
        region_info: vfio_region_info {
            argsz: 32,
            flags: if size > 0 { 0x3 } else { 0 },
            index,
            cap_offset: 0,
            size,
            offset: 0,
        },
        sparse_areas: Vec::new(),
        mmap_fd: None,
    }
}

/// The crate's server for the toy, listening on `socket`: BAR0 and the
/// config space, INTx only.
pub fn server(socket: &Path) -> Result<Server, vfio_user::Error> {
    let regions = (0..9)
        .map(|i| match i {
            0 => region(0, BAR_SIZE),
            CONFIG_REGION => region(CONFIG_REGION, 256),
            i => region(i, 0),
        })
        .collect();
    let irqs = (0..5)
        .map(|index| IrqInfo {
            index,
            flags: if index == 0 { 0x7 } else { 0 },
            count: u32::from(index == 0),
        })
        .collect();
    Server::new(socket, true, irqs, regions)
}
