//! The PCI bus: configuration space, the root bus with its configuration
//! ports, BAR placement and INTx routing.

pub mod config;
pub mod host_bridge;
pub mod root;

pub use config::{ActiveBar, BarKind, BarSpec, ConfigSpace};

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
}
