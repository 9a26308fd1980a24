//! vfio-user interop with someone else's implementation: the rust-vmm
//! `vfio_user` crate (0.1.7) as the peer, on this host (no guest, no KVM).
//!
//! - Its client drives our LSI remote (`vmm remote lsi --vfio-user PATH`,
//!   sandboxed as in production): device and region info, config space,
//!   a register written and read back, guest RAM by DMA_MAP with a memfd,
//!   INTx, reset, and a clean exit when the client hangs up.
//! - Our proxy, through our vfio-user client, drives a small device served
//!   by its server: the proxy probes identity and BARs, shares guest RAM,
//!   wires INTx, and a doorbell makes the device DMA into guest RAM and
//!   raise INTx.
//!
//! The crate's server does not take DEVICE_GET_REGION_IO_FDS (it answers
//! with an error and then misreads the request's body as the next
//! message), so our proxy talks to it with `ioregionfd=off`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, vfio_region_info,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, IrqInfo, Server, ServerBackend, ServerRegion};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use vmm::memory::GuestRam;
use vmm::pci::{BarKind, BarSpec, ConfigSpace, PciDevice};
use vmm::proxy::connect::ProxyOptions;
use vmm::proxy::cut_off::FailFlag;
use vmm::proxy::device::ProxyDevice;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-vu-crate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(path.exists(), "{} never appeared", path.display());
}

#[test]
fn the_crates_client_drives_our_lsi_remote() {
    let dir = temp_dir("client");
    let (socket, image) = (dir.join("lsi.sock"), dir.join("disk.img"));
    File::create(&image).unwrap().set_len(16 << 20).unwrap();
    let log = dir.join("remote.log");
    let mut remote = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["remote", "lsi", "--log-level", "info", "--vfio-user"])
        .arg(&socket)
        .arg("--disk")
        .arg(&image)
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for(&socket);
    let mut client = vfio_user::Client::new(&socket).unwrap();
    let size = |c: &vfio_user::Client, i| c.region(i).map(|r| r.size);
    assert_eq!(size(&client, 0), Some(256), "BAR0: I/O registers");
    assert_eq!(size(&client, 1), Some(1024), "BAR1: memory registers");
    assert_eq!(size(&client, 2), Some(8192), "BAR2: SCRIPTS RAM");
    assert_eq!(size(&client, 7), Some(256), "config space");
    let mut id = [0u8; 4];
    client.region_read(7, 0, &mut id).unwrap();
    assert_eq!(id, [0x00, 0x10, 0x12, 0x00], "LSI 53C895A");
    // SCRATCHA, a plain register, in the memory BAR.
    client
        .region_write(1, 0x34, &0x1234_5678u32.to_le_bytes())
        .unwrap();
    let mut back = [0u8; 4];
    client.region_read(1, 0x34, &mut back).unwrap();
    assert_eq!(u32::from_le_bytes(back), 0x1234_5678);
    let ram = vmm::sys::memfd(c"vu-crate-ram", false).unwrap();
    ram.set_len(1 << 20).unwrap();
    client.dma_map(0, 0, 1 << 20, ram.as_raw_fd()).unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    client
        .set_irqs(
            0,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            1,
            &[irq.as_raw_fd()],
        )
        .unwrap();
    client.reset().unwrap();
    client.region_read(1, 0x34, &mut back).unwrap();
    assert_eq!(u32::from_le_bytes(back), 0, "reset clears SCRATCHA");
    client.shutdown().unwrap();
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = remote.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = remote.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
    assert!(log.contains("vfio-user client: version 0.1"), "{log}");
    assert!(log.contains("VMM disconnected; exiting"), "{log}");
    assert!(!log.contains("refusing"), "{log}");
}

/// A toy PCI device behind the crate's server: one 4 KiB memory BAR of
/// registers; writing 1 at 0x100 copies "dma from the toy" to the guest
/// address at 0x10 and raises INTx.
struct Toy {
    config: ConfigSpace,
    regs: [u8; 4096],
    /// (DMA address, size, file offset, file) of each mapping.
    ram: Vec<(u64, u64, u64, File)>,
    irq: Option<File>,
    resets: Arc<Mutex<u32>>,
}

const DOORBELL: u64 = 0x100;
const PAYLOAD: &[u8] = b"dma from the toy";

impl ServerBackend for Toy {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset as usize + i;
            *b = match region {
                7 => (self.config.read(at / 4) >> ((at % 4) * 8)) as u8,
                0 => self.regs[at],
                _ => 0xff,
            };
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        for (i, b) in data.iter().enumerate() {
            let at = offset as usize + i;
            match region {
                7 => self.config.write(at / 4, at % 4, &[*b]),
                0 => self.regs[at] = *b,
                _ => {}
            }
        }
        if region == 0 && offset == DOORBELL && data[0] == 1 {
            let target = u64::from_le_bytes(self.regs[0x10..0x18].try_into().unwrap());
            let (address, _, file_offset, file) = self
                .ram
                .iter()
                .find(|(a, s, _, _)| (*a..*a + *s).contains(&target))
                .expect("the doorbell names guest RAM");
            file.write_all_at(PAYLOAD, file_offset + (target - address))?;
            if let Some(mut irq) = self.irq.as_ref() {
                std::io::Write::write_all(&mut irq, &1u64.to_ne_bytes())?;
            }
        }
        Ok(())
    }

    fn dma_map(
        &mut self,
        _flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> std::io::Result<()> {
        if let Some(fd) = fd {
            self.ram.push((address, size, offset, fd));
        }
        Ok(())
    }

    fn dma_unmap(
        &mut self,
        _flags: DmaUnmapFlags,
        address: u64,
        _size: u64,
    ) -> std::io::Result<()> {
        self.ram.retain(|(a, ..)| *a != address);
        Ok(())
    }

    fn reset(&mut self) -> std::io::Result<()> {
        *self.resets.lock().unwrap() += 1;
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        _start: u32,
        _count: u32,
        mut fds: Vec<File>,
    ) -> std::io::Result<()> {
        if index == 0 && flags == VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER {
            self.irq = fds.pop();
        }
        Ok(())
    }
}

fn region(index: u32, size: u64) -> ServerRegion {
    ServerRegion {
        region_info: vfio_region_info {
            argsz: 32,
            flags: if size > 0 { 0x3 } else { 0 },
            index,
            cap_offset: 0,
            size,
            offset: 0,
        },
        sparse_areas: Vec::new(),
        mmap_fd: None,
    }
}

#[test]
fn our_proxy_drives_a_device_served_by_the_crate() {
    let dir = temp_dir("server");
    let socket = dir.join("toy.sock");
    let mut config = ConfigSpace::new(0x1af4, 0x10ff, 0xff_00_00, 1);
    config
        .set_bar(
            0,
            BarSpec {
                kind: BarKind::Memory,
                size: 4096,
            },
        )
        .unwrap();
    let resets = Arc::new(Mutex::new(0));
    let mut toy = Toy {
        config,
        regs: [0; 4096],
        ram: Vec::new(),
        irq: None,
        resets: resets.clone(),
    };
    let regions = (0..9)
        .map(|i| match i {
            0 => region(0, 4096),
            7 => region(7, 256),
            i => region(i, 0),
        })
        .collect();
    let irqs = (0..5)
        .map(|index| IrqInfo {
            index,
            flags: if index == 0 { 0x7 } else { 0 },
            count: u32::from(index == 0),
        })
        .collect();
    let server = Server::new(&socket, true, irqs, regions).unwrap();
    std::thread::spawn(move || server.run(&mut toy));

    let link = vmm::vfio_user::client::Client::connect(
        UnixStream::connect(&socket).unwrap(),
        Duration::from_secs(5),
    )
    .unwrap();
    let ram = GuestRam::new(64 << 20).unwrap();
    let irqfd: Arc<Mutex<Option<EventFd>>> = Arc::default();
    let keep = irqfd.clone();
    let register = move |irq: &EventFd, _resample: &EventFd, _gsi: u32| {
        *keep.lock().unwrap() = Some(irq.try_clone().unwrap());
        Ok(())
    };
    let mut proxy = ProxyDevice::connect(
        "toy".into(),
        Box::new(link),
        &ram,
        &register,
        16,
        FailFlag::default(),
        &ProxyOptions {
            ioregion: None,
            vcpus: 1,
            watchdog: None,
            register_mirror: true,
        },
    )
    .unwrap();
    assert_eq!(proxy.read_config(0), 0x10ff_1af4, "identity from the toy");
    assert_eq!(
        proxy.config().bar_specs(),
        [(
            0,
            BarSpec {
                kind: BarKind::Memory,
                size: 4096
            }
        )]
    );
    assert_eq!(*resets.lock().unwrap(), 1);
    proxy.place_bar(0, 0xc000_0000);
    proxy.write_config(1, 0, &[0x06, 0]);
    proxy.bar_write(0, 0x10, &0x20_0000u64.to_le_bytes());
    assert_eq!(proxy.bar_read_value(0, 0x10, 8), 0x20_0000);
    proxy.bar_write(0, DOORBELL, &[1]);
    let mut landed = [0u8; PAYLOAD.len()];
    ram.memory
        .read_slice(&mut landed, GuestAddress(0x20_0000))
        .unwrap();
    assert_eq!(&landed, PAYLOAD, "the toy's DMA into guest RAM");
    let irq = irqfd.lock().unwrap().take().unwrap();
    assert_eq!(irq.read().unwrap(), 1, "INTx raised through the irqfd");
}
