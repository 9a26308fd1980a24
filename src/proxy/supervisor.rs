//! Watching remote device processes: when one dies or closes its control
//! connection the VMM notices at once, logs how it ended and cuts the
//! device off. With `restart=on` it spawns the remote again and hands it
//! the device: guest RAM, the config space the guest programmed, new
//! ioregion fds and, last, the interrupt. The guest's driver sees a
//! controller that lost its state and recovers it through its own error
//! handling (for the LSI, Linux's resets reload SCRIPTS and retry).

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::{CUT_OFF_NOTE, FailFlag, ProxyDevice, ProxyError};
use super::remote::{self, RemoteError, RemoteProcess, SharedChild};
use super::spec::RemoteDevSpec;
use crate::pci::root::PciRoot;

/// A remote that keeps dying is not started a sixth time.
pub const MAX_RESTARTS: u32 = 5;

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
        // SAFETY: shutdown(2) on a socket fd we own; errors are harmless.
        unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
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
        // The PCI root's lock first, as a guest config access takes them,
        // so no BAR moves while the device changes hands.
        let mut pci = r.pci.lock().expect("pci root lock");
        let reconnected = r
            .device
            .lock()
            .expect("proxy lock")
            .reconnect(name.clone(), process.channel);
        let failed = match reconnected {
            Ok(f) => f,
            Err(e) => {
                drop(pci);
                remote::stop_child(&name, &self.child, false);
                return Err(e.into());
            }
        };
        pci.remap(r.slot);
        drop(pci);
        let wired = r.device.lock().expect("proxy lock").wire_interrupt();
        if let Err(e) = wired {
            failed.fail();
            remote::stop_child(&name, &self.child, false);
            return Err(e.into());
        }
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
