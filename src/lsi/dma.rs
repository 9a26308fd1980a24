//! The chip as bus master: its DMA reads and writes. Addresses in its own
//! BAR1 (registers) or BAR2 (SCRIPTS RAM) are served locally, the rest in
//! spans of guest RAM. Block moves of a command's data to or from plain
//! guest RAM leave the copy to the disk: a DATA OUT move names where the
//! bytes lie for the WRITE to read, a DATA IN move of a READ from an image
//! in memory has the image read into its place.

use super::Lsi53c895a;
use super::regs::*;

enum Target {
    Registers(u8),
    Ram(usize),
    Guest(u64),
}

impl Lsi53c895a {
    fn classify(&self, addr: u64) -> Target {
        let (regs, ram) = self.self_windows();
        if let Some(base) = regs
            && addr >= base
            && addr < base + super::MMIO_SIZE
        {
            return Target::Registers(((addr - base) & 0xff) as u8);
        }
        if let Some(base) = ram
            && addr >= base
            && addr < base + super::RAM_SIZE as u64
        {
            return Target::Ram((addr - base) as usize);
        }
        Target::Guest(addr)
    }

    /// Whether the guest lets the chip master the bus (PCI command bit 2):
    /// a driver that let go of the chip gets no DMA from it.
    fn bus_master(&self) -> bool {
        self.config.command() & crate::pci::config::COMMAND_BUS_MASTER != 0
    }

    /// How many bytes from `addr` on (at most `max`) lie outside the
    /// chip's own windows, so they can be copied from guest RAM in one go.
    fn guest_span(&self, addr: u64, max: usize) -> usize {
        let (regs, ram) = self.self_windows();
        [regs, ram]
            .into_iter()
            .flatten()
            .filter(|&base| base > addr)
            .map(|base| usize::try_from(base - addr).unwrap_or(usize::MAX))
            .fold(max, usize::min)
    }

    /// Bus-master read; false (and a bus fault) when it hits nothing.
    /// Bytes in the chip's own windows are read one at a time, the rest
    /// in spans straight from guest RAM.
    pub(crate) fn dma_read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
        self.dma_bytes = self.dma_bytes.saturating_add(buf.len() as u64);
        let mut i = 0;
        while i < buf.len() {
            let at = addr + i as u64;
            match self.classify(at) {
                Target::Registers(r) => buf[i] = self.read_reg(r),
                Target::Ram(o) => buf[i] = self.ram[o],
                Target::Guest(a) => {
                    let n = self.guest_span(at, buf.len() - i);
                    if !self.bus_master() {
                        log::warn!("lsi: DMA read at {a:#x} with bus mastering off: bus fault");
                        self.dma_interrupt(DSTAT_BF);
                        return false;
                    }
                    if self.memory.read(a, &mut buf[i..i + n]).is_err() {
                        log::warn!("lsi: DMA read at {a:#x} outside guest RAM: bus fault");
                        self.dma_interrupt(DSTAT_BF);
                        return false;
                    }
                    i += n;
                    continue;
                }
            }
            i += 1;
        }
        true
    }

    /// A DATA IN block move of up to `len` bytes to `addr`: how many
    /// went, None on a bus fault. A READ of an image in memory lands in
    /// plain guest RAM straight from the image, one copy, the kernel's.
    pub(super) fn move_data_in(&mut self, addr: u64, len: usize) -> Option<usize> {
        let plain = self.plain_guest_ram(addr, len) && self.memory.is_mapped(addr, len);
        if let Some(n) = plain
            .then(|| self.bus.data_in_to_guest(&self.memory, addr, len))
            .flatten()
        {
            self.dma_bytes = self.dma_bytes.saturating_add(n as u64);
            if n > 0 {
                self.dma_log.record(addr, n);
                let (mut first, mut last) = ([0u8], [0u8]);
                let read = self.memory.read(addr, &mut first).is_ok()
                    && self.memory.read(addr + n as u64 - 1, &mut last).is_ok();
                if read {
                    (self.r.sfbr, self.r.sidl) = (first[0], last[0]);
                }
            }
            return Some(n);
        }
        let data = self.bus.data_in(len);
        self.move_in(addr, &data).then_some(data.len())
    }

    /// Bytes the target sent in a block move, written to `addr`; the chip
    /// latches the first and last of them. False on a bus fault.
    pub(super) fn move_in(&mut self, addr: u64, data: &[u8]) -> bool {
        if let Some(&last) = data.last() {
            self.r.sidl = last;
            self.r.sfbr = data[0];
        }
        self.dma_write(addr, data)
    }

    pub(crate) fn dma_write(&mut self, addr: u64, buf: &[u8]) -> bool {
        self.dma_bytes = self.dma_bytes.saturating_add(buf.len() as u64);
        let mut i = 0;
        while i < buf.len() {
            let at = addr + i as u64;
            match self.classify(at) {
                Target::Registers(r) => self.write_reg(r, buf[i]),
                Target::Ram(o) => self.ram[o] = buf[i],
                Target::Guest(a) => {
                    let n = self.guest_span(at, buf.len() - i);
                    if !self.bus_master() {
                        log::warn!("lsi: DMA write at {a:#x} with bus mastering off: bus fault");
                        self.dma_interrupt(DSTAT_BF);
                        return false;
                    }
                    if self.memory.write(a, &buf[i..i + n]).is_err() {
                        log::warn!("lsi: DMA write at {a:#x} outside guest RAM: bus fault");
                        self.dma_interrupt(DSTAT_BF);
                        return false;
                    }
                    self.dma_log.record(a, n);
                    i += n;
                    continue;
                }
            }
            i += 1;
        }
        true
    }

    /// Whether `len` bytes from `addr` are guest RAM the chip may master,
    /// none of them in its own windows: a block move the disk can copy.
    fn plain_guest_ram(&self, addr: u64, len: usize) -> bool {
        self.bus_master()
            && matches!(self.classify(addr), Target::Guest(_))
            && self.guest_span(addr, len) == len
    }

    /// A DATA OUT block move of `len` bytes from `addr`: plain guest RAM
    /// goes to the command as a place to read from, anything else (the
    /// chip's own windows) as bytes. False on a bus fault.
    pub(super) fn move_out(&mut self, addr: u64, len: usize) -> bool {
        let taken = if self.plain_guest_ram(addr, len) {
            self.dma_bytes = self.dma_bytes.saturating_add(len as u64);
            self.bus.data_out_guest(&self.memory, addr, len)
        } else {
            let mut buf = vec![0u8; len];
            if !self.dma_read(addr, &mut buf) {
                return false;
            }
            self.bus.data_out_bytes(&buf)
        };
        if let Err(e) = taken {
            log::warn!("lsi: DMA read at {addr:#x}: {e}: bus fault");
            self.dma_interrupt(DSTAT_BF);
            return false;
        }
        true
    }
}
