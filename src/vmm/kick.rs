//! Stopping vCPU threads at exit: tell them to stop, kick them out of
//! KVM_RUN, and wait for them, so that guest RAM is unmapped only once no
//! vCPU can touch it.
//!
//! A vCPU thread keeps the kick signal blocked except inside KVM_RUN,
//! where KVM_SET_SIGNAL_MASK lets it through. A kick therefore either
//! interrupts KVM_RUN or stays pending until the thread next enters it,
//! which then returns EINTR at once: a kick sent while the thread handles
//! an exit is not lost. Nor does it interrupt that handling: a region-fd
//! or control-socket exchange that failed with EINTR would be taken for a
//! dead device and cut it off.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{KVMIO, kvm_signal_mask};
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

use crate::sys::signal::{self, SigSet};

ioctl_iow_nr!(KVM_SET_SIGNAL_MASK, KVMIO, 0x8b, kvm_signal_mask);

#[derive(Debug, thiserror::Error)]
pub enum KickError {
    #[error("cannot install the vCPU kick signal's handler: {0}")]
    Handler(#[source] io::Error),
    #[error("cannot block the vCPU kick signal: {0}")]
    Mask(#[source] io::Error),
    #[error("cannot start a vCPU thread: {0}")]
    Spawn(#[source] io::Error),
}

/// The kick: the first real-time signal the C library leaves to programs,
/// as other VMMs use. A real-time signal rather than SIGUSR2 so that
/// nobody sends it by habit.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

fn kick_set() -> SigSet {
    SigSet::of(&[kick_signal()])
}

/// A handler that does nothing, rather than the default action (ending the
/// process), for the one case where the kick is delivered: a wait that,
/// like KVM_RUN, unblocks it (the tests' fake vCPUs).
fn install_handler() -> Result<(), KickError> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        signal::interrupt_only(kick_signal()).map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))
    });
    installed.map_err(|errno| KickError::Handler(io::Error::from_raw_os_error(errno)))
}

/// Set once the VM stops; a vCPU thread looks at it when KVM_RUN returns
/// EINTR.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The signal mask a vCPU thread runs the guest with: the thread's own
/// with the kick let through (the stop signals stay blocked, or the
/// kernel would deliver them to a vCPU thread and end the process).
#[derive(Clone, Copy)]
pub struct RunMask(SigSet);

impl RunMask {
    pub fn as_sigset(&self) -> &libc::sigset_t {
        self.0.as_raw()
    }
}

/// KVM_SET_SIGNAL_MASK: `vcpu` runs with `mask` in KVM_RUN.
pub fn set_kvm_signal_mask(vcpu: &kvm_ioctls::VcpuFd, mask: &RunMask) -> io::Result<()> {
    // The kernel's sigset for x86_64 is one 64-bit word, signal n at bit
    // n - 1; built from sigismember rather than from libc's layout.
    let mut bits = 0u64;
    for signo in 1..=64 {
        if mask.0.contains(signo) {
            bits |= 1 << (signo - 1);
        }
    }
    #[repr(C)]
    struct SignalMask {
        len: u32,
        sigset: [u8; 8],
    }
    let arg = SignalMask {
        len: 8,
        sigset: bits.to_le_bytes(),
    };
    // SAFETY: a vCPU fd and a kvm_signal_mask header followed by the `len`
    // bytes of set it announces, all read by the kernel during the call.
    let rc = unsafe { ioctl_with_ref(vcpu, KVM_SET_SIGNAL_MASK(), &arg) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes kicks pending on this thread without a stop behind them, so that
/// KVM_RUN does not keep returning EINTR for them: a state dump's request
/// (answered once KVM_RUN has returned) or one sent from outside the
/// process.
pub fn discard_kicks() {
    signal::take_pending(&kick_set());
}

/// The running vCPU threads.
pub struct VcpuThreads {
    stop: StopFlag,
    running: Vec<(String, JoinHandle<()>)>,
}

impl VcpuThreads {
    pub fn new() -> Result<Self, KickError> {
        install_handler()?;
        Ok(VcpuThreads {
            stop: StopFlag::default(),
            running: Vec::new(),
        })
    }

    /// Starts thread `name` running `body`, which gets the stop flag and
    /// the mask to run the guest with. The kick is blocked from the
    /// thread's first instruction: a kick sent before it reached KVM_RUN
    /// then waits for it there.
    pub fn spawn(
        &mut self,
        name: String,
        body: impl FnOnce(StopFlag, RunMask) + Send + 'static,
    ) -> Result<(), KickError> {
        // The new thread inherits the caller's mask, so block it here for
        // the spawn and restore it after.
        let old = signal::block(&kick_set()).map_err(KickError::Mask)?;
        let mut run = old;
        run.remove(kick_signal());
        let stop = self.stop.clone();
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || body(stop, RunMask(run)));
        if let Err(e) = signal::set_mask(&old) {
            log::warn!("cannot restore the signal mask after starting {name}: {e}");
        }
        self.running
            .push((name, spawned.map_err(KickError::Spawn)?));
        Ok(())
    }

    /// Sets the stop flag and kicks every thread still running.
    pub fn kick_all(&self) {
        // Before the kicks: a thread that takes one must see the flag.
        self.stop.0.store(true, Ordering::SeqCst);
        for (name, handle) in &self.running {
            // A vCPU that faulted or saw the guest reset has returned already.
            if handle.is_finished() {
                continue;
            }
            match signal::signal_thread(handle, kick_signal()) {
                Err(e) if e.raw_os_error() != Some(libc::ESRCH) => {
                    log::warn!("cannot kick {name}: {e}")
                }
                _ => {}
            }
        }
    }

    /// Kicks thread `name` out of KVM_RUN without asking it to stop (a
    /// state dump's request); false if it is not running.
    pub fn kick(&self, name: &str) -> bool {
        let Some((_, handle)) = self.running.iter().find(|(n, _)| n == name) else {
            return false;
        };
        if handle.is_finished() {
            return false;
        }
        match signal::signal_thread(handle, kick_signal()) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => false,
            Err(e) => {
                log::warn!("cannot kick {name}: {e}");
                false
            }
        }
    }

    /// Joins the threads that return within `timeout`; returns how many
    /// are still running.
    pub fn join(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
                .into_iter()
                .partition(|(_, h)| h.is_finished());
            self.running = running;
            for (name, handle) in done {
                if handle.join().is_err() {
                    log::error!("{name} panicked");
                }
            }
            let now = Instant::now();
            if self.running.is_empty() || now >= deadline {
                return self.running.len();
            }
            // Only at exit, for at most `timeout`: a short nap between
            // looks is simpler than a completion channel per thread.
            std::thread::sleep((deadline - now).min(Duration::from_millis(1)));
        }
    }

    /// The threads still running.
    pub fn names(&self) -> Vec<&str> {
        self.running.iter().map(|(n, _)| n.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// What KVM_RUN does with the mask, without KVM: wait with the kick
    /// let through, until a signal comes.
    fn fake_run(mask: &RunMask) {
        // SAFETY: no fds, no timeout (wait for a signal), a valid mask.
        let rc =
            unsafe { libc::ppoll(std::ptr::null_mut(), 0, std::ptr::null(), mask.as_sigset()) };
        assert_eq!(rc, -1);
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EINTR));
    }

    /// A fake vCPU loop: "KVM_RUN" until stopped, counting its runs.
    fn fake_vcpu(stop: StopFlag, mask: RunMask, entered: mpsc::Sender<()>) {
        loop {
            let _ = entered.send(());
            fake_run(&mask);
            if stop.is_set() {
                return;
            }
        }
    }

    #[test]
    fn a_vcpu_blocked_in_its_run_is_kicked_out_and_joined() {
        let mut threads = VcpuThreads::new().unwrap();
        let (tx, rx) = mpsc::channel();
        for id in 0..3 {
            let tx = tx.clone();
            threads
                .spawn(format!("fake-vcpu{id}"), move |s, m| fake_vcpu(s, m, tx))
                .unwrap();
        }
        for _ in 0..3 {
            rx.recv().unwrap();
        }
        // They may not have reached ppoll yet: the kick waits for them.
        let start = Instant::now();
        threads.kick_all();
        assert_eq!(threads.join(Duration::from_secs(10)), 0);
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(threads.names().is_empty());
    }

    #[test]
    fn a_kick_sent_outside_the_run_waits_for_the_next_one() {
        let mut threads = VcpuThreads::new().unwrap();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (busy_tx, busy_rx) = mpsc::channel();
        threads
            .spawn("fake-vcpu-busy".into(), move |stop, mask| {
                // "Handling an exit" while the kick arrives.
                busy_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                assert!(stop.is_set());
                // Pending, so this returns at once instead of for ever.
                fake_run(&mask);
            })
            .unwrap();
        busy_rx.recv().unwrap();
        threads.kick_all();
        go_tx.send(()).unwrap();
        assert_eq!(threads.join(Duration::from_secs(10)), 0);
    }

    #[test]
    fn a_thread_that_does_not_stop_is_reported_not_waited_for() {
        let mut threads = VcpuThreads::new().unwrap();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        threads
            .spawn("fake-vcpu-stuck".into(), move |_, _| {
                // Stuck in userspace, e.g. on a device that never answers.
                let _ = release_rx.recv();
            })
            .unwrap();
        threads.kick_all();
        let start = Instant::now();
        assert_eq!(threads.join(Duration::from_millis(50)), 1);
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert_eq!(threads.names(), ["fake-vcpu-stuck"]);
        drop(release_tx);
        assert_eq!(threads.join(Duration::from_secs(10)), 0);
    }

    #[test]
    fn the_kick_stays_blocked_outside_the_run() {
        let mut threads = VcpuThreads::new().unwrap();
        let (tx, rx) = mpsc::channel();
        threads
            .spawn("fake-vcpu-mask".into(), move |_, mask| {
                // SAFETY: reads the calling thread's mask into a valid set.
                let mut now: libc::sigset_t = unsafe { std::mem::zeroed() };
                // SAFETY: as above.
                unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut now) };
                // SAFETY: both sets are initialised.
                let blocked = unsafe { libc::sigismember(&now, kick_signal()) } == 1;
                // SAFETY: as above.
                let in_run = unsafe { libc::sigismember(mask.as_sigset(), kick_signal()) } == 1;
                tx.send((blocked, in_run)).unwrap();
            })
            .unwrap();
        assert_eq!(rx.recv().unwrap(), (true, false));
        assert_eq!(threads.join(Duration::from_secs(10)), 0);
        // The spawning thread's own mask is as it was.
        // SAFETY: as above.
        let mut mine: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mine) };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sigismember(&mine, kick_signal()) }, 0);
    }
}
