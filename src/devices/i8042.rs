//! Just enough of the i8042 keyboard controller for Linux: an idle status
//! port, answers to the controller commands its driver probes with, and the
//! CPU reset command that `reboot=k` uses, which ends the VM.

use std::collections::VecDeque;

use crate::bus::BusDevice;

/// Ports 0x60 (data) and 0x64 (status/command) as one range from 0x60.
pub const I8042_BASE: u64 = 0x60;
pub const I8042_LEN: u64 = 5;
const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
/// Set means the keyboard is not locked.
const STATUS_KEYLOCK: u8 = 0x10;
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_INTERFACE_TEST: u8 = 0xab;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
/// Control register bits the port enable/disable commands flip.
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
const CMD_AUX_LOOP: u8 = 0xd3;
/// AUX interface test result "clock line stuck low": there is no mouse port,
/// and Linux stops probing for one at once instead of timing out.
const AUX_TEST_NO_PORT: u8 = 0x01;
const CMD_RESET_CPU: u8 = 0xfe;
const SELF_TEST_PASSED: u8 = 0x55;

pub struct I8042 {
    /// Ends the VM: the machine, not this device, knows how.
    reset: Box<dyn FnMut() + Send>,
    reset_requested: bool,
    control: u8,
    expecting_ctr: bool,
    output: VecDeque<u8>,
}

impl I8042 {
    pub fn new(reset: impl FnMut() + Send + 'static) -> Self {
        I8042 {
            reset: Box::new(reset),
            reset_requested: false,
            control: 0,
            expecting_ctr: false,
            output: VecDeque::new(),
        }
    }

    fn status(&self) -> u8 {
        // Input buffer never full: the guest's wait loops end at once.
        let full = if self.output.is_empty() {
            0
        } else {
            STATUS_OUTPUT_FULL
        };
        STATUS_SYSTEM_FLAG | STATUS_KEYLOCK | full
    }

    fn command(&mut self, cmd: u8) {
        match cmd {
            CMD_READ_CTR => self.output.push_back(self.control),
            CMD_WRITE_CTR => self.expecting_ctr = true,
            CMD_SELF_TEST => self.output.push_back(SELF_TEST_PASSED),
            CMD_KBD_INTERFACE_TEST => self.output.push_back(0),
            CMD_AUX_TEST => self.output.push_back(AUX_TEST_NO_PORT),
            CMD_AUX_DISABLE => self.control |= CTR_AUX_DISABLED,
            CMD_AUX_ENABLE => self.control &= !CTR_AUX_DISABLED,
            CMD_KBD_DISABLE => self.control |= CTR_KBD_DISABLED,
            CMD_KBD_ENABLE => self.control &= !CTR_KBD_DISABLED,
            // The echo comes back as keyboard data, not AUX data, which tells
            // the driver the loop failed: no mouse port.
            CMD_AUX_LOOP => self.output.push_back(0),
            CMD_RESET_CPU => {
                // Linux sends the reset command several times; report it once.
                if !self.reset_requested {
                    log::info!("guest reset through the i8042");
                    self.reset_requested = true;
                }
                (self.reset)();
            }
            other => log::trace!("i8042 command {other:#x} ignored"),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA_OFFSET => self.output.pop_front().unwrap_or(0),
            COMMAND_OFFSET => self.status(),
            _ => 0,
        };
        data.fill(0);
        data[0] = value;
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.first()) {
            (COMMAND_OFFSET, Some(&cmd)) => self.command(cmd),
            (DATA_OFFSET, Some(&value)) if self.expecting_ctr => {
                self.control = value;
                self.expecting_ctr = false;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn status_is_idle_so_wait_loops_end() {
        let mut dev = I8042::new(|| {});
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & 0x03, 0);
    }

    #[test]
    fn self_test_and_control_register_round_trip() {
        let mut dev = I8042::new(|| {});
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 1);
        assert_eq!(read(&mut dev, DATA_OFFSET), SELF_TEST_PASSED);
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[0x45]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x45);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn aux_probe_is_answered_at_once_with_no_port() {
        let mut dev = I8042::new(|| {});
        dev.write(COMMAND_OFFSET, &[CMD_AUX_LOOP]);
        dev.write(DATA_OFFSET, &[0x5a]);
        let status = read(&mut dev, COMMAND_OFFSET);
        assert_eq!(status & STATUS_OUTPUT_FULL, 1, "answered, no timeout");
        assert_eq!(status & 0x20, 0, "not AUX data: the loop test fails");
        read(&mut dev, DATA_OFFSET);
        dev.write(COMMAND_OFFSET, &[CMD_AUX_TEST]);
        assert_eq!(read(&mut dev, DATA_OFFSET), AUX_TEST_NO_PORT);
        assert_ne!(read(&mut dev, COMMAND_OFFSET) & STATUS_KEYLOCK, 0);
    }

    #[test]
    fn port_disable_commands_show_in_the_control_register() {
        let mut dev = I8042::new(|| {});
        dev.write(COMMAND_OFFSET, &[CMD_AUX_DISABLE]);
        dev.write(COMMAND_OFFSET, &[CMD_KBD_DISABLE]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(
            read(&mut dev, DATA_OFFSET),
            CTR_AUX_DISABLED | CTR_KBD_DISABLED
        );
        dev.write(COMMAND_OFFSET, &[CMD_AUX_ENABLE]);
        dev.write(COMMAND_OFFSET, &[CMD_KBD_ENABLE]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0);
    }

    #[test]
    fn reset_command_stops_the_vm() {
        let resets = Arc::new(AtomicUsize::new(0));
        let counted = resets.clone();
        let mut dev = I8042::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
    }
}
