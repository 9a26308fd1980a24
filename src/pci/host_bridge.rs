//! The host bridge at 00:00.0, which Linux's conf1 probe looks for.

use super::PciDevice;
use super::config::ConfigSpace;

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
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn bar_read(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff)
    }
    fn bar_write(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
}
