//! What a PCI device model implements and what it is given: guest RAM as
//! the device sees it (`memory`), its interrupt line (`irq`), and the
//! register mirror it may keep (`crate::mirror`). The model knows nothing of
//! the process or the protocol that hosts it; `remote` serves any model.

pub mod irq;
pub mod memory;
#[cfg(test)]
pub mod scratch;

pub use crate::mirror::{MirrorOffer, RegisterMirror};
pub use crate::pci::PciDevice;
pub use irq::{InterruptLine, SharedIrq};
pub use memory::{DeviceMemory, DmaByMessage};

/// Serves a device's background work at once from the thread that finished
/// it (a disk worker), so that the control loop need not wake up for it:
/// true if it ran, false if the device was busy or gone, and the finisher
/// must signal `background_fd` as without it.
pub type BackgroundRunner = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

/// A range of a BAR the device wants served over ioregionfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoRegionSpec {
    /// From the start of the BAR.
    pub offset: u64,
    pub size: u64,
    /// Writes here have no side effect that the writer must wait for.
    pub posted_writes: bool,
}

/// A PCI device model, whatever process hosts it and whichever protocol
/// reaches it: the guest's view of it is [`PciDevice`], and this is what its
/// host gives it and asks of it besides.
pub trait DeviceModel: PciDevice {
    fn reset(&mut self);
    /// Guest RAM changed (SYNC_SYSMEM).
    fn set_memory(&mut self, memory: DeviceMemory);
    /// The interrupt line was wired (SET_IRQFD).
    fn set_interrupt(&mut self, line: SharedIrq);
    /// Readable when work the device started in the background (disk I/O)
    /// has results; the server then calls `service_background`.
    fn background_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    fn service_background(&mut self) {}
    /// How the device's own threads may serve its background work
    /// themselves (see [`BackgroundRunner`]); a device that ignores it is
    /// served by the control loop through `background_fd` alone.
    fn set_background_runner(&mut self, _runner: BackgroundRunner) {}
    /// Ranges of BAR `bar` to serve over ioregionfd rather than messages.
    fn ioregions(&self, _bar: u8) -> Vec<IoRegionSpec> {
        Vec::new()
    }
    /// Registers of BAR `bar` whose values the device keeps in a mirror
    /// page, with the page's memfd. Only registers whose reads have no
    /// side effect and whose writes the VMM waits for may be named: the
    /// VMM answers reads of them from the page.
    fn register_mirror(&self, _bar: u8) -> Option<MirrorOffer> {
        None
    }
    /// The device's state for a dump (`kill -USR2`): registers, what it is
    /// doing, its recent DMA.
    fn state_dump(&self) -> Option<String> {
        None
    }
    /// One line on what the device did, logged when the remote exits.
    fn summary(&self) -> Option<String> {
        None
    }
}
