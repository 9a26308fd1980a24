//! LSI 53C895A SCSI controller: its state and interrupt logic here; the
//! device model the host sees and the register file behind it
//! (regfile.rs); the SCRIPTS processor (scripts.rs) and its DMA (dma.rs).
//! The SCSI bus and the disks on it are `crate::scsi`'s. Linux's
//! sym53c8xx driver runs it.

mod dma;
mod dma_log;
mod regfile;
pub mod regs;
pub mod scripts;

use std::sync::Arc;

use crate::device_model::{DeviceMemory, RegisterMirror, SharedIrq};
use crate::pci::{BarKind, BarSpec, ConfigSpace};
use crate::scsi::ScsiDisk;
use crate::scsi::bus::ScsiBus;
use crate::scsi::pool::{DEFAULT_WORKERS, IoPool, PoolError};
use regs::*;

pub const VENDOR_LSI: u16 = 0x1000;
pub const DEVICE_53C895A: u16 = 0x0012;
const CLASS_SCSI: u32 = 0x01_00_00;
pub const BAR_IO: usize = 0;
pub const BAR_MMIO: usize = 1;
pub const BAR_RAM: usize = 2;
pub const MMIO_SIZE: u64 = 0x400;
pub const RAM_SIZE: usize = 0x2000;
/// Registers live in the first 128 bytes of BAR0 and BAR1.
pub const REGISTER_FILE_SIZE: u64 = 0x80;
pub use crate::scsi::bus::MAX_TARGETS;

/// The chip's registers that are plain storage, plus its internal state.
#[derive(Default)]
pub struct Registers {
    pub scntl0: u8,
    pub scntl1: u8,
    pub scntl2: u8,
    pub scntl3: u8,
    pub scid: u8,
    pub sxfer: u8,
    pub sdid: u8,
    pub gpreg: u8,
    pub sfbr: u8,
    pub socl: u8,
    pub ssid: u8,
    pub sbcl: u8,
    pub dstat: u8,
    pub sstat0: u8,
    pub sstat1: u8,
    pub sstat2: u8,
    pub dsa: u32,
    pub istat0: u8,
    pub istat1: u8,
    pub mbox0: u8,
    pub mbox1: u8,
    pub ctest2: u8,
    pub ctest3: u8,
    pub ctest4: u8,
    pub ctest5: u8,
    pub temp: u32,
    pub dfifo: u8,
    pub dbc: u32,
    pub dcmd: u8,
    pub dnad: u32,
    pub dsp: u32,
    pub dsps: u32,
    /// SCRATCHA, SCRATCHB, then SCRATCHC..SCRATCHR.
    pub scratch: [u32; 18],
    pub dmode: u8,
    pub dien: u8,
    pub sbr: u8,
    pub dcntl: u8,
    pub adder: u32,
    pub sien0: u8,
    pub sien1: u8,
    pub sist0: u8,
    pub sist1: u8,
    pub slpar: u8,
    pub swide: u8,
    pub gpcntl: u8,
    pub stime0: u8,
    pub stime1: u8,
    pub respid0: u8,
    pub respid1: u8,
    pub stest1: u8,
    pub stest2: u8,
    pub stest3: u8,
    pub sidl: u8,
    pub ccntl0: u8,
    pub ccntl1: u8,
    pub mmrs: u32,
    pub mmws: u32,
    pub sfs: u32,
    pub drs: u32,
    pub sbms: u32,
    pub dbms: u32,
    pub dnad64: u32,
    pub pmjad1: u32,
    pub pmjad2: u32,
    pub rbc: u32,
    pub ua: u32,
    pub ia: u32,
    pub sbc: u32,
    pub csbc: u32,
    pub carry: bool,
}

pub struct Lsi53c895a {
    config: ConfigSpace,
    pub(crate) memory: DeviceMemory,
    irq: Option<SharedIrq>,
    pub(crate) r: Registers,
    pub(crate) ram: Box<[u8; RAM_SIZE]>,
    pub(crate) bus: ScsiBus,
    /// SCRIPTS are running (guards against re-entry from self-access).
    pub(crate) running: bool,
    /// Bytes moved by DMA in the current SCRIPTS run.
    pub(crate) dma_bytes: u64,
    /// Whether register writes over ioregionfd are posted.
    posted_register_writes: bool,
    /// Idle in WAIT RESELECT until SIGP.
    pub(crate) waiting_reselect: bool,
    /// A selection failed; the timeout is reported at the next instruction.
    pub(crate) selection_timeout: bool,
    /// The runaway-script bound (instructions per run).
    pub(crate) instruction_limit: u32,
    irq_level: bool,
    /// This chip replaces one whose process died: see `take_over`.
    takes_over: bool,
    /// The bus reset reported on takeover holds the interrupt line up
    /// whatever SIEN0 says, until the driver reads SIST0 or resets the chip.
    takeover_reset_pending: bool,
    /// ISTAT0 for the VMM to read without asking us; None if the page
    /// could not be made (the VMM then asks every time).
    mirror: Option<RegisterMirror>,
    /// The last DMA writes into guest memory, for state dumps.
    pub(crate) dma_log: dma_log::DmaLog,
}

impl Lsi53c895a {
    pub fn new(disks: Vec<Arc<ScsiDisk>>) -> Result<Self, PoolError> {
        let mut config = ConfigSpace::new(VENDOR_LSI, DEVICE_53C895A, CLASS_SCSI, 0);
        let bars = [
            (BAR_IO, BarKind::Io, 256),
            (BAR_MMIO, BarKind::Memory, MMIO_SIZE),
            (BAR_RAM, BarKind::Memory, RAM_SIZE as u64),
        ];
        for (index, kind, size) in bars {
            config
                .set_bar(index, BarSpec { kind, size })
                .expect("the LSI's BARs are valid");
        }
        config.set_interrupt(1, 0);
        // Subsystem vendor and device as QEMU's model reports them.
        config.set_reg(crate::pci::config::REG_SUBSYSTEM, 0x1000_1af4);
        let mut lsi = Lsi53c895a {
            config,
            memory: DeviceMemory::default(),
            irq: None,
            r: Registers::default(),
            ram: Box::new([0; RAM_SIZE]),
            bus: ScsiBus::new(disks, IoPool::new(DEFAULT_WORKERS)?),
            running: false,
            dma_bytes: 0,
            posted_register_writes: false,
            waiting_reselect: false,
            selection_timeout: false,
            instruction_limit: scripts::MAX_INSTRUCTIONS_PER_RUN,
            irq_level: false,
            takes_over: false,
            takeover_reset_pending: false,
            dma_log: dma_log::DmaLog::default(),
            mirror: RegisterMirror::new()
                .inspect_err(|e| log::warn!("no register mirror, ISTAT reads go the long way: {e}"))
                .ok(),
        };
        lsi.soft_reset();
        Ok(lsi)
    }

    /// The chip reset (ISTAT.SRST, DEVICE_RESET): registers to their reset
    /// values, the SCSI side idle.
    pub fn soft_reset(&mut self) {
        self.r = Registers {
            dcmd: 0x40,
            ctest2: CTEST2_DACK,
            scntl0: 0xc0,
            scid: 7,
            respid0: 0x80,
            sstat2: 0x02,
            ..Registers::default()
        };
        self.bus.reset();
        self.running = false;
        self.waiting_reselect = false;
        self.selection_timeout = false;
        self.takeover_reset_pending = false;
        self.update_irq();
    }

    /// Marks this chip as the replacement for one whose process died with
    /// the guest's commands in flight. Once its interrupt is wired (the
    /// last step of a takeover, after the guest's config space is back) it
    /// reports a SCSI bus reset, which is what the commands in flight went
    /// through: `sym53c8xx` then sets the chip up again and has the SCSI
    /// layer retry them at once, instead of finding out through 30 s
    /// command timeouts and a ladder of aborts and resets.
    pub fn take_over(&mut self) {
        self.takes_over = true;
    }

    /// The bus reset of a takeover, reported only to a driver that was
    /// running the chip (bus mastering on): a guest without one would get
    /// an interrupt nobody handles. The driver set SIEN0 on the chip that
    /// died; this one starts from reset values, so the line goes up
    /// whatever SIEN0 says.
    fn report_takeover_reset(&mut self) {
        self.takes_over = false;
        if self.config.command() & crate::pci::config::COMMAND_BUS_MASTER == 0 {
            log::info!("lsi: took over a device no driver was running; no bus reset to report");
            return;
        }
        log::info!("lsi: took over a running device; reporting a SCSI bus reset to its driver");
        self.r.sist0 |= SIST0_RST;
        self.takeover_reset_pending = true;
        self.update_irq();
    }

    /// Whether the VMM may post register writes (BAR1's register file)
    /// instead of waiting for each, as PCI posts memory writes.
    pub fn set_posted_register_writes(&mut self, posted: bool) {
        self.posted_register_writes = posted;
    }

    pub fn set_disk_io(&mut self, disk_io: crate::scsi::bus::DiskIo) {
        self.bus.set_disk_io(disk_io);
    }

    /// Lowers the runaway-script bound, so fuzzing spends its time on
    /// variety rather than on scripts that loop.
    #[doc(hidden)]
    pub fn set_instruction_limit(&mut self, limit: u32) {
        self.instruction_limit = limit;
    }

    /// Where BAR1 (registers) and BAR2 (SCRIPTS RAM) currently sit, for
    /// SCRIPTS that address the chip itself.
    pub(crate) fn self_windows(&self) -> (Option<u64>, Option<u64>) {
        let cmd = self.config.command();
        let mem_on = cmd & crate::pci::config::COMMAND_MEMORY != 0;
        let at = |i| self.config.bar_addr(i).filter(|a| mem_on && *a != 0);
        (at(BAR_MMIO), at(BAR_RAM))
    }

    pub(crate) fn update_irq(&mut self) {
        let r = &mut self.r;
        let mut level = false;
        if r.dstat != 0 {
            level |= r.dstat & r.dien != 0;
            r.istat0 |= ISTAT0_DIP;
        } else {
            r.istat0 &= !ISTAT0_DIP;
        }
        if r.sist0 != 0 || r.sist1 != 0 {
            level |= r.sist0 & r.sien0 != 0 || r.sist1 & r.sien1 != 0;
            r.istat0 |= ISTAT0_SIP;
        } else {
            r.istat0 &= !ISTAT0_SIP;
        }
        level |= r.istat0 & ISTAT0_INTF != 0;
        level |= self.takeover_reset_pending;
        // The guest's handler reads ISTAT as soon as the line rises.
        self.publish_mirror();
        if level != self.irq_level {
            self.irq_level = level;
            if let Some(irq) = &self.irq {
                irq.lock().expect("irq lock").set_level(level);
            }
        }
    }

    /// Takes finished disk work; a target waiting to reselect resumes
    /// SCRIPTS parked in WAIT RESELECT at the instruction after it.
    pub fn service_completions(&mut self) {
        self.bus.collect_completions();
        if self.waiting_reselect && self.try_reselect() {
            self.waiting_reselect = false;
            self.run_scripts();
        }
    }

    /// A DMA (SCRIPTS) interrupt: sets DSTAT bits and stops the processor.
    pub(crate) fn dma_interrupt(&mut self, bits: u8) {
        log::debug!(
            "lsi: DMA interrupt {bits:#04x} at DSP {:#x} (DSPS {:#x})",
            self.r.dsp,
            self.r.dsps
        );
        self.r.dstat |= bits;
        self.update_irq();
        self.running = false;
    }

    /// A SCSI interrupt; fatal ones (and enabled non-fatal ones) stop SCRIPTS.
    pub(crate) fn scsi_interrupt(&mut self, sist0: u8, sist1: u8) {
        log::debug!(
            "lsi: SCSI interrupt SIST0 {sist0:#04x} SIST1 {sist1:#04x} at DSP {:#x}",
            self.r.dsp
        );
        self.r.sist0 |= sist0;
        self.r.sist1 |= sist1;
        let nonfatal0 = SIST0_CMP | SIST0_SEL | SIST0_RSL;
        let nonfatal1 = SIST1_GEN | SIST1_HTH;
        let stop0 = sist0 & (self.r.sien0 | !nonfatal0);
        let stop1 = sist1 & (self.r.sien1 | !nonfatal1);
        if stop0 != 0 || stop1 != 0 {
            self.running = false;
        }
        self.update_irq();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_model::{DeviceModel, PciDevice};
    use crate::memory::GuestRam;
    use vm_memory::{Bytes, GuestAddress};

    const BAR1: u64 = 0xc000_0000;
    const BAR2: u64 = 0xc000_2000;

    /// How the SCRIPTS of these tests end a command: the status byte to
    /// `status_at`, the message byte after it, then INT 7.
    fn finish(status_at: u32) -> [u32; 6] {
        [
            0x0b00_0001,
            status_at, // MOVE 1 WHEN STATUS
            0x0f00_0001,
            status_at + 1, // MOVE 1 WHEN MSG_IN
            0x9808_0000,
            7, // INT 7
        ]
    }

    /// A 1 MiB disk on a new image file named after `tag` that starts
    /// with `contents` (zeros after), and the file.
    fn unit_disk(tag: &str, contents: &[u8]) -> (Arc<ScsiDisk>, std::path::PathBuf) {
        let name = format!("vmm-lsi-{tag}-{}.img", std::process::id());
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let disk = ScsiDisk::open(&path, crate::scsi::DiskOptions::new("UNIT")).unwrap();
        (Arc::new(disk), path)
    }

    /// An LSI with 64 MiB of guest RAM shared with a GuestRam we can poke,
    /// BARs placed and decoding.
    fn lsi(disks: Vec<Arc<ScsiDisk>>) -> (Lsi53c895a, GuestRam) {
        let ram = GuestRam::new(64 << 20).unwrap();
        let mut lsi = Lsi53c895a::new(disks).unwrap();
        let regions = ram.sysmem_regions();
        lsi.set_memory(DeviceMemory::map(&regions, vec![ram.memfd.try_clone().unwrap()]).unwrap());
        lsi.config_mut().set_bar_addr(BAR_MMIO, BAR1);
        lsi.config_mut().set_bar_addr(BAR_RAM, BAR2);
        lsi.config_mut()
            .write(crate::pci::config::REG_COMMAND, 0, &[0x06]);
        (lsi, ram)
    }

    fn write32(lsi: &mut Lsi53c895a, reg: u8, v: u32) {
        lsi.bar_write(BAR_MMIO as u8, u64::from(reg), &v.to_le_bytes());
    }

    fn read8(lsi: &mut Lsi53c895a, reg: u8) -> u8 {
        let mut b = [0u8];
        lsi.bar_read(BAR_MMIO as u8, u64::from(reg), &mut b);
        b[0]
    }

    /// Writes a script of (dword, dword) pairs at `addr` in guest RAM.
    fn script(ram: &GuestRam, addr: u64, words: &[u32]) {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        ram.memory.write_slice(&bytes, GuestAddress(addr)).unwrap();
    }

    #[test]
    fn reset_values_and_constant_registers() {
        let (mut l, _) = lsi(vec![]);
        assert_eq!(read8(&mut l, SCID), 7);
        assert_eq!(read8(&mut l, STEST4), STEST4_VALUE);
        assert_eq!(read8(&mut l, CTEST0), 0xff);
        assert_eq!(read8(&mut l, DCMD), 0x40);
        assert_eq!(read8(&mut l, DSTAT), DSTAT_DFE, "DFE always reads set");
        // Linux writes all ones to DSTAT at start-up; it must not stick.
        write32(&mut l, DSTAT, 0xffff_ffff);
        assert_eq!(read8(&mut l, DSTAT), DSTAT_DFE);
        l.bar_write(BAR_RAM as u8, 0x1ff0, b"RAID");
        let mut back = [0u8; 4];
        l.bar_read(BAR_RAM as u8, 0x1ff0, &mut back);
        assert_eq!(&back, b"RAID");
    }

    /// The driver's snoop test: a script copies host memory into SCRATCHA
    /// and TEMP into host memory through the chip's own register window,
    /// then interrupts; DSP must point past the INT.
    #[test]
    fn snoop_test_script_copies_through_the_register_window() {
        let (mut l, ram) = lsi(vec![]);
        ram.memory.write_obj(1u32, GuestAddress(0x9000)).unwrap();
        write32(&mut l, TEMP, 2);
        script(
            &ram,
            0x8000,
            &[
                0xc000_0004,
                0x9000,
                (BAR1 as u32) + u32::from(SCRATCHA), // MEMORY MOVE 4: host -> SCRATCHA
                0xc000_0004,
                (BAR1 as u32) + u32::from(TEMP),
                0x9004, // MEMORY MOVE 4: TEMP -> host
                0x9808_0000,
                0x63, // INT 0x63
            ],
        );
        write32(&mut l, DIEN, 0xff);
        write32(&mut l, DSP, 0x8000);
        assert_eq!(l.r.scratch[0], 1);
        let host: u32 = ram.memory.read_obj(GuestAddress(0x9004)).unwrap();
        assert_eq!(host, 2);
        assert_eq!(l.r.dsp, 0x8000 + 32);
        assert_eq!(l.r.dsps, 0x63);
        assert_ne!(read8(&mut l, ISTAT0) & ISTAT0_DIP, 0);
        assert_eq!(read8(&mut l, DSTAT), DSTAT_DFE | DSTAT_SIR);
        assert_eq!(
            read8(&mut l, ISTAT0) & ISTAT0_DIP,
            0,
            "DSTAT read cleared it"
        );
    }

    #[test]
    fn register_arithmetic_carry_and_conditional_jumps() {
        let (mut l, ram) = lsi(vec![]);
        script(
            &ram,
            0x8000,
            &[
                0x7834_ff00,
                0, // MOVE 0xff TO SCRATCHA0
                0x7e34_0100,
                0, // MOVE SCRATCHA0 + 1 TO SCRATCHA0 (carry out)
                0x8028_0000,
                0x8020, // JUMP 0x8020 IF CARRY
                0x9808_0000,
                1, // INT 1 (not reached)
                0x7234_0000,
                0, // MOVE SCRATCHA0 TO SFBR
                0x800c_0000,
                0x8038, // JUMP 0x8038 IF DATA 0x00 (SFBR == 0)
                0x9808_0000,
                2, // INT 2 (not reached)
                0x9808_0000,
                3, // INT 3
            ],
        );
        write32(&mut l, DSP, 0x8000);
        assert_eq!(l.r.dsps, 3);
        assert!(l.r.carry);
    }

    #[test]
    fn selecting_a_missing_target_times_out_at_the_next_bus_instruction() {
        let (mut l, ram) = lsi(vec![]);
        script(
            &ram,
            0x8000,
            &[
                0x4105_0000,
                0x8100, // SELECT ATN id 5, alternate 0x8100
                0x7834_0100,
                0, // MOVE 1 TO SCRATCHA0: runs, no bus needed
                0x9e03_0000,
                9, // INT 9 IF NOT WHEN MSG_OUT: stops here
            ],
        );
        write32(&mut l, SIEN0, 0);
        write32(&mut l, DSP, 0x8000);
        assert!(!l.running);
        assert_eq!(l.r.scratch[0] & 0xff, 1);
        assert_eq!(
            l.r.dsp, 0x8018,
            "DSP past the instruction that waited for the bus"
        );
        assert_eq!(read8(&mut l, SIST1), SIST1_STO);
        assert_eq!(read8(&mut l, DSTAT), DSTAT_DFE, "no INT was taken");
    }

    #[test]
    fn dma_outside_guest_ram_is_a_bus_fault() {
        let (mut l, ram) = lsi(vec![]);
        script(&ram, 0x8000, &[0xc000_0010, 0x8000_0000, 0x9000]);
        write32(&mut l, DSP, 0x8000);
        assert_eq!(read8(&mut l, DSTAT) & DSTAT_BF, DSTAT_BF);
        write32(&mut l, DSP, 0xf000_0000);
        assert_eq!(
            read8(&mut l, DSTAT) & DSTAT_BF,
            DSTAT_BF,
            "fetch from nowhere"
        );
    }

    #[test]
    fn runaway_scripts_are_stopped() {
        let (mut l, ram) = lsi(vec![]);
        script(&ram, 0x8000, &[0x8008_0000, 0x8000]); // JUMP to itself
        write32(&mut l, DSP, 0x8000);
        assert_eq!(read8(&mut l, DSTAT) & DSTAT_IID, DSTAT_IID);
        assert!(!l.running);
    }

    #[test]
    fn a_loop_of_huge_memory_moves_is_stopped_by_the_byte_budget() {
        let (mut l, ram) = lsi(vec![]);
        // MEMORY MOVE 16 MiB - 1 from 0 to 0x100_0000, then JUMP back.
        script(
            &ram,
            0x8000,
            &[0xc0ff_ffff, 0, 0x100_0000, 0x8008_0000, 0x8000],
        );
        let start = std::time::Instant::now();
        write32(&mut l, DSP, 0x8000);
        assert_eq!(read8(&mut l, DSTAT) & DSTAT_IID, DSTAT_IID);
        assert!(!l.running);
        assert!(l.dma_bytes > scripts::MAX_DMA_BYTES_PER_RUN);
        assert!(l.dma_bytes < scripts::MAX_DMA_BYTES_PER_RUN + (40 << 20));
        eprintln!("stopped after {:?}", start.elapsed());
    }

    #[test]
    fn no_dma_without_bus_mastering() {
        let (mut l, ram) = lsi(vec![]);
        script(&ram, 0x8000, &[0x9808_0000, 0]); // INT
        l.config_mut()
            .write(crate::pci::config::REG_COMMAND, 0, &[0x02]);
        write32(&mut l, DSP, 0x8000);
        assert_eq!(read8(&mut l, DSTAT) & DSTAT_BF, DSTAT_BF);
        // SCRIPTS RAM is the chip's own: it still runs from there.
        l.ram[..8].copy_from_slice(&[0, 0, 0x08, 0x98, 7, 0, 0, 0]);
        write32(&mut l, DSP, BAR2 as u32);
        assert_eq!(read8(&mut l, DSTAT) & DSTAT_SIR, DSTAT_SIR);
    }

    #[test]
    fn wait_reselect_idles_until_sigp() {
        let (mut l, ram) = lsi(vec![]);
        script(
            &ram,
            0x8000,
            &[
                0x5000_0000,
                0x8010, // WAIT RESELECT, alternate 0x8010
                0x9808_0000,
                1,
                0x9808_0000,
                2, // at 0x8010
            ],
        );
        write32(&mut l, DSP, 0x8000);
        assert!(l.waiting_reselect);
        assert_eq!(read8(&mut l, DSTAT), DSTAT_DFE);
        l.bar_write(BAR_MMIO as u8, u64::from(ISTAT0), &[ISTAT0_SIGP]);
        assert_eq!(l.r.dsps, 2);
    }

    /// `sym53c8xx` sets SEM to hold SCRIPTS off during recovery and
    /// writes ISTAT without it to let them go; a SEM that only ever got
    /// set made its START script stop itself for good.
    /// Wires a new interrupt line to `l`; returns its trigger eventfd.
    fn wire_interrupt(l: &mut Lsi53c895a) -> vmm_sys_util::eventfd::EventFd {
        use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
        let irqfd = EventFd::new(EFD_NONBLOCK).unwrap();
        let resample = EventFd::new(EFD_NONBLOCK).unwrap();
        let file = |e: &EventFd| crate::sys::eventfd_file(e).unwrap();
        let line = crate::device_model::InterruptLine::new(file(&irqfd), file(&resample));
        l.set_interrupt(Arc::new(std::sync::Mutex::new(line)));
        irqfd
    }

    /// A replacement chip reports a SCSI bus reset once its interrupt is
    /// wired, on the line whatever SIEN0 says, until the driver reads
    /// SIST0; only to a driver that was running the chip, and only once.
    #[test]
    fn a_takeover_reports_a_bus_reset_once_the_interrupt_is_wired() {
        let (mut l, _ram) = lsi(vec![]);
        l.take_over();
        assert!(!l.irq_level, "nothing before the interrupt is wired");
        let irqfd = wire_interrupt(&mut l);
        assert_eq!(irqfd.read().unwrap(), 1, "the line went up");
        assert_eq!(read8(&mut l, SIEN0), 0, "although SIEN0 masks RST");
        assert_eq!(read8(&mut l, ISTAT0) & ISTAT0_SIP, ISTAT0_SIP);
        assert_eq!(read8(&mut l, SIST0), SIST0_RST);
        assert!(!l.irq_level, "reading SIST0 ends it");
        assert_eq!(read8(&mut l, ISTAT0) & ISTAT0_SIP, 0);
        let again = wire_interrupt(&mut l);
        assert!(again.read().is_err(), "reported once, not on every wiring");

        let (mut reset, _ram) = lsi(vec![]);
        reset.take_over();
        let _irqfd = wire_interrupt(&mut reset);
        reset.soft_reset();
        assert!(!reset.irq_level, "a chip reset ends it too");
        assert_eq!(read8(&mut reset, SIST0), 0);

        let (mut idle, _ram) = lsi(vec![]);
        idle.config_mut()
            .write(crate::pci::config::REG_COMMAND, 0, &[0x02]);
        idle.take_over();
        let irqfd = wire_interrupt(&mut idle);
        assert!(irqfd.read().is_err(), "no driver, no interrupt");
        assert_eq!(read8(&mut idle, SIST0), 0);
    }

    #[test]
    fn istat_writes_set_and_clear_sem_sigp_and_abrt() {
        let (mut l, _ram) = lsi(vec![]);
        l.bar_write(
            BAR_MMIO as u8,
            u64::from(ISTAT0),
            &[ISTAT0_SEM | ISTAT0_SIGP],
        );
        assert_eq!(read8(&mut l, ISTAT0), ISTAT0_SEM | ISTAT0_SIGP);
        assert_eq!(mirrored_istat0(&l), ISTAT0_SEM | ISTAT0_SIGP);
        l.bar_write(BAR_MMIO as u8, u64::from(ISTAT0), &[0]);
        assert_eq!(read8(&mut l, ISTAT0), 0);
        assert_eq!(mirrored_istat0(&l), 0, "the mirror page agrees");
        // Each bit follows the written value on its own.
        l.bar_write(
            BAR_MMIO as u8,
            u64::from(ISTAT0),
            &[ISTAT0_SEM | ISTAT0_SIGP],
        );
        l.bar_write(BAR_MMIO as u8, u64::from(ISTAT0), &[ISTAT0_SIGP]);
        assert_eq!(read8(&mut l, ISTAT0), ISTAT0_SIGP);
        assert_eq!(mirrored_istat0(&l), ISTAT0_SIGP);
        // ABRT aborts at once and reads back set until the driver writes
        // ISTAT without it (sym_soft_reset polls, then writes 0).
        l.bar_write(BAR_MMIO as u8, u64::from(ISTAT0), &[ISTAT0_ABRT]);
        let istat = read8(&mut l, ISTAT0);
        assert_eq!(istat, ISTAT0_ABRT | ISTAT0_DIP);
        assert_eq!(mirrored_istat0(&l), istat);
        assert_eq!(read8(&mut l, DSTAT), DSTAT_DFE | DSTAT_ABRT);
        l.bar_write(BAR_MMIO as u8, u64::from(ISTAT0), &[0]);
        assert_eq!(read8(&mut l, ISTAT0), 0);
        assert_eq!(mirrored_istat0(&l), 0);
    }

    /// INTF is write-one-to-clear; DIP and SIP follow DSTAT and SIST, not
    /// what the driver writes.
    #[test]
    fn istat_writes_leave_intf_dip_and_sip_alone_unless_intf_is_written() {
        let (mut l, _ram) = lsi(vec![]);
        l.r.istat0 |= ISTAT0_INTF;
        l.r.dstat = DSTAT_SIR;
        l.update_irq();
        l.bar_write(BAR_MMIO as u8, u64::from(ISTAT0), &[ISTAT0_SIP]);
        assert_eq!(read8(&mut l, ISTAT0), ISTAT0_INTF | ISTAT0_DIP);
        l.bar_write(BAR_MMIO as u8, u64::from(ISTAT0), &[ISTAT0_INTF]);
        assert_eq!(read8(&mut l, ISTAT0), ISTAT0_DIP);
        assert_eq!(mirrored_istat0(&l), ISTAT0_DIP);
    }

    /// What the mirror offer tells the VMM an ISTAT0 write does is what it
    /// does: for every value whose effect it claims to know, from every
    /// state of ISTAT0 (CON aside, which follows the bus), the register
    /// and its page copy end as the VMM would work them out.
    #[test]
    fn the_istat_write_effects_offered_to_the_vmm_are_what_writes_do() {
        let (mut l, _ram) = lsi(vec![]);
        let effects = l.register_mirror(BAR_MMIO as u8).unwrap().registers[0]
            .effects
            .expect("ISTAT0's write effects");
        let mut known = 0;
        for before in (0..=u8::MAX).filter(|b| b & ISTAT0_CON == 0) {
            for written in 0..=u8::MAX {
                let Some(after) = effects.apply(before.into(), written.into()) else {
                    continue;
                };
                known += 1;
                l.r.istat0 = before;
                l.r.dstat = if before & ISTAT0_DIP != 0 {
                    DSTAT_SIR
                } else {
                    0
                };
                l.r.sist0 = if before & ISTAT0_SIP != 0 {
                    SIST0_MA
                } else {
                    0
                };
                l.update_irq();
                l.bar_write(BAR_MMIO as u8, u64::from(ISTAT0), &[written]);
                let what = format!("{written:#04x} written over {before:#04x}");
                assert_eq!(u64::from(read8(&mut l, ISTAT0)), after, "{what}");
                assert_eq!(u64::from(mirrored_istat0(&l)), after, "{what}: the page");
            }
        }
        assert_eq!(known, 128 * 32, "the 32 values without ABRT, SRST or SIGP");
    }

    #[test]
    fn a_whole_inquiry_runs_through_select_messages_command_data_and_status() {
        let (disk, path) = unit_disk("unit", &[]);
        let (mut l, ram) = lsi(vec![disk]);
        ram.memory
            .write_slice(&[0x80], GuestAddress(0xa000))
            .unwrap();
        ram.memory
            .write_slice(&[0x12, 0, 0, 0, 36, 0], GuestAddress(0xa010))
            .unwrap();
        script(
            &ram,
            0x8000,
            &[
                0x4100_0000,
                0x8100, // SELECT ATN id 0
                0x0e00_0001,
                0xa000, // MOVE 1 WHEN MSG_OUT (IDENTIFY)
                0x0a00_0006,
                0xa010, // MOVE 6 WHEN COMMAND (INQUIRY)
                0x0900_0024,
                0xa100, // MOVE 36 WHEN DATA_IN
            ]
            .into_iter()
            .chain(finish(0xa200))
            .collect::<Vec<_>>(),
        );
        write32(&mut l, DSP, 0x8000);
        assert_eq!(l.r.dsps, 7, "ran to the INT without a phase mismatch");
        let mut inquiry = [0u8; 36];
        ram.memory
            .read_slice(&mut inquiry, GuestAddress(0xa100))
            .unwrap();
        assert_eq!(&inquiry[8..16], b"VMM     ");
        let mut tail = [0xffu8; 2];
        ram.memory
            .read_slice(&mut tail, GuestAddress(0xa200))
            .unwrap();
        assert_eq!(tail, [0, 0], "GOOD status, COMMAND COMPLETE");
        assert!(!l.bus.connected(), "the target left the bus");
        // A state dump shows where SCRIPTS stopped and the DMA writes of
        // the data, status and message bytes, oldest first.
        let dump = l.state_dump().unwrap();
        assert!(dump.contains("DSPS 0x00000007"), "{dump}");
        assert!(dump.contains("SCRIPTS stopped"), "{dump}");
        assert!(
            dump.contains("bus free; 0 command(s) on the disks"),
            "{dump}"
        );
        let writes = dump.split("oldest first): ").nth(1).unwrap();
        assert!(writes.starts_with("0xa100+0x24 ("), "{dump}");
        assert!(
            writes.contains("0xa200+0x1 (") && writes.contains("0xa201+0x1 ("),
            "{dump}"
        );
        std::fs::remove_file(path).unwrap();
    }

    /// DATA OUT lands in the command's data across block moves, and a
    /// move that faults takes none of its bytes.
    #[test]
    fn data_out_moves_land_on_the_disk_and_a_faulting_one_takes_nothing() {
        let (disk, path) = unit_disk("out", &[]);
        let (mut l, ram) = lsi(vec![disk]);
        let put = |bytes: &[u8], at: u64| ram.memory.write_slice(bytes, GuestAddress(at)).unwrap();
        put(&[0x80], 0xa000);
        // WRITE(10) of block 1, then of block 2.
        put(&[0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0], 0xa010);
        put(&[0x2a, 0, 0, 0, 0, 2, 0, 0, 1, 0], 0xa020);
        put(&[0x5a; 256], 0xb000);
        put(&[0xa5; 256], 0xb100);
        let write = |cdb: u32, first: u32, second: u32| {
            [
                0x4100_0000,
                0x8100, // SELECT ATN id 0
                0x0e00_0001,
                0xa000, // MOVE 1 WHEN MSG_OUT (IDENTIFY)
                0x0a00_000a,
                cdb, // MOVE 10 WHEN COMMAND
                0x0800_0100,
                first, // MOVE 256 WHEN DATA_OUT
                0x0800_0100,
                second, // MOVE 256 WHEN DATA_OUT
            ]
            .into_iter()
            .chain(finish(0xa200))
            .collect::<Vec<_>>()
        };
        script(&ram, 0x8000, &write(0xa010, 0xb000, 0xb100));
        write32(&mut l, DSP, 0x8000);
        assert_eq!(l.r.dsps, 7, "ran to the INT");
        let image = std::fs::read(&path).unwrap();
        assert_eq!(&image[512..768], &[0x5a; 256][..]);
        assert_eq!(&image[768..1024], &[0xa5; 256][..]);
        // The second move reads past guest RAM (64 MiB): a bus fault.
        script(&ram, 0x8000, &write(0xa020, 0xb000, 0x0800_0000));
        write32(&mut l, DSP, 0x8000);
        assert_ne!(l.r.dstat & DSTAT_BF, 0, "bus fault");
        assert_eq!(l.bus.data_out_wanted(), 256, "only the first move taken");
        let image = std::fs::read(&path).unwrap();
        assert_eq!(&image[1024..1536], &[0; 512][..], "nothing written");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn data_out_from_scripts_ram_and_guest_ram_lands_in_order() {
        let (disk, path) = unit_disk("out-mixed", &[]);
        let (mut l, ram) = lsi(vec![disk]);
        let put = |bytes: &[u8], at: u64| ram.memory.write_slice(bytes, GuestAddress(at)).unwrap();
        put(&[0x80], 0xa000);
        put(&[0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0], 0xa010);
        put(&[0x11; 128], 0xb000);
        put(&[0x33; 128], 0xb100);
        l.bar_write(BAR_RAM as u8, 0x1000, &[0x22; 128]);
        let program = [
            0x4100_0000,
            0x8100, // SELECT ATN id 0
            0x0e00_0001,
            0xa000, // MOVE 1 WHEN MSG_OUT (IDENTIFY)
            0x0a00_000a,
            0xa010, // MOVE 10 WHEN COMMAND
            0x0800_0080,
            0xb000, // MOVE 128 WHEN DATA_OUT, guest RAM
            0x0800_0080,
            BAR2 as u32 + 0x1000, // from SCRIPTS RAM
            0x0800_0100,
            0xb100, // 256 from guest RAM, past the first 128 of it
        ];
        put(&[0x44; 128], 0xb180);
        script(
            &ram,
            0x8000,
            &program
                .into_iter()
                .chain(finish(0xa200))
                .collect::<Vec<_>>(),
        );
        write32(&mut l, DSP, 0x8000);
        assert_eq!(l.r.dsps, 7, "ran to the INT");
        let image = std::fs::read(&path).unwrap();
        assert_eq!(&image[512..640], &[0x11; 128][..]);
        assert_eq!(&image[640..768], &[0x22; 128][..]);
        assert_eq!(&image[768..896], &[0x33; 128][..]);
        assert_eq!(&image[896..1024], &[0x44; 128][..]);
        std::fs::remove_file(path).unwrap();
    }

    /// A disk on a memfd (in memory) of `blocks` blocks, whose file holds
    /// `contents` only: reading past them fails.
    fn memory_disk(blocks: u64, contents: &[u8]) -> Arc<ScsiDisk> {
        let file = crate::sys::memfd(c"vmm-lsi-memory-disk", false).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, contents, 0).unwrap();
        let disk = ScsiDisk::from_file(file, blocks, crate::scsi::DiskOptions::new("MEM"));
        assert!(disk.in_memory());
        Arc::new(disk)
    }

    /// An untagged READ(10) of `blocks` blocks at `lba`, its DATA IN in
    /// 512-byte moves to each of `to`, then status and message to 0xa200.
    fn read_script(ram: &GuestRam, lba: u8, blocks: u8, to: &[u32]) {
        ram.memory
            .write_slice(&[0x80], GuestAddress(0xa000))
            .unwrap();
        ram.memory
            .write_slice(
                &[0x28, 0, 0, 0, 0, lba, 0, 0, blocks, 0],
                GuestAddress(0xa010),
            )
            .unwrap();
        let mut words = vec![
            0x4100_0000,
            0x8100,
            0x0e00_0001,
            0xa000,
            0x0a00_000a,
            0xa010,
        ];
        for &at in to {
            words.extend([0x0900_0200, at]); // MOVE 512 WHEN DATA_IN
        }
        words.extend(finish(0xa200));
        script(ram, 0x8000, &words);
    }

    #[test]
    fn a_read_of_an_image_in_memory_lands_in_guest_ram_and_scripts_ram() {
        let image: Vec<u8> = (0..8u8).flat_map(|b| [b; 512]).collect();
        let (mut l, ram) = lsi(vec![memory_disk(8, &image)]);
        read_script(&ram, 2, 3, &[0xb000, BAR2 as u32 + 0x1000, 0xb400]);
        write32(&mut l, DSP, 0x8000);
        assert_eq!(l.r.dsps, 7, "ran to the INT");
        let mut block = [0u8; 512];
        ram.memory
            .read_slice(&mut block, GuestAddress(0xb000))
            .unwrap();
        assert_eq!(block, [2; 512]);
        l.bar_read(BAR_RAM as u8, 0x1000, &mut block);
        assert_eq!(block, [3; 512], "SCRIPTS RAM got its block as bytes");
        ram.memory
            .read_slice(&mut block, GuestAddress(0xb400))
            .unwrap();
        assert_eq!(block, [4; 512]);
        let mut status = [0xffu8; 2];
        ram.memory
            .read_slice(&mut status, GuestAddress(0xa200))
            .unwrap();
        assert_eq!(status, [0, 0], "GOOD, COMMAND COMPLETE");
    }

    #[test]
    fn a_read_that_fails_in_the_data_phase_ends_in_check_condition() {
        // Eight blocks, of which the file holds two: the third fails.
        let disk = memory_disk(8, &[9; 1024]);
        let (mut l, ram) = lsi(vec![disk.clone()]);
        read_script(&ram, 1, 3, &[0xb000, 0xb200, 0xb400]);
        write32(&mut l, DSP, 0x8000);
        assert_ne!(l.r.sist0 & SIST0_MA, 0, "phase mismatch mid-transfer");
        assert_eq!(l.bus.phase(), Some(crate::scsi::bus::PHASE_STATUS));
        assert_eq!(l.bus.status(), crate::scsi::STATUS_CHECK_CONDITION);
        let mut block = [0u8; 512];
        ram.memory
            .read_slice(&mut block, GuestAddress(0xb000))
            .unwrap();
        assert_eq!(block, [9; 512], "the block before the failure went");
        let sense = disk.execute(0, &[0x03, 0, 0, 0, 18, 0], &[]).unwrap();
        assert_eq!(sense[2] & 0xf, 0x03, "MEDIUM ERROR kept for REQUEST SENSE");
    }

    /// The I/O path the Linux driver takes with tagged queuing: the target
    /// disconnects after the CDB, SCRIPTS park in WAIT RESELECT, and the
    /// finished read reselects them to move the data and status.
    #[test]
    fn a_tagged_read_disconnects_and_resumes_scripts_on_reselection() {
        let image: Vec<u8> = (0..8u8).flat_map(|b| [b; 512]).collect();
        let (disk, path) = unit_disk("resel", &image);
        let (mut l, ram) = lsi(vec![disk]);
        l.set_disk_io(crate::scsi::bus::DiskIo::Workers);
        ram.memory
            .write_slice(&[0xc0, 0x20, 0x11], GuestAddress(0xa000))
            .unwrap();
        ram.memory
            .write_slice(&[0x28, 0, 0, 0, 0, 6, 0, 0, 1, 0], GuestAddress(0xa010))
            .unwrap();
        script(
            &ram,
            0x8000,
            &[
                0x4100_0000,
                0x8100, // SELECT ATN id 0
                0x0e00_0003,
                0xa000, // MOVE 3 WHEN MSG_OUT (IDENTIFY+disc, SIMPLE TAG 0x11)
                0x0a00_000a,
                0xa010, // MOVE 10 WHEN COMMAND (READ(10) lba 6)
                0x0f00_0002,
                0xa020, // MOVE 2 WHEN MSG_IN (SAVE DP, DISCONNECT)
                0x6000_0040,
                0, // CLEAR ACK
                0x4800_0000,
                0, // WAIT DISCONNECT
                0x5000_0000,
                0x8100, // WAIT RESELECT, alternate 0x8100
                0x0f00_0003,
                0xa030, // MOVE 3 WHEN MSG_IN (IDENTIFY, SIMPLE TAG 0x11)
                0x0900_0200,
                0xa400, // MOVE 512 WHEN DATA_IN
            ]
            .into_iter()
            .chain(finish(0xa040))
            .collect::<Vec<_>>(),
        );
        script(&ram, 0x8100, &[0x9808_0000, 0xee]);
        write32(&mut l, DSP, 0x8000);
        assert!(
            l.waiting_reselect,
            "idle in WAIT RESELECT while the disk works"
        );
        assert_eq!(l.r.dsp, 0x8038);
        let mut msgs = [0u8; 2];
        ram.memory
            .read_slice(&mut msgs, GuestAddress(0xa020))
            .unwrap();
        assert_eq!(msgs, [0x02, 0x04]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while l.waiting_reselect {
            assert!(std::time::Instant::now() < deadline, "never reselected");
            std::thread::sleep(std::time::Duration::from_millis(5));
            l.service_background();
        }
        assert_eq!(l.r.dsps, 7, "ran to the INT after reselection");
        assert_eq!(l.r.ssid, 0x80, "SSID names target 0 as valid");
        let mut resel = [0u8; 3];
        ram.memory
            .read_slice(&mut resel, GuestAddress(0xa030))
            .unwrap();
        assert_eq!(resel, [0x80, 0x20, 0x11]);
        let mut block = [0u8; 512];
        ram.memory
            .read_slice(&mut block, GuestAddress(0xa400))
            .unwrap();
        assert_eq!(block, [6u8; 512]);
        let mut tail = [0xffu8; 2];
        ram.memory
            .read_slice(&mut tail, GuestAddress(0xa040))
            .unwrap();
        assert_eq!(tail, [0, 0], "GOOD status, COMMAND COMPLETE");
        std::fs::remove_file(path).unwrap();
    }

    /// What the Linux driver does, in order, without a guest: chip reset,
    /// the register cache test, SCRIPTS loaded into the chip's RAM (BAR2)
    /// and started idle in WAIT RESELECT, then one tagged READ queued with
    /// SIGP: select, disconnect, reselect, data, status and INTFLY, with the
    /// interrupt cleared the way the handler does it.
    #[test]
    fn linux_probe_and_a_tagged_read_run_from_scripts_ram() {
        let path = std::env::temp_dir().join(format!("vmm-lsi-linux-{}.img", std::process::id()));
        let image: Vec<u8> = (0..8u8).flat_map(|b| [b ^ 0x5a; 512]).collect();
        std::fs::write(&path, image).unwrap();
        let disk = Arc::new(ScsiDisk::open(&path, crate::scsi::DiskOptions::new("UNIT")).unwrap());
        let (mut l, ram) = lsi(vec![disk]);
        l.set_disk_io(crate::scsi::bus::DiskIo::Workers);

        // sym_soft_reset: SRST, then clear it.
        write32(&mut l, SCRATCHA, 0x1234_5678);
        l.bar_write(BAR_MMIO as u8, u64::from(ISTAT0), &[ISTAT0_SRST]);
        l.bar_write(BAR_MMIO as u8, u64::from(ISTAT0), &[0]);
        assert_eq!(read8(&mut l, DCMD), 0x40, "reset values are back");
        // sym_regtest: all ones written over DSTAT..SSTAT2 must not read back.
        write32(&mut l, DSTAT, 0xffff_ffff);
        let mut back = [0u8; 4];
        l.bar_read(BAR_MMIO as u8, u64::from(DSTAT), &mut back);
        assert_ne!(
            u32::from_le_bytes(back),
            0xffff_ffff,
            "registers are not cache"
        );

        // SCRIPTS in the chip's RAM, addressed through BAR2 like Linux's.
        let b = BAR2 as u32;
        let words: [u32; 36] = [
            0x5000_0000,
            b + 0x18, // 0x00 WAIT RESELECT, alt start
            0x8008_0000,
            b + 0x58, // 0x08 reselected: JUMP resumed
            0x8008_0000,
            b, // 0x10 (unused)
            0x721a_0000,
            0, // 0x18 start: MOVE CTEST2 TO SFBR (clears SIGP)
            0x4100_0000,
            b, // 0x20 SELECT ATN 0, alt idle
            0x0e00_0003,
            0xa000, // 0x28 MOVE 3 WHEN MSG_OUT
            0x0a00_000a,
            0xa010, // 0x30 MOVE 10 WHEN COMMAND
            0x0f00_0002,
            0xa020, // 0x38 MOVE 2 WHEN MSG_IN
            0x6000_0040,
            0, // 0x40 CLEAR ACK
            0x4800_0000,
            0, // 0x48 WAIT DISCONNECT
            0x8008_0000,
            b, // 0x50 JUMP idle
            0x0f00_0003,
            0xa030, // 0x58 resumed: MOVE 3 WHEN MSG_IN
            0x0900_0200,
            0xa400, // 0x60 MOVE 512 WHEN DATA_IN
            0x0b00_0001,
            0xa040, // 0x68 MOVE 1 WHEN STATUS
            0x0f00_0001,
            0xa041, // 0x70 MOVE 1 WHEN MSG_IN
            0x6000_0040,
            0, // 0x78 CLEAR ACK
            0x4800_0000,
            0, // 0x80 WAIT DISCONNECT
            0x9818_0000,
            0x42, // 0x88 INTFLY
        ];
        let mut code: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        code.extend_from_slice(&0x8008_0000u32.to_le_bytes()); // 0x90 JUMP idle
        code.extend_from_slice(&b.to_le_bytes());
        for (i, chunk) in code.chunks(4).enumerate() {
            l.bar_write(BAR_RAM as u8, i as u64 * 4, chunk);
        }
        write32(&mut l, DIEN, 0xff);
        write32(&mut l, DSP, b);
        assert!(l.waiting_reselect, "idle until the driver signals");

        // The driver queues a READ(10) of block 3 with tag 5 and signals.
        ram.memory
            .write_slice(&[0xc0, 0x20, 0x05], GuestAddress(0xa000))
            .unwrap();
        ram.memory
            .write_slice(&[0x28, 0, 0, 0, 0, 3, 0, 0, 1, 0], GuestAddress(0xa010))
            .unwrap();
        l.bar_write(BAR_MMIO as u8, u64::from(ISTAT0), &[ISTAT0_SIGP]);
        assert!(l.waiting_reselect, "back to idle while the disk works");
        assert_eq!(l.r.istat0 & ISTAT0_SIGP, 0, "reading CTEST2 took SIGP");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !l.irq_level {
            assert!(
                std::time::Instant::now() < deadline,
                "no completion interrupt"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
            l.service_background();
        }
        assert!(l.waiting_reselect, "idle again after the INTFLY");
        // The mirror had INTF before the line rose, so the VMM's copy of
        // ISTAT agrees with the interrupt.
        assert_ne!(mirrored_istat0(&l) & ISTAT0_INTF, 0);
        assert_ne!(read8(&mut l, ISTAT0) & ISTAT0_INTF, 0);
        let mut block = [0u8; 512];
        ram.memory
            .read_slice(&mut block, GuestAddress(0xa400))
            .unwrap();
        assert_eq!(block, [3 ^ 0x5a; 512]);
        let mut resel = [0u8; 5];
        ram.memory
            .read_slice(&mut resel, GuestAddress(0xa030))
            .unwrap();
        assert_eq!(&resel[..3], &[0x80, 0x20, 0x05]);
        // The handler writes INTF back to clear it; the line drops.
        l.bar_write(BAR_MMIO as u8, u64::from(ISTAT0), &[ISTAT0_INTF]);
        assert_eq!(mirrored_istat0(&l), read8(&mut l, ISTAT0));
        assert_eq!(mirrored_istat0(&l) & ISTAT0_INTF, 0);
        assert!(!l.irq_level);
        std::fs::remove_file(path).unwrap();
    }

    /// ISTAT0 as the VMM would read it from the mirror page.
    fn mirrored_istat0(l: &Lsi53c895a) -> u8 {
        use std::os::unix::fs::FileExt;
        let offer = l.register_mirror(BAR_MMIO as u8).unwrap();
        let istat0 = offer.registers[0];
        assert_eq!((istat0.offset, istat0.size), (u64::from(ISTAT0), 1));
        let mut byte = [0u8; 1];
        offer
            .page
            .read_exact_at(&mut byte, u64::from(istat0.page_offset))
            .unwrap();
        byte[0]
    }

    #[test]
    fn istat_is_mirrored_in_both_register_bars_posted_or_not() {
        let (mut l, _ram) = lsi(vec![]);
        assert!(l.register_mirror(BAR_IO as u8).is_some());
        assert!(l.register_mirror(BAR_RAM as u8).is_none());
        l.bar_write(BAR_MMIO as u8, u64::from(ISTAT0), &[ISTAT0_SEM]);
        assert_eq!(mirrored_istat0(&l), ISTAT0_SEM);
        l.set_posted_register_writes(true);
        assert!(l.register_mirror(BAR_MMIO as u8).is_some());
        assert!(l.register_mirror(BAR_IO as u8).is_some());
    }
}
