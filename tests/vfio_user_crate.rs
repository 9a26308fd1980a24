//! vfio-user interop with someone else's implementation: the rust-vmm
//! `vfio_user` crate (0.1.7) as the peer.
//!
//! On this host (no guest, no KVM):
//! - Its client drives our LSI remote (`vmm remote lsi --vfio-user PATH`,
//!   sandboxed as in production): device and region info, config space,
//!   a register written and read back, guest RAM by DMA_MAP with a memfd,
//!   INTx, reset, and a clean exit when the client hangs up.
//! - Our proxy, through our vfio-user client, drives a small device served
//!   by its server (`examples/vfio_user_toy/toy.rs`): the proxy probes
//!   identity and BARs, shares guest RAM, wires INTx, and a doorbell makes
//!   the device DMA into guest RAM and raise INTx, held back while the
//!   command register disables INTx.
//!
//! In the KVM test rig: the same device in its own process
//! (`vfio_user_toy`), our VMM its client, and the guest's kernel driving
//! it through `uio_pci_generic` (guest/scripts/toy): a register, a DMA
//! into guest RAM and an interrupt taken, acknowledged and unmasked.
//!
//! The crate's server does not take DEVICE_GET_REGION_IO_FDS (it answers
//! with an error and then misreads the request's body as the next
//! message), so our proxy talks to it with `ioregionfd=off`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vfio_bindings::bindings::vfio::{VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use vmm::memory::GuestRam;
use vmm::pci::{BarKind, BarSpec, PciDevice};
use vmm::proxy::connect::ProxyOptions;
use vmm::proxy::cut_off::FailFlag;
use vmm::proxy::device::ProxyDevice;

mod common;
#[path = "../examples/vfio_user_toy/toy.rs"]
mod toy;

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

/// The scheduling policy of each thread of `pid` (field 41 of its stat).
fn scheduling_policies(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| {
            let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
            // Fields after the command name, which may hold spaces: the
            // state is field 3, so the policy is the 39th of these.
            let after_name = &stat[stat.rfind(')').unwrap() + 2..];
            after_name.split(' ').nth(38).unwrap().parse().unwrap()
        })
        .collect()
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
    // Every thread of the remote (the disk workers are up once it has
    // accepted) runs as SCHED_BATCH, the default of `--sched`.
    let policies = scheduling_policies(remote.id());
    assert!(policies.len() > 1, "the remote's threads: {policies:?}");
    assert!(
        policies.iter().all(|&p| p == libc::SCHED_BATCH as u32),
        "scheduling policies of the remote's threads: {policies:?}"
    );
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

/// What the toy says happened to it, shared with the test.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Events {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Events {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[test]
fn our_proxy_drives_a_device_served_by_the_crate() {
    let dir = temp_dir("server");
    let socket = dir.join("toy.sock");
    let events = Events::default();
    let mut device = toy::Toy::new(Box::new(events.clone()));
    let server = toy::server(&socket).unwrap();
    std::thread::spawn(move || server.run(&mut device));

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
            doorbells: vmm::mirror::doorbell::DoorbellMode::Adaptive,
            reply_poll: std::time::Duration::ZERO,
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
    assert!(events.text().contains("toy: reset"), "{}", events.text());
    proxy.place_bar(0, 0xc000_0000);
    proxy.write_config(1, 0, &[0x06, 0]);
    proxy.bar_write(0, 0x10, &0x20_0000u64.to_le_bytes());
    assert_eq!(proxy.bar_read_value(0, 0x10, 8), 0x20_0000);
    proxy.bar_write(0, toy::DOORBELL, &[1]);
    let mut landed = [0u8; toy::PAYLOAD.len()];
    ram.memory
        .read_slice(&mut landed, GuestAddress(0x20_0000))
        .unwrap();
    assert_eq!(&landed, toy::PAYLOAD, "the toy's DMA into guest RAM");
    let irq = irqfd.lock().unwrap().take().unwrap();
    assert_eq!(irq.read().unwrap(), 1, "INTx raised through the irqfd");

    // Level-triggered INTx with PCI 2.3 masking, as uio_pci_generic (the
    // rig test's guest driver) uses it.
    const PENDING: u32 = 0x8 << 16;
    let intx_disable = |proxy: &mut ProxyDevice, on: bool| {
        proxy.write_config(1, 0, &[0x06, if on { 0x04 } else { 0 }]);
    };
    assert_ne!(
        proxy.read_config(1) & PENDING,
        0,
        "status: interrupt pending"
    );
    intx_disable(&mut proxy, true);
    proxy.bar_write(0, toy::INTERRUPT, &[1]);
    assert_eq!(
        proxy.bar_read_value(0, toy::INTERRUPT, 4),
        0,
        "acknowledged"
    );
    assert_eq!(proxy.read_config(1) & PENDING, 0, "status: nothing pending");
    proxy.bar_write(0, toy::DOORBELL, &[1]);
    assert!(irq.read().is_err(), "no INTx while INTx is disabled");
    assert_ne!(proxy.read_config(1) & PENDING, 0, "pending while masked");
    intx_disable(&mut proxy, false);
    assert_eq!(irq.read().unwrap(), 1, "INTx raised once unmasked");
}

/// In the KVM test rig, with the toy in its own process: our VMM is the
/// client and the guest's kernel drives the device through
/// `uio_pci_generic` (guest/scripts/toy).
fn toy_outcome() -> Option<&'static common::Outcome> {
    static BATCH: common::BatchCell = std::sync::OnceLock::new();
    if let common::Mode::Skip = common::mode() {
        eprintln!("VMM_SKIP_KVM_TESTS=1: skipping the toy device guest test");
        return None;
    }
    let results = common::run_once(&BATCH, || {
        common::run_batch(
            &[common::Scenario {
                name: "vfio-user-toy",
                script: "toy=$(dirname $VMM)/examples/vfio_user_toy\n\
                         [ -x $toy ] || echo \"no toy device binary at $toy\"\n\
                         $toy /tmp/toy.sock 2> /tmp/toy.log & served=$!\n\
                         i=0; while [ ! -S /tmp/toy.sock ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done\n\
                         $VMM --kernel $KERNEL --initrd $INITRD --log-level info \
                         --cmdline 'console=ttyS0 quiet iomem=relaxed memmap=16M$0x4000000 vmm.run=toy' \
                         --remote-dev vfio-user,socket=/tmp/toy.sock,ioregionfd=off </dev/null\n\
                         echo \"vmm exited $?\"\n\
                         i=0; while kill -0 $served 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done\n\
                         kill -0 $served 2>/dev/null && { echo 'toy still serving 10 s after the VMM left'; kill $served; }\n\
                         wait $served; echo \"toy exited $?\"\n\
                         cat /tmp/toy.log"
                    .into(),
            }],
            180,
        )
    });
    common::pick(results, "vfio-user-toy")
}

#[test]
fn a_guest_drives_the_crate_served_device_through_our_vmm() {
    let Some(o) = toy_outcome() else {
        return;
    };
    o.assert_exited("vmm", 0);
    o.assert_exited("toy", 0);
    o.assert_contains("toy: DMA_MAP 0x0 size");
    o.assert_contains("with an fd");
    o.assert_contains("VMM-GUEST: toy register 0xFEEDF00D");
    o.assert_contains("toy: doorbell: DMA of 16 bytes to 0x4000000");
    o.assert_contains("toy: INTx trigger eventfd set");
    o.assert_contains("toy: INTx raised");
    o.assert_contains("VMM-GUEST: toy interrupts 1\n");
    // Through the guest's IOAPIC, level-triggered, to the guest driver.
    o.assert_contains("IO-APIC 16-fasteoi uio_pci_generic");
    o.assert_contains("VMM-GUEST: toy pending 0x00000001");
    o.assert_contains("toy: interrupt acknowledged");
    o.assert_contains("VMM-GUEST: toy pending after ack 0x00000000");
    o.assert_contains("VMM-GUEST: toy payload dma from the toy");
    o.assert_contains("toy: client gone");
    o.assert_nothing_left_running();
}
