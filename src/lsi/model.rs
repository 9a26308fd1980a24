//! How the controller presents itself as a device model: its BARs, the
//! ranges served over ioregion fds, the mirrored ISTAT0, its state dump.

use super::regfile::MIRROR_ISTAT0;
use super::regs::*;
use super::*;
use crate::device_model::{DeviceMemory, DeviceModel, IoRegionSpec, MirrorOffer, SharedIrq};
use crate::pci::ConfigSpace;

impl DeviceModel for Lsi53c895a {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        match usize::from(bar) {
            BAR_IO | BAR_MMIO => {
                self.access_regs(offset, data, false);
                self.publish_mirror();
            }
            BAR_RAM => {
                let o = offset as usize;
                match self.ram.get(o..o + data.len()) {
                    Some(src) => data.copy_from_slice(src),
                    None => data.fill(0xff),
                }
            }
            _ => data.fill(0xff),
        }
    }
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        match usize::from(bar) {
            BAR_IO | BAR_MMIO => {
                let mut copy = data.to_vec();
                self.access_regs(offset, &mut copy, true);
                self.publish_mirror();
            }
            BAR_RAM => {
                let o = offset as usize;
                if let Some(dst) = self.ram.get_mut(o..o + data.len()) {
                    dst.copy_from_slice(data);
                }
            }
            _ => {}
        }
    }
    fn reset(&mut self) {
        self.soft_reset();
    }
    fn background_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.bus.completion_fd())
    }
    fn service_background(&mut self) {
        self.service_completions();
        self.publish_mirror();
    }
    /// The register file (the first 128 bytes of BAR0 and BAR1) and the
    /// SCRIPTS RAM go over ioregionfd; the rest of BAR1 holds nothing and
    /// stays on the message path. SCRIPTS RAM writes are posted; register
    /// writes when `set_posted_register_writes` says so (`--register-writes
    /// posted`, experimental). The remote applies posted
    /// writes before any later access of the guest's (read, message, or
    /// interrupt acknowledgement). Port I/O writes are never posted.
    fn ioregions(&self, bar: u8) -> Vec<IoRegionSpec> {
        let region = |size, posted_writes| IoRegionSpec {
            offset: 0,
            size,
            posted_writes,
        };
        match usize::from(bar) {
            // PCI posts memory writes, never I/O writes.
            BAR_IO => vec![region(REGISTER_FILE_SIZE, false)],
            BAR_MMIO => vec![region(REGISTER_FILE_SIZE, self.posted_register_writes)],
            BAR_RAM => vec![region(RAM_SIZE as u64, true)],
            _ => Vec::new(),
        }
    }
    /// ISTAT0, which `sym53c8xx` reads twice per completion, in BAR0 and,
    /// when its writes are waited, in BAR1. With posted writes the VMM
    /// could answer a read before an INTF-clearing write it has not yet
    /// delivered.
    fn register_mirror(&self, bar: u8) -> Option<MirrorOffer> {
        let mirror = self.mirror.as_ref()?;
        let mirrored = match usize::from(bar) {
            BAR_IO => true,
            BAR_MMIO => !self.posted_register_writes,
            _ => false,
        };
        if !mirrored {
            return None;
        }
        let page = mirror
            .file()
            .inspect_err(|e| log::warn!("cannot share the register mirror: {e}"))
            .ok()?;
        let istat0 = crate::protocol::extensions::MirroredRegister {
            offset: u64::from(ISTAT0),
            size: 1,
            page_offset: MIRROR_ISTAT0,
        };
        Some(MirrorOffer {
            registers: vec![istat0],
            page,
        })
    }
    fn state_dump(&self) -> Option<String> {
        let r = &self.r;
        let scripts = if self.running {
            "running"
        } else if self.waiting_reselect {
            "waiting for reselection"
        } else {
            "stopped"
        };
        Some(format!(
            "lsi: ISTAT0 {:#04x} ISTAT1 {:#04x} DSTAT {:#04x} SIST0 {:#04x} SIST1 {:#04x} \
             DIEN {:#04x} SIEN0 {:#04x} SIEN1 {:#04x} DSP {:#010x} DSPS {:#010x} DSA {:#010x} \
             DCMD {:#04x} DBC {:#x}; SCRIPTS {scripts}; interrupt {}; SCSI: {}; \
             last DMA writes into guest memory (oldest first): {}",
            r.istat0,
            r.istat1,
            r.dstat,
            r.sist0,
            r.sist1,
            r.dien,
            r.sien0,
            r.sien1,
            r.dsp,
            r.dsps,
            r.dsa,
            r.dcmd,
            r.dbc,
            if self.irq_level { "raised" } else { "clear" },
            self.bus.describe(),
            self.dma_log.describe(std::time::Instant::now())
        ))
    }
    fn summary(&self) -> Option<String> {
        let s = self.bus.stats;
        Some(format!(
            "lsi: {} SCSI commands, {} ran disconnected, at most {} in flight at once",
            s.commands, s.disconnected, s.max_queued
        ))
    }
    fn set_memory(&mut self, memory: DeviceMemory) {
        self.memory = memory;
    }
    fn set_interrupt(&mut self, line: SharedIrq) {
        self.irq = Some(line);
        let level = self.irq_level;
        self.irq_level = !level;
        self.update_irq();
    }
}
