//! The device process's side of vfio-user: any device model served to a
//! vfio-user client (QEMU's `vfio-user-pci`, or our VMM), through the same
//! control loop as mpqemu (`remote::server`). PCI config space is region 7,
//! BARs are regions 0 to 5, guest RAM arrives by DMA_MAP with a memfd, the
//! INTx line by SET_IRQS with a trigger and an unmask eventfd, and
//! DEVICE_GET_REGION_IO_FDS hands out ioregion fds, a fresh set per query
//! (a client asks once per vCPU), served by `ioregion::device_end`.
//!
//! A request we cannot take (malformed, out of range, or a command this
//! server does not implement) gets an error reply with its errno and is
//! logged; only a broken stream or a peer that is not a vfio-user client
//! ends the session.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use super::WireError;
use super::connection::{Connection, ConnectionError, Message};
use super::dma_by_message::Wire;
use super::header::{Command, Header, Kind};
use super::io_fds::{self, IoFdKind, RegionIoFds, SubRegion};
use super::messages::*;
use super::mirror;
use super::version::{self, Capabilities, Version};
use crate::device_model::DeviceMemory;
use crate::ioregion::device_end;
use crate::pci::BarKind;
use crate::protocol::extensions::SUB_REGION_POSTED_WRITES;
use crate::protocol::mpqemu::SysmemRegion;
use crate::remote::server::{
    Control, DeviceLink, ServerError, read_config_bytes, write_config_bytes,
};

/// What we take in one message: a header, a region access's head and the
/// largest transfer we announce.
pub const MAX_MESSAGE: usize =
    super::HEADER_SIZE + 16 + version::DEFAULT_MAX_DATA_XFER_SIZE as usize;
/// Guest RAM mappings a client may hold at once.
const MAX_DMA_MAPS: usize = 1024;
/// PCI config space without extended capabilities.
const CONFIG_SIZE: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Connection(#[from] ConnectionError),
    #[error("the client speaks vfio-user {0}.x; this server speaks {major}.x", major = version::MAJOR)]
    Version(u16),
    #[error("the client sent a reply (id {0}); this server sends it no commands")]
    UnexpectedReply(u16),
}

impl From<SessionError> for ServerError {
    fn from(e: SessionError) -> Self {
        ServerError::Peer(Box::new(e))
    }
}

/// Why one request failed: the errno its reply carries.
struct Refusal {
    errno: i32,
    why: String,
}

fn refuse(errno: i32, why: impl Into<String>) -> Refusal {
    Refusal {
        errno,
        why: why.into(),
    }
}

impl From<WireError> for Refusal {
    fn from(e: WireError) -> Self {
        refuse(libc::EINVAL, e.to_string())
    }
}

/// A reply's payload and the fds that go with it.
type Answer = (Vec<u8>, Vec<File>);

struct DmaMapping {
    map: DmaMap,
    /// None: the client shares no fd for it; we reach it by DMA_READ and
    /// DMA_WRITE.
    file: Option<File>,
}

/// One client's session.
pub struct Session {
    wire: Arc<Wire>,
    /// The client's capabilities, once VERSION has been exchanged.
    client: Option<Capabilities>,
    maps: Vec<DmaMapping>,
}

impl Session {
    pub fn new(sock: std::os::unix::net::UnixStream) -> Self {
        Session {
            wire: Arc::new(Wire::new(Connection::new(sock, MAX_MESSAGE))),
            client: None,
            maps: Vec::new(),
        }
    }

    fn answer(&mut self, link: &DeviceLink, m: Message) -> Result<Answer, Refusal> {
        let command = Command::from_number(m.header.command).ok_or_else(|| {
            refuse(
                libc::ENOSYS,
                format!("unknown command {}", m.header.command),
            )
        })?;
        if self.client.is_none() && command != Command::Version {
            return Err(refuse(libc::EINVAL, "a command before VERSION"));
        }
        // Only DMA_MAP and SET_IRQS carry fds.
        if !matches!(command, Command::DmaMap | Command::DeviceSetIrqs) && !m.fds.is_empty() {
            return Err(refuse(libc::EINVAL, "fds where the command takes none"));
        }
        let p = &m.payload[..];
        match command {
            Command::Version => unreachable!("answered by the session"),
            Command::DmaMap => self.dma_map(link, DmaMap::decode(p)?, m.fds),
            Command::DmaUnmap => self.dma_unmap(link, DmaUnmap::decode(p)?),
            Command::DeviceGetInfo => {
                DeviceInfo::decode(p)?;
                let info = DeviceInfo {
                    argsz: DeviceInfo::SIZE as u32,
                    flags: DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET,
                    num_regions: PCI_NUM_REGIONS,
                    num_irqs: PCI_NUM_IRQS,
                };
                Ok((info.encode(), Vec::new()))
            }
            Command::DeviceGetRegionInfo => {
                let query = RegionInfo::decode(p)?;
                Ok((region_info(link, query.index)?.encode(), Vec::new()))
            }
            Command::DeviceGetRegionIoFds => {
                let (index, argsz) = io_fds::decode_query(p)?;
                region_io_fds(link, index, argsz)
            }
            Command::DeviceGetIrqInfo => {
                let query = IrqInfo::decode(p)?;
                let (flags, count) = match query.index {
                    PCI_INTX_IRQ => (
                        IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED,
                        1,
                    ),
                    i if i < PCI_NUM_IRQS => (0, 0),
                    _ => return Err(refuse(libc::EINVAL, "no such interrupt index")),
                };
                let info = IrqInfo {
                    argsz: IrqInfo::SIZE as u32,
                    flags,
                    index: query.index,
                    count,
                };
                Ok((info.encode(), Vec::new()))
            }
            Command::DeviceSetIrqs => self.set_irqs(link, SetIrqs::decode(p)?, m.fds),
            Command::RegionRead | Command::RegionWrite => {
                let write = command == Command::RegionWrite;
                let max = version::DEFAULT_MAX_DATA_XFER_SIZE as u32;
                let access = RegionAccess::decode(command, p, write, max)?;
                region_access(link, access, write)
            }
            Command::RegionWriteMulti => {
                let writes = decode_write_multi(p)?;
                let mut dev = link.device.lock().expect("device lock poisoned");
                for w in &writes {
                    let bar = bar_index(&*dev, w.region, w.offset, u64::from(w.count))?;
                    dev.bar_write_value(bar, w.offset, w.count as usize, w.data);
                }
                Ok(((writes.len() as u64).to_le_bytes().to_vec(), Vec::new()))
            }
            Command::DeviceReset => {
                if !p.is_empty() {
                    return Err(refuse(libc::EINVAL, "DEVICE_RESET with a payload"));
                }
                link.device.lock().expect("device lock poisoned").reset();
                Ok((Vec::new(), Vec::new()))
            }
            Command::RegisterMirror => {
                let bar = mirror::decode_query(p)?;
                let (layout, page) =
                    crate::remote::server::mirror_offer(&link.device, &link.hub, bar);
                Ok((
                    crate::protocol::extensions::encode_mirrored(&layout),
                    page.into_iter().collect(),
                ))
            }
            Command::DmaRead
            | Command::DmaWrite
            | Command::DeviceFeature
            | Command::MigDataRead
            | Command::MigDataWrite => Err(refuse(
                libc::ENOTSUP,
                format!("{command:?} is not implemented by this server"),
            )),
        }
    }

    fn version(&mut self, m: &Message) -> Result<Answer, SessionError> {
        let proposed = match Version::decode(&m.payload) {
            Ok(v) => v,
            Err(e) => {
                log::warn!("vfio-user: a malformed VERSION ({e})");
                return Err(SessionError::Version(u16::MAX));
            }
        };
        if proposed.major != version::MAJOR {
            return Err(SessionError::Version(proposed.major));
        }
        self.wire
            .set_client_max_transfer(proposed.caps.max_data_xfer_size);
        self.client = Some(proposed.caps);
        let ours = Version {
            major: version::MAJOR,
            // Never above the client's: ours is the first minor there is.
            minor: version::MINOR,
            caps: Capabilities {
                max_msg_fds: super::connection::MAX_FDS as u32,
                max_dma_maps: MAX_DMA_MAPS as u32,
                // Only to a client that asked: others never send the
                // command, and QEMU's warns of keys it does not know.
                register_mirror: proposed.caps.register_mirror,
                ..Capabilities::default()
            },
        };
        log::info!(
            "vfio-user client: version {}.{}, {:?}",
            proposed.major,
            proposed.minor,
            proposed.caps
        );
        Ok((ours.encode(), Vec::new()))
    }

    fn dma_map(
        &mut self,
        link: &DeviceLink,
        map: DmaMap,
        mut fds: Vec<File>,
    ) -> Result<Answer, Refusal> {
        if fds.len() > 1 {
            return Err(refuse(libc::EINVAL, "DMA_MAP with more than one fd"));
        }
        if self.maps.len() >= MAX_DMA_MAPS {
            return Err(refuse(libc::ENOSPC, "too many DMA mappings"));
        }
        let end = map.address + map.size;
        if self
            .maps
            .iter()
            .any(|m| map.address < m.map.address + m.map.size && m.map.address < end)
        {
            return Err(refuse(libc::EEXIST, "the range overlaps a mapping"));
        }
        let file = fds.pop();
        if file.is_none() {
            log::warn!(
                "vfio-user: guest RAM {:#x}+{:#x} comes without an fd: the device reaches it \
                 by DMA_READ and DMA_WRITE, a round trip per transfer. QEMU's vfio-user-pci \
                 (11.1) answers those only while no vCPU waits for the device, so there its \
                 guest stalls: give QEMU memory-backend-memfd",
                map.address,
                map.size
            );
        }
        self.maps.push(DmaMapping { map, file });
        // Guest RAM is handed over in address order.
        self.maps.sort_by_key(|m| m.map.address);
        if let Err(refusal) = self.remap(link) {
            self.maps.retain(|m| m.map != map);
            return Err(refusal);
        }
        Ok((Vec::new(), Vec::new()))
    }

    fn dma_unmap(&mut self, link: &DeviceLink, unmap: DmaUnmap) -> Result<Answer, Refusal> {
        const UNMAP_ALL: u32 = 1 << 1;
        match unmap.flags {
            0 => {
                let before = self.maps.len();
                self.maps
                    .retain(|m| (m.map.address, m.map.size) != (unmap.address, unmap.size));
                if self.maps.len() == before {
                    return Err(refuse(libc::ENOENT, "no such DMA mapping"));
                }
            }
            UNMAP_ALL => self.maps.clear(),
            _ => return Err(refuse(libc::EINVAL, "unknown DMA_UNMAP flags")),
        }
        self.remap(link)?;
        Ok((unmap.encode(), Vec::new()))
    }

    /// Gives the device its guest RAM: the fd-backed mappings mapped, the
    /// others through the client.
    fn remap(&self, link: &DeviceLink) -> Result<(), Refusal> {
        let mut regions = Vec::new();
        let mut files = Vec::new();
        let mut by_message = Vec::new();
        for m in &self.maps {
            let Some(file) = &m.file else {
                by_message.push((m.map.address, m.map.size));
                continue;
            };
            regions.push(SysmemRegion {
                gpa: m.map.address,
                size: m.map.size,
                offset: m.map.offset,
            });
            files.push(
                file.try_clone()
                    .map_err(|e| refuse(libc::ENOMEM, format!("cannot keep the fd: {e}")))?,
            );
        }
        let memory = if regions.is_empty() {
            DeviceMemory::default()
        } else {
            DeviceMemory::map(&regions, files)
                .map_err(|e| refuse(libc::EINVAL, format!("cannot map guest RAM: {e}")))?
        }
        .with_message_ranges(by_message, self.wire.clone());
        link.device
            .lock()
            .expect("device lock poisoned")
            .set_memory(memory);
        Ok(())
    }

    fn set_irqs(
        &mut self,
        link: &DeviceLink,
        set: SetIrqs,
        mut fds: Vec<File>,
    ) -> Result<Answer, Refusal> {
        if set.index != PCI_INTX_IRQ {
            if set.count == 0 && fds.is_empty() {
                return Ok((Vec::new(), Vec::new()));
            }
            return Err(refuse(libc::EINVAL, "only INTx (index 0) is implemented"));
        }
        if set.start + set.count > 1 {
            return Err(refuse(libc::EINVAL, "INTx has one interrupt"));
        }
        let data = set.flags & (IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_DATA_EVENTFD);
        let action =
            set.flags & (IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER);
        if data != IRQ_SET_DATA_EVENTFD && !fds.is_empty() {
            return Err(refuse(libc::EINVAL, "fds without DATA_EVENTFD"));
        }
        if fds.len() > set.count as usize {
            return Err(refuse(libc::EINVAL, "more fds than interrupts"));
        }
        let selected = match data {
            IRQ_SET_DATA_BOOL => set.data.first().is_some_and(|&b| b != 0),
            _ => set.count == 1,
        };
        if action == IRQ_SET_ACTION_UNMASK && data != IRQ_SET_DATA_EVENTFD && selected {
            // What the guest wrote before it let the line through must
            // show in its level. Before the line's lock is taken: applying
            // a write may set the level, which takes it.
            link.hub.catch_up();
        }
        let mut line = link.irq.lock().expect("irq lock poisoned");
        match (data, action) {
            (IRQ_SET_DATA_EVENTFD, IRQ_SET_ACTION_TRIGGER) => {
                line.set_trigger(fds.pop());
            }
            (IRQ_SET_DATA_EVENTFD, IRQ_SET_ACTION_UNMASK) => {
                line.set_resample(fds.pop());
            }
            (IRQ_SET_DATA_EVENTFD, _) => {
                return Err(refuse(libc::ENOTSUP, "no eventfd is signalled on masking"));
            }
            // DATA_NONE with count 0 disables the index.
            (IRQ_SET_DATA_NONE, IRQ_SET_ACTION_TRIGGER) if set.count == 0 => {
                line.set_trigger(None);
            }
            (_, IRQ_SET_ACTION_TRIGGER) => {
                return Err(refuse(
                    libc::ENOTSUP,
                    "a client raising INTx itself is not implemented",
                ));
            }
            (_, IRQ_SET_ACTION_MASK) if selected => line.mask(),
            (_, IRQ_SET_ACTION_UNMASK) if selected => line.unmask(),
            _ => {}
        }
        drop(line);
        link.device
            .lock()
            .expect("device lock poisoned")
            .set_interrupt(link.irq.clone());
        Ok((Vec::new(), Vec::new()))
    }
}

/// Region `index` as GET_REGION_INFO describes it: BARs as the config
/// space says, config space, and nothing else.
fn region_info(link: &DeviceLink, index: u32) -> Result<RegionInfo, Refusal> {
    let dev = link.device.lock().expect("device lock poisoned");
    let (flags, size) = match index {
        0..=5 => match dev.config().bar_spec(index as usize) {
            Some(spec) => (REGION_READ | REGION_WRITE, spec.size),
            None => (0, 0),
        },
        PCI_CONFIG_REGION => (REGION_READ | REGION_WRITE, CONFIG_SIZE),
        i if i < PCI_NUM_REGIONS => (0, 0),
        _ => return Err(refuse(libc::EINVAL, "no such region")),
    };
    Ok(RegionInfo {
        argsz: RegionInfo::SIZE as u32,
        flags,
        index,
        cap_offset: 0,
        size,
        offset: 0,
        caps: Vec::new(),
    })
}

/// The BAR a region access lands in, whole.
fn bar_index(
    dev: &dyn crate::device_model::DeviceModel,
    region: u32,
    offset: u64,
    len: u64,
) -> Result<u8, Refusal> {
    let spec = (region < 6)
        .then(|| dev.config().bar_spec(region as usize))
        .flatten()
        .ok_or_else(|| refuse(libc::EINVAL, format!("region {region} is not a BAR")))?;
    if !crate::bus::fits(offset, len, spec.size) {
        return Err(refuse(
            libc::EINVAL,
            format!("an access past the end of BAR{region}"),
        ));
    }
    Ok(region as u8)
}

fn region_access(
    link: &DeviceLink,
    mut access: RegionAccess,
    write: bool,
) -> Result<Answer, Refusal> {
    let mut dev = link.device.lock().expect("device lock poisoned");
    let len = u64::from(access.count);
    if access.region == PCI_CONFIG_REGION {
        if !crate::bus::fits(access.offset, len, CONFIG_SIZE) {
            return Err(refuse(
                libc::EINVAL,
                "an access past the end of config space",
            ));
        }
        if write {
            write_config_bytes(&mut *dev, access.offset as usize, &access.data);
        } else {
            access.data = vec![0; access.count as usize];
            read_config_bytes(&mut *dev, access.offset as usize, &mut access.data);
        }
    } else {
        let bar = bar_index(&*dev, access.region, access.offset, len)?;
        if write {
            dev.bar_write(bar, access.offset, &access.data);
        } else {
            access.data = vec![0; access.count as usize];
            dev.bar_read(bar, access.offset, &mut access.data);
        }
    }
    if write {
        access.data.clear();
    }
    Ok((access.encode(), Vec::new()))
}

/// A fresh set of region fds for BAR `index`, or the reply's head alone
/// when the client left too little room (`argsz`) for them.
fn region_io_fds(link: &DeviceLink, index: u32, argsz: u32) -> Result<Answer, Refusal> {
    let bar = u8::try_from(index)
        .ok()
        .filter(|&b| b < 6)
        .ok_or_else(|| refuse(libc::EINVAL, "region fds are for BARs 0 to 5"))?;
    let (pio, wanted) = {
        let dev = link.device.lock().expect("device lock poisoned");
        let pio = dev
            .config()
            .bar_spec(usize::from(bar))
            .is_some_and(|s| s.kind == BarKind::Io);
        (pio, dev.ioregions(bar).len())
    };
    // device_end::open serves at most this many ranges of a BAR.
    let count = wanted.min(crate::protocol::extensions::MAX_SUB_REGIONS);
    if io_fds::reply_size(count) > argsz {
        return Ok((io_fds::encode_head(index, count), Vec::new()));
    }
    let (regions, fds) = device_end::open(&link.device, &link.hub, bar, 0)
        .map_err(|e| refuse(libc::ENOMEM, format!("cannot open region fds: {e}")))?;
    let regions = regions
        .iter()
        .map(|r| SubRegion {
            offset: r.offset,
            size: r.size,
            fd_index: r.fd_index,
            flags: (if pio { io_fds::IOREGION_PIO } else { 0 })
                | (if r.flags & SUB_REGION_POSTED_WRITES != 0 {
                    io_fds::IOREGION_POSTED_WRITES
                } else {
                    0
                }),
            kind: IoFdKind::IoRegionFd {
                user_data: r.user_data,
            },
        })
        .collect();
    Ok((RegionIoFds { index, regions }.encode(argsz), fds))
}

impl Control for Session {
    fn socket_fd(&self) -> RawFd {
        self.wire.connection().socket().as_raw_fd()
    }

    fn has_queued(&self) -> bool {
        self.wire.has_queued()
    }

    fn serve_one(&mut self, link: &DeviceLink) -> Result<bool, ServerError> {
        let m = match self.wire.next_message() {
            Ok(m) => m,
            Err(ConnectionError::Closed) => return Ok(false),
            Err(e) => return Err(SessionError::from(e).into()),
        };
        let Kind::Command { no_reply } = m.header.kind else {
            return Err(SessionError::UnexpectedReply(m.header.id).into());
        };
        // PCI ordering: a request comes after the posted writes the guest
        // made before it, on whichever fd.
        link.hub.catch_up();
        let header = m.header;
        let answer = if header.command == Command::Version as u16 {
            Ok(self.version(&m)?)
        } else {
            self.answer(link, m)
        };
        let sent = match answer {
            Ok(_) if no_reply => Ok(()),
            Ok((payload, fds)) => {
                let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                self.wire.connection().send(
                    &Header::reply_to(&header, payload.len()),
                    &payload,
                    &raw,
                )
            }
            Err(refusal) => {
                log::warn!(
                    "vfio-user: refusing command {} (id {}): {}",
                    header.command,
                    header.id,
                    refusal.why
                );
                if no_reply {
                    Ok(())
                } else {
                    self.wire.connection().send(
                        &Header::error_reply_to(&header, refusal.errno as u32),
                        &[],
                        &[],
                    )
                }
            }
        };
        match sent {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(SessionError::Connection(e.into()).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_model::DeviceModel;
    use crate::device_model::scratch::{SCRATCH_IRQ_LEVEL, Scratch, scratch};
    use crate::remote::server::serve;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    /// A vfio-user client made of our own codec.
    struct Client {
        conn: Connection,
        id: u16,
    }

    type Reply = (Kind, Vec<u8>, Vec<File>);

    impl Client {
        fn send(&mut self, command: u16, payload: &[u8], fds: &[RawFd], no_reply: bool) -> u16 {
            self.id += 1;
            let header = Header {
                id: self.id,
                command,
                size: (crate::vfio_user::HEADER_SIZE + payload.len()) as u32,
                kind: Kind::Command { no_reply },
            };
            self.conn.send(&header, payload, fds).unwrap();
            self.id
        }

        fn call_fds(&mut self, command: Command, payload: &[u8], fds: &[RawFd]) -> Reply {
            let id = self.send(command as u16, payload, fds, false);
            let m = self.conn.recv().unwrap();
            assert_eq!((m.header.id, m.header.command), (id, command as u16));
            (m.header.kind, m.payload, m.fds)
        }

        fn call(&mut self, command: Command, payload: &[u8]) -> Reply {
            self.call_fds(command, payload, &[])
        }

        /// The errno of a refused call.
        fn refused(&mut self, command: u16, payload: &[u8]) -> u32 {
            let id = self.send(command, payload, &[], false);
            let m = self.conn.recv().unwrap();
            assert_eq!(m.header.id, id);
            assert!(m.payload.is_empty(), "an error reply is the header alone");
            match m.header.kind {
                Kind::Reply { error: Some(errno) } => errno,
                other => panic!("expected a refusal, got {other:?}"),
            }
        }

        fn read(&mut self, region: u32, offset: u64, count: u32) -> Vec<u8> {
            let req = RegionAccess {
                offset,
                region,
                count,
                data: Vec::new(),
            };
            let (kind, payload, _) = self.call(Command::RegionRead, &req.encode());
            assert_eq!(kind, Kind::Reply { error: None });
            RegionAccess::decode(Command::RegionRead, &payload, true, 1 << 20)
                .unwrap()
                .data
        }

        fn write(&mut self, region: u32, offset: u64, data: &[u8], posted: bool) {
            let req = RegionAccess {
                offset,
                region,
                count: data.len() as u32,
                data: data.to_vec(),
            };
            if posted {
                self.send(Command::RegionWrite as u16, &req.encode(), &[], true);
                return;
            }
            let (kind, payload, _) = self.call(Command::RegionWrite, &req.encode());
            assert_eq!(kind, Kind::Reply { error: None });
            assert_eq!(payload.len(), 16, "a write reply carries no data");
        }
    }

    fn start() -> (
        Client,
        Arc<Mutex<Scratch>>,
        JoinHandle<Result<(), crate::remote::server::ServerError>>,
    ) {
        let dev = scratch(256);
        let (a, b) = UnixStream::pair().unwrap();
        let device: Arc<Mutex<dyn DeviceModel>> = dev.clone();
        let server = std::thread::spawn(move || {
            serve(
                &mut Session::new(b),
                device,
                None,
                std::time::Duration::ZERO,
            )
        });
        let mut conn = Connection::new(a, MAX_MESSAGE);
        conn.set_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        (Client { conn, id: 0 }, dev, server)
    }

    /// A SET_IRQS request for the INTx line.
    fn intx(flags: u32, data: Vec<u8>) -> SetIrqs {
        SetIrqs {
            flags,
            index: PCI_INTX_IRQ,
            start: 0,
            count: 1,
            data,
        }
    }

    fn hello(client: &mut Client) -> Version {
        let v = Version {
            major: 0,
            minor: 0,
            caps: Capabilities::default(),
        };
        let (kind, payload, _) = client.call(Command::Version, &v.encode());
        assert_eq!(kind, Kind::Reply { error: None });
        Version::decode(&payload).unwrap()
    }

    #[test]
    fn the_handshake_describes_a_pci_device_with_its_bars_and_intx() {
        let (mut c, _dev, _server) = start();
        assert_eq!(
            c.refused(Command::DeviceGetInfo as u16, &[0; 16]),
            libc::EINVAL as u32,
            "nothing before VERSION"
        );
        let v = hello(&mut c);
        assert_eq!((v.major, v.minor), (0, 0));
        assert_eq!(v.caps.max_msg_fds, 8);
        let (_, p, _) = c.call(
            Command::DeviceGetInfo,
            &[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        );
        let info = DeviceInfo::decode(&p).unwrap();
        assert_eq!(
            (info.flags, info.num_regions, info.num_irqs),
            (DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET, 9, 5)
        );
        let region = |c: &mut Client, i| {
            let (_, p, _) = c.call(Command::DeviceGetRegionInfo, &RegionInfo::query(i).encode());
            let r = RegionInfo::decode(&p).unwrap();
            (r.flags, r.size)
        };
        let rw = REGION_READ | REGION_WRITE;
        assert_eq!(region(&mut c, 0), (rw, 256));
        assert_eq!(region(&mut c, 1), (rw, 1024));
        assert_eq!(region(&mut c, 2), (0, 0), "no BAR2");
        assert_eq!(region(&mut c, PCI_CONFIG_REGION), (rw, 256));
        assert_eq!(
            c.refused(
                Command::DeviceGetRegionInfo as u16,
                &RegionInfo::query(9).encode()
            ),
            libc::EINVAL as u32
        );
        let irq = |c: &mut Client, index| {
            let q = IrqInfo {
                argsz: 16,
                flags: 0,
                index,
                count: 0,
            };
            let (_, p, _) = c.call(Command::DeviceGetIrqInfo, &q.encode());
            let i = IrqInfo::decode(&p).unwrap();
            (i.flags, i.count)
        };
        assert_eq!(
            irq(&mut c, PCI_INTX_IRQ),
            (
                IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED,
                1
            )
        );
        assert_eq!(irq(&mut c, PCI_ERR_IRQ), (0, 0));
        assert_eq!(c.refused(99, &[]), libc::ENOSYS as u32, "unknown command");
    }

    #[test]
    fn config_space_and_bars_are_regions_and_posted_writes_land_before_reads() {
        let (mut c, dev, _server) = start();
        hello(&mut c);
        assert_eq!(c.read(PCI_CONFIG_REGION, 0, 4), [0x00, 0x10, 0x12, 0x00]);
        c.write(PCI_CONFIG_REGION, 0x3c, &[11], false);
        assert_eq!(c.read(PCI_CONFIG_REGION, 0x3c, 1), [11], "interrupt line");
        c.write(1, 0x34, &0xdead_beef_u32.to_le_bytes(), false);
        assert_eq!(
            &dev.lock().unwrap().regs[0x34..0x38],
            &0xdead_beef_u32.to_le_bytes()
        );
        c.write(1, 0x40, &[0x5a], true);
        assert_eq!(c.read(1, 0x40, 1), [0x5a], "the posted write came first");
        let past = RegionAccess {
            offset: 1022,
            region: 1,
            count: 4,
            data: Vec::new(),
        };
        assert_eq!(
            c.refused(Command::RegionRead as u16, &past.encode()),
            libc::EINVAL as u32,
            "past the end of the BAR"
        );
        let (kind, p, _) = c.call(Command::DeviceReset, &[]);
        assert_eq!((kind, p.len()), (Kind::Reply { error: None }, 0));
        assert_eq!(dev.lock().unwrap().resets, 1);
    }

    #[test]
    fn dma_maps_become_the_devices_guest_ram() {
        let (mut c, dev, _server) = start();
        hello(&mut c);
        let mut ram = crate::sys::memfd(c"vfio-user-test", false).unwrap();
        ram.write_all(&[0u8; 0x2000]).unwrap();
        ram.write_all(b"guest bytes").unwrap();
        ram.set_len(0x4000).unwrap();
        let map = DmaMap {
            flags: DMA_READABLE | DMA_WRITABLE,
            offset: 0x2000,
            address: 0x10_0000,
            size: 0x2000,
        };
        let (kind, _, _) = c.call_fds(Command::DmaMap, &map.encode(), &[ram.as_raw_fd()]);
        assert_eq!(kind, Kind::Reply { error: None });
        let mut seen = [0u8; 11];
        dev.lock()
            .unwrap()
            .memory
            .as_ref()
            .unwrap()
            .read(0x10_0000, &mut seen)
            .unwrap();
        assert_eq!(&seen, b"guest bytes");
        assert_eq!(
            c.refused(
                Command::DmaMap as u16,
                &DmaMap {
                    size: 0x1000,
                    ..map
                }
                .encode()
            ),
            libc::EEXIST as u32
        );
        let unmap = DmaUnmap {
            argsz: 24,
            flags: 0,
            address: 0x10_0000,
            size: 0x2000,
        };
        let (_, p, _) = c.call(Command::DmaUnmap, &unmap.encode());
        assert_eq!(
            DmaUnmap::decode(&p).unwrap(),
            unmap,
            "the reply echoes the entry"
        );
        assert!(
            dev.lock()
                .unwrap()
                .memory
                .as_ref()
                .unwrap()
                .read(0x10_0000, &mut seen)
                .is_err(),
            "unmapped"
        );
        assert_eq!(
            c.refused(Command::DmaUnmap as u16, &unmap.encode()),
            libc::ENOENT as u32
        );
        // An fd shorter than the range it is said to hold: refused before
        // any DMA could fault on it.
        let short = DmaMap {
            offset: 0x3000,
            size: 0x2000,
            ..map
        };
        let id = c.send(
            Command::DmaMap as u16,
            &short.encode(),
            &[ram.as_raw_fd()],
            false,
        );
        let m = c.conn.recv().unwrap();
        assert_eq!(m.header.id, id);
        assert_eq!(
            m.header.kind,
            Kind::Reply {
                error: Some(libc::EINVAL as u32)
            }
        );
    }

    /// What the client's reply to the server's next request should be.
    enum Answer {
        Data(Vec<u8>),
        Done,
        Refuse(i32),
    }

    /// Takes the server's next request, checks it and answers it.
    fn answer_transfer(
        c: &mut Client,
        want: Command,
        at: u64,
        len: u64,
        answer: Answer,
    ) -> DmaAccess {
        let m = c.conn.recv().unwrap();
        assert_eq!(m.header.kind, Kind::Command { no_reply: false });
        assert_eq!(m.header.command, want as u16);
        let with_data = want == Command::DmaWrite;
        let access = DmaAccess::decode(want, &m.payload, with_data, 1 << 20).unwrap();
        assert_eq!((access.address, access.count), (at, len));
        let (header, payload) = match answer {
            Answer::Data(data) => {
                let reply = DmaAccess {
                    address: at,
                    count: len,
                    data,
                }
                .encode();
                (Header::reply_to(&m.header, reply.len()), reply)
            }
            Answer::Done => (Header::reply_to(&m.header, 0), Vec::new()),
            Answer::Refuse(errno) => (Header::error_reply_to(&m.header, errno as u32), Vec::new()),
        };
        c.conn.send(&header, &payload, &[]).unwrap();
        access
    }

    #[test]
    fn ram_mapped_without_an_fd_is_reached_by_dma_read_and_write_while_commands_wait_their_turn() {
        use crate::device_model::scratch::{SCRATCH_DMA_COPY, SCRATCH_DMA_STATUS};
        let (mut c, dev, _server) = start();
        hello(&mut c);
        let map = DmaMap {
            flags: DMA_READABLE | DMA_WRITABLE,
            offset: 0,
            address: 0x4000_0000,
            size: 0x1_0000,
        };
        let (kind, _, _) = c.call(Command::DmaMap, &map.encode());
        assert_eq!(kind, Kind::Reply { error: None });
        let copy = |c: &mut Client, from: u64, to: u64| {
            c.write(0, 0, &from.to_le_bytes(), false);
            c.write(0, 8, &to.to_le_bytes(), false);
            let go = RegionAccess {
                offset: SCRATCH_DMA_COPY,
                region: 0,
                count: 1,
                data: vec![1],
            };
            c.send(Command::RegionWrite as u16, &go.encode(), &[], false)
        };
        let status = |c: &mut Client| c.read(0, SCRATCH_DMA_STATUS as u64, 1)[0];

        // The copy's write is answered once its transfers are done; a
        // posted write and a read sent behind it, which arrive while the
        // server waits for the client's answers, are served after it, in
        // order.
        let go = copy(&mut c, 0x4000_0100, 0x4000_0200);
        c.write(0, 0x20, &[0x55], true);
        let read = RegionAccess {
            offset: 0x20,
            region: 0,
            count: 1,
            data: Vec::new(),
        };
        let read_id = c.send(Command::RegionRead as u16, &read.encode(), &[], false);
        let data: Vec<u8> = (0..16).collect();
        answer_transfer(
            &mut c,
            Command::DmaRead,
            0x4000_0100,
            16,
            Answer::Data(data.clone()),
        );
        let written = answer_transfer(&mut c, Command::DmaWrite, 0x4000_0200, 16, Answer::Done);
        assert_eq!(written.data, data);
        let m = c.conn.recv().unwrap();
        assert_eq!(
            (m.header.id, m.header.kind),
            (go, Kind::Reply { error: None })
        );
        let m = c.conn.recv().unwrap();
        assert_eq!(m.header.id, read_id);
        let value = RegionAccess::decode(Command::RegionRead, &m.payload, true, 1 << 20).unwrap();
        assert_eq!(value.data, vec![0x55], "the posted write came first");
        assert_eq!(status(&mut c), 1);

        // A client that refuses the transfer fails the device's DMA.
        let go = copy(&mut c, 0x4000_0100, 0x4000_0200);
        answer_transfer(
            &mut c,
            Command::DmaRead,
            0x4000_0100,
            16,
            Answer::Refuse(libc::EFAULT),
        );
        assert_eq!(c.conn.recv().unwrap().header.id, go);
        assert_eq!(status(&mut c), 0xff);

        // A reply that lies about the range it holds fails it too.
        let go = copy(&mut c, 0x4000_0100, 0x4000_0200);
        let m = c.conn.recv().unwrap();
        let lie = DmaAccess {
            address: 0x4000_0108,
            count: 16,
            data: vec![0; 16],
        }
        .encode();
        c.conn
            .send(&Header::reply_to(&m.header, lie.len()), &lie, &[])
            .unwrap();
        assert_eq!(c.conn.recv().unwrap().header.id, go);
        assert_eq!(status(&mut c), 0xff);

        // Outside every mapping: no transfer is asked for at all.
        let go = copy(&mut c, 0x5000_0000, 0x4000_0200);
        assert_eq!(c.conn.recv().unwrap().header.id, go);
        assert_eq!(status(&mut c), 0xff);
        // Straddling the mapping's end: refused as well.
        let go = copy(&mut c, 0x4000_fff8, 0x4000_0200);
        assert_eq!(c.conn.recv().unwrap().header.id, go);
        assert_eq!(status(&mut c), 0xff);
        assert!(dev.lock().unwrap().memory.is_some());
    }

    #[test]
    fn intx_is_raised_through_the_trigger_and_again_on_unmask_while_high() {
        let (mut c, _dev, _server) = start();
        hello(&mut c);
        let trigger = EventFd::new(EFD_NONBLOCK).unwrap();
        let unmask = EventFd::new(EFD_NONBLOCK).unwrap();
        let set = intx;
        let eventfd = IRQ_SET_DATA_EVENTFD;
        c.call_fds(
            Command::DeviceSetIrqs,
            &set(eventfd | IRQ_SET_ACTION_TRIGGER, vec![]).encode(),
            &[trigger.as_raw_fd()],
        );
        c.call_fds(
            Command::DeviceSetIrqs,
            &set(eventfd | IRQ_SET_ACTION_UNMASK, vec![]).encode(),
            &[unmask.as_raw_fd()],
        );
        let _ = trigger.read();
        c.write(0, SCRATCH_IRQ_LEVEL, &[1], false);
        assert_eq!(trigger.read().unwrap(), 1, "raised");
        // The guest acknowledged while the line is still high.
        unmask.write(1).unwrap();
        let mut raised = None;
        for _ in 0..200 {
            if let Ok(n) = trigger.read() {
                raised = Some(n);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(raised, Some(1), "raised again on the unmask eventfd");
        c.call(
            Command::DeviceSetIrqs,
            &set(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK, vec![]).encode(),
        );
        c.write(0, SCRATCH_IRQ_LEVEL, &[0], false);
        c.write(0, SCRATCH_IRQ_LEVEL, &[1], false);
        assert!(trigger.read().is_err(), "masked");
        c.call(
            Command::DeviceSetIrqs,
            &set(IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_UNMASK, vec![1]).encode(),
        );
        assert_eq!(trigger.read().unwrap(), 1, "raised on unmask while high");
        let msix = SetIrqs {
            index: PCI_MSIX_IRQ,
            ..set(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, vec![])
        };
        assert_eq!(
            c.refused(Command::DeviceSetIrqs as u16, &msix.encode()),
            libc::EINVAL as u32,
            "no MSI-X"
        );
    }

    /// A posted write queued before an unmask by message, which sets the
    /// line's level, is applied before the unmask: the line is raised.
    /// (The unmask drained the posted writes while holding the line's
    /// lock, which applying such a write takes; the drain every request
    /// starts with had always emptied the queue first, so this test could
    /// not catch that, only a write arriving between the two could.)
    #[test]
    fn an_unmask_message_applies_a_queued_write_that_sets_the_level() {
        use crate::device_model::scratch::SCRATCH_POSTED_IRQ_LEVEL;
        let (mut c, dev, _server) = start();
        hello(&mut c);
        let trigger = EventFd::new(EFD_NONBLOCK).unwrap();
        let set = intx;
        c.call_fds(
            Command::DeviceSetIrqs,
            &set(IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, vec![]).encode(),
            &[trigger.as_raw_fd()],
        );
        c.call(
            Command::DeviceSetIrqs,
            &set(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK, vec![]).encode(),
        );
        let (_, p, fds) = c.call(
            Command::DeviceGetRegionIoFds,
            &io_fds::encode_query(1, 4096),
        );
        let reply = RegionIoFds::decode(&p).unwrap();
        let IoFdKind::IoRegionFd { user_data } = reply.regions[1].kind else {
            panic!("an ioeventfd");
        };
        let posted =
            crate::ioregion::RegionFd::new(fds[1].try_clone().unwrap().into(), user_data, true);
        // The device's lock held: the write stays queued until the unmask.
        let held = dev.lock().unwrap();
        let at = SCRATCH_POSTED_IRQ_LEVEL - reply.regions[1].offset;
        posted.write(at, &[1]).unwrap();
        let (done, answered) = std::sync::mpsc::channel();
        let unmask = std::thread::spawn(move || {
            let flags = IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_UNMASK;
            c.call(Command::DeviceSetIrqs, &set(flags, vec![1]).encode());
            done.send(()).unwrap();
            c
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(held);
        answered
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the unmask was answered");
        unmask.join().unwrap();
        assert_eq!(trigger.read().unwrap(), 1, "raised on unmask while high");
    }

    #[test]
    fn region_fds_serve_the_bar_and_a_short_argsz_gets_the_size_needed() {
        let (mut c, _dev, _server) = start();
        hello(&mut c);
        let (_, p, fds) = c.call(Command::DeviceGetRegionIoFds, &io_fds::encode_query(1, 16));
        assert!(fds.is_empty());
        assert_eq!(
            RegionIoFds::decode(&p),
            Err(WireError::Truncated {
                command: Command::DeviceGetRegionIoFds,
                needed: 16 + 2 * 40
            })
        );
        let (_, p, fds) = c.call(
            Command::DeviceGetRegionIoFds,
            &io_fds::encode_query(1, 4096),
        );
        let reply = RegionIoFds::decode(&p).unwrap();
        assert_eq!(fds.len(), 2);
        assert_eq!(reply.regions[0].flags, 0);
        assert_eq!(reply.regions[1].flags, io_fds::IOREGION_POSTED_WRITES);
        assert_eq!(reply.regions[1].offset, 0x200);
        let IoFdKind::IoRegionFd { user_data } = reply.regions[0].kind else {
            panic!("an ioeventfd");
        };
        let region =
            crate::ioregion::RegionFd::new(fds[0].try_clone().unwrap().into(), user_data, false);
        region.write(0x10, &0x1234_u16.to_le_bytes()).unwrap();
        assert_eq!(
            c.read(1, 0x10, 2),
            [0x34, 0x12],
            "written through the region fd"
        );
        let mut back = [0u8; 2];
        region.read(0x10, &mut back).unwrap();
        assert_eq!(back, [0x34, 0x12]);
        assert_eq!(
            c.refused(
                Command::DeviceGetRegionIoFds as u16,
                &io_fds::encode_query(7, 4096)
            ),
            libc::EINVAL as u32,
            "config space has no region fds"
        );
    }

    #[test]
    fn a_client_that_sends_replies_or_garbage_is_dropped() {
        let (mut c, _dev, server) = start();
        hello(&mut c);
        let header = Header {
            id: 9,
            command: Command::DeviceGetInfo as u16,
            size: 16,
            kind: Kind::Reply { error: None },
        };
        c.conn.send(&header, &[], &[]).unwrap();
        assert!(server.join().unwrap().is_err());
        let (c, _dev, server) = start();
        c.conn.socket().write_all(&[0xff; 16]).unwrap();
        assert!(server.join().unwrap().is_err());
        drop(c);
    }
}
