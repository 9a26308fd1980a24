//! The VMM's watch over one range served over ioregion fds
//! ([`IoRegionPath`]): a device that stops taking KVM's commands, or the
//! posted writes queued for it on its fds or in its ring, is cut off
//! rather than left to hang the vCPUs that wait on it later; one cut off
//! for not answering is logged with where its threads sleep.

use std::os::fd::AsFd;
use std::time::Instant;

use super::vmm_end::{DispatchError, IoRegionPath};
use super::wire::RECORD_SIZE;
use crate::proxy::watchdog::{Backlog, Watched};

impl Watched for IoRegionPath {
    /// Cuts the device off if KVM's commands (kernel path) or one fd's
    /// posted writes have sat untaken for the fd's timeout, and takes the
    /// range back from KVM once the device is cut off, whatever cut it off.
    /// Called about once a second.
    fn check_stalls(&self, now: Instant) {
        if self.failed.is_failed() {
            self.leave_kvm();
            return;
        }
        if let Some(k) = &self.kernel
            && k.is_registered()
        {
            match k.stalled_for(now) {
                Ok(stalled) if stalled >= k.timeout => {
                    self.fault(DispatchError::KernelStalled(k.timeout));
                    return;
                }
                Ok(_) => {}
                Err(e) => log::warn!("{}: cannot look at KVM's commands: {e}", self.label),
            }
        }
        if !self.posts_writes_from_userspace() {
            return;
        }
        // The ring's records (`mirror::ring`) wait like a fd's.
        let ring = (self.posted_sent.as_ref().and_then(|s| s.ring()))
            .zip(self.fds.first())
            .map(|(ring, fd)| {
                let (queued, put) = ring.backlog();
                let backlog = Backlog {
                    unread_bytes: usize::try_from(queued)
                        .unwrap_or(usize::MAX)
                        .saturating_mul(RECORD_SIZE),
                    posted_sent: put,
                };
                (Ok(backlog), fd.timeout())
            });
        let backlogs = (self.fds.iter().map(|fd| (fd.backlog(), fd.timeout()))).chain(ring);
        let mut stalls = self.stalls.lock().expect("ioregion lock");
        for ((backlog, timeout), clock) in backlogs.zip(stalls.iter_mut()) {
            let backlog = match backlog {
                Ok(b) => b,
                Err(e) => {
                    log::warn!("{}: cannot look at the posted-write queue: {e}", self.label);
                    return;
                }
            };
            if clock.observe(backlog, now) >= timeout {
                self.fault(DispatchError::PostedStalled(timeout));
                return;
            }
        }
    }
}

impl IoRegionPath {
    /// Logs where each thread of the device process sleeps (`sys::threads`).
    pub(super) fn say_where_the_device_sleeps(&self) {
        let Some(fd) = self.fds.first() else {
            return;
        };
        let threads = crate::sys::threads::peer_pid(fd.as_fd())
            .and_then(|pid| Ok((pid, crate::sys::threads::describe_threads(pid)?)));
        match threads {
            Ok((pid, threads)) => log::error!(
                "{}: the device process's threads (pid {pid}; name, state, where it sleeps): \
                 {threads}",
                self.label
            ),
            Err(e) => log::warn!(
                "{}: cannot tell where the device process's threads sleep: {e}",
                self.label
            ),
        }
    }
}
