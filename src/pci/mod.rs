//! The PCI bus: configuration space, the root bus with its configuration
//! ports, BAR placement and INTx routing.

pub mod config;
pub mod host_bridge;
pub mod root;

pub use config::{ActiveBar, BarKind, BarSpec, ConfigSpace};

use std::sync::Arc;

use crate::bus::SharedBusDevice;

/// A sub-range of a BAR served without the device's lock: guest accesses
/// there go straight to an ioregion fd, from the vCPU thread (userspace
/// path) or from KVM itself (kernel path).
pub trait BarFastPath: Send + Sync {
    /// Offset and size inside the BAR.
    fn range(&self) -> (u64, u64);
    /// The BAR now sits at `bar_addr`. Says what the bus should call for
    /// the range and whether KVM serves (some of) it.
    fn attach(self: Arc<Self>, bar_addr: u64) -> Attached;
    /// The BAR left `bar_addr`.
    fn detach(&self, bar_addr: u64);
}

/// Where a fast path's accesses go once its BAR is placed.
pub struct Attached {
    /// What the bus calls for the accesses that exit to userspace; None
    /// when KVM serves the whole range and none will.
    pub bus: Option<Arc<dyn SharedBusDevice>>,
    /// KVM serves the range, or part of it: a BAR moving over it must wait
    /// until it is detached, or KVM would refuse the overlap.
    pub in_kernel: bool,
}

impl Attached {
    /// Every access exits to the bus.
    pub fn bus(device: Arc<dyn SharedBusDevice>) -> Self {
        Attached {
            bus: Some(device),
            in_kernel: false,
        }
    }
}

/// A PCI function as the guest sees it: its config space and its BARs.
///
/// The one device trait of both sides of the wire. A device model
/// implements it (the LSI, in its own process); the VMM's proxy implements
/// it by forwarding each access to the process that hosts the model; the
/// remote's loops serve any implementor; the PCI root maps any implementor
/// on the buses. A BAR access names the BAR and the offset in it, not a
/// guest address: a transport that needs the address (mpqemu's) looks up
/// where the guest put the BAR.
pub trait PciDevice: Send {
    /// The config space as this side keeps it: identity, BAR sizes and
    /// where the guest put them.
    fn config(&self) -> &ConfigSpace;
    fn config_mut(&mut self) -> &mut ConfigSpace;
    /// Dword `reg` of config space.
    fn read_config(&mut self, reg: usize) -> u32 {
        self.config().read(reg)
    }
    /// `data` at byte `offset` of dword `reg`.
    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.config_mut().write(reg, offset, data)
    }
    /// Places a BAR, as firmware does before boot.
    fn place_bar(&mut self, index: usize, addr: u64) {
        self.config_mut().set_bar_addr(index, addr)
    }
    /// `offset` is from the start of BAR `bar`.
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]);
    /// A read of `size` bytes (1 to 8) as the little-endian value every
    /// transport carries.
    fn bar_read_value(&mut self, bar: u8, offset: u64, size: usize) -> u64 {
        let mut data = [0u8; 8];
        self.bar_read(bar, offset, &mut data[..size.min(8)]);
        crate::bus::data_from_bytes(&data)
    }
    /// A write of the low `size` bytes (1 to 8) of `value`.
    fn bar_write_value(&mut self, bar: u8, offset: u64, size: usize, value: u64) {
        self.bar_write(bar, offset, &value.to_le_bytes()[..size.min(8)]);
    }
    /// Sub-ranges of BAR `index` that bypass this device's lock (a proxy's
    /// ranges served over ioregion fds).
    fn bar_fast_paths(&self, _index: usize) -> Vec<Arc<dyn BarFastPath>> {
        Vec::new()
    }
}

/// What a cut-off device's BAR reads return, byte by byte. Not the all
/// ones of a PCI master abort: an interrupt handler that loops while a
/// status register shows work pending (sym53c8xx's loops on ISTAT) spins
/// for ever on all ones and takes its CPU with it, while zeros read as
/// "nothing pending" and leave recovery to the driver's command timeouts.
pub const CUT_OFF_REGISTERS: u8 = 0;
