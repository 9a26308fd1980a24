//! One VMM thread that looks once a second at every region fd that no vCPU
//! thread waits on with a timeout, and cuts off a device whose process has
//! stopped taking what was sent there: posted writes (`ioregion::vmm_end`;
//! vCPUs that only post writes never wait on the device, so a frozen
//! device would go unnoticed until the guest next reads one of its
//! registers) and KVM's commands on the kernel path
//! (`ioregion::kernel_path`; KVM waits for the device where the VMM
//! cannot see it, and not at all for a posted write).

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Queues of commands that the watchdog looks at.
pub trait Watched: Send + Sync {
    /// Cuts the device off if its process stopped taking the commands.
    fn check_stalls(&self, now: Instant);
}

/// How often the queues are looked at.
pub const INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct StallWatchdog {
    /// Weak: a path dropped when its remote is replaced drops out here too.
    paths: Mutex<Vec<Weak<dyn Watched>>>,
}

impl StallWatchdog {
    /// A watchdog and its thread, which ends when the watchdog is dropped.
    pub fn start() -> std::io::Result<Arc<Self>> {
        let watchdog = Arc::new(StallWatchdog::default());
        let weak = Arc::downgrade(&watchdog);
        std::thread::Builder::new()
            .name("stall-watchdog".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(INTERVAL);
                    let Some(watchdog) = weak.upgrade() else {
                        return;
                    };
                    watchdog.check(Instant::now());
                }
            })?;
        Ok(watchdog)
    }

    pub fn watch(&self, path: &Arc<impl Watched + 'static>) {
        let path: Arc<dyn Watched> = path.clone();
        self.paths
            .lock()
            .expect("watchdog lock")
            .push(Arc::downgrade(&path));
    }

    /// One round over the live paths.
    pub fn check(&self, now: Instant) {
        let live: Vec<Arc<dyn Watched>> = {
            let mut paths = self.paths.lock().expect("watchdog lock");
            paths.retain(|p| p.strong_count() > 0);
            paths.iter().filter_map(Weak::upgrade).collect()
        };
        for path in live {
            path.check_stalls(now);
        }
    }
}

/// One look at a region fd's queue of commands sent to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Bytes sent and not yet taken by the device process (SIOCOUTQ).
    pub unread_bytes: usize,
    /// Posted writes sent on the fd so far (a sign the queue moved).
    pub posted_sent: u64,
}

impl Backlog {
    /// Looks at socket `fd`'s queue, with `posted_sent` the count of posted
    /// writes sent on it (None: nobody counts them).
    pub fn look(fd: BorrowedFd<'_>, posted_sent: Option<&AtomicU64>) -> io::Result<Backlog> {
        // The count first: a write sent in between then shows as a change.
        let posted_sent = posted_sent.map_or(0, |c| c.load(Ordering::Relaxed));
        Ok(Backlog {
            unread_bytes: crate::sys::unread_bytes(fd)?,
            posted_sent,
        })
    }
}

/// Looks further apart than this do not vouch for the time between them:
/// the watcher itself was not running (the whole VMM stopped with SIGSTOP,
/// a host under load), so the device may well have been stopped too.
pub const MAX_GAP: Duration = Duration::from_secs(3);

/// How long a region fd's backlog has stood still.
#[derive(Debug, Default)]
pub struct StallClock {
    last: Option<(Backlog, Instant)>,
    /// When the backlog was first seen as it still is; None while empty.
    since: Option<Instant>,
}

impl StallClock {
    /// Records a look taken at `now`; returns for how long the backlog
    /// has been queued and untouched (zero when it is empty or moving).
    pub fn observe(&mut self, backlog: Backlog, now: Instant) -> Duration {
        let unchanged = self.last.is_some_and(|(seen, at)| {
            seen == backlog && now.saturating_duration_since(at) <= MAX_GAP
        });
        self.last = Some((backlog, now));
        if backlog.unread_bytes == 0 {
            self.since = None;
        } else if !unchanged || self.since.is_none() {
            self.since = Some(now);
        }
        self.since.map_or(Duration::ZERO, |t| now - t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioregion::RECORD_SIZE;
    use crate::ioregion::wire::socket_pair;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    /// As KVM's fd on the kernel path: posted writes counted elsewhere.
    #[test]
    fn commands_count_until_the_device_takes_them() {
        let (fd, device) = socket_pair().unwrap();
        let counter = AtomicU64::new(0);
        let look = || Backlog::look(fd.as_fd(), Some(&counter)).unwrap();
        assert_eq!(
            look(),
            Backlog {
                unread_bytes: 0,
                posted_sent: 0
            }
        );
        // Two posted writes as KVM sends them: on the VMM's end, counted.
        let kvm = UnixDatagram::from(fd.as_fd().try_clone_to_owned().unwrap());
        for _ in 0..2 {
            assert_eq!(kvm.send(&[0u8; RECORD_SIZE]).unwrap(), RECORD_SIZE);
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let queued = look();
        assert!(queued.unread_bytes >= 2 * RECORD_SIZE, "{queued:?}");
        assert_eq!(queued.posted_sent, 2);
        let device = UnixDatagram::from(device);
        let mut buf = [0u8; 64];
        device.recv(&mut buf).unwrap();
        let one_left = look();
        assert!(one_left.unread_bytes < queued.unread_bytes, "{one_left:?}");
        device.recv(&mut buf).unwrap();
        assert_eq!(
            look(),
            Backlog {
                unread_bytes: 0,
                posted_sent: 2
            }
        );
    }

    fn look(unread_bytes: usize, posted_sent: u64) -> Backlog {
        Backlog {
            unread_bytes,
            posted_sent,
        }
    }

    #[test]
    fn only_a_queue_that_stands_still_counts() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut clock = StallClock::default();
        assert_eq!(clock.observe(look(0, 0), t0), s(0), "empty");
        assert_eq!(clock.observe(look(64, 2), t0 + s(1)), s(0), "new records");
        assert_eq!(clock.observe(look(64, 2), t0 + s(2)), s(1), "untouched");
        assert_eq!(clock.observe(look(64, 2), t0 + s(4)), s(3));
        assert_eq!(clock.observe(look(32, 2), t0 + s(5)), s(0), "one taken");
        assert_eq!(clock.observe(look(32, 2), t0 + s(7)), s(2));
        assert_eq!(clock.observe(look(32, 3), t0 + s(8)), s(0), "one more sent");
        assert_eq!(clock.observe(look(0, 3), t0 + s(9)), s(0), "drained");
        assert_eq!(clock.observe(look(0, 3), t0 + s(10)), s(0), "idle");
        // A gap in the looks (the VMM was stopped) starts the count afresh.
        assert_eq!(clock.observe(look(32, 4), t0 + s(11)), s(0));
        assert_eq!(clock.observe(look(32, 4), t0 + s(30)), s(0), "after a gap");
        assert_eq!(clock.observe(look(32, 4), t0 + s(31)), s(1));
    }
}
