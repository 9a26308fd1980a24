//! The VMM's side of vfio-user: a proxy's link to a remote that speaks
//! vfio-user (ours, `vmm remote lsi --protocol vfio-user`, or another
//! server). Config space is region 7, BARs are regions 0 to 5, guest RAM
//! goes over by DMA_MAP with the memfd, INTx by SET_IRQS with the irqfd
//! (trigger) and the resamplefd (unmask), and region fds by
//! DEVICE_GET_REGION_IO_FDS, asked once per vCPU. Every reply is checked
//! against its request: a server that answers another id, another command
//! or with the wrong shape is a failed link, which cuts the device off.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::WireError;
use super::connection::{Connection, ConnectionError};
use super::header::{Command, Header, Kind};
use super::io_fds::{self, IoFdKind, RegionIoFds};
use super::messages::*;
use super::mirror;
use super::version::{self, Capabilities, Version};
use crate::protocol::extensions::{MirrorLayout, SUB_REGION_POSTED_WRITES, SubRegion};
use crate::protocol::mpqemu::SysmemRegion;
use crate::proxy::link::{LinkError, PlacedBar, RegionFds, RemoteLink};

/// The largest reply we take: a region read of the largest transfer.
const MAX_REPLY: usize = super::HEADER_SIZE + 16 + version::DEFAULT_MAX_DATA_XFER_SIZE as usize;
/// Room offered for a region-fd reply; a server that needs more says so.
const IO_FDS_ARGSZ: u32 = 16 + 8 * io_fds::ENTRY_SIZE as u32;

pub struct Client {
    conn: Connection,
    id: u16,
    /// What the server takes in one transfer.
    max_transfer: u64,
    /// The server offered our register-mirror extension.
    server_mirrors: bool,
}

fn wire(what: &'static str) -> impl Fn(WireError) -> LinkError {
    move |e| LinkError::Unexpected {
        what,
        got: e.to_string(),
    }
}

impl Client {
    /// Says hello on `sock` and checks that the server is a PCI device.
    pub fn connect(sock: UnixStream, timeout: Duration) -> Result<Self, LinkError> {
        let mut conn = Connection::new(sock, MAX_REPLY);
        conn.set_timeout(Some(timeout))
            .map_err(|e| LinkError::VfioUser(ConnectionError::Io(e)))?;
        let mut client = Client {
            conn,
            id: 0,
            max_transfer: version::DEFAULT_MAX_DATA_XFER_SIZE,
            server_mirrors: false,
        };
        let hello = Version {
            major: version::MAJOR,
            minor: version::MINOR,
            caps: Capabilities {
                max_msg_fds: super::connection::MAX_FDS as u32,
                register_mirror: true,
                ..Capabilities::default()
            },
        };
        let reply = client.call(Command::Version, &hello.encode(), &[], "VERSION")?;
        let server = Version::decode(&reply.0).map_err(wire("VERSION"))?;
        if server.major != version::MAJOR || server.minor > version::MINOR {
            return Err(LinkError::Unexpected {
                what: "VERSION",
                got: format!("version {}.{}", server.major, server.minor),
            });
        }
        client.max_transfer = server.caps.max_data_xfer_size.max(8);
        client.server_mirrors = server.caps.register_mirror;
        let query = DeviceInfo {
            argsz: DeviceInfo::SIZE as u32,
            flags: 0,
            num_regions: 0,
            num_irqs: 0,
        };
        let reply = client.call(
            Command::DeviceGetInfo,
            &query.encode(),
            &[],
            "DEVICE_GET_INFO",
        )?;
        let info = DeviceInfo::decode(&reply.0).map_err(wire("DEVICE_GET_INFO"))?;
        if info.flags & DEVICE_FLAGS_PCI == 0 || info.num_regions <= PCI_CONFIG_REGION {
            return Err(LinkError::Unexpected {
                what: "DEVICE_GET_INFO",
                got: format!(
                    "flags {:#x} and {} regions: not a PCI device",
                    info.flags, info.num_regions
                ),
            });
        }
        log::info!(
            "vfio-user server: version {}.{}, {} regions, {} interrupt types{}",
            server.major,
            server.minor,
            info.num_regions,
            info.num_irqs,
            if info.flags & DEVICE_FLAGS_RESET != 0 {
                ", resettable"
            } else {
                ""
            }
        );
        Ok(client)
    }

    /// Sends a command and returns its reply's payload and fds; a refusal
    /// (the error bit) is `Refused` with its errno.
    fn call(
        &mut self,
        command: Command,
        payload: &[u8],
        fds: &[RawFd],
        what: &'static str,
    ) -> Result<(Vec<u8>, Vec<File>), LinkError> {
        self.id = self.id.wrapping_add(1);
        let header = Header {
            id: self.id,
            command: command as u16,
            size: (super::HEADER_SIZE + payload.len()) as u32,
            kind: Kind::Command { no_reply: false },
        };
        self.conn
            .send(&header, payload, fds)
            .map_err(|e| LinkError::VfioUser(e.into()))?;
        let reply = self.conn.recv()?;
        if reply.header.id != self.id || reply.header.command != command as u16 {
            return Err(LinkError::Unexpected {
                what,
                got: format!(
                    "a message with id {} for command {}",
                    reply.header.id, reply.header.command
                ),
            });
        }
        match reply.header.kind {
            Kind::Reply { error: None } => Ok((reply.payload, reply.fds)),
            Kind::Reply { error: Some(errno) } => Err(LinkError::Refused { what, errno }),
            Kind::Command { .. } => Err(LinkError::Unexpected {
                what,
                got: "a command where its reply belongs".into(),
            }),
        }
    }

    fn read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), LinkError> {
        let count = data.len() as u32;
        let request = RegionAccess {
            offset,
            region,
            count,
            data: Vec::new(),
        };
        let (payload, _) = self.call(Command::RegionRead, &request.encode(), &[], "REGION_READ")?;
        let reply = RegionAccess::decode(Command::RegionRead, &payload, true, count)
            .map_err(wire("REGION_READ"))?;
        if (reply.offset, reply.region) != (offset, region) {
            return Err(LinkError::Unexpected {
                what: "REGION_READ",
                got: format!("region {} at {:#x}", reply.region, reply.offset),
            });
        }
        data.copy_from_slice(&reply.data);
        Ok(())
    }

    fn write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), LinkError> {
        let request = RegionAccess {
            offset,
            region,
            count: data.len() as u32,
            data: data.to_vec(),
        };
        let (payload, _) =
            self.call(Command::RegionWrite, &request.encode(), &[], "REGION_WRITE")?;
        RegionAccess::decode(Command::RegionWrite, &payload, false, data.len() as u32)
            .map_err(wire("REGION_WRITE"))?;
        Ok(())
    }

    fn set_irq(&mut self, action: u32, fd: &File) -> Result<(), LinkError> {
        let set = SetIrqs {
            flags: IRQ_SET_DATA_EVENTFD | action,
            index: PCI_INTX_IRQ,
            start: 0,
            count: 1,
            data: Vec::new(),
        };
        self.call(
            Command::DeviceSetIrqs,
            &set.encode(),
            &[fd.as_raw_fd()],
            "DEVICE_SET_IRQS",
        )?;
        Ok(())
    }
}

impl RemoteLink for Client {
    fn socket(&self) -> &UnixStream {
        self.conn.socket()
    }

    fn share_ram(&mut self, regions: &[SysmemRegion], memfd: &File) -> Result<(), LinkError> {
        for r in regions {
            let map = DmaMap {
                flags: DMA_READABLE | DMA_WRITABLE,
                offset: r.offset,
                address: r.gpa,
                size: r.size,
            };
            self.call(
                Command::DmaMap,
                &map.encode(),
                &[memfd.as_raw_fd()],
                "DMA_MAP",
            )?;
        }
        Ok(())
    }

    fn config_read(&mut self, addr: u32, len: u32) -> Result<u32, LinkError> {
        let mut data = [0u8; 4];
        let len = (len as usize).min(4);
        self.read(PCI_CONFIG_REGION, u64::from(addr), &mut data[..len])?;
        Ok(u32::from_le_bytes(data))
    }

    fn config_write(&mut self, addr: u32, data: &[u8]) -> Result<(), LinkError> {
        self.write(PCI_CONFIG_REGION, u64::from(addr), data)
    }

    fn bar_read(&mut self, bar: PlacedBar, offset: u64, data: &mut [u8]) -> Result<(), LinkError> {
        self.read(u32::from(bar.index), offset, data)
    }

    fn bar_write(&mut self, bar: PlacedBar, offset: u64, data: &[u8]) -> Result<(), LinkError> {
        self.write(u32::from(bar.index), offset, data)
    }

    fn wire_irq(&mut self, irqfd: File, resamplefd: File) -> Result<(), LinkError> {
        self.set_irq(IRQ_SET_ACTION_TRIGGER, &irqfd)?;
        self.set_irq(IRQ_SET_ACTION_UNMASK, &resamplefd)
    }

    fn reset(&mut self) -> Result<(), LinkError> {
        self.call(Command::DeviceReset, &[], &[], "DEVICE_RESET")?;
        Ok(())
    }

    fn region_fds(&mut self, bar: u8, _vcpu: u32) -> Result<Option<RegionFds>, LinkError> {
        let mut argsz = IO_FDS_ARGSZ;
        let (reply, fds) = loop {
            let query = io_fds::encode_query(u32::from(bar), argsz);
            match self.call(
                Command::DeviceGetRegionIoFds,
                &query,
                &[],
                "DEVICE_GET_REGION_IO_FDS",
            ) {
                // A server without region fds: messages it is.
                Err(LinkError::Refused { errno, .. })
                    if [libc::ENOSYS, libc::ENOTSUP].contains(&(errno as i32)) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e),
                Ok((payload, fds)) => match RegionIoFds::decode(&payload) {
                    Err(WireError::Truncated { needed, .. }) if needed > argsz => argsz = needed,
                    Err(e) => return Err(wire("DEVICE_GET_REGION_IO_FDS")(e)),
                    Ok(reply) => break (reply, fds),
                },
            }
        };
        if reply.index != u32::from(bar) {
            return Err(LinkError::Unexpected {
                what: "DEVICE_GET_REGION_IO_FDS",
                got: format!("the fds of region {}", reply.index),
            });
        }
        let mut regions = Vec::new();
        for r in reply.regions {
            let IoFdKind::IoRegionFd { user_data } = r.kind else {
                log::warn!(
                    "vfio-user server offers an ioeventfd for BAR{bar}+{:#x}; \
                     its accesses stay on messages",
                    r.offset
                );
                continue;
            };
            regions.push(SubRegion {
                offset: r.offset,
                size: r.size,
                fd_index: r.fd_index,
                flags: if r.flags & io_fds::IOREGION_POSTED_WRITES != 0 {
                    SUB_REGION_POSTED_WRITES
                } else {
                    0
                },
                user_data,
            });
        }
        Ok(Some((regions, fds)))
    }

    /// Our extension, asked of a server that offered it.
    fn register_mirror(&mut self, bar: u8) -> Result<Option<(MirrorLayout, File)>, LinkError> {
        if !self.server_mirrors {
            return Ok(None);
        }
        let query = mirror::encode_query(u32::from(bar));
        let (reply, fds) = self.call(Command::RegisterMirror, &query, &[], "REGISTER_MIRROR")?;
        mirror::decode_reply(&reply, fds).map_err(|e| LinkError::Unexpected {
            what: "REGISTER_MIRROR",
            got: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_model::DeviceModel;
    use crate::device_model::scratch::scratch;
    use crate::memory::GuestRam;
    use crate::pci::{BarKind, BarSpec, PciDevice};
    use crate::proxy::connect::ProxyOptions;
    use crate::proxy::cut_off::FailFlag;
    use crate::proxy::device::ProxyDevice;
    use crate::proxy::ioregion_setup::Dispatch;
    use crate::remote::server::serve;
    use crate::vfio_user::server::Session;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EventFd;

    fn no_kvm(_: &EventFd, _: &EventFd, _: u32) -> Result<(), kvm_ioctls::Error> {
        Ok(())
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// A proxy in front of our vfio-user server, serving `Scratch`.
    #[test]
    fn a_proxy_over_vfio_user_probes_shares_wires_and_uses_region_fds() {
        let dev = scratch(256);
        let ram = GuestRam::new(64 << 20).unwrap();
        let mut proxy = proxy_for(served(dev.clone()), &ram, 2).unwrap();
        let specs = proxy.config().bar_specs();
        assert_eq!(
            specs,
            [
                (
                    0,
                    BarSpec {
                        kind: BarKind::Io,
                        size: 256
                    }
                ),
                (
                    1,
                    BarSpec {
                        kind: BarKind::Memory,
                        size: 1024
                    }
                ),
            ]
        );
        {
            let d = dev.lock().unwrap();
            assert_eq!(d.resets, 1, "reset once");
            assert!(d.irq.is_some(), "INTx wired");
            assert!(d.memory.is_some(), "guest RAM shared");
        }
        proxy.place_bar(1, 0xc000_1000);
        proxy.write_config(crate::pci::config::REG_COMMAND, 0, &[0x02, 0]);
        assert_eq!(
            dev.lock().unwrap().config.bar_addr(1),
            Some(0xc000_1000),
            "the server's config space follows"
        );
        proxy.bar_write(1, 0x120, &0xfeed_u16.to_le_bytes());
        assert_eq!(proxy.bar_read_value(1, 0x120, 2), 0xfeed, "over messages");
        let paths = proxy.bar_fast_paths(1);
        assert_eq!(paths.len(), 2, "two ranges over region fds");
        let waited = paths[0].clone().attach(0xc000_1000).bus.unwrap();
        waited.write(0x10, &[0x5a]);
        let mut back = [0u8];
        waited.read(0x10, &mut back);
        assert_eq!(back, [0x5a]);
        assert_eq!(dev.lock().unwrap().regs[0x10], 0x5a, "through a region fd");
    }

    /// Our register-mirror extension over vfio-user: the server offers it
    /// to a client that proposed it, and mirrored reads stay in the VMM.
    #[test]
    fn mirrored_register_reads_over_vfio_user_stay_in_the_vmm() {
        use std::sync::atomic::Ordering;
        let dev = scratch(256);
        dev.lock().unwrap().mirror =
            Some((crate::device_model::RegisterMirror::new().unwrap(), 0x14));
        let ram = GuestRam::new(64 << 20).unwrap();
        let mut proxy = proxy_for(served(dev.clone()), &ram, 1).unwrap();
        proxy.place_bar(1, 0xc000_1000);
        proxy.write_config(crate::pci::config::REG_COMMAND, 0, &[0x02, 0]);
        let stats = proxy.stats();
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let waited = proxy.bar_fast_paths(1)[0]
            .clone()
            .attach(0xc000_1000)
            .bus
            .unwrap();
        crate::proxy::device::tests::assert_mirrored_byte_reads_stay_in_the_vmm(&*waited, &stats);
        let mut word = [0u8; 2];
        waited.read(0x14, &mut word);
        assert_eq!(
            get(&stats.ioregion_reads),
            1,
            "another size asks the server"
        );
    }

    /// A server that does not offer the extension is never asked for it;
    /// what one that offers it answers is checked.
    #[test]
    fn the_mirror_is_asked_for_only_when_offered_and_checked() {
        fn pci_info(conn: &mut Connection) {
            let m = conn.recv().unwrap();
            let info = DeviceInfo {
                argsz: DeviceInfo::SIZE as u32,
                flags: DEVICE_FLAGS_PCI,
                num_regions: PCI_NUM_REGIONS,
                num_irqs: PCI_NUM_IRQS,
            }
            .encode();
            conn.send(&Header::reply_to(&m.header, info.len()), &info, &[])
                .unwrap();
        }
        let silent = fake(pci_info);
        let mut client = Client::connect(silent, TIMEOUT).unwrap();
        assert!(
            client.register_mirror(1).unwrap().is_none(),
            "not offered, so not asked (the server is gone: asking would fail)"
        );

        let offering = Capabilities {
            register_mirror: true,
            ..Capabilities::default()
        };
        let liar = fake_with(offering, |conn| {
            pci_info(conn);
            let m = conn.recv().unwrap();
            assert_eq!(m.header.command, Command::RegisterMirror as u16);
            assert_eq!(mirror::decode_query(&m.payload), Ok(1));
            let layout = MirrorLayout {
                registers: vec![crate::protocol::extensions::MirroredRegister::new(
                    0x14, 3, 0,
                )],
                counts_posted_writes: false,
                reads_sent_count: false,
                posted_ring: false,
            };
            let bytes = crate::protocol::extensions::encode_mirrored(&layout);
            let page = File::open("/dev/null").unwrap();
            conn.send(
                &Header::reply_to(&m.header, bytes.len()),
                &bytes,
                &[page.as_raw_fd()],
            )
            .unwrap();
        });
        let mut client = Client::connect(liar, TIMEOUT).unwrap();
        let err = client.register_mirror(1).err().unwrap();
        assert!(err.to_string().contains("mirrored register 0"), "{err}");
    }

    /// A client of our vfio-user server, serving `device` on a thread.
    fn served(device: Arc<Mutex<dyn DeviceModel>>) -> Client {
        let (a, b) = UnixStream::pair().unwrap();
        // Its threads poll for the next access, as a remote on a CPU of
        // its own does.
        let poll = crate::ioregion::reply_poll::DEFAULT_WINDOW;
        std::thread::spawn(move || serve(&mut Session::new(b), device, None, poll));
        Client::connect(a, TIMEOUT).unwrap()
    }

    /// A proxy in front of `link`, with region fds on the userspace path.
    fn proxy_for(
        link: Client,
        ram: &GuestRam,
        vcpus: usize,
    ) -> Result<ProxyDevice, crate::proxy::connect::ProxyError> {
        ProxyDevice::connect(
            "vfio-user".into(),
            Box::new(link),
            ram,
            &no_kvm,
            16,
            FailFlag::default(),
            &ProxyOptions {
                ioregion: Some(Dispatch::Userspace),
                vcpus,
                watchdog: None,
                register_mirror: true,
                doorbells: crate::mirror::doorbell::DoorbellMode::Adaptive,
                // The remote's threads answer while the vCPU polls, or not:
                // both ways are served here.
                reply_poll: crate::ioregion::reply_poll::DEFAULT_WINDOW,
            },
        )
    }

    /// restart=on's takeover, over vfio-user: the new remote gets guest
    /// RAM, a reset, the config space the guest programmed and its INTx.
    #[test]
    fn a_restarted_remote_over_vfio_user_gets_the_programmed_config_space() {
        use crate::pci::config::REG_COMMAND;
        let ram = GuestRam::new(64 << 20).unwrap();
        let mut proxy = proxy_for(served(scratch(256)), &ram, 1).unwrap();
        proxy.place_bar(0, 0x1000);
        proxy.place_bar(1, 0xc000_1000);
        proxy.write_config(REG_COMMAND, 0, &[0x07, 0]);
        proxy.write_config(3, 1, &[0x40]); // latency timer
        let fresh = scratch(256);
        let failed = proxy
            .reconnect("second".into(), Box::new(served(fresh.clone())))
            .unwrap();
        proxy.wire_interrupt().unwrap();
        assert!(!failed.is_failed());
        let d = fresh.lock().unwrap();
        assert_eq!(d.config.bar_addr(1), Some(0xc000_1000));
        assert_eq!(d.config.read(REG_COMMAND) & 0xffff, 0x07);
        assert_eq!(d.config.read(3) >> 8 & 0xff, 0x40);
        assert_eq!(d.resets, 1);
        assert!(d.memory.is_some() && d.irq.is_some());
        drop(d);
        assert_eq!(proxy.bar_fast_paths(1).len(), 2, "new region fds");
    }

    /// `Scratch`, but claiming a BAR1 range past the BAR's end.
    struct Liar(crate::device_model::scratch::Scratch);

    impl PciDevice for Liar {
        fn config(&self) -> &crate::pci::ConfigSpace {
            self.0.config()
        }
        fn config_mut(&mut self) -> &mut crate::pci::ConfigSpace {
            self.0.config_mut()
        }
        fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
            self.0.bar_read(bar, offset, data)
        }
        fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
            self.0.bar_write(bar, offset, data)
        }
    }

    impl DeviceModel for Liar {
        fn reset(&mut self) {}
        fn set_memory(&mut self, _memory: crate::device_model::DeviceMemory) {}
        fn set_interrupt(&mut self, _line: crate::device_model::SharedIrq) {}
        fn ioregions(&self, bar: u8) -> Vec<crate::device_model::IoRegionSpec> {
            match bar {
                1 => vec![crate::device_model::IoRegionSpec {
                    offset: 0x380,
                    size: 0x100,
                    posted_writes: false,
                }],
                _ => vec![],
            }
        }
    }

    #[test]
    fn a_server_claiming_region_fds_outside_its_bar_is_refused() {
        let liar = Arc::new(Mutex::new(Liar(
            Arc::into_inner(scratch(256)).unwrap().into_inner().unwrap(),
        )));
        let ram = GuestRam::new(64 << 20).unwrap();
        let err = proxy_for(served(liar), &ram, 1).err().unwrap();
        assert!(err.to_string().contains("does not fit in the BAR"), "{err}");
    }

    /// A fake server: answers VERSION well, then runs `then` on the rest.
    fn fake(then: impl FnOnce(&mut Connection) + Send + 'static) -> UnixStream {
        fake_with(Capabilities::default(), then)
    }

    /// The same, answering VERSION with `caps`.
    fn fake_with(
        caps: Capabilities,
        then: impl FnOnce(&mut Connection) + Send + 'static,
    ) -> UnixStream {
        let (a, b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut conn = Connection::new(b, 1 << 20);
            let hello = conn.recv().unwrap();
            let v = Version {
                major: 0,
                minor: 0,
                caps,
            }
            .encode();
            conn.send(&Header::reply_to(&hello.header, v.len()), &v, &[])
                .unwrap();
            then(&mut conn);
        });
        a
    }

    #[test]
    fn a_reply_with_another_id_or_a_non_pci_device_is_refused() {
        let sock = fake(|conn| {
            let m = conn.recv().unwrap();
            let mut h = Header::reply_to(&m.header, 16);
            h.id = h.id.wrapping_add(7);
            conn.send(&h, &[0; 16], &[]).unwrap();
        });
        let err = Client::connect(sock, TIMEOUT).err().unwrap();
        assert!(err.to_string().contains("id"), "{err}");
        let sock = fake(|conn| {
            let m = conn.recv().unwrap();
            let info = DeviceInfo {
                argsz: 16,
                flags: DEVICE_FLAGS_RESET,
                num_regions: 9,
                num_irqs: 5,
            }
            .encode();
            conn.send(&Header::reply_to(&m.header, 16), &info, &[])
                .unwrap();
        });
        let err = Client::connect(sock, TIMEOUT).err().unwrap();
        assert!(err.to_string().contains("not a PCI device"), "{err}");
    }

    #[test]
    fn a_server_without_region_fds_leaves_the_bar_on_messages() {
        let sock = fake(|conn| {
            let m = conn.recv().unwrap();
            let info = DeviceInfo {
                argsz: 16,
                flags: DEVICE_FLAGS_PCI,
                num_regions: 9,
                num_irqs: 5,
            }
            .encode();
            conn.send(&Header::reply_to(&m.header, 16), &info, &[])
                .unwrap();
            let m = conn.recv().unwrap();
            conn.send(
                &Header::error_reply_to(&m.header, libc::ENOSYS as u32),
                &[],
                &[],
            )
            .unwrap();
        });
        let mut client = Client::connect(sock, TIMEOUT).unwrap();
        assert!(client.region_fds(1, 0).unwrap().is_none());
    }
}
