//! A level-triggered INTx line driven through KVM's irqfd + resamplefd:
//! raising it writes the irqfd; when the guest acknowledges (KVM signals
//! the resamplefd and lowers the line) it is raised again if still asserted.
//!
//! KVM signals the resamplefd at every acknowledgement, but only one that
//! finds the line still high asks anything of us. The control loop
//! therefore waits on an epoll set that holds the resamplefd only while
//! the line is high: the thread that lowers the line takes it out, the
//! one that raises it puts it back (after throwing away the
//! acknowledgements that came while the line was low), and a driver that
//! clears the interrupt in its handler, as drivers do, no longer wakes the
//! control loop once per interrupt. On a host with few CPUs that wake-up
//! preempts the vCPU. Every change happens under the line's lock.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// The line is shared: the device model drives it, the server loop
/// services the resamplefd.
pub type SharedIrq = Arc<Mutex<InterruptLine>>;

#[derive(Default)]
pub struct InterruptLine {
    /// Written to raise the line.
    trigger: Option<File>,
    /// Readable when the guest acknowledged the interrupt.
    resample: Option<File>,
    /// Holds `resample` while the line is high; None if epoll failed, and
    /// then the loop waits on `resample` itself, as it always did. Made
    /// once and kept for the line's life, whatever the resamplefd: the
    /// posted-write thread's epoll set holds it (`Hub::take_acknowledgements`).
    watch: Option<Epoll>,
    level: bool,
    /// A masked line raises nothing; unmasking raises it if still high.
    masked: bool,
    /// The resamplefd cannot be read without waiting in one call.
    poll_to_read: bool,
    counts: IrqCounts,
}

/// How often a line was raised: what tells a device's interrupts per
/// command from the guest's other interrupts in a benchmark's totals.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IrqCounts {
    /// The line went high (an irqfd write).
    pub raised: u64,
    /// Raised again while still high: the guest acknowledged it (or
    /// unmasked it) before the device took it back.
    pub raised_again: u64,
}

impl InterruptLine {
    pub fn new(irqfd: File, resamplefd: File) -> Self {
        let mut line = InterruptLine {
            trigger: Some(irqfd),
            ..InterruptLine::default()
        };
        line.set_resample(Some(resamplefd));
        line
    }

    /// Replaces the fd written to raise the line (None: raise nothing).
    pub fn set_trigger(&mut self, trigger: Option<File>) {
        self.trigger = trigger;
    }

    /// Replaces the fd that says the guest acknowledged the interrupt.
    pub fn set_resample(&mut self, resample: Option<File>) {
        if self.level {
            self.unwatch();
        }
        self.resample = resample;
        if self.resample.is_some() && self.watch.is_none() {
            self.watch = Epoll::new()
                .inspect_err(|e| {
                    log::warn!(
                        "epoll for the interrupt acknowledgements failed ({e}): \
                         every acknowledgement wakes the control loop"
                    )
                })
                .ok();
        }
        if self.level {
            self.watch();
        }
    }

    fn pulse(&mut self) {
        if self.masked {
            return;
        }
        if self.level {
            self.counts.raised_again += 1;
        } else {
            self.counts.raised += 1;
        }
        if let Some(trigger) = self.trigger.as_mut()
            && let Err(e) = trigger.write_all(&1u64.to_ne_bytes())
        {
            log::warn!("irqfd write failed: {e}");
        }
    }

    pub fn set_level(&mut self, level: bool) {
        if level && !self.level {
            // Acknowledgements of interrupts the device had already taken
            // back ask for nothing; one after this pulse will.
            self.take_acknowledgements();
            self.watch();
            self.pulse();
        } else if !level && self.level {
            self.unwatch();
        }
        self.level = level;
    }

    pub fn level(&self) -> bool {
        self.level
    }

    pub fn counts(&self) -> IrqCounts {
        self.counts
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

    /// The fd to poll for guest acknowledgements that need an answer.
    pub fn resample_fd(&self) -> Option<RawFd> {
        match (&self.watch, &self.resample) {
            (_, None) => None,
            (Some(watch), Some(_)) => Some(watch.as_raw_fd()),
            (None, Some(resample)) => Some(resample.as_raw_fd()),
        }
    }

    /// The epoll set that holds the resamplefd while the line is high,
    /// when there is one: an fd only this line holds, so that another
    /// thread can wait on it (inside an epoll set of its own) and stop
    /// waiting when the line is replaced and the fd closed.
    pub fn watch_fd(&self) -> Option<RawFd> {
        match (&self.watch, &self.resample) {
            (Some(watch), Some(_)) => Some(watch.as_raw_fd()),
            _ => None,
        }
    }

    /// Called when the fd from [`Self::resample_fd`] is readable. Raises
    /// the line again only if it took an acknowledgement: the line may
    /// have gone low and high again since the fd was found readable, and
    /// raising it took the acknowledgements and pulsed already.
    pub fn resample(&mut self) {
        if self.take_acknowledgements() && self.level {
            self.pulse();
        }
    }

    /// Empties the resamplefd without blocking (it may have been emptied
    /// since the loop found it readable, and the fd may be blocking); says
    /// whether it took an acknowledgement, or cannot tell. One read that
    /// does not wait, once per interrupt; poll + read where the kernel
    /// cannot read an eventfd that way (or the fd is something else).
    fn take_acknowledgements(&mut self) -> bool {
        let Some(resample) = self.resample.as_mut() else {
            return false;
        };
        if !self.poll_to_read {
            match crate::sys::eventfd_take(resample.as_fd()) {
                Ok(taken) => return taken.is_some(),
                Err(e) => {
                    log::debug!("resamplefd: no read without waiting ({e}); polling first");
                    self.poll_to_read = true;
                }
            }
        }
        match crate::sys::wait_readable(resample.as_fd(), 0) {
            Ok(true) => {
                let mut buf = [0u8; 8];
                resample.read(&mut buf).is_ok()
            }
            Ok(false) => false,
            Err(e) => {
                log::warn!("resamplefd poll failed: {e}");
                true
            }
        }
    }

    fn watch(&self) {
        self.control(ControlOperation::Add);
    }

    fn unwatch(&self) {
        self.control(ControlOperation::Delete);
    }

    fn control(&self, op: ControlOperation) {
        if let (Some(watch), Some(resample)) = (&self.watch, &self.resample) {
            let fd = resample.as_raw_fd();
            match watch.ctl(op, fd, EpollEvent::new(EventSet::IN, fd as u64)) {
                Ok(()) => {}
                // Already in, or already out: the state we wanted.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOENT)) => {}
                Err(e) => log::error!(
                    "epoll_ctl on the resamplefd failed: {e}; an interrupt the guest \
                     acknowledges while the device still asserts it may be lost"
                ),
            }
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

    fn pair() -> (EventFd, EventFd, InterruptLine) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let resample = EventFd::new(EFD_NONBLOCK).unwrap();
        let line = InterruptLine::new(file(&irq), file(&resample));
        (irq, resample, line)
    }

    /// Whether the control loop, polling `resample_fd`, would wake now.
    fn wakes(line: &InterruptLine) -> bool {
        let mut fds = [crate::sys::pollin(line.resample_fd())];
        crate::sys::poll(&mut fds, 0).unwrap() == 1
    }

    #[test]
    fn raises_once_per_edge_and_again_on_resample_while_high() {
        let (irq, resample, mut line) = pair();
        raise_and_resample(&irq, &resample, &mut line);
    }

    /// The same where acknowledgements are polled for before the read.
    #[test]
    fn polling_for_acknowledgements_behaves_the_same() {
        let (irq, resample, mut line) = pair();
        line.poll_to_read = true;
        raise_and_resample(&irq, &resample, &mut line);
    }

    fn raise_and_resample(irq: &EventFd, resample: &EventFd, line: &mut InterruptLine) {
        line.set_level(true);
        line.set_level(true);
        assert_eq!(irq.read().unwrap(), 1, "one write for one rising edge");
        resample.write(1).unwrap();
        assert!(wakes(line), "an acknowledgement while high wakes the loop");
        line.resample();
        assert_eq!(irq.read().unwrap(), 1, "re-raised while still high");
        assert!(!wakes(line), "the acknowledgement was taken");
        line.set_level(false);
        resample.write(1).unwrap();
        line.resample();
        assert!(irq.read().is_err(), "not re-raised once low");
        line.set_level(true);
        assert_eq!(
            line.counts(),
            IrqCounts {
                raised: 2,
                raised_again: 1
            }
        );
    }

    #[test]
    fn acknowledgements_while_low_do_not_wake_the_loop() {
        let (irq, resample, mut line) = pair();
        resample.write(1).unwrap();
        assert!(!wakes(&line), "low from the start");
        line.set_level(true);
        assert_eq!(irq.read().unwrap(), 1);
        assert!(
            !wakes(&line),
            "an acknowledgement from before the rising edge is stale"
        );
        line.set_level(false);
        resample.write(1).unwrap();
        assert!(!wakes(&line), "the driver cleared the interrupt first");
        line.set_level(true);
        assert_eq!(irq.read().unwrap(), 1);
        resample.write(1).unwrap();
        assert!(wakes(&line), "an acknowledgement after the rising edge");
    }

    #[test]
    fn resample_with_nothing_queued_returns_at_once() {
        // A blocking eventfd: a read of an empty one would never return.
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let resample = EventFd::new(0).unwrap();
        let mut line = InterruptLine::new(file(&irq), file(&resample));
        line.set_level(true);
        line.resample();
        assert_eq!(
            irq.read().unwrap(),
            1,
            "raised, and not again: nothing was taken"
        );
    }

    /// An acknowledgement the line took when it rose again (it was low in
    /// between) asks for nothing more: the rise pulsed already.
    #[test]
    fn an_acknowledgement_taken_by_a_new_rise_raises_nothing_more() {
        let (irq, resample, mut line) = pair();
        line.set_level(true);
        resample.write(1).unwrap();
        line.set_level(false);
        line.set_level(true);
        line.resample();
        assert_eq!(irq.read().unwrap(), 2, "two rises, nothing more");
        assert_eq!(line.counts().raised_again, 0);
    }

    #[test]
    fn a_new_resample_fd_is_watched_while_high() {
        let (_irq, old, mut line) = pair();
        line.set_level(true);
        let new = EventFd::new(EFD_NONBLOCK).unwrap();
        line.set_resample(Some(file(&new)));
        old.write(1).unwrap();
        assert!(!wakes(&line), "the old fd is no longer watched");
        new.write(1).unwrap();
        assert!(wakes(&line));
        line.set_resample(None);
        assert_eq!(line.resample_fd(), None);
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
