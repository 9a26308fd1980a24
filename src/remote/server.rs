//! The remote's control loop: wait for a request on the control socket,
//! an interrupt acknowledgement, finished disk I/O or a dump signal, and
//! serve it. The loop is the same whatever protocol the socket speaks
//! ([`Control`]: mpqemu here, vfio-user in `crate::vfio_user::server`); a
//! malformed message or a dead peer ends it with a clear error instead of a
//! panic.

use super::dump::DumpSignal;
use std::fs::File;
use std::sync::{Arc, Mutex};

use crate::device_model::{BackgroundRunner, DeviceMemory, DeviceModel, InterruptLine};
use crate::ioregion::device_end as ioregions;
use crate::mirror::page::MirrorPage;
use crate::pci::BarKind;
use crate::protocol::channel::{Channel, ChannelError};
use crate::protocol::extensions::{self, MirrorLayout};
use crate::protocol::mpqemu::{Message, RET_ERROR};
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("control connection: {0}")]
    Channel(#[from] ChannelError),
    #[error("guest RAM: {0}")]
    Memory(#[from] crate::device_model::memory::MemoryError),
    #[error("the proxy sent a reply (RET) where a request belongs")]
    UnexpectedRet,
    #[error("poll failed: {0}")]
    Poll(#[source] std::io::Error),
    #[error("cannot open ioregion fds: {0}")]
    IoRegion(#[source] std::io::Error),
    #[error("the VMM's messages: {0}")]
    Peer(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// What every request is served against: the device model, its interrupt
/// line, and the ordering point of its region fds.
pub struct DeviceLink {
    pub device: Arc<Mutex<dyn DeviceModel>>,
    pub irq: Arc<Mutex<InterruptLine>>,
    pub hub: Arc<ioregions::Hub>,
}

/// A control protocol spoken on the remote's socket.
pub trait Control {
    /// The socket to wait on for requests.
    fn socket_fd(&self) -> std::os::fd::RawFd;
    /// Receives one request, applies it and answers it; false once the
    /// peer has closed the connection.
    fn serve_one(&mut self, link: &DeviceLink) -> Result<bool, ServerError>;
    /// Requests already taken off the socket wait to be served (vfio-user
    /// queues the client's commands that arrive while the device waits for
    /// a DMA transfer through it).
    fn has_queued(&self) -> bool {
        false
    }
}

/// mpqemu, QEMU's multiprocess protocol with our extensions.
impl Control for Channel {
    fn socket_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.socket().as_raw_fd()
    }

    fn serve_one(&mut self, link: &DeviceLink) -> Result<bool, ServerError> {
        let msg = match self.recv() {
            Ok(msg) => msg,
            Err(ChannelError::Closed) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        // PCI ordering: a config or BAR access by message comes after the
        // posted writes the guest made before it.
        link.hub.catch_up();
        if let Some(reply) = handle(&link.device, &link.irq, &link.hub, msg)? {
            self.send(&reply)?;
        }
        Ok(true)
    }
}

/// Reads config space from byte `addr` into `out`, a byte at a time: an
/// access of any length may cross dwords.
pub fn read_config_bytes(device: &mut dyn DeviceModel, addr: usize, out: &mut [u8]) {
    for (i, byte) in out.iter_mut().enumerate() {
        let a = addr + i;
        *byte = (device.read_config(a / 4) >> ((a % 4) * 8)) as u8;
    }
}

/// Writes `data` to config space from byte `addr`, a byte at a time.
pub fn write_config_bytes(device: &mut dyn DeviceModel, addr: usize, data: &[u8]) {
    for (i, byte) in data.iter().enumerate() {
        let a = addr + i;
        device.write_config(a / 4, a % 4, std::slice::from_ref(byte));
    }
}

/// Reads `len` (1 to 8) config bytes starting at byte `addr`.
pub fn config_read(device: &mut dyn DeviceModel, addr: u32, len: u32) -> u64 {
    let mut bytes = [0u8; 8];
    read_config_bytes(device, addr as usize, &mut bytes[..(len as usize).min(8)]);
    u64::from_le_bytes(bytes)
}

/// Writes the low `len` (1 to 4) bytes of `val` at byte `addr`.
pub fn config_write(device: &mut dyn DeviceModel, addr: u32, val: u32, len: u32) {
    write_config_bytes(device, addr as usize, &val.to_le_bytes()[..len as usize]);
}

/// The BAR and offset an absolute-address access falls in, if entirely inside one.
fn locate(device: &dyn DeviceModel, addr: u64, size: u32, memory: bool) -> Option<(u8, u64)> {
    let kind = if memory { BarKind::Memory } else { BarKind::Io };
    device.config().active_bars().into_iter().find_map(|bar| {
        let inside = bar.kind == kind
            && addr >= bar.addr
            && crate::bus::fits(addr - bar.addr, u64::from(size), bar.size);
        inside.then_some((bar.index, addr - bar.addr))
    })
}

/// What a device offers for a register-mirror query about BAR `bar`:
/// its registers, with the page counting the posted writes applied (the
/// hub keeps that count there) and reading the VMM's count of those sent
/// (`ioregion::applied`), with the ring posted writes may go through
/// (`mirror::ring`), and the page; or no mirror at all.
/// Answered alike over mpqemu and vfio-user.
pub fn mirror_offer(
    device: &Arc<Mutex<dyn DeviceModel>>,
    hub: &ioregions::Hub,
    bar: u32,
) -> (MirrorLayout, Option<File>) {
    // The device's lock is let go before the hub's is taken: the hub
    // holds its own while it applies writes to the device.
    let offer = {
        let dev = device.lock().expect("device lock poisoned");
        u8::try_from(bar)
            .ok()
            .and_then(|bar| dev.register_mirror(bar))
    };
    let Some(offer) = offer else {
        return (MirrorLayout::default(), None);
    };
    let counted = match MirrorPage::map(&offer.page, true) {
        Ok(page) => hub.count_posted_writes_in(page),
        Err(e) => {
            log::warn!("cannot count posted writes in the register mirror ({e}); offering none");
            return (MirrorLayout::default(), None);
        }
    };
    if !counted {
        log::warn!("the register mirror was asked for too many times; offering none");
        return (MirrorLayout::default(), None);
    }
    // Only a page whose registers stay below the ring can hold one.
    let below_the_ring =
        (offer.registers.iter()).all(|r| r.page_offset + r.size <= extensions::MIRROR_RING_OFFSET);
    let posted_ring = below_the_ring && hub.take_posted_writes_from(&offer.page);
    let layout = MirrorLayout {
        registers: offer.registers,
        counts_posted_writes: true,
        reads_sent_count: true,
        posted_ring,
    };
    (layout, Some(offer.page))
}

/// Serves the device's background work in the calling thread if the device
/// is free right now. It holds the device weakly: a worker must not keep a
/// device alive that its server has let go.
fn background_runner(device: &Arc<Mutex<dyn DeviceModel>>) -> BackgroundRunner {
    let device = Arc::downgrade(device);
    Arc::new(move || {
        let Some(device) = device.upgrade() else {
            return false;
        };
        // A busy device (or a poisoned lock) is left to the control loop,
        // which the caller then wakes.
        let Ok(mut dev) = device.try_lock() else {
            return false;
        };
        dev.service_background();
        true
    })
}

/// Applies one request and returns the reply to send, if any.
pub fn handle(
    device: &Arc<Mutex<dyn DeviceModel>>,
    irq: &Arc<Mutex<InterruptLine>>,
    hub: &Arc<ioregions::Hub>,
    msg: Message,
) -> Result<Option<Message>, ServerError> {
    if let Message::RegionIoFdsQuery { bar, vcpu } = msg {
        let Ok(bar) = u8::try_from(bar) else {
            return Ok(Some(Message::RegionIoFds {
                regions: vec![],
                fds: vec![],
            }));
        };
        let (regions, fds) =
            ioregions::open(device, hub, bar, vcpu).map_err(ServerError::IoRegion)?;
        return Ok(Some(Message::RegionIoFds { regions, fds }));
    }
    if let Message::RegisterMirrorQuery { bar } = msg {
        let (layout, page) = mirror_offer(device, hub, bar);
        return Ok(Some(Message::RegisterMirror {
            layout,
            fds: page.into_iter().collect(),
        }));
    }
    let mut dev = device.lock().expect("device lock poisoned");
    Ok(match msg {
        Message::SyncSysmem { regions, fds } => {
            dev.set_memory(DeviceMemory::map(&regions, fds)?);
            None
        }
        Message::PciCfgRead { addr, len } => {
            Some(Message::Ret(Some(config_read(&mut *dev, addr, len))))
        }
        Message::PciCfgWrite { addr, val, len } => {
            config_write(&mut *dev, addr, val, len);
            Some(Message::Ret(Some(0)))
        }
        Message::BarRead { addr, size, memory } => {
            let value = match locate(&*dev, addr, size, memory) {
                Some((bar, offset)) => dev.bar_read_value(bar, offset, size as usize),
                None => {
                    log::warn!("BAR read at {addr:#x} ({size} bytes) hits no BAR");
                    RET_ERROR
                }
            };
            Some(Message::Ret(Some(value)))
        }
        Message::BarWrite {
            addr,
            val,
            size,
            memory,
        } => {
            let ret = match locate(&*dev, addr, size, memory) {
                Some((bar, offset)) => {
                    dev.bar_write_value(bar, offset, size as usize, val);
                    0
                }
                None => {
                    log::warn!("BAR write at {addr:#x} ({size} bytes) hits no BAR");
                    RET_ERROR
                }
            };
            Some(Message::Ret(Some(ret)))
        }
        Message::SetIrqfd { irqfd, resamplefd } => {
            *irq.lock().expect("irq lock poisoned") = InterruptLine::new(irqfd, resamplefd);
            dev.set_interrupt(irq.clone());
            None
        }
        Message::DeviceReset => {
            dev.reset();
            Some(Message::Ret(None))
        }
        // No BAR is served over ioregionfd (yet): the answer QEMU's RFC
        // defines for "use the message path".
        Message::BarInfo { .. } => Some(Message::Ret(Some(RET_ERROR))),
        Message::Ret(_) | Message::RegionIoFds { .. } | Message::RegisterMirror { .. } => {
            return Err(ServerError::UnexpectedRet);
        }
        Message::RegionIoFdsQuery { .. } | Message::RegisterMirrorQuery { .. } => {
            unreachable!("answered above")
        }
    })
}

/// Serves requests until the VMM disconnects (Ok) or misbehaves (Err).
/// With `dump`, a `kill -USR2` logs the device's and the interrupt line's
/// state.
/// The region fds' threads look for the next record for `poll_window`
/// before they sleep (`ioregion::reply_poll`; zero: never).
pub fn serve(
    control: &mut dyn Control,
    device: Arc<Mutex<dyn DeviceModel>>,
    mut dump: Option<DumpSignal>,
    poll_window: std::time::Duration,
) -> Result<(), ServerError> {
    let link = DeviceLink {
        device,
        irq: Arc::new(Mutex::new(InterruptLine::default())),
        hub: Arc::new(ioregions::Hub::polling(poll_window)),
    };
    let (device, irq, hub) = (&link.device, &link.irq, &link.hub);
    // Fixed for the device's lifetime: asking once keeps the device lock,
    // which the ioregion threads use on every access, out of this loop.
    let background = {
        let mut dev = device.lock().expect("device lock poisoned");
        dev.set_background_runner(background_runner(device));
        dev.background_fd()
    };
    let served = loop {
        // The thread serving the posted-write fds takes the guest's
        // acknowledgements when it can (`Hub::take_acknowledgements`).
        let (watch, resample) = {
            let line = irq.lock().expect("irq lock poisoned");
            (line.watch_fd(), line.resample_fd())
        };
        let resample = match watch {
            Some(fd) if hub.take_acknowledgements(irq, fd) => None,
            _ => resample,
        };
        let pollfd = sys::pollin;
        let mut fds = [
            pollfd(Some(control.socket_fd())),
            pollfd(resample),
            pollfd(background),
            pollfd(dump.as_ref().map(DumpSignal::raw_fd)),
        ];
        let queued = control.has_queued();
        match sys::poll(&mut fds, if queued { 0 } else { -1 }) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(ServerError::Poll(e)),
        }
        if fds[1].revents & libc::POLLIN != 0 {
            // The guest acknowledged the interrupt after its last register
            // writes (posted ones included): the line's level must reflect them.
            hub.catch_up();
            irq.lock().expect("irq lock poisoned").resample();
        }
        if fds[2].revents & libc::POLLIN != 0 {
            device
                .lock()
                .expect("device lock poisoned")
                .service_background();
        }
        if fds[3].revents & libc::POLLIN != 0 && dump.as_mut().is_some_and(DumpSignal::take) {
            let level = irq.lock().expect("irq lock poisoned").level();
            let state = device.lock().expect("device lock poisoned").state_dump();
            log::warn!(
                "state dump: interrupt line {}; {}",
                if level { "high" } else { "low" },
                state
                    .as_deref()
                    .unwrap_or("the device keeps no state to dump")
            );
        }
        if queued || fds[0].revents != 0 {
            match control.serve_one(&link) {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
        }
    };
    log::info!("{}", hub.summary());
    served
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_model::scratch::scratch;

    #[test]
    fn the_background_runner_serves_a_free_device_only() {
        let scratch = scratch(256);
        let device: Arc<Mutex<dyn DeviceModel>> = scratch.clone();
        let run = background_runner(&device);
        assert!(run());
        assert_eq!(scratch.lock().unwrap().background_runs, 1);
        // Busy in another thread: left to the control loop.
        let held = scratch.lock().unwrap();
        let busy = std::thread::scope(|s| s.spawn(|| run()).join().unwrap());
        assert!(!busy);
        drop(held);
        assert_eq!(scratch.lock().unwrap().background_runs, 1);
        // Let go by its server: the runner does not keep it alive.
        drop((device, scratch));
        assert!(!run());
    }
}
