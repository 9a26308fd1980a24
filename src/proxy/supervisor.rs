//! Watching remote device processes: when one dies or closes its control
//! connection the VMM notices at once, logs how it ended and cuts the
//! device off. With `restart=on` it spawns the remote again and hands it
//! the device: guest RAM, the config space the guest programmed, new
//! ioregion fds and, last, the interrupt. The guest's driver sees a
//! controller that lost its state and recovers it through its own error
//! handling (for the LSI, Linux's resets reload SCRIPTS and retry).

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::connect::ProxyError;
use super::cut_off::{CUT_OFF_NOTE, FailFlag};
use super::device::ProxyDevice;
use super::remote::{self, RemoteError, RemoteProcess, SharedChild};
use super::spec::{MAX_RESTARTS, RemoteDevSpec};
use crate::pci::root::PciRoot;
use crate::protocol::channel::Channel;

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
    restart: Option<Restart>,
}

const WATCHED: EventSet = EventSet::READ_HANG_UP
    .union(EventSet::HANG_UP)
    .union(EventSet::ERROR);

/// A handle on the remote's control socket for watching it.
pub fn socket_of(process: &RemoteProcess) -> std::io::Result<File> {
    let socket: OwnedFd = process.channel.socket().try_clone()?.into();
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
        }
    }

    /// The remote's name as of its latest start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Closes the control connection both ways: the remote sees end of
    /// file, finishes what it was doing and exits.
    pub fn hang_up(&self) {
        // Errors are harmless: the remote may have closed it already.
        let _ = crate::sys::shutdown(self.socket.as_fd());
    }

    /// Spawns the remote again and connects the device to it.
    fn restart(&mut self) -> Result<(), RestartError> {
        let Some(r) = self.restart.as_mut() else {
            return Ok(());
        };
        if r.done >= MAX_RESTARTS {
            return Err(RestartError::GaveUp(r.done));
        }
        r.done += 1;
        // One that only closed its socket is stopped before it is replaced.
        remote::stop_child(&self.name, &self.child, false);
        let process = remote::open(&r.spec, r.index)?;
        *self.child.lock().expect("child lock") = process.child.lock().expect("child lock").take();
        let socket = match socket_of(&process) {
            Ok(s) => s,
            Err(e) => {
                remote::stop_child(&process.name, &self.child, false);
                return Err(RestartError::Watch(e));
            }
        };
        let name = process.name.clone();
        let failed = match take_over(&r.device, &r.pci, r.slot, name.clone(), process.channel) {
            Ok(f) => f,
            Err(e) => {
                remote::stop_child(&name, &self.child, false);
                return Err(e.into());
            }
        };
        log::warn!(
            "remote {name} took over the device ({} of at most {MAX_RESTARTS} restarts)",
            r.done
        );
        self.name = name;
        self.socket = socket;
        self.failed = failed;
        Ok(())
    }
}

/// Puts the new remote on `channel` behind `device` in slot `slot`: the
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
    channel: Channel,
) -> Result<FailFlag, ProxyError> {
    let takeover = device.lock().expect("proxy lock").begin_takeover()?;
    let successor = match takeover.handshake(name, channel) {
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
    fn process(&mut self, _events: Events, ops: &mut EventOps) {
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
        let old = self.name.clone();
        match self.restart() {
            Ok(()) => {
                if let Err(e) = ops.add(Events::new(&self.socket, WATCHED)) {
                    log::error!("cannot watch remote {}: {e}", self.name);
                }
            }
            Err(e) => {
                log::error!("remote {old} not restarted: {e}; {CUT_OFF_NOTE}")
            }
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
    use crate::proxy::ioregion::Dispatch;
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
        let wired = wait_for(|| fresh.lock().unwrap().wired_at_command);
        assert_eq!(wired.map(|c| c & 0xffff), Some(0x07));
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
        let regs = wait_for(|| {
            let remote = fresh.lock().unwrap();
            Some((remote.regs[0x10], remote.regs[0x100])).filter(|r| *r == (0x11, 0x22))
        });
        assert_eq!(regs, Some((0x11, 0x22)));
    }

    /// Polls `probe` for up to 5 s until it returns Some.
    fn wait_for<T>(mut probe: impl FnMut() -> Option<T>) -> Option<T> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(v) = probe() {
                return Some(v);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
