//! Plugging each `--remote-dev` into the machine: opening the remote,
//! connecting its proxy, giving it a PCI slot and an IOAPIC input, and
//! watching it.

use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::ioregion::Probe;
use crate::pci::root::{self as pci_root, PciRoot};
use crate::proxy::connect::ProxyOptions;
use crate::proxy::cut_off::FailFlag;
use crate::proxy::device::ProxyDevice;
use crate::proxy::ioregion_setup::Dispatch;
use crate::proxy::remote::{self, SharedChild};
use crate::proxy::spec::IoRegionMode;
use crate::proxy::spec::RemoteDevSpec;
use crate::proxy::supervisor::{self, RemoteWatcher, Restart};
use crate::proxy::watchdog::StallWatchdog;
use crate::{layout, memory};

use super::{VmmError, dump, io_err, mptable};

/// A remote device plugged into the PCI bus.
pub(super) struct PluggedRemote {
    pub(super) name: String,
    pub(super) stats: Arc<crate::proxy::stats::DeviceStats>,
    pub(super) irq: mptable::PciIrq,
    pub(super) child: SharedChild,
    /// Ours: it logs a state dump on SIGUSR2 (another program might die of it).
    pub(super) dumps: bool,
    pub(super) watcher: Arc<Mutex<RemoteWatcher>>,
}

/// Asks each remote of ours that we spawned for its state dump; they log
/// it on the same stderr.
pub(super) fn forward_dump(remotes: &[PluggedRemote]) -> impl Fn() + Send + use<> {
    let children: Vec<(String, SharedChild)> = remotes
        .iter()
        .filter(|r| r.dumps)
        .map(|r| (r.name.clone(), r.child.clone()))
        .collect();
    move || {
        for (name, child) in &children {
            let mut child = child.lock().expect("child lock");
            let Some(child) = child.as_mut() else {
                continue;
            };
            // Only while not reaped: a reaped pid may belong to anyone.
            if !matches!(child.try_wait(), Ok(None)) {
                continue;
            }
            // Our own unreaped child: the lock keeps it from being reaped
            // (and its pid reused) meanwhile.
            if let Err(e) = crate::sys::kill(child.id(), dump::DUMP_SIGNAL) {
                log::warn!("state dump: cannot signal remote {name}: {e}");
            }
        }
    }
}

/// Resolves each device's `ioregionfd=` against what KVM offers, probing
/// KVM_SET_IOREGION once by trying it: the capability numbers its patches
/// used now mean other things, so KVM_CHECK_EXTENSION cannot tell.
fn ioregion_dispatch(
    vm: &Arc<VmFd>,
    specs: &[RemoteDevSpec],
) -> Result<Vec<Option<Dispatch>>, VmmError> {
    let wants =
        |s: &RemoteDevSpec| matches!(s.ioregionfd, IoRegionMode::Auto | IoRegionMode::Kernel);
    let probe = if specs.iter().any(wants) {
        // The top page of the PCI window: BARs are placed from the bottom.
        let scratch = layout::PCI_MMIO_START + layout::PCI_MMIO_SIZE - 0x1000;
        let probe = crate::ioregion::probe(vm.as_ref(), scratch);
        match probe {
            Probe::Available => log::info!("KVM_SET_IOREGION works: KVM serves ioregions itself"),
            Probe::Unavailable { errno } => log::info!(
                "KVM has no KVM_SET_IOREGION ({}; no mainline kernel does): ioregions are \
                 served from vCPU threads (userspace path)",
                std::io::Error::from_raw_os_error(errno)
            ),
        }
        Some(probe)
    } else {
        None
    };
    let counts_posted_writes = probe == Some(Probe::Available) && {
        let scratch = layout::PCI_MMIO_START + layout::PCI_MMIO_SIZE - 0x1000;
        let counts = crate::ioregion::kernel::counts_posted_writes(vm.as_ref(), scratch);
        if counts {
            log::info!(
                "KVM counts the posted writes it sends: mirrored registers are read from the \
                 page, not through KVM"
            );
        } else {
            log::info!(
                "KVM does not count the posted writes it sends: every register read goes to \
                 the remote through KVM (no register mirror on the kernel path)"
            );
        }
        counts
    };
    specs
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            Ok(match (spec.ioregionfd, &probe) {
                (IoRegionMode::Off, _) => None,
                (IoRegionMode::Userspace, _) => Some(Dispatch::Userspace),
                (_, Some(Probe::Available)) => Some(Dispatch::Kernel {
                    vm: vm.clone(),
                    counts_posted_writes,
                }),
                (IoRegionMode::Kernel, Some(Probe::Unavailable { errno })) => {
                    return Err(VmmError::NoKernelIoRegion {
                        index,
                        source: std::io::Error::from_raw_os_error(*errno),
                    });
                }
                _ => Some(Dispatch::Userspace),
            })
        })
        .collect()
}

/// The CPUs of the process at the far end of a remote's socket, which
/// `reply-poll=auto` needs for a remote reached by `socket=` as it needs a
/// spawned remote's: polling for an answer that must come from the vCPU's
/// own one CPU only delays it. None when the kernel does not say (a peer
/// in another pid namespace).
fn peer_cpus(socket: &std::fs::File, name: &str) -> Option<crate::sys::cpus::CpuList> {
    use std::os::fd::AsFd;
    let cpus =
        crate::sys::threads::peer_pid(socket.as_fd()).and_then(crate::sys::cpus::process_cpus);
    match cpus {
        Ok(cpus) => {
            log::debug!("remote {name}: the process on its socket may run on CPUs {cpus}");
            Some(cpus)
        }
        Err(e) => {
            log::debug!("remote {name}: which CPUs its process may run on is not known: {e}");
            None
        }
    }
}

/// Opens each remote, connects a proxy to it and plugs it into its own
/// slot, whose INTA# gets its own IOAPIC input.
pub(super) fn add_remote_devices(
    vm: &Arc<VmFd>,
    ram: &memory::GuestRam,
    pci: &Arc<Mutex<PciRoot>>,
    specs: &[RemoteDevSpec],
    vcpus: usize,
) -> Result<Vec<PluggedRemote>, VmmError> {
    if specs.len() > pci_root::MAX_PCI_DEVICES {
        return Err(VmmError::TooManyRemotes(specs.len()));
    }
    let dispatch = ioregion_dispatch(vm, specs)?;
    let register = |irqfd: &EventFd, resamplefd: &EventFd, gsi: u32| {
        vm.register_irqfd_with_resample(irqfd, resamplefd, gsi)
    };
    let mut plugged: Vec<PluggedRemote> = Vec::new();
    if specs.is_empty() {
        return Ok(plugged);
    }
    let watchdog = StallWatchdog::start().map_err(io_err("start the stall watchdog"))?;
    let vmm_cpus = crate::sys::cpus::this_thread_cpus()
        .inspect_err(|e| log::warn!("cannot read which CPUs the VMM may run on: {e}"))
        .ok();
    for (index, spec) in specs.iter().enumerate() {
        let slot = index + 1;
        let gsi = PciRoot::slot_gsi(slot);
        let process = remote::open(spec, index, false)?;
        // A remote that stops answering is only cut off, even with
        // restart=on: killing it from the failing access so that a new one
        // takes over hung the supervisor's restart once in CI (see the
        // issue notes, commit 3e2bf93 for that code).
        let failed = FailFlag::default();
        let socket = supervisor::socket_of(&process).map_err(io_err("watch a remote's socket"))?;
        let remote::RemoteProcess { name, link, child } = process;
        let reply_poll = spec.reply_poll_window(vmm_cpus.as_ref(), || peer_cpus(&socket, &name));
        if reply_poll.is_zero() {
            log::info!(
                "remote {name}: vCPUs sleep on its answers at once (it shares their one CPU, \
                 or reply-poll=off)"
            );
        } else {
            log::info!(
                "remote {name}: vCPUs poll {reply_poll:?} for its answers before they sleep"
            );
        }
        let device = match ProxyDevice::connect(
            name.clone(),
            link,
            ram,
            &register,
            gsi,
            failed.clone(),
            &ProxyOptions {
                ioregion: dispatch[index].clone(),
                vcpus,
                watchdog: Some(watchdog.clone()),
                register_mirror: spec.register_mirror,
                doorbells: spec.doorbells,
                reply_poll,
            },
        ) {
            Ok(d) => d,
            Err(e) => {
                // A remote that failed at startup said why on stderr; its
                // exit status ties that message to this error.
                let exited = child
                    .lock()
                    .expect("child lock")
                    .as_mut()
                    .and_then(|c| remote::reap(c, std::time::Duration::from_millis(500)));
                if let Some(status) = exited {
                    log::error!("remote {name} exited during setup ({status})");
                }
                remote::stop_child(&name, &child, false);
                for p in &plugged {
                    remote::stop_child(&p.name, &p.child, false);
                }
                return Err(e.into());
            }
        };
        let stats = device.stats();
        let device = Arc::new(Mutex::new(device));
        let got = pci
            .lock()
            .expect("pci root lock")
            .add(device.clone(), slot)?;
        debug_assert_eq!(got, slot);
        let restart = spec
            .restart
            .then(|| Restart::new(spec.clone(), index, device, pci.clone(), slot));
        let watcher = RemoteWatcher::new(name.clone(), socket, child.clone(), failed, restart);
        plugged.push(PluggedRemote {
            name,
            stats,
            irq: mptable::PciIrq {
                slot: slot as u8,
                pin: 1,
                ioapic_pin: gsi,
            },
            child,
            dumps: spec.ours(),
            watcher: Arc::new(Mutex::new(watcher)),
        });
    }
    Ok(plugged)
}
