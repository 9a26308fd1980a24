//! A level-triggered INTx line driven through KVM's irqfd + resamplefd:
//! raising it writes the irqfd; when the guest acknowledges (KVM signals
//! the resamplefd and lowers the line) it is raised again if still asserted.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

/// The line is shared: the device model drives it, the server loop
/// services the resamplefd.
pub type SharedIrq = Arc<Mutex<InterruptLine>>;

#[derive(Default)]
pub struct InterruptLine {
    /// Written to raise the line.
    trigger: Option<File>,
    /// Readable when the guest acknowledged the interrupt.
    resample: Option<File>,
    level: bool,
    /// A masked line raises nothing; unmasking raises it if still high.
    masked: bool,
}

impl InterruptLine {
    pub fn new(irqfd: File, resamplefd: File) -> Self {
        InterruptLine {
            trigger: Some(irqfd),
            resample: Some(resamplefd),
            ..InterruptLine::default()
        }
    }

    /// Replaces the fd written to raise the line (None: raise nothing).
    pub fn set_trigger(&mut self, trigger: Option<File>) {
        self.trigger = trigger;
    }

    /// Replaces the fd that says the guest acknowledged the interrupt.
    pub fn set_resample(&mut self, resample: Option<File>) {
        self.resample = resample;
    }

    fn pulse(&mut self) {
        if self.masked {
            return;
        }
        if let Some(trigger) = self.trigger.as_mut()
            && let Err(e) = trigger.write_all(&1u64.to_ne_bytes())
        {
            log::warn!("irqfd write failed: {e}");
        }
    }

    pub fn set_level(&mut self, level: bool) {
        if level && !self.level {
            self.pulse();
        }
        self.level = level;
    }

    pub fn level(&self) -> bool {
        self.level
    }

    pub fn mask(&mut self) {
        self.masked = true;
    }

    /// Lets the line through again, raising it if it is still high: what
    /// an acknowledgement does too.
    pub fn unmask(&mut self) {
        self.masked = false;
        if self.level {
            self.pulse();
        }
    }

    /// The fd to poll for guest acknowledgements.
    pub fn resample_fd(&self) -> Option<RawFd> {
        self.resample.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Called when the resamplefd is readable.
    pub fn resample(&mut self) {
        if let Some(resample) = self.resample.as_mut() {
            let mut buf = [0u8; 8];
            let _ = resample.read(&mut buf);
        }
        if self.level {
            self.pulse();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    fn file(e: &EventFd) -> File {
        crate::sys::eventfd_file(e).unwrap()
    }

    #[test]
    fn raises_once_per_edge_and_again_on_resample_while_high() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let resample = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut line = InterruptLine::new(file(&irq), file(&resample));
        line.set_level(true);
        line.set_level(true);
        assert_eq!(irq.read().unwrap(), 1, "one write for one rising edge");
        resample.write(1).unwrap();
        line.resample();
        assert_eq!(irq.read().unwrap(), 1, "re-raised while still high");
        line.set_level(false);
        resample.write(1).unwrap();
        line.resample();
        assert!(irq.read().is_err(), "not re-raised once low");
    }

    #[test]
    fn a_masked_line_raises_nothing_until_unmasked() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut line = InterruptLine::default();
        line.set_trigger(Some(file(&irq)));
        line.mask();
        line.set_level(true);
        assert!(irq.read().is_err(), "masked");
        line.unmask();
        assert_eq!(irq.read().unwrap(), 1, "raised on unmask while high");
        line.set_level(false);
        line.unmask();
        assert!(irq.read().is_err(), "not raised once low");
        assert_eq!(line.resample_fd(), None);
    }
}
