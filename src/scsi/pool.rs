//! Worker threads that run disk commands off the device's own thread, so a
//! slow read or write never stalls SCRIPTS or register accesses and tagged
//! commands overlap. Results come back through a queue plus an eventfd the
//! device's event loop polls; or, when the device gave a completion runner
//! and is free, the worker serves the result itself, which spares the event
//! loop a wake-up (a context switch, two with the eventfd's read) per I/O.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{DataOut, ScsiDisk, Sense};
use crate::device_model::BackgroundRunner;

/// How many commands can touch the disk at once. Enough to keep a host
/// disk's queue busy at the guest's usual queue depths without a thread
/// per command.
pub const DEFAULT_WORKERS: usize = 4;

pub struct Job {
    /// Chosen by the submitter; comes back with the result.
    pub token: u64,
    pub disk: Arc<ScsiDisk>,
    pub lun: u8,
    pub cdb: Vec<u8>,
    pub data_out: DataOut,
}

pub struct Completion {
    pub token: u64,
    pub result: Result<Vec<u8>, Sense>,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot create the completion eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("cannot start a disk worker thread: {0}")]
    Spawn(#[source] std::io::Error),
}

struct Done {
    queue: Mutex<VecDeque<Completion>>,
    event: EventFd,
    runner: Mutex<Option<BackgroundRunner>>,
}

/// Jobs waiting for a worker. Each job wakes exactly one idle worker; a
/// channel's receiver shared behind a mutex woke a second one per job, as
/// the first handed the receiver on (a context switch per I/O).
#[derive(Default)]
struct Queue {
    jobs: Mutex<Jobs>,
    ready: Condvar,
}

#[derive(Default)]
struct Jobs {
    waiting: VecDeque<Job>,
    /// The pool is gone: workers finish what is queued, then stop.
    closed: bool,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.jobs.lock().expect("job queue lock poisoned")
    }

    /// The next job, waiting for one; None once the pool is closed and
    /// nothing is left.
    fn next(&self) -> Option<Job> {
        let mut jobs = self.lock();
        loop {
            if let Some(job) = jobs.waiting.pop_front() {
                return Some(job);
            }
            if jobs.closed {
                return None;
            }
            jobs = self.ready.wait(jobs).expect("job queue lock poisoned");
        }
    }
}

pub struct IoPool {
    queue: Arc<Queue>,
    done: Arc<Done>,
    workers: Vec<JoinHandle<()>>,
}

impl IoPool {
    pub fn new(workers: usize) -> Result<Self, PoolError> {
        Self::named(workers, "disk-io")
    }

    /// Workers called `name-0`, `name-1`...
    fn named(workers: usize, name: &str) -> Result<Self, PoolError> {
        let done = Arc::new(Done {
            queue: Mutex::new(VecDeque::new()),
            event: EventFd::new(EFD_NONBLOCK).map_err(PoolError::EventFd)?,
            runner: Mutex::new(None),
        });
        let queue = Arc::new(Queue::default());
        let mut pool = IoPool {
            queue: queue.clone(),
            done: done.clone(),
            workers: Vec::new(),
        };
        for i in 0..workers.max(1) {
            let queue = queue.clone();
            let done = done.clone();
            let worker = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || work(&queue, &done))
                .map_err(PoolError::Spawn)?;
            pool.workers.push(worker);
        }
        Ok(pool)
    }

    pub fn submit(&self, job: Job) {
        self.queue.lock().waiting.push_back(job);
        self.queue.ready.notify_one();
    }

    /// From now on a worker that finished a job first offers the result to
    /// `runner`, and signals the eventfd only if that did not serve it.
    pub fn set_completion_runner(&self, runner: BackgroundRunner) {
        *self.done.runner.lock().expect("runner lock poisoned") = Some(runner);
    }

    /// Readable while completions are waiting, unless a completion runner
    /// served them.
    pub fn completion_fd(&self) -> RawFd {
        self.done.event.as_raw_fd()
    }

    /// Every result that arrived since the last call.
    pub fn take_completions(&self) -> Vec<Completion> {
        // Reset the eventfd before draining: a completion pushed after the
        // drain re-arms it, so none is ever left unsignalled.
        let _ = self.done.event.read();
        self.done
            .queue
            .lock()
            .expect("completion lock poisoned")
            .drain(..)
            .collect()
    }
}

fn work(queue: &Queue, done: &Done) {
    while let Some(job) = queue.next() {
        let result = job.disk.execute_with(job.lun, &job.cdb, &job.data_out);
        done.queue
            .lock()
            .expect("completion lock poisoned")
            .push_back(Completion {
                token: job.token,
                result,
            });
        let runner = done.runner.lock().expect("runner lock poisoned").clone();
        // The runner drains the whole queue, this result included; when it
        // cannot (the device is busy in another thread, which may already
        // have drained the queue before the push), the event loop must.
        if !runner.is_some_and(|serve| serve()) {
            let _ = done.event.write(1);
        }
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.ready.notify_all();
        let me = std::thread::current().id();
        for worker in self.workers.drain(..) {
            // A completion runner may hold the device's last reference, so
            // the device (and this pool) can end on a worker: that one
            // finishes on its own once its runner returns.
            if worker.thread().id() != me {
                let _ = worker.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::{Duration, Instant};

    fn disk(blocks: u64) -> (Arc<ScsiDisk>, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "vmm-pool-{}-{:?}.img",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::File::create(&path)
            .unwrap()
            .set_len(blocks * 512)
            .unwrap();
        let d = Arc::new(ScsiDisk::open(&path, crate::scsi::DiskOptions::new("POOL")).unwrap());
        (d, path)
    }

    fn wait_for(pool: &IoPool, n: usize) -> Vec<Completion> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < n {
            assert!(Instant::now() < deadline, "completions never arrived");
            let _ = crate::sys::poll(&mut [crate::sys::pollin(Some(pool.completion_fd()))], 100);
            got.extend(pool.take_completions());
        }
        got
    }

    #[test]
    fn writes_then_reads_come_back_with_their_tokens() {
        let (d, path) = disk(64);
        let pool = IoPool::new(3).unwrap();
        for i in 0..8u8 {
            let cdb = vec![0x2a, 0, 0, 0, 0, i, 0, 0, 1, 0]; // WRITE(10) lba i
            pool.submit(Job {
                token: u64::from(i),
                disk: d.clone(),
                lun: 0,
                cdb,
                data_out: vec![i; 512].into(),
            });
        }
        let mut tokens: Vec<u64> = wait_for(&pool, 8)
            .into_iter()
            .map(|c| {
                assert!(c.result.is_ok());
                c.token
            })
            .collect();
        tokens.sort();
        assert_eq!(tokens, (0..8).collect::<Vec<_>>());
        pool.submit(Job {
            token: 99,
            disk: d.clone(),
            lun: 0,
            cdb: vec![0x28, 0, 0, 0, 0, 5, 0, 0, 1, 0], // READ(10) lba 5
            data_out: Vec::new().into(),
        });
        let c = wait_for(&pool, 1).pop().unwrap();
        assert_eq!(c.token, 99);
        assert_eq!(c.result.unwrap(), vec![5u8; 512]);
        drop(pool);
        std::fs::remove_file(path).unwrap();
    }

    fn read_job(token: u64, disk: Arc<ScsiDisk>) -> Job {
        Job {
            token,
            disk,
            lun: 0,
            cdb: vec![0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], // READ(10) lba 0
            data_out: Vec::new().into(),
        }
    }

    fn completion_signalled(pool: &IoPool) -> bool {
        let mut fds = [crate::sys::pollin(Some(pool.completion_fd()))];
        crate::sys::poll(&mut fds, 0).unwrap() > 0
    }

    #[test]
    fn a_runner_that_serves_the_result_keeps_the_event_loop_asleep() {
        let (d, path) = disk(8);
        let pool = Arc::new(IoPool::new(1).unwrap());
        let (tx, rx) = channel();
        let weak = Arc::downgrade(&pool);
        pool.set_completion_runner(Arc::new(move || {
            let pool = weak.upgrade().unwrap();
            for c in pool.take_completions() {
                tx.send(c.token).unwrap();
            }
            true
        }));
        pool.submit(read_job(7, d));
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(7));
        assert!(!completion_signalled(&pool));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_runner_that_cannot_serve_leaves_the_result_to_the_event_loop() {
        let (d, path) = disk(8);
        let pool = IoPool::new(1).unwrap();
        let (tx, rx) = channel();
        pool.set_completion_runner(Arc::new(move || {
            tx.send(()).unwrap();
            false
        }));
        pool.submit(read_job(3, d));
        let c = wait_for(&pool, 1).pop().unwrap();
        assert_eq!(c.token, 3);
        assert!(
            rx.try_recv().is_ok(),
            "the runner was offered the result first"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn the_pool_may_end_on_one_of_its_own_workers() {
        // As when a worker's runner holds the device's last reference.
        let (d, path) = disk(8);
        let pool = Arc::new(IoPool::new(2).unwrap());
        let last = Arc::new(Mutex::new(Some(pool.clone())));
        let (go_tx, go_rx) = channel::<()>();
        let (done_tx, done_rx) = channel();
        let held = last.clone();
        let go_rx = Mutex::new(go_rx);
        pool.set_completion_runner(Arc::new(move || {
            let _ = go_rx.lock().unwrap().recv();
            drop(held.lock().unwrap().take());
            let _ = done_tx.send(());
            true
        }));
        pool.submit(read_job(1, d));
        drop(pool);
        go_tx.send(()).unwrap();
        assert_eq!(
            done_rx.recv_timeout(Duration::from_secs(10)),
            Ok(()),
            "the worker that dropped the pool did not come back"
        );
        assert!(last.lock().unwrap().is_none());
        std::fs::remove_file(path).unwrap();
    }

    /// Voluntary context switches (sleeps) of this process's threads whose
    /// names start with `prefix`.
    fn sleeps_of(prefix: &str) -> u64 {
        let mut total = 0;
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let dir = task.unwrap().path();
            let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if !name.starts_with(prefix) {
                continue;
            }
            let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
            total += status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .map_or(0, |n| n.trim().parse::<u64>().unwrap());
        }
        total
    }

    #[test]
    fn a_job_wakes_one_worker_only() {
        // Jobs one at a time: each should cost one worker one sleep (1.43
        // on two CPUs, about 2 on one, when a shared channel receiver
        // woke the next worker too).
        let (d, path) = disk(8);
        let pool = IoPool::named(4, "wakecount").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let before = sleeps_of("wakecount");
        let jobs = 200;
        for token in 0..jobs {
            pool.submit(read_job(token, d.clone()));
            wait_for(&pool, 1);
        }
        let per_job = (sleeps_of("wakecount") - before) as f64 / jobs as f64;
        assert!(per_job < 1.2, "{per_job:.2} worker sleeps per job");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_failing_command_completes_with_its_sense() {
        let (d, path) = disk(8);
        let pool = IoPool::new(1).unwrap();
        pool.submit(Job {
            token: 1,
            disk: d,
            lun: 0,
            cdb: vec![0x28, 0, 0, 0, 1, 0, 0, 0, 1, 0], // past the end
            data_out: Vec::new().into(),
        });
        let c = wait_for(&pool, 1).pop().unwrap();
        assert!(c.result.is_err());
        std::fs::remove_file(path).unwrap();
    }
}
