//! The root bus (bus 0): configuration mechanism #1 on ports 0xcf8-0xcff,
//! firmware-style BAR placement before boot, and keeping the PIO and MMIO
//! buses in step with the BARs the guest programs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::config::{COMMAND_IO, COMMAND_MEMORY, REG_BAR0, REG_COMMAND, REG_ROM};
use super::{ActiveBar, BarFastPath, BarKind, CUT_OFF_REGISTERS, PciDevice};
use crate::bus::Buses;
use crate::bus::{BusDevice, BusError, SharedBusDevice, Target};
use crate::layout;

pub const CONFIG_PORT_BASE: u64 = 0xcf8;
pub const CONFIG_PORT_LEN: u64 = 8;
pub const NUM_SLOTS: usize = 32;
/// First IOAPIC input used for PCI INTx; each slot gets its own.
pub const FIRST_PCI_GSI: u8 = 16;
/// Slots that can have a device with its own interrupt line.
pub const MAX_PCI_DEVICES: usize = (layout::IOAPIC_PINS - FIRST_PCI_GSI) as usize;

const CONFIG_ENABLE: u32 = 0x8000_0000;

#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("no free PCI slot")]
    NoSlot,
    #[error("PCI {kind:?} window exhausted placing a {size:#x}-byte BAR")]
    WindowFull { kind: BarKind, size: u64 },
    #[error("cannot map a BAR: {0}")]
    Bus(#[from] BusError),
}

type SharedDevice = Arc<Mutex<dyn PciDevice>>;

/// A BAR, or the part of one that no fast path covers, on the PIO or MMIO
/// bus, forwarding to its device.
struct BarWindow {
    device: SharedDevice,
    bar: ActiveBar,
    /// Where this window starts inside the BAR.
    base: u64,
}

impl BusDevice for BarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.device.lock().expect("pci device lock").bar_read(
            self.bar.index,
            self.base + offset,
            data,
        )
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.device.lock().expect("pci device lock").bar_write(
            self.bar.index,
            self.base + offset,
            data,
        )
    }
}

/// Stands on the bus for a fast path's range while KVM's registration of
/// it changes hands (see `PciRoot::swap_bar`), answering as a cut-off
/// device does: an exit that lands there reads zeros, not the all ones a
/// status-polling driver would spin on, and its writes go nowhere.
struct Handover;

impl SharedBusDevice for Handover {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(CUT_OFF_REGISTERS);
    }
    fn write(&self, _offset: u64, _data: &[u8]) {}
}

/// How one mapped BAR sits on the bus.
#[derive(Default)]
struct MappedBar {
    /// Bus ranges we inserted, by start address.
    on_bus: Vec<u64>,
    /// Fast paths attached, to detach when the BAR goes.
    attached: Vec<Arc<dyn BarFastPath>>,
    /// (offset, size) inside the BAR of the fast paths KVM serves.
    in_kernel: Vec<(u64, u64)>,
}

/// (offset, size, fast path or None for the device's own window).
type Piece = (u64, u64, Option<Arc<dyn BarFastPath>>);

/// Splits a BAR of `size` bytes into (offset, size, fast path) pieces: the
/// fast paths' ranges and the gaps between them. Fast paths that fall
/// outside the BAR or overlap an earlier one are dropped with a warning.
fn bar_pieces(size: u64, mut fast: Vec<Arc<dyn BarFastPath>>) -> Vec<Piece> {
    fast.sort_by_key(|f| f.range().0);
    let mut pieces = Vec::new();
    let mut at = 0u64;
    for f in fast {
        let (offset, len) = f.range();
        let fits = len > 0 && offset >= at && crate::bus::fits(offset, len, size);
        if !fits {
            log::warn!(
                "ioregion {offset:#x}+{len:#x} does not fit its BAR; left on the message path"
            );
            continue;
        }
        if offset > at {
            pieces.push((at, offset - at, None));
        }
        pieces.push((offset, len, Some(f)));
        at = offset + len;
    }
    if at < size {
        pieces.push((at, size - at, None));
    }
    pieces
}

/// Bump allocator over one address window.
struct Window {
    next: u64,
    end: u64,
}

impl Window {
    fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        let addr = self.next.checked_next_multiple_of(align)?;
        let end = addr.checked_add(size)?;
        (end <= self.end).then(|| {
            self.next = end;
            addr
        })
    }
}

pub struct PciRoot {
    slots: Vec<Option<SharedDevice>>,
    /// BARs currently on the buses, per slot.
    mapped: HashMap<usize, Vec<ActiveBar>>,
    /// What each of those BARs put on the bus, by (slot, BAR index).
    pieces: HashMap<(usize, usize), MappedBar>,
    buses: Arc<Buses>,
}

impl PciRoot {
    pub fn new(buses: Arc<Buses>) -> Self {
        PciRoot {
            slots: vec![None; NUM_SLOTS],
            mapped: HashMap::new(),
            pieces: HashMap::new(),
            buses,
        }
    }

    /// Puts a device in the first free slot at or after `first_slot`.
    pub fn add(&mut self, device: SharedDevice, first_slot: usize) -> Result<usize, PciError> {
        let slot = (first_slot..NUM_SLOTS)
            .find(|&s| self.slots[s].is_none())
            .ok_or(PciError::NoSlot)?;
        self.slots[slot] = Some(device);
        Ok(slot)
    }

    /// The IOAPIC input a slot's INTA# is wired to.
    pub fn slot_gsi(slot: usize) -> u8 {
        FIRST_PCI_GSI + ((slot - 1) % MAX_PCI_DEVICES) as u8
    }

    /// Places every BAR as firmware would and enables decoding, so the guest
    /// finds working devices without reassigning anything.
    pub fn assign_resources(&mut self) -> Result<(), PciError> {
        let mut io = Window {
            next: layout::PCI_IO_START,
            end: layout::PCI_IO_START + layout::PCI_IO_SIZE,
        };
        let mut mem = Window {
            next: layout::PCI_MMIO_START,
            end: layout::PCI_MMIO_START + layout::PCI_MMIO_SIZE,
        };
        for slot in 0..NUM_SLOTS {
            let Some(device) = self.slots[slot].clone() else {
                continue;
            };
            let mut dev = device.lock().expect("pci device lock");
            let mut command = 0u16;
            for (index, spec) in dev.config().bar_specs() {
                let (window, align, enable) = match spec.kind {
                    BarKind::Io => (&mut io, spec.size, COMMAND_IO),
                    // Page alignment lets each memory BAR be handed out
                    // whole (to KVM or to another process) later.
                    BarKind::Memory => (&mut mem, spec.size.max(4096), COMMAND_MEMORY),
                };
                let addr = window.alloc(spec.size, align).ok_or(PciError::WindowFull {
                    kind: spec.kind,
                    size: spec.size,
                })?;
                dev.place_bar(index, addr);
                command |= enable;
            }
            if command != 0 {
                let current = dev.read_config(REG_COMMAND) as u16;
                dev.write_config(REG_COMMAND, 0, &(current | command).to_le_bytes());
            }
            drop(dev);
            self.sync_bars(slot);
        }
        Ok(())
    }

    /// Maps slot `slot`'s BARs again, asking the device afresh for its
    /// fast paths (a restarted remote brings new ioregion fds). A BAR that
    /// stays where it is changes pieces without leaving the bus: a vCPU
    /// access in the middle must not read the all ones of nothing mapped.
    pub fn remap(&mut self, slot: usize) {
        let Some(device) = self.slots[slot].clone() else {
            return;
        };
        let wanted = device
            .lock()
            .expect("pci device lock")
            .config()
            .active_bars();
        let mut kept = Vec::new();
        for bar in self.mapped.remove(&slot).unwrap_or_default() {
            if !wanted.contains(&bar) {
                self.unmap_bar(slot, &bar);
                continue;
            }
            match self.swap_bar(slot, &device, bar) {
                Ok(()) => kept.push(bar),
                Err(e) => log::warn!("PCI 00:{slot:02x}.0 BAR{} not mapped: {e}", bar.index),
            }
        }
        self.mapped.insert(slot, kept);
        self.sync_bars(slot);
    }

    /// Replaces a mapped BAR's pieces with ones built from the device's
    /// current fast paths, in one bus operation. A range KVM serves for the
    /// old fast path cannot be registered for the new one until the old
    /// registration is gone, and exits there in between reach the bus: a
    /// `Handover` covers it until the new fast path is attached.
    fn swap_bar(
        &mut self,
        slot: usize,
        device: &SharedDevice,
        bar: ActiveBar,
    ) -> Result<(), BusError> {
        let old = self
            .pieces
            .remove(&(slot, usize::from(bar.index)))
            .unwrap_or_default();
        let fast = device
            .lock()
            .expect("pci device lock")
            .bar_fast_paths(usize::from(bar.index));
        let in_old_kernel = |offset: u64, len: u64| {
            old.in_kernel
                .iter()
                .any(|&(o, l)| o < offset + len && offset < o + l)
        };
        let mut next = MappedBar::default();
        let mut inserts = Vec::new();
        let mut later = Vec::new();
        for (offset, len, path) in bar_pieces(bar.size, fast) {
            let addr = bar.addr + offset;
            let target = match path {
                None => Target::Locked(Arc::new(Mutex::new(BarWindow {
                    device: device.clone(),
                    bar,
                    base: offset,
                }))),
                Some(path) if in_old_kernel(offset, len) => {
                    later.push((offset, len, path));
                    Target::Shared(Arc::new(Handover))
                }
                Some(path) => {
                    let attached = path.clone().attach(bar.addr);
                    next.attached.push(path);
                    if attached.in_kernel {
                        next.in_kernel.push((offset, len));
                    }
                    match attached.bus {
                        Some(shared) => Target::Shared(shared),
                        None => continue,
                    }
                }
            };
            inserts.push((addr, len, target));
            next.on_bus.push(addr);
        }
        if let Err(e) = self.bus_for(bar.kind).replace(&old.on_bus, inserts) {
            // The bus is as it was: the old pieces go the usual way, and
            // the new fast paths never reached it.
            self.release(bar, old);
            for path in next.attached {
                path.detach(bar.addr);
            }
            return Err(e);
        }
        for path in old.attached {
            path.detach(bar.addr);
        }
        let mut handed_over = Vec::new();
        let mut inserts = Vec::new();
        for (offset, len, path) in later {
            let addr = bar.addr + offset;
            let attached = path.clone().attach(bar.addr);
            next.attached.push(path);
            handed_over.push(addr);
            if attached.in_kernel {
                next.in_kernel.push((offset, len));
            }
            match attached.bus {
                Some(shared) => inserts.push((addr, len, Target::Shared(shared))),
                None => next.on_bus.retain(|&a| a != addr),
            }
        }
        if !handed_over.is_empty()
            && let Err(e) = self.bus_for(bar.kind).replace(&handed_over, inserts)
        {
            // Cannot happen (the same ranges); the stand-ins stay and the
            // range reads as a cut-off device's.
            log::warn!("BAR{} at {:#x}: handover failed: {e}", bar.index, bar.addr);
            next.on_bus.extend(handed_over);
            next.on_bus.sort_unstable();
            next.on_bus.dedup();
        }
        self.pieces.insert((slot, usize::from(bar.index)), next);
        Ok(())
    }

    /// Brings the buses in line with the BARs slot `slot` decodes now.
    fn sync_bars(&mut self, slot: usize) {
        let Some(device) = self.slots[slot].clone() else {
            return;
        };
        let wanted = device
            .lock()
            .expect("pci device lock")
            .config()
            .active_bars();
        let old = self.mapped.remove(&slot).unwrap_or_default();
        if old == wanted {
            self.mapped.insert(slot, old);
            return;
        }
        // Only BARs that changed move; the others keep their ranges, so a
        // BAR the guest moves onto another cannot steal it.
        let mut mapped = Vec::new();
        for bar in &old {
            if wanted.contains(bar) {
                mapped.push(*bar);
            } else {
                self.unmap_bar(slot, bar);
            }
        }
        for bar in wanted.into_iter().filter(|b| !old.contains(b)) {
            match self.map_bar(slot, &device, bar) {
                Ok(()) => {
                    log::debug!(
                        "PCI 00:{slot:02x}.0 BAR{} {:?} at {:#x}+{:#x}",
                        bar.index,
                        bar.kind,
                        bar.addr,
                        bar.size
                    );
                    mapped.push(bar);
                }
                // The guest programmed overlapping BARs; the access goes
                // nowhere rather than to the wrong device.
                Err(e) => log::warn!("PCI 00:{slot:02x}.0 BAR{} not mapped: {e}", bar.index),
            }
        }
        self.mapped.insert(slot, mapped);
    }

    /// Puts a BAR on its bus: fast paths on their sub-ranges, the device's
    /// own window on the rest. All or nothing.
    fn map_bar(
        &mut self,
        slot: usize,
        device: &SharedDevice,
        bar: ActiveBar,
    ) -> Result<(), BusError> {
        let fast = device
            .lock()
            .expect("pci device lock")
            .bar_fast_paths(usize::from(bar.index));
        let mut done = MappedBar::default();
        for (offset, len, path) in bar_pieces(bar.size, fast) {
            let addr = bar.addr + offset;
            let inserted = match path {
                Some(path) => {
                    let attached = path.clone().attach(bar.addr);
                    done.attached.push(path);
                    if attached.in_kernel {
                        done.in_kernel.push((offset, len));
                    }
                    match attached.bus {
                        Some(shared) => self.bus_for(bar.kind).insert_shared(shared, addr, len),
                        None => continue,
                    }
                }
                None => {
                    let window = Arc::new(Mutex::new(BarWindow {
                        device: device.clone(),
                        bar,
                        base: offset,
                    }));
                    self.bus_for(bar.kind).insert(window, addr, len)
                }
            };
            if let Err(e) = inserted {
                self.release(bar, done);
                return Err(e);
            }
            done.on_bus.push(addr);
        }
        self.pieces.insert((slot, usize::from(bar.index)), done);
        Ok(())
    }

    fn unmap_bar(&mut self, slot: usize, bar: &ActiveBar) {
        if let Some(done) = self.pieces.remove(&(slot, usize::from(bar.index))) {
            self.release(*bar, done);
        }
    }

    fn release(&self, bar: ActiveBar, done: MappedBar) {
        for addr in done.on_bus {
            if let Err(e) = self.bus_for(bar.kind).remove(addr) {
                log::warn!("BAR{} at {:#x}: unmap failed: {e}", bar.index, bar.addr);
            }
        }
        for path in done.attached {
            path.detach(bar.addr);
        }
    }

    fn bus_for(&self, kind: BarKind) -> &crate::bus::Bus {
        match kind {
            BarKind::Io => &self.buses.pio,
            BarKind::Memory => &self.buses.mmio,
        }
    }

    fn config_read(&self, slot: usize, function: u32, reg: usize) -> u32 {
        match (&self.slots[slot], function) {
            (Some(device), 0) => device.lock().expect("pci device lock").read_config(reg),
            _ => 0xffff_ffff,
        }
    }

    fn config_write(&mut self, slot: usize, function: u32, reg: usize, offset: usize, data: &[u8]) {
        let (Some(device), 0) = (&self.slots[slot], function) else {
            return;
        };
        device
            .lock()
            .expect("pci device lock")
            .write_config(reg, offset, data);
        if reg == REG_COMMAND || (REG_BAR0..REG_BAR0 + 6).contains(&reg) || reg == REG_ROM {
            self.sync_bars(slot);
        }
    }
}

/// Ports 0xcf8 (address) and 0xcfc-0xcff (data) of configuration mechanism #1.
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    address: u32,
}

impl PciConfigIo {
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciConfigIo { root, address: 0 }
    }

    /// (slot, function, register) selected by the address register, if
    /// it targets bus 0 with the enable bit set.
    fn target(&self) -> Option<(usize, u32, usize)> {
        if self.address & CONFIG_ENABLE == 0 || (self.address >> 16) & 0xff != 0 {
            return None;
        }
        Some((
            ((self.address >> 11) & 0x1f) as usize,
            (self.address >> 8) & 0x7,
            ((self.address >> 2) & 0x3f) as usize,
        ))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = if offset < 4 {
            // Only whole-dword accesses reach the address register.
            if offset == 0 && data.len() == 4 {
                self.address
            } else {
                0xffff_ffff
            }
        } else {
            match self.target() {
                Some((slot, func, reg)) => self
                    .root
                    .lock()
                    .expect("pci root lock")
                    .config_read(slot, func, reg),
                None => 0xffff_ffff,
            }
        };
        let shift = (offset % 4) * 8;
        for (i, b) in data.iter_mut().enumerate() {
            *b = (value >> (shift + i as u64 * 8)) as u8;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset < 4 {
            if offset == 0 && data.len() == 4 {
                self.address = u32::from_le_bytes(data.try_into().expect("4 bytes"));
            }
            return;
        }
        let byte = (offset - 4) as usize;
        if byte + data.len() > 4 {
            return;
        }
        if let Some((slot, func, reg)) = self.target() {
            self.root
                .lock()
                .expect("pci root lock")
                .config_write(slot, func, reg, byte, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::{ConfigSpace, REG_INTERRUPT};
    use super::super::host_bridge::HostBridge;
    use super::super::{Attached, BarSpec};
    use super::*;
    use crate::bus::SharedBusDevice;

    /// A device whose BARs answer with their index and record writes.
    struct TestDevice {
        config: ConfigSpace,
        writes: Vec<(u8, u64, u64, Vec<u8>)>,
        fast: Option<Arc<FastRange>>,
    }

    /// BAR1's bytes 0x40..0x80 on a fast path that answers 0xfa and logs
    /// where it was attached; `kernel` plays KVM taking the range.
    #[derive(Default)]
    struct FastRange {
        kernel: bool,
        log: Mutex<Vec<String>>,
        /// When set, what the MMIO bus answers at the range as KVM takes
        /// it (attach) and gives it up (detach): where an exit lands then.
        watch: Mutex<Option<Arc<Buses>>>,
        seen: Mutex<Vec<(bool, [u8; 2])>>,
    }

    impl FastRange {
        fn look(&self, bar_addr: u64) {
            if let Some(buses) = &*self.watch.lock().unwrap() {
                let mut d = [0xaa; 2];
                let mapped = buses.mmio.read(bar_addr + 0x40, &mut d);
                self.seen.lock().unwrap().push((mapped, d));
            }
        }
    }

    impl BarFastPath for FastRange {
        fn range(&self) -> (u64, u64) {
            (0x40, 0x40)
        }
        fn attach(self: Arc<Self>, bar_addr: u64) -> Attached {
            self.log
                .lock()
                .unwrap()
                .push(format!("attach {bar_addr:#x}"));
            self.look(bar_addr);
            if self.kernel {
                Attached {
                    bus: None,
                    in_kernel: true,
                }
            } else {
                Attached::bus(self)
            }
        }
        fn detach(&self, bar_addr: u64) {
            self.log
                .lock()
                .unwrap()
                .push(format!("detach {bar_addr:#x}"));
            self.look(bar_addr);
        }
    }

    impl SharedBusDevice for FastRange {
        fn read(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0xfa)
        }
        fn write(&self, _offset: u64, _data: &[u8]) {}
    }

    impl TestDevice {
        fn new() -> Self {
            let mut config = ConfigSpace::new(0x1000, 0x0012, 0x010000, 0);
            config
                .set_bar(
                    0,
                    BarSpec {
                        kind: BarKind::Io,
                        size: 256,
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
            config
                .set_bar(
                    2,
                    BarSpec {
                        kind: BarKind::Memory,
                        size: 8192,
                    },
                )
                .unwrap();
            TestDevice {
                config,
                writes: Vec::new(),
                fast: None,
            }
        }
    }

    impl PciDevice for TestDevice {
        fn config(&self) -> &ConfigSpace {
            &self.config
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.config
        }
        fn bar_read(&mut self, bar: u8, _offset: u64, data: &mut [u8]) {
            data.fill(bar)
        }
        fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
            let addr = self.config.bar_addr(usize::from(bar)).unwrap();
            self.writes.push((bar, addr, offset, data.to_vec()))
        }
        fn bar_fast_paths(&self, index: usize) -> Vec<Arc<dyn BarFastPath>> {
            match (&self.fast, index) {
                (Some(f), 1) => vec![f.clone() as Arc<dyn BarFastPath>],
                _ => vec![],
            }
        }
    }

    fn setup() -> (Arc<Buses>, PciConfigIo, Arc<Mutex<TestDevice>>) {
        setup_with(None)
    }

    fn setup_with(
        fast: Option<Arc<FastRange>>,
    ) -> (Arc<Buses>, PciConfigIo, Arc<Mutex<TestDevice>>) {
        let buses = Arc::new(Buses::default());
        let root = Arc::new(Mutex::new(PciRoot::new(buses.clone())));
        let mut device = TestDevice::new();
        device.fast = fast;
        let dev = Arc::new(Mutex::new(device));
        {
            let mut r = root.lock().unwrap();
            r.add(Arc::new(Mutex::new(HostBridge::new())), 0).unwrap();
            assert_eq!(r.add(dev.clone(), 1).unwrap(), 1);
            r.assign_resources().unwrap();
        }
        (buses, PciConfigIo::new(root), dev)
    }

    fn cfg_read(io: &mut PciConfigIo, slot: u32, reg: u32) -> u32 {
        io.write(
            0,
            &(CONFIG_ENABLE | (slot << 11) | (reg << 2)).to_le_bytes(),
        );
        let mut d = [0u8; 4];
        io.read(4, &mut d);
        u32::from_le_bytes(d)
    }

    fn cfg_write(io: &mut PciConfigIo, slot: u32, reg: u32, value: u32) {
        io.write(
            0,
            &(CONFIG_ENABLE | (slot << 11) | (reg << 2)).to_le_bytes(),
        );
        io.write(4, &value.to_le_bytes());
    }

    #[test]
    fn enumeration_sees_host_bridge_and_device_only() {
        let (_, mut io, _) = setup();
        assert_eq!(cfg_read(&mut io, 0, 0), 0x0d57_8086);
        assert_eq!(cfg_read(&mut io, 1, 0), 0x0012_1000);
        assert_eq!(cfg_read(&mut io, 2, 0), 0xffff_ffff);
        // Function 1 of a present slot does not exist.
        io.write(0, &(CONFIG_ENABLE | (1 << 11) | (1 << 8)).to_le_bytes());
        let mut d = [0u8; 4];
        io.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn address_register_reads_back_and_ignores_byte_writes() {
        let (_, mut io, _) = setup();
        io.write(0, &0x8000_0000u32.to_le_bytes());
        io.write(3, &[0x01]);
        let mut d = [0u8; 4];
        io.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
    }

    #[test]
    fn firmware_places_bars_in_the_windows_and_maps_them() {
        let (buses, mut io, dev) = setup();
        let bar0 = cfg_read(&mut io, 1, 4);
        let bar1 = cfg_read(&mut io, 1, 5);
        let bar2 = cfg_read(&mut io, 1, 6);
        assert_eq!(bar0, layout::PCI_IO_START as u32 | 1);
        assert_eq!(bar1, layout::PCI_MMIO_START as u32);
        assert_eq!(
            bar2,
            layout::PCI_MMIO_START as u32 + 0x2000,
            "8 KiB aligned"
        );
        assert_eq!(cfg_read(&mut io, 1, 1) & 3, 3, "I/O and memory enabled");
        let mut d = [0u8; 4];
        assert!(buses.mmio.read(u64::from(bar2) + 8, &mut d));
        assert_eq!(d, [2; 4]);
        assert!(buses.pio.write(layout::PCI_IO_START + 0x10, &[9]));
        assert_eq!(
            dev.lock().unwrap().writes[0],
            (0, layout::PCI_IO_START, 0x10, vec![9])
        );
    }

    #[test]
    fn guest_moving_a_bar_remaps_it() {
        let (buses, mut io, _) = setup();
        let old = u64::from(cfg_read(&mut io, 1, 5));
        // Linux sizes with decoding off, then programs a new address.
        cfg_write(&mut io, 1, 1, 0);
        let mut d = [0u8; 1];
        assert!(!buses.mmio.read(old, &mut d), "decoding off unmaps");
        cfg_write(&mut io, 1, 5, 0xffff_ffff);
        assert_eq!(cfg_read(&mut io, 1, 5), 0xffff_fc00);
        cfg_write(&mut io, 1, 5, 0xd000_0000);
        cfg_write(&mut io, 1, 1, 3);
        assert!(!buses.mmio.read(old, &mut d));
        assert!(buses.mmio.read(0xd000_0000, &mut d));
        assert_eq!(d, [1]);
    }

    #[test]
    fn fast_paths_split_their_bar_and_follow_it_when_it_moves() {
        let fast = Arc::new(FastRange::default());
        let (buses, mut io, dev) = setup_with(Some(fast.clone()));
        let old = u64::from(cfg_read(&mut io, 1, 5));
        let mut d = [0u8; 2];
        assert!(buses.mmio.read(old + 0x40, &mut d));
        assert_eq!(d, [0xfa; 2], "the fast path serves its range");
        assert!(buses.mmio.read(old + 0x3e, &mut d));
        assert_eq!(d, [1; 2], "below it, the device");
        assert!(buses.mmio.write(old + 0x80, &[7]));
        assert_eq!(
            dev.lock().unwrap().writes.last().unwrap(),
            &(1, old, 0x80, vec![7]),
            "above it, the device at the right BAR offset"
        );
        cfg_write(&mut io, 1, 1, 0);
        cfg_write(&mut io, 1, 5, 0xd000_0000);
        cfg_write(&mut io, 1, 1, 3);
        assert!(!buses.mmio.read(old + 0x40, &mut d), "nothing left behind");
        assert!(buses.mmio.read(0xd000_0040, &mut d));
        assert_eq!(d, [0xfa; 2]);
        assert_eq!(
            *fast.log.lock().unwrap(),
            vec![
                format!("attach {old:#x}"),
                format!("detach {old:#x}"),
                "attach 0xd0000000".to_string()
            ]
        );
    }

    #[test]
    fn remap_swaps_in_the_devices_new_fast_paths() {
        let old_path = Arc::new(FastRange::default());
        let (buses, mut io, dev) = setup_with(Some(old_path.clone()));
        let bar1 = u64::from(cfg_read(&mut io, 1, 5));
        let new_path = Arc::new(FastRange {
            kernel: true,
            ..Default::default()
        });
        dev.lock().unwrap().fast = Some(new_path.clone());
        io.root.lock().unwrap().remap(1);
        assert_eq!(
            *old_path.log.lock().unwrap(),
            vec![format!("attach {bar1:#x}"), format!("detach {bar1:#x}")]
        );
        assert_eq!(
            *new_path.log.lock().unwrap(),
            vec![format!("attach {bar1:#x}")]
        );
        let mut d = [0u8; 2];
        assert!(
            !buses.mmio.read(bar1 + 0x40, &mut d),
            "KVM serves the new range"
        );
        assert!(buses.mmio.read(bar1, &mut d), "the rest is mapped again");
        assert_eq!(d, [1; 2]);
    }

    /// A vCPU reading the BAR while a restarted remote's BARs are mapped
    /// again never finds it gone: all ones is what a cut-off device's
    /// registers must not read as.
    #[test]
    fn remap_never_leaves_the_bar_unmapped() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::time::{Duration, Instant};
        let (buses, mut io, dev) = setup_with(Some(Arc::new(FastRange::default())));
        let bar0 = u64::from(cfg_read(&mut io, 1, 4) & !3);
        let bar1 = u64::from(cfg_read(&mut io, 1, 5));
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let reader = {
            let (buses, stop, reads) = (buses.clone(), stop.clone(), reads.clone());
            std::thread::spawn(move || {
                let mut gaps = Vec::new();
                while !stop.load(Ordering::Relaxed) && gaps.is_empty() {
                    for (bus, addr) in [
                        (&buses.mmio, bar1),
                        (&buses.mmio, bar1 + 0x40),
                        (&buses.mmio, bar1 + 0x80),
                        (&buses.pio, bar0),
                    ] {
                        let mut d = [0u8; 2];
                        if !bus.read(addr, &mut d) {
                            gaps.push(addr);
                        }
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                gaps
            })
        };
        let t0 = Instant::now();
        let mut remaps = 0;
        while !reader.is_finished() && (remaps < 20_000 || reads.load(Ordering::Relaxed) < 1000) {
            dev.lock().unwrap().fast = Some(Arc::new(FastRange::default()));
            io.root.lock().unwrap().remap(1);
            remaps += 1;
            if t0.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let gaps = reader.join().unwrap();
        assert!(
            gaps.is_empty(),
            "found nothing mapped at {gaps:#x?} ({remaps} remaps)"
        );
        assert!(reads.load(Ordering::Relaxed) > 0);
    }

    /// On the kernel path the old registration must leave KVM before the
    /// new one can enter; exits in between find zeros, as from a device
    /// that is cut off, not all ones.
    #[test]
    fn remap_covers_the_range_while_kvm_changes_hands() {
        let old_path = Arc::new(FastRange {
            kernel: true,
            ..Default::default()
        });
        let (buses, mut io, dev) = setup_with(Some(old_path.clone()));
        let bar1 = u64::from(cfg_read(&mut io, 1, 5));
        let new_path = Arc::new(FastRange {
            kernel: true,
            ..Default::default()
        });
        *old_path.watch.lock().unwrap() = Some(buses.clone());
        *new_path.watch.lock().unwrap() = Some(buses.clone());
        dev.lock().unwrap().fast = Some(new_path.clone());
        io.root.lock().unwrap().remap(1);
        assert_eq!(
            *old_path.seen.lock().unwrap(),
            vec![(true, [0; 2])],
            "as KVM lets go"
        );
        assert_eq!(
            *new_path.seen.lock().unwrap(),
            vec![(true, [0; 2])],
            "until KVM takes it"
        );
        let mut d = [0u8; 2];
        assert!(
            !buses.mmio.read(bar1 + 0x40, &mut d),
            "KVM serves the new range"
        );
        assert!(buses.mmio.read(bar1 + 0x3e, &mut d));
        assert_eq!(d, [1; 2]);
    }

    #[test]
    fn a_range_kvm_serves_is_left_off_the_bus() {
        let fast = Arc::new(FastRange {
            kernel: true,
            ..Default::default()
        });
        let (buses, mut io, _) = setup_with(Some(fast));
        let bar1 = u64::from(cfg_read(&mut io, 1, 5));
        let mut d = [0u8; 1];
        assert!(
            !buses.mmio.read(bar1 + 0x40, &mut d),
            "no exit reaches us there"
        );
        assert!(buses.mmio.read(bar1 + 0x80, &mut d));
    }

    #[test]
    fn overlapping_bars_are_left_unmapped() {
        let (buses, mut io, _) = setup();
        let bar2 = cfg_read(&mut io, 1, 6);
        cfg_write(&mut io, 1, 5, bar2);
        let mut d = [0u8; 1];
        assert!(buses.mmio.read(u64::from(bar2), &mut d));
        assert_eq!(d, [2], "the BAR already there keeps the range");
    }

    #[test]
    fn slots_get_their_own_gsi() {
        assert_eq!(PciRoot::slot_gsi(1), 16);
        assert_eq!(PciRoot::slot_gsi(8), 23);
        let _ = REG_INTERRUPT;
    }
}
