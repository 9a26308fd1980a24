//! How any thread tells the main loop that the VM must stop, and why.

use std::sync::Mutex;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Why the VM stopped. The first reason reported wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest rebooted (i8042 reset or a KVM reset event).
    GuestReset,
    /// The guest powered off.
    GuestShutdown,
    /// The VMM got a termination signal.
    Signal(i32),
    /// A vCPU hit something it cannot continue from.
    VcpuFault(String),
}

impl StopReason {
    /// Process exit code for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            StopReason::GuestReset | StopReason::GuestShutdown => 0,
            StopReason::Signal(signo) => 128 + signo,
            StopReason::VcpuFault(_) => 1,
        }
    }
}

pub struct StopSignal {
    event: EventFd,
    reason: Mutex<Option<StopReason>>,
}

impl StopSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(StopSignal {
            event: EventFd::new(EFD_NONBLOCK)?,
            reason: Mutex::new(None),
        })
    }

    pub fn request(&self, reason: StopReason) {
        let mut slot = self.reason.lock().expect("stop lock poisoned");
        if slot.is_none() {
            log::debug!("stop requested: {reason:?}");
            *slot = Some(reason);
        }
        // An eventfd write only fails when the counter would overflow, and
        // then the main loop has plenty of wake-ups pending already.
        let _ = self.event.write(1);
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.reason.lock().expect("stop lock poisoned").clone()
    }

    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_wakes_the_loop() {
        let stop = StopSignal::new().unwrap();
        assert_eq!(stop.reason(), None);
        stop.request(StopReason::GuestReset);
        stop.request(StopReason::VcpuFault("late".into()));
        assert_eq!(stop.reason(), Some(StopReason::GuestReset));
        assert!(stop.event().read().unwrap() >= 1);
        assert_eq!(StopReason::GuestReset.exit_code(), 0);
        assert_eq!(StopReason::Signal(15).exit_code(), 143);
    }
}
