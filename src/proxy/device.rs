//! A PCI device whose config space and BARs are served by a remote process.
//!
//! The proxy keeps its own copy of the BAR registers, the command register
//! and the interrupt line, because those decide what the VMM maps where;
//! everything else is read from the remote. Every config write is forwarded
//! so the remote places its BARs at the same addresses (BAR accesses name
//! absolute addresses). A remote that fails or misbehaves is cut off: its
//! config space then reads as all ones (no device), its registers as zeros
//! (see `CUT_OFF_REGISTERS`), and writes are dropped.

use std::collections::HashMap;
use std::sync::Arc;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::connect::{
    IrqRegistrar, ProxyError, ProxyOptions, Successor, Sysmem, Takeover, cfg_write, fast_paths,
    link_err, probe_config, share_ram, wire_irq,
};
use crate::ioregion::IoRegionPath;
use crate::memory::GuestRam;
use crate::pci::config::{
    ConfigSpace, NUM_BARS, REG_BAR0, REG_CLASS, REG_ID, REG_INTERRUPT, REG_ROM,
};
use crate::pci::{BarFastPath, PciDevice};
use crate::proxy::cut_off::{CUT_OFF_NOTE, CUT_OFF_REGISTERS, FailFlag};
use crate::proxy::link::{LinkError, PlacedBar, RemoteLink};
use crate::proxy::stats::{DeviceStats, bump};

pub struct ProxyDevice {
    name: String,
    link: Box<dyn RemoteLink>,
    config: ConfigSpace,
    failed: FailFlag,
    fast_paths: HashMap<usize, Vec<Arc<IoRegionPath>>>,
    stats: Arc<DeviceStats>,
    options: ProxyOptions,
    /// What a restarted remote is given again.
    sysmem: Sysmem,
    /// Config writes that only the remote keeps, latest per (register,
    /// offset, width), in order: replayed to a restarted remote.
    written: Vec<(usize, usize, Vec<u8>)>,
    /// Registered with KVM once; a restarted remote gets them again.
    irqfd: EventFd,
    resamplefd: EventFd,
    /// While a restarted remote's handshake runs on a copy of the config
    /// space: the config writes since the copy, latest per (register,
    /// offset, width), in order, BARs and command register included.
    since_takeover: Option<Vec<(usize, usize, Vec<u8>)>>,
}

fn is_local(reg: usize) -> bool {
    (REG_BAR0..REG_BAR0 + NUM_BARS).contains(&reg) || reg == REG_ROM || reg == REG_INTERRUPT
}

impl ProxyDevice {
    /// Connects to a remote: shares guest RAM, probes its identity and
    /// BARs, wires its INTA# to `gsi` and resets it.
    pub fn connect(
        name: String,
        mut link: Box<dyn RemoteLink>,
        ram: &GuestRam,
        register_irq: &IrqRegistrar<'_>,
        gsi: u8,
        failed: FailFlag,
        options: &ProxyOptions,
    ) -> Result<Self, ProxyError> {
        let sysmem = Sysmem {
            regions: ram.sysmem_regions(),
            memfd: ram.memfd.try_clone().map_err(|source| ProxyError::Irq {
                name: name.clone(),
                source,
            })?,
        };
        share_ram(&mut *link, &name, &sysmem)?;
        let mut config = probe_config(&mut *link, &name)?;
        config.set_interrupt(1, gsi);
        let stats = Arc::new(DeviceStats::default());
        let fast_paths = fast_paths(&mut *link, &name, &config, options, &stats, &failed)?;

        let mk = || EventFd::new(EFD_NONBLOCK);
        let irq_err = |source| ProxyError::Irq {
            name: name.clone(),
            source,
        };
        let irqfd = mk().map_err(irq_err)?;
        let resamplefd = mk().map_err(irq_err)?;
        register_irq(&irqfd, &resamplefd, u32::from(gsi)).map_err(|source| ProxyError::Irqfd {
            name: name.clone(),
            source,
        })?;
        wire_irq(&mut *link, &name, &irqfd, &resamplefd)?;
        link.reset()
            .map_err(link_err(&name, "resetting the device"))?;
        let id = config.read(REG_ID);
        log::info!(
            "remote {name}: PCI {:04x}:{:04x} class {:06x}, INTA# on GSI {gsi}",
            id as u16,
            id >> 16,
            config.read(REG_CLASS) >> 8
        );
        Ok(ProxyDevice {
            name,
            link,
            config,
            failed,
            fast_paths,
            stats,
            options: options.clone(),
            sysmem,
            written: Vec::new(),
            irqfd,
            resamplefd,
            since_takeover: None,
        })
    }

    /// Takes over a restarted remote on `link`: the same device must
    /// answer, and it is given what its predecessor had (guest RAM and the
    /// config space the guest programmed). Returns the flag that now marks
    /// this remote failed. The caller remaps the BARs, because the ioregion
    /// fds are new, and then calls `wire_interrupt`: last, so that a remote
    /// that raises its interrupt at once finds the guest's view complete.
    /// `begin_takeover`, `Takeover::handshake` and `complete_takeover` do
    /// the same in steps, so the handshake need not hold the device's lock.
    pub fn reconnect(
        &mut self,
        name: String,
        link: Box<dyn RemoteLink>,
    ) -> Result<FailFlag, ProxyError> {
        let successor = self.begin_takeover()?.handshake(name, link);
        match successor {
            Ok(successor) => self.complete_takeover(successor),
            Err(e) => {
                self.abandon_takeover();
                Err(e)
            }
        }
    }

    /// Copies what a restarted remote is given, and from now on notes the
    /// config writes the guest makes until `complete_takeover` replays them
    /// (or `abandon_takeover`).
    pub fn begin_takeover(&mut self) -> Result<Takeover, ProxyError> {
        let memfd = self
            .sysmem
            .memfd
            .try_clone()
            .map_err(|source| ProxyError::Irq {
                name: self.name.clone(),
                source,
            })?;
        self.since_takeover = Some(Vec::new());
        Ok(Takeover {
            predecessor: self.name.clone(),
            sysmem: Sysmem {
                regions: self.sysmem.regions.clone(),
                memfd,
            },
            config: self.config.clone(),
            written: self.written.clone(),
            options: self.options.clone(),
            stats: self.stats.clone(),
        })
    }

    /// Puts the remote that passed the handshake behind the device. The
    /// config writes the guest made meanwhile go to it first (a few round
    /// trips at most, usually none): it only has the copy taken when the
    /// takeover began.
    pub fn complete_takeover(&mut self, successor: Successor) -> Result<FailFlag, ProxyError> {
        let Successor {
            name,
            mut link,
            failed,
            fast_paths,
            replayed,
        } = successor;
        let meanwhile = self.since_takeover.take().unwrap_or_default();
        let replay_err = link_err(&name, "replaying config space");
        for (reg, offset, data) in &meanwhile {
            if let Err(e) = cfg_write(&mut *link, *reg, *offset, data) {
                // Its region fds are not used, but the watchdog knows them.
                failed.fail();
                return Err(replay_err(e));
            }
        }
        log::info!(
            "remote {name}: took over from {} ({replayed} config writes replayed, {} more made \
             during the handshake)",
            self.name,
            meanwhile.len()
        );
        self.name = name;
        self.link = link;
        self.failed = failed.clone();
        self.fast_paths = fast_paths;
        Ok(failed)
    }

    /// The takeover failed: stop noting config writes for it.
    pub fn abandon_takeover(&mut self) {
        self.since_takeover = None;
    }

    /// Hands the remote the device's interrupt (after `reconnect`).
    pub fn wire_interrupt(&mut self) -> Result<(), ProxyError> {
        wire_irq(&mut *self.link, &self.name, &self.irqfd, &self.resamplefd)
    }

    pub fn stats(&self) -> Arc<DeviceStats> {
        self.stats.clone()
    }

    /// BAR `bar` as the guest placed it.
    fn placed(&self, bar: u8) -> Option<PlacedBar> {
        let index = usize::from(bar);
        Some(PlacedBar {
            index: bar,
            kind: self.config.bar_spec(index)?.kind,
            base: self.config.bar_addr(index)?,
        })
    }

    /// Runs a request unless the remote is already cut off; a failure cuts it off.
    fn request<T>(
        &mut self,
        what: &str,
        call: impl FnOnce(&mut dyn RemoteLink) -> Result<T, LinkError>,
    ) -> Option<T> {
        if self.failed.is_failed() {
            return None;
        }
        match call(&mut *self.link) {
            Ok(v) => Some(v),
            Err(e) => {
                if self.failed.fail() {
                    log::error!("remote {}: {what} failed ({e}); {CUT_OFF_NOTE}", self.name);
                }
                None
            }
        }
    }
}

impl PciDevice for ProxyDevice {
    fn read_config(&mut self, reg: usize) -> u32 {
        if is_local(reg) {
            return self.config.read(reg);
        }
        self.request("config read", |link| link.config_read(reg as u32 * 4, 4))
            .unwrap_or(u32::MAX)
    }

    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.config.write(reg, offset, data);
        let note = |log: &mut Vec<(usize, usize, Vec<u8>)>| {
            log.retain(|(r, o, d)| (*r, *o, d.len()) != (reg, offset, data.len()));
            log.push((reg, offset, data.to_vec()));
        };
        if !is_local(reg) {
            note(&mut self.written);
        }
        if let Some(meanwhile) = &mut self.since_takeover {
            note(meanwhile);
        }
        self.request("config write", |link| cfg_write(link, reg, offset, data));
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn place_bar(&mut self, index: usize, addr: u64) {
        // Through the normal write path, so the remote learns the address too.
        self.write_config(REG_BAR0 + index, 0, &(addr as u32).to_le_bytes());
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        bump(&self.stats.message_reads);
        let read = self.placed(bar).and_then(|placed| {
            self.request("BAR read", |link| link.bar_read(placed, offset, data))
        });
        if read.is_none() {
            data.fill(CUT_OFF_REGISTERS);
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        bump(&self.stats.message_writes);
        if let Some(placed) = self.placed(bar) {
            self.request("BAR write", |link| link.bar_write(placed, offset, data));
        }
    }

    fn bar_fast_paths(&self, index: usize) -> Vec<Arc<dyn BarFastPath>> {
        self.fast_paths
            .get(&index)
            .map(|paths| {
                paths
                    .iter()
                    .map(|p| p.clone() as Arc<dyn BarFastPath>)
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::device_model::DeviceModel;
    pub(crate) use crate::device_model::scratch::{Scratch, scratch};
    use crate::mirror::doorbell::DoorbellMode;
    use crate::pci::{BarKind, BarSpec};
    use crate::protocol::channel::Channel;
    use crate::protocol::mpqemu::Message;
    use crate::proxy::ioregion_setup::Dispatch;
    use crate::proxy::link::Mpqemu;
    use crate::proxy::spec::Dialect;
    use crate::proxy::watchdog::StallWatchdog;
    use crate::remote::server;
    use std::os::unix::net::UnixStream;
    use std::sync::Mutex;

    fn no_kvm(_: &EventFd, _: &EventFd, _: u32) -> Result<(), kvm_ioctls::Error> {
        Ok(())
    }

    fn connect(dev: Arc<Mutex<Scratch>>) -> (ProxyDevice, FailFlag, std::thread::JoinHandle<()>) {
        connect_with(dev, None)
    }

    pub(crate) fn connect_with(
        dev: Arc<Mutex<Scratch>>,
        ioregion: Option<Dispatch>,
    ) -> (ProxyDevice, FailFlag, std::thread::JoinHandle<()>) {
        try_connect_with(dev, ioregion).unwrap()
    }

    fn try_connect_with(
        dev: Arc<Mutex<Scratch>>,
        ioregion: Option<Dispatch>,
    ) -> Result<(ProxyDevice, FailFlag, std::thread::JoinHandle<()>), ProxyError> {
        try_connect_ringing(dev, ioregion, DoorbellMode::Adaptive)
    }

    fn try_connect_ringing(
        dev: Arc<Mutex<Scratch>>,
        ioregion: Option<Dispatch>,
        doorbells: DoorbellMode,
    ) -> Result<(ProxyDevice, FailFlag, std::thread::JoinHandle<()>), ProxyError> {
        let (a, b) = UnixStream::pair().unwrap();
        let remote: Arc<Mutex<dyn DeviceModel>> = dev;
        let server = std::thread::spawn(move || {
            let _ = server::serve(
                &mut Channel::new(b),
                remote,
                None,
                std::time::Duration::ZERO,
            );
        });
        let ram = GuestRam::new(64 << 20).unwrap();
        let failed = FailFlag::default();
        let proxy = ProxyDevice::connect(
            "test".into(),
            Box::new(Mpqemu::new(Channel::new(a), Dialect::Vmm)),
            &ram,
            &no_kvm,
            16,
            failed.clone(),
            &ProxyOptions {
                ioregion,
                vcpus: 2,
                watchdog: None,
                register_mirror: true,
                doorbells,
                reply_poll: std::time::Duration::ZERO,
            },
        )?;
        Ok((proxy, failed, server))
    }

    #[test]
    fn probe_finds_identity_bars_and_resets() {
        let dev = scratch(256);
        let (mut proxy, _, _) = connect(dev.clone());
        assert_eq!(proxy.read_config(REG_ID), 0x0012_1000);
        assert_eq!(
            proxy.config().bar_specs(),
            vec![
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
                )
            ]
        );
        assert_eq!(
            proxy.read_config(REG_INTERRUPT) & 0xffff,
            0x0110,
            "INTA# on line 16"
        );
        assert_eq!(dev.lock().unwrap().resets, 1);
        // Probing restored the remote's BARs.
        assert_eq!(dev.lock().unwrap().config.read(REG_BAR0 + 1), 0);
    }

    #[test]
    fn bar_accesses_reach_the_remote_by_absolute_address() {
        let dev = scratch(256);
        let (mut proxy, _, _) = connect(dev.clone());
        proxy.place_bar(1, 0xc000_1000);
        proxy.write_config(crate::pci::config::REG_COMMAND, 0, &[0x03, 0]);
        let bar = proxy
            .config()
            .active_bars()
            .into_iter()
            .find(|b| b.index == 1)
            .unwrap();
        assert_eq!(
            dev.lock().unwrap().config.bar_addr(1),
            Some(0xc000_1000),
            "remote moved too"
        );
        proxy.bar_write(bar.index, 0x34, &0xdead_beef_u32.to_le_bytes());
        assert_eq!(
            &dev.lock().unwrap().regs[0x34..0x38],
            &0xdead_beef_u32.to_le_bytes()
        );
        let mut data = [0u8; 2];
        proxy.bar_read(bar.index, 0x36, &mut data);
        assert_eq!(data, [0xad, 0xde]);
    }

    /// One device trait on both sides of the wire: the same config and BAR
    /// accesses, made through `PciDevice`, read the same from a model in
    /// this process as from a proxy for its twin in a served remote.
    #[test]
    fn a_proxy_reads_as_the_model_it_forwards_to() {
        use crate::pci::config::REG_COMMAND;
        let local = scratch(256);
        let (mut proxy, _, _) = connect(scratch(256));
        let mut local = local.lock().unwrap();
        let devices: [&mut dyn PciDevice; 2] = [&mut *local, &mut proxy];
        let mut seen = Vec::new();
        for dev in devices {
            dev.place_bar(1, 0xc000_1000);
            dev.write_config(REG_COMMAND, 0, &[0x03, 0]);
            dev.bar_write(1, 0x10, &0x1234_5678_u32.to_le_bytes());
            dev.bar_write_value(1, 0x12, 1, 0xab);
            let mut word = [0u8; 4];
            dev.bar_read(1, 0x10, &mut word);
            seen.push((
                dev.read_config(REG_ID),
                dev.read_config(REG_BAR0 + 1),
                dev.read_config(REG_COMMAND) & 0x3,
                word,
                dev.bar_read_value(1, 0x11, 2),
            ));
        }
        assert_eq!(
            seen[0],
            (
                0x0012_1000,
                0xc000_1000,
                0x3,
                [0x78, 0x56, 0xab, 0x12],
                0xab56
            )
        );
        assert_eq!(seen[1], seen[0], "the proxy differs from the model");
    }

    /// A remote that stops taking posted writes is cut off by the
    /// watchdog once they have sat untaken for the fd's timeout, though
    /// no vCPU ever waited on them.
    #[test]
    fn the_watchdog_cuts_off_a_remote_that_leaves_posted_writes_queued() {
        use crate::bus::SharedBusDevice;
        use std::time::{Duration, Instant};
        let dev = scratch(256);
        let (proxy, failed, _server) = connect_with(dev.clone(), Some(Dispatch::Userspace));
        let posted = proxy.fast_paths[&1]
            .iter()
            .find(|p| p.posts_writes_from_userspace())
            .unwrap()
            .clone();
        let watchdog = StallWatchdog::default();
        watchdog.watch(&posted);
        let t0 = Instant::now();
        posted.write(0x10, &[1]);
        std::thread::sleep(Duration::from_millis(100));
        watchdog.check(t0);
        watchdog.check(t0 + Duration::from_secs(11));
        assert!(
            !failed.is_failed(),
            "a remote that takes its writes is fine"
        );

        // The remote's threads now block on the device: one record is
        // taken, the rest wait in the queue.
        let frozen = dev.lock().unwrap();
        for i in 0..4u8 {
            posted.write(0x10 + u64::from(i), &[i]);
        }
        std::thread::sleep(Duration::from_millis(100));
        let t1 = t0 + Duration::from_secs(20);
        for second in 0..10 {
            watchdog.check(t1 + Duration::from_secs(second));
            assert!(!failed.is_failed(), "{second} s is not a stall yet");
        }
        watchdog.check(t1 + Duration::from_secs(10));
        assert!(failed.is_failed());
        drop(frozen);
    }

    /// Through the PCI root, as the guest sees it: the ioregion ranges of
    /// BAR1 go to the region fds, the gaps to control-socket messages, and
    /// the counters say which path served what.
    #[test]
    fn ioregion_ranges_bypass_the_control_socket() {
        use crate::pci::root::PciRoot;
        use std::sync::atomic::Ordering;
        let dev = scratch(256);
        let (proxy, _, _) = connect_with(dev.clone(), Some(Dispatch::Userspace));
        assert_eq!(proxy.bar_fast_paths(1).len(), 2);
        assert!(proxy.bar_fast_paths(0).is_empty());
        let stats = proxy.stats();
        let buses = Arc::new(crate::bus::Buses::default());
        let mut root = PciRoot::new(buses.clone());
        root.add(Arc::new(Mutex::new(proxy)), 1).unwrap();
        root.assign_resources().unwrap();
        let base = dev.lock().unwrap().config.bar_addr(1).unwrap();
        assert!(buses.mmio.write(base + 0x10, &0x1234_5678u32.to_le_bytes()));
        assert!(buses.mmio.write(base + 0x210, &[0xaa, 0xbb]));
        assert!(buses.mmio.write(base + 0x150, &[0x42]));
        let mut word = [0u8; 4];
        assert!(buses.mmio.read(base + 0x10, &mut word));
        assert_eq!(u32::from_le_bytes(word), 0x1234_5678);
        let mut half = [0u8; 2];
        assert!(
            buses.mmio.read(base + 0x210, &mut half),
            "after the posted write"
        );
        assert_eq!(half, [0xaa, 0xbb]);
        let mut byte = [0u8; 1];
        assert!(buses.mmio.read(base + 0x150, &mut byte));
        assert_eq!(byte, [0x42]);
        assert_eq!(
            &dev.lock().unwrap().regs[0x10..0x14],
            &0x1234_5678u32.to_le_bytes()
        );
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(get(&stats.ioregion_writes), 2);
        assert_eq!(get(&stats.posted_writes), 1);
        assert_eq!(get(&stats.ioregion_reads), 2);
        assert_eq!(get(&stats.message_writes), 1);
        assert_eq!(get(&stats.message_reads), 1);
        assert_eq!(get(&stats.errors), 0);
    }

    /// Through `path`, writes three values to the byte register at 0x14,
    /// which the remote mirrors, and reads each back: every read is
    /// answered in the VMM, from the page the remote updated before it
    /// answered the write.
    pub(crate) fn assert_mirrored_byte_reads_stay_in_the_vmm(
        path: &dyn crate::bus::SharedBusDevice,
        stats: &DeviceStats,
    ) {
        use std::sync::atomic::Ordering;
        for value in [0x04u8, 0x0c, 0] {
            path.write(0x14, &[value]);
            let mut byte = [0xffu8];
            path.read(0x14, &mut byte);
            assert_eq!(byte, [value]);
        }
        assert_eq!(stats.mirror_reads.load(Ordering::Relaxed), 3);
        assert_eq!(stats.ioregion_reads.load(Ordering::Relaxed), 0);
    }

    /// A scratch device mirroring its byte at BAR1 + `at`, and its proxy
    /// on the userspace path.
    fn mirrored(at: u64) -> (Arc<Mutex<Scratch>>, ProxyDevice) {
        mirrored_ringing(at, DoorbellMode::Adaptive)
    }

    fn mirrored_ringing(at: u64, doorbells: DoorbellMode) -> (Arc<Mutex<Scratch>>, ProxyDevice) {
        let dev = scratch(256);
        dev.lock().unwrap().mirror =
            Some((crate::device_model::RegisterMirror::new().unwrap(), at));
        let (proxy, _, _) =
            try_connect_ringing(dev.clone(), Some(Dispatch::Userspace), doorbells).unwrap();
        (dev, proxy)
    }

    /// A write with an opaque bit of the mirrored register in the posted
    /// range is a doorbell: waited for with `doorbells=waited`, so the
    /// device has applied it when the write returns; posted with
    /// `doorbells=posted`; with `adaptive`, waited for once posted
    /// doorbells keep finding the one before applied.
    #[test]
    fn doorbells_are_waited_for_as_the_policy_says() {
        use crate::bus::SharedBusDevice;
        use crate::mirror::doorbell::ENTER_AFTER;
        use std::sync::atomic::Ordering;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let (dev, proxy) = mirrored_ringing(0x210, DoorbellMode::Waited);
        let stats = proxy.stats();
        let posted = proxy.fast_paths[&1][1].clone();
        posted.write(0x10, &[0xda]);
        assert_eq!(dev.lock().unwrap().regs[0x210], 0xda, "applied on return");
        posted.write(0x11, &[0x80]);
        posted.write(0x10, &[0x5a]);
        assert_eq!(get(&stats.waited_doorbells), 1);
        assert_eq!(get(&stats.posted_writes), 2, "only the doorbell waited");

        let (_dev, proxy) = mirrored_ringing(0x210, DoorbellMode::Posted);
        let stats = proxy.stats();
        proxy.fast_paths[&1][1].write(0x10, &[0xda]);
        assert_eq!(
            (get(&stats.waited_doorbells), get(&stats.posted_writes)),
            (0, 1)
        );

        let (dev, proxy) = mirrored_ringing(0x210, DoorbellMode::Adaptive);
        let stats = proxy.stats();
        let posted = proxy.fast_paths[&1][1].clone();
        let mut byte = [0u8];
        for i in 0..ENTER_AFTER as u8 {
            posted.write(0x10, &[0x80 | i]);
            // The read waits for the remote until the doorbell is applied.
            posted.read(0x10, &mut byte);
            assert_eq!(byte, [0x80 | i]);
        }
        assert_eq!(get(&stats.waited_doorbells), 0);
        posted.write(0x10, &[0xff]);
        assert_eq!(
            get(&stats.waited_doorbells),
            1,
            "the guest rings once per answer"
        );
        assert_eq!(dev.lock().unwrap().regs[0x210], 0xff);
    }

    #[test]
    fn mirrored_register_reads_stay_in_the_vmm() {
        use crate::bus::SharedBusDevice;
        use std::sync::atomic::Ordering;
        let (_dev, proxy) = mirrored(0x14);
        let stats = proxy.stats();
        let waited = proxy.fast_paths[&1][0].clone();
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        assert_mirrored_byte_reads_stay_in_the_vmm(&*waited, &stats);
        // Other registers and other sizes still ask the remote.
        let mut word = [0u8; 2];
        waited.read(0x14, &mut word);
        waited.read(0x15, &mut word[..1]);
        assert_eq!(get(&stats.ioregion_reads), 2);
    }

    /// A remote that claims a mirror for a register outside its ranges
    /// is refused at connect.
    #[test]
    fn a_mirror_outside_the_ranges_is_refused() {
        let dev = scratch(256);
        dev.lock().unwrap().mirror =
            Some((crate::device_model::RegisterMirror::new().unwrap(), 0x150));
        let Err(e) = try_connect_with(dev, Some(Dispatch::Userspace)) else {
            panic!("a mirror at 0x150 was accepted")
        };
        assert!(e.to_string().contains("mirrored register"), "{e}");
    }

    /// A mirrored register in a range with posted writes: while a posted
    /// write of unknown effect (0xda: the scratch device declares its
    /// writes with bit 7 set opaque) is not yet applied (the device's lock
    /// held here keeps the remote from applying it), a read goes to the
    /// remote and waits behind it; once it is applied, the page answers.
    #[test]
    fn a_mirrored_read_waits_for_posted_writes_sent_before_it() {
        use crate::bus::SharedBusDevice;
        use std::sync::atomic::Ordering;
        let (dev, proxy) = mirrored(0x210);
        let stats = proxy.stats();
        let posted = proxy.fast_paths[&1][1].clone();
        assert_eq!(posted.range(), (0x200, 0x100));
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let held = dev.lock().unwrap();
        posted.write(0x10, &[0xda]);
        assert_eq!(get(&stats.posted_writes), 1);
        let reader = {
            let posted = posted.clone();
            std::thread::spawn(move || {
                let mut byte = [0u8];
                posted.read(0x10, &mut byte);
                byte[0]
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while get(&stats.mirror_behind) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(
            get(&stats.mirror_behind),
            1,
            "the page is behind: ask the remote"
        );
        assert_eq!(get(&stats.mirror_reads), 0);
        drop(held);
        assert_eq!(reader.join().unwrap(), 0xda, "the read saw the write");
        assert_eq!(get(&stats.ioregion_reads), 1);
        let mut byte = [0u8];
        posted.read(0x10, &mut byte);
        assert_eq!(byte, [0xda]);
        assert_eq!(get(&stats.mirror_reads), 1, "caught up: the page answers");
    }

    /// Behind posted writes of the register whose effect the device
    /// declared, the VMM answers from the page itself, with the writes
    /// applied, while the remote (its lock held here) has applied none.
    #[test]
    fn a_mirrored_read_behind_known_writes_of_the_register_is_answered_at_once() {
        use crate::bus::SharedBusDevice;
        use std::sync::atomic::Ordering;
        let (dev, proxy) = mirrored(0x210);
        let stats = proxy.stats();
        let posted = proxy.fast_paths[&1][1].clone();
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let held = dev.lock().unwrap();
        posted.write(0x10, &[0x5a]);
        posted.write(0x10, &[0x21]);
        let mut byte = [0u8];
        posted.read(0x10, &mut byte);
        assert_eq!(byte, [0x21], "the last write's value");
        assert_eq!(get(&stats.mirror_ahead), 1);
        assert_eq!(get(&stats.ioregion_reads), 0);
        assert_eq!(held.regs[0x210], 0, "the remote has applied neither");
        drop(held);
        // A write to another register of the range is not known: the
        // next read waits for the remote, which has applied everything.
        posted.write(0x11, &[1]);
        posted.read(0x10, &mut byte);
        assert_eq!(byte, [0x21]);
        assert_eq!(get(&stats.mirror_behind) + get(&stats.mirror_reads), 2);
        assert_eq!(dev.lock().unwrap().regs[0x210], 0x21);
    }

    #[test]
    fn a_dead_remotes_registers_read_zero_and_its_config_space_all_ones() {
        let dev = scratch(256);
        let (mut proxy, failed, server) = connect(dev);
        proxy.place_bar(1, 0xc000_0000);
        proxy.write_config(crate::pci::config::REG_COMMAND, 0, &[0x02, 0]);
        let bar = proxy.config().active_bars()[0];
        // Make the server exit: an unexpected RET is a protocol error.
        crate::sys::shutdown(std::os::fd::AsFd::as_fd(proxy.link.socket())).unwrap();
        server.join().unwrap();
        proxy.bar_read(bar.index, 0, &mut [0xaa; 4]);
        assert!(failed.is_failed());
        let mut data = [0xaa; 4];
        proxy.bar_read(bar.index, 0, &mut data);
        assert_eq!(data, [0; 4], "nothing pending, so no handler spins");
        assert_eq!(proxy.read_config(REG_ID), u32::MAX, "no device");
    }

    pub(crate) fn serve(
        dev: Arc<Mutex<Scratch>>,
    ) -> (Box<dyn RemoteLink>, std::thread::JoinHandle<()>) {
        let (a, b) = UnixStream::pair().unwrap();
        let remote: Arc<Mutex<dyn DeviceModel>> = dev;
        let server = std::thread::spawn(move || {
            let _ = server::serve(
                &mut Channel::new(b),
                remote,
                None,
                std::time::Duration::ZERO,
            );
        });
        (Box::new(Mpqemu::new(Channel::new(a), Dialect::Vmm)), server)
    }

    #[test]
    fn a_restarted_remote_gets_the_programmed_config_space_back() {
        use crate::pci::config::REG_COMMAND;
        let (mut proxy, failed, server) = connect_with(scratch(256), Some(Dispatch::Userspace));
        proxy.place_bar(0, 0x1000);
        proxy.place_bar(1, 0xc000_1000);
        proxy.write_config(REG_COMMAND, 0, &[0x07, 0]);
        proxy.write_config(3, 1, &[0x40]); // latency timer
        proxy.write_config(REG_COMMAND, 0, &[0x06, 0]);
        crate::sys::shutdown(std::os::fd::AsFd::as_fd(proxy.link.socket())).unwrap();
        server.join().unwrap();
        let bar = proxy.config().active_bars()[0];
        proxy.bar_read(bar.index, 0, &mut [0u8; 4]);
        assert!(failed.is_failed());

        let fresh = scratch(256);
        let (channel, _server) = serve(fresh.clone());
        let now = proxy.reconnect("second".into(), channel).unwrap();
        assert!(!now.is_failed(), "a new flag for the new remote");
        let remote = fresh.lock().unwrap();
        assert_eq!(remote.resets, 1);
        assert_eq!(remote.config.bar_addr(0), Some(0x1000));
        assert_eq!(remote.config.bar_addr(1), Some(0xc000_1000));
        assert_eq!(
            remote.config.read(REG_COMMAND) & 0xffff,
            0x06,
            "the last command write"
        );
        assert_eq!(remote.config.read(3) >> 8 & 0xff, 0x40);
        assert_eq!(remote.wired_at_command, None, "the interrupt comes last");
        drop(remote);
        proxy.wire_interrupt().unwrap();
        proxy.read_config(REG_ID); // a round trip: the wiring was served
        let wired = fresh.lock().unwrap().wired_at_command;
        assert_eq!(wired.map(|c| c & 0xffff), Some(0x06), "after the replay");
        assert_eq!(proxy.bar_fast_paths(1).len(), 2, "new region fds");
        let bar1 = proxy
            .config()
            .active_bars()
            .into_iter()
            .find(|b| b.index == 1)
            .unwrap();
        proxy.bar_write(bar1.index, 0x100, &[0x5a]);
        assert_eq!(fresh.lock().unwrap().regs[0x100], 0x5a);
    }

    #[test]
    fn another_device_cannot_take_over() {
        let (mut proxy, _, server) = connect(scratch(256));
        crate::sys::shutdown(std::os::fd::AsFd::as_fd(proxy.link.socket())).unwrap();
        server.join().unwrap();
        let (channel, _server) = serve(scratch(128));
        let err = proxy.reconnect("impostor".into(), channel).unwrap_err();
        assert!(matches!(err, ProxyError::NotTheSameDevice { .. }), "{err}");
    }

    #[test]
    fn impossible_bar_size_is_refused() {
        // A 3-byte I/O BAR cannot exist; sizing reads back a mask no real
        // BAR has. Build the lie by hand on the remote side.
        let dev = scratch(4);
        dev.lock()
            .unwrap()
            .config
            .set_bar(
                0,
                BarSpec {
                    kind: BarKind::Io,
                    size: 4,
                },
            )
            .unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let remote: Arc<Mutex<dyn DeviceModel>> = dev;
        std::thread::spawn(move || {
            let mut ch = Channel::new(b);
            // Answer everything like the server would, but lie about BAR0.
            let irq = Arc::new(Mutex::new(crate::device_model::InterruptLine::default()));
            let hub = Arc::default();
            while let Ok(msg) = ch.recv() {
                let lie = matches!(msg, Message::PciCfgRead { addr: 0x10, .. });
                let reply = server::handle(&remote, &irq, &hub, msg).unwrap();
                if let Some(reply) = reply {
                    let reply = if lie {
                        Message::Ret(Some(0xffff_fff5))
                    } else {
                        reply
                    };
                    if ch.send(&reply).is_err() {
                        break;
                    }
                }
            }
        });
        let ram = GuestRam::new(64 << 20).unwrap();
        let err = ProxyDevice::connect(
            "liar".into(),
            Box::new(Mpqemu::new(Channel::new(a), Dialect::Qemu)),
            &ram,
            &no_kvm,
            16,
            FailFlag::default(),
            &ProxyOptions {
                ioregion: None,
                vcpus: 1,
                watchdog: None,
                register_mirror: true,
                doorbells: crate::mirror::doorbell::DoorbellMode::Adaptive,
                reply_poll: std::time::Duration::ZERO,
            },
        )
        .err()
        .unwrap();
        assert!(matches!(err, ProxyError::BadBar { bar: 0, .. }), "{err}");
    }
}
