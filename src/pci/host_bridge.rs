//! The host bridge at 00:00.0, which Linux's conf1 probe looks for.

use super::config::ConfigSpace;
use super::{ActiveBar, BarSpec, PciDevice};

/// Intel vendor id with the device id cloud-hypervisor also uses for its
/// virtual host bridge: no Linux quirk matches it.
const VENDOR_INTEL: u16 = 0x8086;
const DEVICE_HOST_BRIDGE: u16 = 0x0d57;
const CLASS_HOST_BRIDGE: u32 = 0x06_00_00;

pub struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    pub fn new() -> Self {
        HostBridge {
            config: ConfigSpace::new(VENDOR_INTEL, DEVICE_HOST_BRIDGE, CLASS_HOST_BRIDGE, 0),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn read_config(&mut self, reg: usize) -> u32 {
        self.config.read(reg)
    }
    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.config.write(reg, offset, data)
    }
    fn bar_specs(&self) -> Vec<(usize, BarSpec)> {
        self.config.bar_specs()
    }
    fn place_bar(&mut self, index: usize, addr: u64) {
        self.config.set_bar_addr(index, addr)
    }
    fn active_bars(&self) -> Vec<ActiveBar> {
        Vec::new()
    }
    fn read_bar(&mut self, _bar: &ActiveBar, _offset: u64, data: &mut [u8]) {
        data.fill(0xff)
    }
    fn write_bar(&mut self, _bar: &ActiveBar, _offset: u64, _data: &[u8]) {}
}
