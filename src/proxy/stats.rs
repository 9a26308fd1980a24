//! Per-device access counters: which path served the guest's BAR accesses,
//! printed at exit with `--stats` and on SIGUSR1.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default, Debug)]
pub struct DeviceStats {
    pub message_reads: AtomicU64,
    pub message_writes: AtomicU64,
    pub ioregion_reads: AtomicU64,
    pub ioregion_writes: AtomicU64,
    /// Of `ioregion_writes`, those that did not wait for the device.
    pub posted_writes: AtomicU64,
    /// Doorbells on ranges with posted writes that were waited for
    /// (`mirror::doorbell`).
    pub waited_doorbells: AtomicU64,
    /// Reads answered from the remote's register mirror page.
    pub mirror_reads: AtomicU64,
    /// Reads of a mirrored register that went to the remote because
    /// posted writes sent before them were not applied yet.
    pub mirror_behind: AtomicU64,
    /// Of `mirror_reads`, those answered with posted writes not applied
    /// yet, all of known effect, applied to the page's value by the VMM.
    pub mirror_ahead: AtomicU64,
    pub errors: AtomicU64,
    /// Answers a vCPU caught while polling for them (`reply-poll=`).
    pub answers_polled: AtomicU64,
    /// Polls that came back empty: the vCPU slept for the answer after all.
    pub polls_empty: AtomicU64,
    /// Ranges KVM serves itself (kernel path): their accesses never reach
    /// us, so they cannot be counted here.
    pub kernel_regions: AtomicU64,
    /// Of `ioregion_writes`, those of a mirrored register: on the kernel
    /// path the only writes that reach us while KVM holds the ranges.
    pub mirrored_writes: AtomicU64,
}

pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl DeviceStats {
    /// One line for the log.
    pub fn line(&self, name: &str) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut line = format!(
            "remote {name}: BAR accesses over messages {} reads / {} writes, over ioregion fds \
             {} reads / {} writes ({} posted, {} doorbells waited for), {} reads from the \
             register mirror ({} more waited for posted writes, {} read past writes still \
             queued), {} errors",
            get(&self.message_reads),
            get(&self.message_writes),
            get(&self.ioregion_reads),
            get(&self.ioregion_writes),
            get(&self.posted_writes),
            get(&self.waited_doorbells),
            get(&self.mirror_reads),
            get(&self.mirror_behind),
            get(&self.mirror_ahead),
            get(&self.errors),
        );
        let kernel = get(&self.kernel_regions);
        if kernel > 0 {
            line.push_str(&format!(
                "; {kernel} ranges served by KVM itself (not counted; of the writes above {} \
                 to mirrored registers)",
                get(&self.mirrored_writes)
            ));
        }
        line
    }

    /// A second line when vCPUs polled for answers (`reply-poll=`): a line
    /// of its own, so that the first keeps its numbers (tests and
    /// `ci/bench-table.py` read them by position).
    pub fn poll_line(&self, name: &str) -> Option<String> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (caught, empty) = (get(&self.answers_polled), get(&self.polls_empty));
        (caught + empty > 0).then(|| {
            format!(
                "remote {name}: vCPUs polling for its answers caught {caught}; {empty} polls \
                 came back empty"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_get_a_line_of_their_own_once_there_were_any() {
        let s = DeviceStats::default();
        assert_eq!(s.poll_line("#0"), None);
        bump(&s.answers_polled);
        bump(&s.polls_empty);
        bump(&s.polls_empty);
        assert_eq!(
            s.poll_line("#0").unwrap(),
            "remote #0: vCPUs polling for its answers caught 1; 2 polls came back empty"
        );
        assert!(!s.line("#0").contains("poll"));
    }

    #[test]
    fn the_line_names_every_counter() {
        let s = DeviceStats::default();
        bump(&s.message_reads);
        bump(&s.ioregion_writes);
        bump(&s.ioregion_writes);
        bump(&s.posted_writes);
        bump(&s.waited_doorbells);
        bump(&s.waited_doorbells);
        bump(&s.waited_doorbells);
        bump(&s.mirror_reads);
        bump(&s.mirror_behind);
        bump(&s.mirror_behind);
        bump(&s.mirror_ahead);
        assert_eq!(
            s.line("#0"),
            "remote #0: BAR accesses over messages 1 reads / 0 writes, over ioregion fds \
             0 reads / 2 writes (1 posted, 3 doorbells waited for), 1 reads from the register \
             mirror (2 more waited for posted writes, 1 read past writes still queued), 0 errors"
        );
        bump(&s.kernel_regions);
        bump(&s.mirrored_writes);
        assert!(s.line("#0").ends_with(
            ", 0 errors; 1 ranges served by KVM itself (not counted; of the writes above 1 to \
             mirrored registers)"
        ));
    }
}
