//! The controller as the host sees it, and what a guest's read or write of
//! each register does: the device model (its BARs, the ranges served over
//! region fds, the mirrored ISTAT0, its state dump), then the register file
//! byte by byte, and the ISTAT0 copy in the mirror page.

use super::Lsi53c895a;
use super::regs::*;
use super::{BAR_IO, BAR_MMIO, BAR_RAM, RAM_SIZE, REGISTER_FILE_SIZE};
use crate::device_model::{
    DeviceMemory, DeviceModel, IoRegionSpec, MirrorOffer, PciDevice, SharedIrq,
};
use crate::pci::ConfigSpace;

/// Where ISTAT0 sits in the mirror page.
pub(super) const MIRROR_ISTAT0: u32 = 0;

/// Reads byte `i` of a 32-bit register.
pub(super) fn byte_of(v: u32, i: u8) -> u8 {
    (v >> (u32::from(i) * 8)) as u8
}

/// Replaces byte `i` of a 32-bit register.
pub(super) fn set_byte(v: &mut u32, i: u8, b: u8) {
    let shift = u32::from(i) * 8;
    *v = (*v & !(0xff << shift)) | (u32::from(b) << shift);
}

impl PciDevice for Lsi53c895a {
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
}

impl DeviceModel for Lsi53c895a {
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
    fn set_background_runner(&mut self, runner: crate::device_model::BackgroundRunner) {
        self.bus.set_completion_runner(runner);
    }
    /// The register file (the first 128 bytes of BAR0 and BAR1) and the
    /// SCRIPTS RAM go over ioregionfd; the rest of BAR1 holds nothing and
    /// stays on the message path. SCRIPTS RAM writes are posted; register
    /// writes when `set_posted_register_writes` says so (the remote's
    /// `--register-writes`, posted by default). The remote applies posted
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
    /// ISTAT0, which `sym53c8xx` reads twice per completion, in BAR0 and
    /// BAR1. With posted register writes the VMM answers from the page
    /// only once it has no write still queued for us (the server counts
    /// the posted writes applied in the page), or when those queued are
    /// ISTAT0 writes whose effect it can work out itself: the INTF clear
    /// the driver reads ISTAT0 right after.
    fn register_mirror(&self, bar: u8) -> Option<MirrorOffer> {
        let mirror = self.mirror.as_ref()?;
        if !matches!(usize::from(bar), BAR_IO | BAR_MMIO) {
            return None;
        }
        let page = mirror
            .file()
            .inspect_err(|e| log::warn!("cannot share the register mirror: {e}"))
            .ok()?;
        // What `write_istat0` does: the upper four bits latch the written
        // value, INTF written 1 clears INTF, and ABRT, SRST or SIGP written
        // 1 start something (an abort, a reset, SCRIPTS).
        let effects = crate::protocol::extensions::WriteEffects {
            clears: u64::from(ISTAT0_INTF),
            follows: u64::from(ISTAT0_WRITABLE),
            opaque: u64::from(ISTAT0_ABRT | ISTAT0_SRST | ISTAT0_SIGP),
        };
        let istat0 = crate::protocol::extensions::MirroredRegister {
            effects: Some(effects),
            ..crate::protocol::extensions::MirroredRegister::new(
                u64::from(ISTAT0),
                1,
                MIRROR_ISTAT0,
            )
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
        let irq = self
            .irq
            .as_ref()
            .map(|line| line.lock().expect("irq lock poisoned").counts())
            .unwrap_or_default();
        Some(format!(
            "lsi: {} SCSI commands, {} ran disconnected, {} in place, at most {} in flight at \
             once; interrupt raised {} times, {} more again while still asserted",
            s.commands, s.disconnected, s.in_place, s.max_queued, irq.raised, irq.raised_again
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
        if self.takes_over {
            self.report_takeover_reset();
        }
    }
}

impl Lsi53c895a {
    /// ISTAT0 as the guest reads it (reading has no side effect).
    pub(super) fn istat0(&self) -> u8 {
        self.r.istat0 | if self.bus.connected() { ISTAT0_CON } else { 0 }
    }

    /// Brings the mirror page up to date; every entry point from the
    /// guest or the disk ends here, before its reply or interrupt.
    pub(super) fn publish_mirror(&self) {
        if let Some(mirror) = &self.mirror {
            mirror.set(MIRROR_ISTAT0 as usize, self.istat0());
        }
    }

    pub fn read_reg(&mut self, offset: u8) -> u8 {
        let o = offset;
        let r = &mut self.r;
        match o {
            SCNTL0 => r.scntl0,
            SCNTL1 => r.scntl1,
            SCNTL2 => r.scntl2,
            SCNTL3 => r.scntl3,
            SCID => r.scid,
            SXFER => r.sxfer,
            SDID => r.sdid,
            GPREG => 0x7f,
            // QEMU's model reads 0 here and sends writes to SFBR.
            SFBR => r.sfbr,
            SOCL => r.socl,
            SSID => r.ssid,
            SBCL => r.sbcl,
            DSTAT => {
                let v = r.dstat | DSTAT_DFE;
                if r.istat0 & ISTAT0_INTF == 0 {
                    r.dstat = 0;
                }
                self.update_irq();
                v
            }
            SSTAT0 => r.sstat0,
            SSTAT1 => r.sstat1,
            SSTAT2 if self.bus.connected() => 0,
            SSTAT2 => 2,
            0x10..=0x13 => byte_of(r.dsa, o - DSA),
            ISTAT0 => self.istat0(),
            ISTAT1 if self.running => ISTAT1_SRUN,
            ISTAT1 => 0,
            MBOX0 => r.mbox0,
            MBOX1 => r.mbox1,
            CTEST0 => 0xff,
            CTEST1 => 0,
            CTEST2 => {
                let mut v = r.ctest2 | CTEST2_DACK | CTEST2_CM;
                if r.istat0 & ISTAT0_SIGP != 0 {
                    r.istat0 &= !ISTAT0_SIGP;
                    v |= CTEST2_SIGP;
                }
                v
            }
            CTEST3 => r.ctest3,
            0x1c..=0x1f => byte_of(r.temp, o - TEMP),
            DFIFO => r.dfifo,
            CTEST4 => r.ctest4,
            CTEST5 => r.ctest5,
            CTEST6 => 0,
            0x24..=0x26 => byte_of(r.dbc, o - DBC),
            DCMD => r.dcmd,
            0x28..=0x2b => byte_of(r.dnad, o - DNAD),
            0x2c..=0x2f => byte_of(r.dsp, o - DSP),
            0x30..=0x33 => byte_of(r.dsps, o - DSPS),
            0x34..=0x37 => byte_of(r.scratch[0], o - SCRATCHA),
            DMODE => r.dmode,
            DIEN => r.dien,
            SBR => r.sbr,
            DCNTL => r.dcntl,
            0x3c..=0x3f => byte_of(r.adder, o - ADDER),
            SIEN0 => r.sien0,
            SIEN1 => r.sien1,
            SIST0 => {
                let v = r.sist0;
                r.sist0 = 0;
                if self.takeover_reset_pending {
                    log::info!("lsi: the driver took the bus reset report (read SIST0)");
                }
                self.takeover_reset_pending = false;
                self.update_irq();
                v
            }
            SIST1 => {
                let v = r.sist1;
                r.sist1 = 0;
                self.update_irq();
                v
            }
            SLPAR => r.slpar,
            SWIDE => r.swide,
            MACNTL => 0x0f,
            GPCNTL => 0x0f,
            STIME0 => r.stime0,
            STIME1 => r.stime1,
            RESPID0 => r.respid0,
            RESPID1 => r.respid1,
            STEST0 => 0,
            STEST1 => r.stest1,
            STEST2 => r.stest2,
            STEST3 => r.stest3,
            SIDL => r.sidl,
            0x51 => 0,
            STEST4 => STEST4_VALUE,
            0x53 => 0,
            0x54..=0x55 => 0,
            CCNTL0 => r.ccntl0,
            CCNTL1 => r.ccntl1,
            // SBDL: the byte the target presents; Linux peeks pending MSG IN bytes here.
            SBDL => self.bus.peek_msg_in().unwrap_or(0),
            0x59 => 0,
            0x5c..=0x9f => {
                let i = (o - SCRATCHB) / 4 + 1;
                byte_of(r.scratch[usize::from(i)], (o - SCRATCHB) % 4)
            }
            0xa0..=0xa3 => byte_of(r.mmrs, o - MMRS),
            0xa4..=0xa7 => byte_of(r.mmws, o - MMWS),
            0xa8..=0xab => byte_of(r.sfs, o - SFS),
            0xac..=0xaf => byte_of(r.drs, o - DRS),
            0xb0..=0xb3 => byte_of(r.sbms, o - SBMS),
            0xb4..=0xb7 => byte_of(r.dbms, o - DBMS),
            0xb8..=0xbb => byte_of(r.dnad64, o - DNAD64),
            0xc0..=0xc3 => byte_of(r.pmjad1, o - PMJAD1),
            0xc4..=0xc7 => byte_of(r.pmjad2, o - PMJAD2),
            0xc8..=0xcb => byte_of(r.rbc, o - RBC),
            0xcc..=0xcf => byte_of(r.ua, o - UA),
            0xd4..=0xd7 => byte_of(r.ia, o - IA),
            0xd8..=0xdb => byte_of(r.sbc, o - SBC),
            0xdc..=0xdf => byte_of(r.csbc, o - CSBC),
            _ => 0,
        }
    }

    pub fn write_reg(&mut self, offset: u8, val: u8) {
        let o = offset;
        match o {
            SCNTL0 => self.r.scntl0 = val & !0x01,
            SCNTL1 => {
                self.r.scntl1 = val & !SCNTL1_CON;
                if val & SCNTL1_RST != 0 {
                    if self.r.sstat0 & SSTAT0_RST == 0 {
                        log::debug!("lsi: SCSI bus reset by the driver");
                        self.bus.reset();
                        self.r.sstat0 |= SSTAT0_RST;
                        self.scsi_interrupt(SIST0_RST, 0);
                    }
                } else {
                    self.r.sstat0 &= !SSTAT0_RST;
                }
            }
            SCNTL2 => self.r.scntl2 = val & !0x88,
            SCNTL3 => self.r.scntl3 = val,
            SCID => self.r.scid = val,
            SXFER => self.r.sxfer = val,
            SDID => self.r.sdid = val & 0x0f,
            GPREG => {}
            SFBR => self.r.sfbr = val,
            SOCL => self.r.socl = val,
            SSID => self.r.ssid = val,
            SBCL => {}
            // Linux writes these read-only status registers at start-up.
            DSTAT | SSTAT0 | SSTAT1 | SSTAT2 => {}
            0x10..=0x13 => set_byte(&mut self.r.dsa, o - DSA, val),
            ISTAT0 => self.write_istat0(val),
            ISTAT1 => {}
            MBOX0 => self.r.mbox0 = val,
            MBOX1 => self.r.mbox1 = val,
            CTEST0 | CTEST1 => {}
            CTEST2 => self.r.ctest2 = val & 0x0e,
            CTEST3 => self.r.ctest3 = val,
            0x1c..=0x1f => set_byte(&mut self.r.temp, o - TEMP, val),
            DFIFO => self.r.dfifo = val,
            CTEST4 => self.r.ctest4 = val,
            CTEST5 => self.r.ctest5 = val,
            CTEST6 => {}
            0x24..=0x26 => set_byte(&mut self.r.dbc, o - DBC, val),
            DCMD => self.r.dcmd = val,
            0x28..=0x2b => set_byte(&mut self.r.dnad, o - DNAD, val),
            0x2c..=0x2f => {
                set_byte(&mut self.r.dsp, o - DSP, val);
                // Writing the top byte starts SCRIPTS (unless manual start mode).
                if o == 0x2f && self.r.dmode & DMODE_MAN == 0 {
                    self.waiting_reselect = false;
                    self.run_scripts();
                }
            }
            0x30..=0x33 => set_byte(&mut self.r.dsps, o - DSPS, val),
            0x34..=0x37 => set_byte(&mut self.r.scratch[0], o - SCRATCHA, val),
            DMODE => self.r.dmode = val,
            DIEN => {
                self.r.dien = val;
                self.update_irq();
            }
            SBR => self.r.sbr = val,
            DCNTL => {
                self.r.dcntl = val & !DCNTL_STD;
                if val & DCNTL_STD != 0 {
                    self.run_scripts();
                }
            }
            0x3c..=0x3f => {}
            SIEN0 => {
                self.r.sien0 = val;
                self.update_irq();
            }
            SIEN1 => {
                self.r.sien1 = val;
                self.update_irq();
            }
            SIST0 | SIST1 => {}
            SLPAR => self.r.slpar = val,
            SWIDE => self.r.swide = val,
            MACNTL | GPCNTL => self.r.gpcntl = val,
            STIME0 => self.r.stime0 = val,
            STIME1 => {
                // The general-purpose timer is not modelled: expire at once.
                self.r.stime1 = val & 0x0f;
                if val & 0x0f != 0 {
                    self.scsi_interrupt(0, SIST1_GEN);
                }
            }
            RESPID0 => self.r.respid0 = val,
            RESPID1 => self.r.respid1 = val,
            STEST0 => {}
            STEST1 => self.r.stest1 = val,
            STEST2 => self.r.stest2 = val,
            STEST3 => self.r.stest3 = val,
            SIDL | STEST4 => {}
            0x54..=0x55 => {}
            CCNTL0 => self.r.ccntl0 = val,
            CCNTL1 => self.r.ccntl1 = val,
            0x5c..=0x9f => {
                let i = (o - SCRATCHB) / 4 + 1;
                set_byte(&mut self.r.scratch[usize::from(i)], (o - SCRATCHB) % 4, val)
            }
            0xa0..=0xa3 => set_byte(&mut self.r.mmrs, o - MMRS, val),
            0xa4..=0xa7 => set_byte(&mut self.r.mmws, o - MMWS, val),
            0xa8..=0xab => set_byte(&mut self.r.sfs, o - SFS, val),
            0xac..=0xaf => set_byte(&mut self.r.drs, o - DRS, val),
            0xb0..=0xb3 => set_byte(&mut self.r.sbms, o - SBMS, val),
            0xb4..=0xb7 => set_byte(&mut self.r.dbms, o - DBMS, val),
            0xb8..=0xbb => set_byte(&mut self.r.dnad64, o - DNAD64, val),
            0xc0..=0xc3 => set_byte(&mut self.r.pmjad1, o - PMJAD1, val),
            0xc4..=0xc7 => set_byte(&mut self.r.pmjad2, o - PMJAD2, val),
            0xc8..=0xcb => set_byte(&mut self.r.rbc, o - RBC, val),
            0xcc..=0xcf => set_byte(&mut self.r.ua, o - UA, val),
            0xd4..=0xd7 => set_byte(&mut self.r.ia, o - IA, val),
            0xd8..=0xdb => set_byte(&mut self.r.sbc, o - SBC, val),
            0xdc..=0xdf => set_byte(&mut self.r.csbc, o - CSBC, val),
            _ => log::trace!("lsi: write to unknown register {o:#x} = {val:#x}"),
        }
    }

    pub(super) fn write_istat0(&mut self, val: u8) {
        if val & ISTAT0_SRST != 0 {
            self.soft_reset();
            // SRST stays readable until the driver clears it.
            self.r.istat0 |= ISTAT0_SRST;
            return;
        }
        // The chip latches the upper four bits from every write, so writing
        // them as 0 is how a driver lets go of SEM, withdraws SIGP and ends
        // an abort or reset; INTF below is the only write-one-to-clear bit.
        self.r.istat0 = (self.r.istat0 & !ISTAT0_WRITABLE) | (val & ISTAT0_WRITABLE);
        if val & ISTAT0_ABRT != 0 {
            self.dma_interrupt(DSTAT_ABRT);
        }
        if val & ISTAT0_INTF != 0 {
            self.r.istat0 &= !ISTAT0_INTF;
            self.update_irq();
        }
        if val & ISTAT0_SIGP != 0 && self.waiting_reselect {
            // SIGP ends WAIT RESELECT: continue at its alternate address.
            self.waiting_reselect = false;
            self.r.dsp = self.r.dnad;
            self.run_scripts();
        }
    }

    /// A finished command's target reselects us if the bus is free. The
    /// chip notices only while it waits in WAIT RESELECT (or reaches one),
    /// which is where the Linux driver's SCRIPTS idle.
    pub(crate) fn try_reselect(&mut self) -> bool {
        let Some(id) = self.bus.reselect() else {
            return false;
        };
        self.r.ssid = 0x80 | id;
        self.r.sdid = id;
        if self.r.sien0 & SIST0_RSL != 0 {
            self.scsi_interrupt(SIST0_RSL, 0);
        }
        true
    }

    pub(super) fn access_regs(&mut self, offset: u64, data: &mut [u8], write: bool) {
        // Wider accesses are split into bytes, lowest first: the byte order
        // matters (the DSP top byte starts SCRIPTS).
        for (i, b) in data.iter_mut().enumerate() {
            let reg = ((offset + i as u64) & 0xff) as u8;
            if write {
                self.write_reg(reg, *b);
            } else {
                *b = self.read_reg(reg);
            }
        }
    }
}
