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
    /// The BAR now sits at `bar_addr`. Returns what the bus should call for
    /// the range, or None when KVM serves it and no exit will reach us.
    fn attach(self: Arc<Self>, bar_addr: u64) -> Option<Arc<dyn SharedBusDevice>>;
    /// The BAR left `bar_addr`.
    fn detach(&self, bar_addr: u64);
}

/// A device on the PCI bus. Config accesses arrive as dword register
/// indexes; BAR accesses carry the BAR's current guest address too, because
/// an out-of-process device names accesses by absolute address.
pub trait PciDevice: Send {
    fn read_config(&mut self, reg: usize) -> u32;
    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]);
    /// BARs the device implements, for firmware-style placement before boot.
    fn bar_specs(&self) -> Vec<(usize, BarSpec)>;
    /// Places a BAR and enables decoding, as firmware does before boot.
    fn place_bar(&mut self, index: usize, addr: u64);
    /// BARs decoding right now.
    fn active_bars(&self) -> Vec<ActiveBar>;
    fn read_bar(&mut self, bar: &ActiveBar, offset: u64, data: &mut [u8]);
    fn write_bar(&mut self, bar: &ActiveBar, offset: u64, data: &[u8]);
    /// Sub-ranges of BAR `index` that bypass this device's lock.
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
