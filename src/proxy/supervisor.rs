//! Watching remote device processes: when one dies or closes its control
//! connection the VMM notices at once, logs how it ended and cuts the
//! device off. With `restart=on` it spawns the remote again and hands it
//! the device: guest RAM, the config space the guest programmed, new
//! ioregion fds and, last, the interrupt. The guest's driver sees a
//! controller that lost its state and recovers it through its own error
//! handling (for the LSI, Linux's resets reload SCRIPTS and retry).
//!
//! A restart runs on a thread of its own: its handshake is tens of round
//! trips, each allowed the request timeout, and the event loop meanwhile
//! keeps serving the console, signals and the other remotes. That thread
//! lives as long as the watcher (see `Restarter`).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::connect::ProxyError;
use super::cut_off::{CUT_OFF_NOTE, FailFlag};
use super::device::ProxyDevice;
use super::remote::{self, RemoteError, RemoteProcess, SharedChild};
use super::spec::{MAX_RESTARTS, RemoteDevSpec};
use crate::pci::root::PciRoot;
use crate::proxy::link::RemoteLink;

#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    #[error("it was restarted {0} times already")]
    GaveUp(u32),
    #[error(transparent)]
    Spawn(#[from] RemoteError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("cannot watch its new socket: {0}")]
    Watch(#[source] std::io::Error),
    #[error("the VM is stopping")]
    Stopping,
    #[error("cannot start the restart thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// What it takes to put a new remote behind a device.
pub struct Restart {
    pub spec: RemoteDevSpec,
    pub index: usize,
    pub device: Arc<Mutex<ProxyDevice>>,
    pub pci: Arc<Mutex<PciRoot>>,
    pub slot: usize,
    done: u32,
}

impl Restart {
    pub fn new(
        spec: RemoteDevSpec,
        index: usize,
        device: Arc<Mutex<ProxyDevice>>,
        pci: Arc<Mutex<PciRoot>>,
        slot: usize,
    ) -> Self {
        Restart {
            spec,
            index,
            device,
            pci,
            slot,
            done: 0,
        }
    }
}

/// Watches a remote's control socket for hang-up: the remote died or
/// closed the connection.
pub struct RemoteWatcher {
    name: String,
    socket: File,
    child: SharedChild,
    failed: FailFlag,
    /// None while a restart runs on its thread, which holds it.
    restart: Option<Restart>,
    restarting: Option<Restarting>,
    /// Started at the first restart.
    restarter: Option<Restarter>,
    /// Set by `hang_up`: a restart in flight gives up instead of
    /// handing the device to a remote nobody will stop.
    closing: Arc<AtomicBool>,
}

/// The thread that runs a remote's restarts, one after another, for as long
/// as its watcher lives. Not a thread per restart: a remote is spawned with
/// PR_SET_PDEATHSIG, which the kernel fires when the *thread* that spawned
/// it ends, so each new remote would be killed as soon as it took over.
struct Restarter {
    jobs: mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl Restarter {
    fn start() -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("restart".into())
            .spawn(move || {
                for job in queue {
                    job();
                }
            })?;
        Ok(Restarter { jobs })
    }

    /// False when the thread is gone.
    fn run(&self, job: impl FnOnce() + Send + 'static) -> bool {
        self.jobs.send(Box::new(job)).is_ok()
    }
}

/// A restart running on its own thread: it sends its outcome and then
/// signals `done`, which the event loop watches.
struct Restarting {
    done: EventFd,
    outcome: mpsc::Receiver<(Restart, Result<Restarted, RestartError>)>,
}

/// A remote that took over the device.
struct Restarted {
    name: String,
    socket: File,
    failed: FailFlag,
}

const WATCHED: EventSet = EventSet::READ_HANG_UP
    .union(EventSet::HANG_UP)
    .union(EventSet::ERROR);

/// A handle on the remote's control socket for watching it.
pub fn socket_of(process: &RemoteProcess) -> std::io::Result<File> {
    let socket: OwnedFd = process.link.socket().try_clone()?.into();
    Ok(File::from(socket))
}

impl RemoteWatcher {
    pub fn new(
        name: String,
        socket: File,
        child: SharedChild,
        failed: FailFlag,
        restart: Option<Restart>,
    ) -> Self {
        RemoteWatcher {
            name,
            socket,
            child,
            failed,
            restart,
            restarting: None,
            restarter: None,
            closing: Arc::default(),
        }
    }

    /// The remote's name as of its latest start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Closes the control connection both ways: the remote sees end of
    /// file, finishes what it was doing and exits.
    pub fn hang_up(&self) {
        self.closing.store(true, Ordering::SeqCst);
        // Errors are harmless: the remote may have closed it already.
        let _ = crate::sys::shutdown(self.socket.as_fd());
    }

    /// Starts the restart on its own thread; `finish_restart` takes its
    /// outcome when the thread signals.
    fn start_restart(&mut self, ops: &mut EventOps) -> Result<(), RestartError> {
        let Some(mut r) = self.restart.take() else {
            return Ok(());
        };
        let done = EventFd::new(EFD_NONBLOCK).map_err(RestartError::Thread)?;
        let wake = done.try_clone().map_err(RestartError::Thread)?;
        let (send, outcome) = mpsc::channel();
        let (old, child, closing) = (self.name.clone(), self.child.clone(), self.closing.clone());
        if self.restarter.is_none() {
            self.restarter = Some(Restarter::start().map_err(RestartError::Thread)?);
        }
        let restarter = self.restarter.as_ref().expect("started above");
        let queued = restarter.run(move || {
            let result = restart(&mut r, &old, &child, &closing);
            let _ = send.send((r, result));
            let _ = wake.write(1);
        });
        if !queued {
            self.restarter = None;
            return Err(RestartError::Thread(std::io::Error::other(
                "the restart thread is gone",
            )));
        }
        if let Err(e) = ops.add(Events::new(&done, EventSet::IN)) {
            // The outcome still arrives; only its wake-up would be missed.
            log::error!("cannot watch the restart of remote {}: {e}", self.name);
        }
        self.restarting = Some(Restarting { done, outcome });
        Ok(())
    }

    /// The restart thread is done: the new remote is watched from now on,
    /// or the device stays cut off.
    fn finish_restart(&mut self, ops: &mut EventOps) {
        let Some(restarting) = self.restarting.take() else {
            return;
        };
        let _ = ops.remove(Events::new(&restarting.done, EventSet::IN));
        let Ok((r, outcome)) = restarting.outcome.recv() else {
            log::error!(
                "remote {}: the restart thread died; {CUT_OFF_NOTE}",
                self.name
            );
            return;
        };
        let done = r.done;
        self.restart = Some(r);
        match outcome {
            Ok(new) => {
                log::warn!(
                    "remote {} took over the device ({done} of at most {MAX_RESTARTS} restarts)",
                    new.name
                );
                self.name = new.name;
                self.socket = new.socket;
                self.failed = new.failed;
                if let Err(e) = ops.add(Events::new(&self.socket, WATCHED)) {
                    log::error!("cannot watch remote {}: {e}", self.name);
                }
            }
            Err(e) => log::error!("remote {} not restarted: {e}; {CUT_OFF_NOTE}", self.name),
        }
    }
}

/// Spawns the remote again and connects the device to it; `old` is the
/// name of the one that died, `child` where its process is kept.
fn restart(
    r: &mut Restart,
    old: &str,
    child: &SharedChild,
    closing: &AtomicBool,
) -> Result<Restarted, RestartError> {
    if r.done >= MAX_RESTARTS {
        return Err(RestartError::GaveUp(r.done));
    }
    r.done += 1;
    // One that only closed its socket is stopped before it is replaced.
    remote::stop_child(old, child, false);
    if closing.load(Ordering::SeqCst) {
        return Err(RestartError::Stopping);
    }
    let process = remote::open(&r.spec, r.index, true)?;
    *child.lock().expect("child lock") = process.child.lock().expect("child lock").take();
    let name = process.name.clone();
    let socket = match socket_of(&process) {
        Ok(s) => s,
        Err(e) => {
            remote::stop_child(&name, child, false);
            return Err(RestartError::Watch(e));
        }
    };
    let failed = match take_over(&r.device, &r.pci, r.slot, name.clone(), process.link) {
        Ok(f) => f,
        Err(e) => {
            remote::stop_child(&name, child, false);
            return Err(e.into());
        }
    };
    // The VM began to stop during the handshake: its exit may already have
    // stopped the children it knew of.
    if closing.load(Ordering::SeqCst) {
        failed.fail();
        remote::stop_child(&name, child, false);
        return Err(RestartError::Stopping);
    }
    Ok(Restarted {
        name,
        socket,
        failed,
    })
}

/// Puts the new remote on `link` behind `device` in slot `slot`: the
/// handshake, the BARs mapped again with its ioregion fds and, last, its
/// interrupt. Returns the flag that marks the new remote failed.
///
/// The handshake (tens of round trips, each allowed the request timeout)
/// runs on a copy of the device's state without the PCI root's or the
/// device's lock: vCPUs touching config space or the cut-off device's
/// BARs meanwhile get their answers at once, not when it is over. What
/// the guest writes to config space meanwhile is replayed under the locks.
fn take_over(
    device: &Arc<Mutex<ProxyDevice>>,
    pci: &Arc<Mutex<PciRoot>>,
    slot: usize,
    name: String,
    link: Box<dyn RemoteLink>,
) -> Result<FailFlag, ProxyError> {
    let takeover = device.lock().expect("proxy lock").begin_takeover()?;
    let successor = match takeover.handshake(name, link) {
        Ok(s) => s,
        Err(e) => {
            device.lock().expect("proxy lock").abandon_takeover();
            return Err(e);
        }
    };
    // The PCI root's lock first, as a guest config access takes them,
    // so no BAR moves while the device changes hands.
    let mut pci = pci.lock().expect("pci root lock");
    let failed = device
        .lock()
        .expect("proxy lock")
        .complete_takeover(successor)?;
    pci.remap(slot);
    drop(pci);
    let wired = device.lock().expect("proxy lock").wire_interrupt();
    if let Err(e) = wired {
        failed.fail();
        return Err(e);
    }
    Ok(failed)
}

impl MutEventSubscriber for RemoteWatcher {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self
            .restarting
            .as_ref()
            .is_some_and(|r| events.fd() == r.done.as_raw_fd())
        {
            self.finish_restart(ops);
            return;
        }
        let _ = ops.remove(Events::empty(&self.socket));
        let first = self.failed.fail();
        let status = self.child.lock().expect("child lock").as_mut().map(|c| {
            remote::reap(c, Duration::from_secs(1)).unwrap_or_else(|| "still running".into())
        });
        let what = match &status {
            Some(status) => format!("closed its connection (process exit: {status})"),
            None => "closed its connection".into(),
        };
        if self.restart.is_none() {
            if first || status.is_some() {
                log::error!("remote {} {what}; {CUT_OFF_NOTE}", self.name);
            }
            return;
        }
        log::error!("remote {} {what}; restarting it", self.name);
        if let Err(e) = self.start_restart(ops) {
            log::error!("remote {} not restarted: {e}; {CUT_OFF_NOTE}", self.name);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.socket, WATCHED)) {
            log::error!("cannot watch remote {}: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use crate::pci::config::{REG_BAR0, REG_COMMAND};
    use crate::pci::root::PciConfigIo;
    use crate::proxy::device::tests::{connect_with, scratch, serve};
    use crate::proxy::ioregion_setup::Dispatch;
    use crate::test_support::{wait_for, wait_until};
    use std::sync::mpsc;

    fn select(io: &mut PciConfigIo, reg: usize) {
        let address = 0x8000_0000u32 | 1 << 11 | (reg as u32) << 2;
        io.write(0, &address.to_le_bytes());
    }

    fn cfg_read(io: &mut PciConfigIo, reg: usize) -> u32 {
        select(io, reg);
        let mut d = [0u8; 4];
        io.read(4, &mut d);
        u32::from_le_bytes(d)
    }

    fn cfg_write(io: &mut PciConfigIo, reg: usize, offset: usize, data: &[u8]) {
        select(io, reg);
        io.write(4 + offset as u64, data);
    }

    /// While a new remote is slow in the handshake, the guest's config
    /// accesses to the device go through (they used to wait for the whole
    /// handshake), and what it programs then reaches the new remote.
    #[test]
    fn a_slow_handshake_holds_neither_the_pci_root_nor_the_device() {
        use std::time::Duration;
        let (proxy, old_failed, _old_server) =
            connect_with(scratch(256), Some(Dispatch::Userspace));
        let buses = Arc::new(crate::bus::Buses::default());
        let pci = Arc::new(Mutex::new(PciRoot::new(buses.clone())));
        let device = Arc::new(Mutex::new(proxy));
        {
            let mut root = pci.lock().unwrap();
            assert_eq!(root.add(device.clone(), 1).unwrap(), 1);
            root.assign_resources().unwrap();
        }
        let mut io = PciConfigIo::new(pci.clone());
        let old_bar1 = u64::from(cfg_read(&mut io, REG_BAR0 + 1));
        old_failed.fail(); // as the watcher does when the remote hangs up

        let fresh = scratch(256);
        let (reached_tx, reached) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        fresh.lock().unwrap().reset_gate = Some((reached_tx, release_rx));
        let (channel, _server) = serve(fresh.clone());
        let handing_over = {
            let (device, pci) = (device.clone(), pci.clone());
            std::thread::spawn(move || take_over(&device, &pci, 1, "second".into(), channel))
        };
        reached
            .recv_timeout(Duration::from_secs(10))
            .expect("the handshake reaches the reset");

        // The guest, meanwhile: moves BAR1 and sets the latency timer.
        let (done_tx, done) = mpsc::channel();
        let guest = std::thread::spawn(move || {
            let bar0 = cfg_read(&mut io, REG_BAR0);
            cfg_write(&mut io, REG_COMMAND, 0, &[0, 0]);
            cfg_write(&mut io, REG_BAR0 + 1, 0, &0xd000_0000u32.to_le_bytes());
            cfg_write(&mut io, 3, 1, &[0x40]);
            cfg_write(&mut io, REG_COMMAND, 0, &[0x07, 0]);
            let _ = done_tx.send(bar0);
        });
        let in_time = done.recv_timeout(Duration::from_secs(3));
        release.send(()).unwrap();
        let failed = handing_over.join().unwrap().unwrap();
        guest.join().unwrap();
        assert!(in_time.is_ok(), "config accesses waited for the handshake");
        assert_ne!(
            in_time.unwrap(),
            u32::MAX,
            "the BAR reads from the proxy's copy"
        );
        assert!(!failed.is_failed());

        let remote = fresh.lock().unwrap();
        assert_eq!(
            remote.config.bar_addr(1),
            Some(0xd000_0000),
            "the BAR moved"
        );
        assert_eq!(remote.config.read(REG_COMMAND) & 0xffff, 0x07);
        assert_eq!(remote.config.read(3) >> 8 & 0xff, 0x40);
        drop(remote);
        // SET_IRQFD has no reply: the remote wires the line in its own time.
        let wired = wait_for("the line wired", || fresh.lock().unwrap().wired_at_command);
        assert_eq!(wired & 0xffff, 0x07);
        let mut d = [0u8; 1];
        assert!(!buses.mmio.read(old_bar1, &mut d), "nothing left behind");
        assert!(
            buses.mmio.write(0xd000_0010, &[0x11]),
            "over a new region fd"
        );
        assert!(
            buses.mmio.write(0xd000_0100, &[0x22]),
            "over the new socket"
        );
        wait_until("both writes at the new remote", || {
            let remote = fresh.lock().unwrap();
            (remote.regs[0x10], remote.regs[0x100]) == (0x11, 0x22)
        });
    }

    /// The event loop goes on while a new remote is slow in the handshake
    /// (it used to run the restart itself and stop for all of it), and
    /// watches the new remote once the restart is done.
    #[test]
    fn a_restart_runs_off_the_event_loop() {
        use crate::proxy::spec::{Dialect, Endpoint, IoRegionMode};
        use event_manager::{EventManager, SubscriberOps};
        use std::os::unix::net::{UnixListener, UnixStream};
        use std::sync::atomic::AtomicUsize;
        type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

        let (proxy, old_failed, _old_server) =
            connect_with(scratch(256), Some(Dispatch::Userspace));
        let buses = Arc::new(crate::bus::Buses::default());
        let pci = Arc::new(Mutex::new(PciRoot::new(buses)));
        let device = Arc::new(Mutex::new(proxy));
        {
            let mut root = pci.lock().unwrap();
            assert_eq!(root.add(device.clone(), 1).unwrap(), 1);
            root.assign_resources().unwrap();
        }
        // The new remote: a listener that serves a device whose reset
        // waits for the test.
        let dir = std::env::temp_dir().join(format!("vmm-restart-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("remote.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let fresh = scratch(256);
        let (reached_tx, reached) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        fresh.lock().unwrap().reset_gate = Some((reached_tx, release_rx));
        let remote: Arc<Mutex<dyn crate::device_model::DeviceModel>> = fresh.clone();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let _ = crate::remote::server::serve(
                &mut crate::protocol::channel::Channel::new(stream),
                remote,
                None,
                std::time::Duration::ZERO,
            );
        });
        let spec = RemoteDevSpec {
            endpoint: Endpoint::Socket(path),
            dialect: Dialect::Vmm,
            ioregionfd: IoRegionMode::Userspace,
            restart: true,
            register_mirror: true,
            doorbells: crate::mirror::doorbell::DoorbellMode::Adaptive,
            reply_poll: crate::proxy::spec::ReplyPolling::Auto,
        };
        // What the watcher sees of the old remote: a socket that hangs up.
        let (watched, old_end) = UnixStream::pair().unwrap();
        let watcher = Arc::new(Mutex::new(RemoteWatcher::new(
            "first".into(),
            File::from(OwnedFd::from(watched)),
            Arc::default(),
            old_failed,
            Some(Restart::new(spec, 0, device, pci, 1)),
        )));
        let rounds = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let event_loop = {
            let (watcher, rounds, stop) = (watcher.clone(), rounds.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut events: EventManager<Subscriber> = EventManager::new().unwrap();
                events.add_subscriber(watcher);
                while !stop.load(Ordering::SeqCst) {
                    events.run_with_timeout(20).unwrap();
                    rounds.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        drop(old_end);
        reached
            .recv_timeout(Duration::from_secs(10))
            .expect("the new remote's handshake reaches the reset");
        let before = rounds.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        let during = rounds.load(Ordering::SeqCst) - before;
        release.send(()).unwrap();
        let took_over = wait_for("the new remote watched", || {
            let name = watcher.lock().unwrap().name().to_string();
            (name != "first").then_some(name)
        });
        stop.store(true, Ordering::SeqCst);
        event_loop.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            during >= 3,
            "the event loop stood still during the handshake ({during} rounds)"
        );
        assert!(took_over.starts_with("#0 ("), "the new remote is watched");
        assert!(!watcher.lock().unwrap().failed.is_failed());
    }

    /// A remote spawned by a restart outlives the restart: it dies with the
    /// thread that spawned it (PR_SET_PDEATHSIG), which must not end there.
    #[test]
    fn a_remote_spawned_by_a_restart_outlives_it() {
        let restarter = Restarter::start().unwrap();
        let (spawned, child) = mpsc::channel();
        assert!(restarter.run(move || {
            let (_socket, child) =
                remote::spawn(std::path::Path::new("/bin/sleep"), &["30".into()]).unwrap();
            spawned.send(child).unwrap();
        }));
        let mut child = child.recv_timeout(Duration::from_secs(5)).unwrap();
        // The job is over; a thread per job would have ended with it.
        std::thread::sleep(Duration::from_millis(300));
        let status = child.try_wait().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(status, None, "the remote died with the job's end");
    }
}
