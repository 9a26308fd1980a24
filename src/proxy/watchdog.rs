//! One VMM thread that looks at every region fd with posted writes once a
//! second and cuts off a device whose process has stopped taking them (see
//! `ioregion::vmm_end`). vCPUs that only post writes never wait on the
//! device, so without this a frozen device would go unnoticed until the
//! guest next reads one of its registers.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A queue of posted writes that the watchdog looks at.
pub trait PostedWrites: Send + Sync {
    /// Cuts the device off if its process stopped taking the writes.
    fn check_posted_writes(&self, now: Instant);
}

/// How often the queues are looked at.
pub const INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct PostedWriteWatchdog {
    /// Weak: a path dropped when its remote is replaced drops out here too.
    paths: Mutex<Vec<Weak<dyn PostedWrites>>>,
}

impl PostedWriteWatchdog {
    /// A watchdog and its thread, which ends when the watchdog is dropped.
    pub fn start() -> std::io::Result<Arc<Self>> {
        let watchdog = Arc::new(PostedWriteWatchdog::default());
        let weak = Arc::downgrade(&watchdog);
        std::thread::Builder::new()
            .name("posted-writes".into())
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

    pub fn watch(&self, path: &Arc<impl PostedWrites + 'static>) {
        let path: Arc<dyn PostedWrites> = path.clone();
        self.paths
            .lock()
            .expect("watchdog lock")
            .push(Arc::downgrade(&path));
    }

    /// One round over the live paths.
    pub fn check(&self, now: Instant) {
        let live: Vec<Arc<dyn PostedWrites>> = {
            let mut paths = self.paths.lock().expect("watchdog lock");
            paths.retain(|p| p.strong_count() > 0);
            paths.iter().filter_map(Weak::upgrade).collect()
        };
        for path in live {
            path.check_posted_writes(now);
        }
    }
}
