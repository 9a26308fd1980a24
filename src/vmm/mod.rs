//! The virtual machine: KVM setup, guest RAM registration, boot, the
//! legacy devices, the remote devices (`remotes.rs`), vCPUs and the main
//! event loop.

pub mod boot;
pub mod console;
pub mod cpuid;
pub mod dump;
pub mod host;
pub mod kick;
pub mod mptable;
pub mod regs;
mod remotes;
use remotes::{add_remote_devices, forward_dump};
pub mod signals;
pub mod stop;
pub mod vcpu;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::bus::Buses;
use crate::devices::{i8042, rtc, serial};
use crate::pci::host_bridge::HostBridge;
use crate::pci::root::{self as pci_root, PciConfigIo, PciRoot};
use crate::proxy::remote::{self};
use crate::proxy::spec::RemoteDevSpec;
use crate::{layout, memory};
use kick::VcpuThreads;
use stop::{StopReason, StopSignal};

/// How long the vCPUs get to leave KVM_RUN after their kick before the
/// remotes are stopped, so that no access of theirs finds a remote gone.
const VCPU_KICK_WAIT: Duration = Duration::from_secs(1);
/// How long a vCPU still in an access once the remotes are gone (which
/// fails any access to them at once) gets to return.
const VCPU_EXIT_WAIT: Duration = Duration::from_secs(5);

/// Everything needed to build and boot a VM, independent of the CLI.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub mem_size: u64,
    pub cpus: u8,
    pub remote_devs: Vec<RemoteDevSpec>,
    /// Print device access counters at exit.
    pub stats: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Host(#[from] host::HostError),
    #[error("KVM refused to {what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{cpus} vCPUs requested but KVM allows at most {max}")]
    TooManyCpus { cpus: u8, max: usize },
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Pci(#[from] pci_root::PciError),
    #[error(transparent)]
    Remote(#[from] remote::RemoteError),
    #[error(transparent)]
    Proxy(#[from] crate::proxy::connect::ProxyError),
    #[error(
        "remote #{index} asks for ioregionfd=kernel, but this kernel has no KVM_SET_IOREGION \
         ({source}); no mainline kernel does. Use ioregionfd=auto or ioregionfd=userspace"
    )]
    NoKernelIoRegion {
        index: usize,
        source: std::io::Error,
    },
    #[error("{0} remote devices requested; at most {max} fit", max = pci_root::MAX_PCI_DEVICES)]
    TooManyRemotes(usize),
    #[error("cannot place a device on the bus: {0}")]
    Bus(#[from] crate::bus::BusError),
    #[error("cannot {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("event loop failed: {0:?}")]
    EventLoop(event_manager::Error),
    #[error(transparent)]
    Kick(#[from] kick::KickError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Wakes the event loop when any thread requests a stop.
struct StopWatcher(Arc<StopSignal>);

impl MutEventSubscriber for StopWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.event().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.event(), EventSet::IN)) {
            log::error!("cannot watch the stop event: {e}");
        }
    }
}

fn create_vm(kvm: &Kvm) -> Result<VmFd, VmmError> {
    let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(kvm_err("set the TSS address"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("create the in-kernel irqchip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(kvm_err("create the in-kernel PIT"))?;
    Ok(vm)
}

fn register_memory(vm: &VmFd, ram: &memory::GuestRam) -> Result<(), VmmError> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for (slot, region) in ram.memory.iter().enumerate() {
        let mapping = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: `run` unmaps `ram` only after every vCPU thread has
        // returned and these slots are deleted (`release_ram`).
        unsafe { vm.set_user_memory_region(mapping) }.map_err(kvm_err("map guest RAM"))?;
    }
    Ok(())
}

/// Deletes the memory slots `register_memory` made.
fn unregister_memory(vm: &VmFd, ram: &memory::GuestRam) -> Result<(), VmmError> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for (slot, region) in ram.memory.iter().enumerate() {
        let mapping = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: 0,
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: a size of 0 deletes the slot; KVM holds no reference to
        // the mapping afterwards.
        unsafe { vm.set_user_memory_region(mapping) }.map_err(kvm_err("drop a guest RAM slot"))?;
    }
    Ok(())
}

/// Unmaps guest RAM once no vCPU can enter the guest again: every vCPU
/// thread has returned (taking its vCPU fd with it) and KVM has dropped
/// the slots. Otherwise the mapping stays until the process exits: a vCPU
/// still in KVM_RUN would write guest stores into whatever the kernel
/// mapped at those addresses next.
fn release_ram(vm: &VmFd, ram: memory::GuestRam, threads: &VcpuThreads) {
    let running = threads.names();
    if !running.is_empty() {
        log::warn!(
            "{} did not stop; guest RAM stays mapped until the process exits",
            running.join(", ")
        );
        std::mem::forget(ram);
        return;
    }
    if let Err(e) = unregister_memory(vm, &ram) {
        log::warn!("{e}; guest RAM stays mapped until the process exits");
        std::mem::forget(ram);
        return;
    }
    drop(ram);
}

/// Builds the legacy devices and puts them on the port bus.
fn add_legacy_devices(
    vm: &VmFd,
    buses: &Buses,
    stop: &Arc<StopSignal>,
) -> Result<Arc<Mutex<serial::SerialDevice>>, VmmError> {
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("create the serial irqfd"))?;
    vm.register_irqfd(&serial_irq, layout::SERIAL_IRQ)
        .map_err(kvm_err("register the serial irqfd"))?;
    let serial = Arc::new(Mutex::new(serial::SerialDevice::new(
        serial_irq,
        Box::new(std::io::stdout()),
    )));
    buses
        .pio
        .insert(serial.clone(), serial::COM1_BASE, serial::COM1_LEN)?;
    buses.pio.insert(
        Arc::new(Mutex::new(i8042::I8042::new({
            let stop = stop.clone();
            move || stop.request(StopReason::GuestReset)
        }))),
        i8042::I8042_BASE,
        i8042::I8042_LEN,
    )?;
    buses.pio.insert(
        Arc::new(Mutex::new(rtc::Rtc::new())),
        rtc::RTC_BASE,
        rtc::RTC_LEN,
    )?;
    Ok(serial)
}

fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    ram: &memory::GuestRam,
    cpus: u8,
    entry: u64,
) -> Result<Vec<kvm_ioctls::VcpuFd>, VmmError> {
    let max = kvm.get_max_vcpus();
    if usize::from(cpus) > max {
        return Err(VmmError::TooManyCpus { cpus, max });
    }
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("report supported CPUID"))?;
    let tsc_deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
    let mut vcpus = Vec::with_capacity(usize::from(cpus));
    for id in 0..cpus {
        let vcpu = vm
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("create a vCPU"))?;
        let mut cpuid = supported.clone();
        cpuid::customize(cpuid.as_mut_slice(), id, cpus, tsc_deadline);
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
        regs::setup_msrs(&vcpu)?;
        regs::setup_fpu(&vcpu)?;
        regs::setup_lapic(&vcpu)?;
        if id == 0 {
            regs::setup_sregs(&ram.memory, &vcpu)?;
            regs::setup_regs(&vcpu, entry)?;
        }
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

/// Boots the VM described by `config` and runs it until it stops.
pub fn run(config: &VmConfig) -> Result<StopReason, VmmError> {
    signals::block_stop_signals().map_err(io_err("block termination signals"))?;
    // Files and sizes are checked before KVM is touched, so a typo in a path
    // gets the same clear error on any host.
    let ram = memory::GuestRam::new(config.mem_size)?;
    let ranges: Vec<(u64, u64)> = ram.regions.iter().map(|r| (r.guest_addr, r.size)).collect();
    let cmdline = boot::build_cmdline(config.cmdline.as_deref())?;
    let boot_info = boot::load_linux(
        &ram.memory,
        &ranges,
        &config.kernel,
        config.initrd.as_deref(),
        &cmdline,
    )?;
    log::info!(
        "booting {} with {} MiB and {} vCPU(s): {}",
        config.kernel.display(),
        config.mem_size >> 20,
        config.cpus,
        cmdline
            .as_cstring()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    );

    let kvm = host::open_kvm()?;
    host::warn_if_pvm();
    let vm = Arc::new(create_vm(&kvm)?);
    register_memory(&vm, &ram)?;

    let buses = Arc::new(Buses::default());
    let pci = Arc::new(Mutex::new(PciRoot::new(buses.clone())));
    pci.lock()
        .expect("pci root lock")
        .add(Arc::new(Mutex::new(HostBridge::new())), 0)?;
    let remotes = add_remote_devices(
        &vm,
        &ram,
        &pci,
        &config.remote_devs,
        usize::from(config.cpus),
    )?;
    let stats: Vec<(String, Arc<crate::proxy::stats::DeviceStats>)> = remotes
        .iter()
        .map(|r| (r.name.clone(), r.stats.clone()))
        .collect();
    let print_stats = {
        let stats = stats.clone();
        move || {
            for (name, s) in &stats {
                eprintln!("vmm: {}", s.line(name));
                if let Some(polls) = s.poll_line(name) {
                    eprintln!("vmm: {polls}");
                }
            }
        }
    };
    let pci_irqs: Vec<mptable::PciIrq> = remotes.iter().map(|r| r.irq).collect();
    pci.lock().expect("pci root lock").assign_resources()?;
    buses.pio.insert(
        Arc::new(Mutex::new(PciConfigIo::new(pci.clone()))),
        pci_root::CONFIG_PORT_BASE,
        pci_root::CONFIG_PORT_LEN,
    )?;
    mptable::setup(&ram.memory, config.cpus, &pci_irqs)?;

    let stop = Arc::new(StopSignal::new().map_err(io_err("create the stop event"))?);
    let serial = add_legacy_devices(&vm, &buses, &stop)?;
    let vcpus = create_vcpus(&kvm, &vm, &ram, config.cpus, boot_info.entry.0)?;

    let raw_mode = crate::terminal::RawModeGuard::new(libc::STDIN_FILENO)
        .map_err(io_err("put the terminal in raw mode"))?;
    let dump = StateDump {
        vm: vm.clone(),
        slots: (0..config.cpus).map(|_| Arc::default()).collect(),
        wanted: Arc::new(AtomicBool::new(false)),
        forward: Box::new(forward_dump(&remotes)),
    };
    let mut events: EventManager<Subscriber> = EventManager::new().map_err(VmmError::EventLoop)?;
    events.add_subscriber(Arc::new(Mutex::new(StopWatcher(stop.clone()))));
    let want_dump = {
        let wanted = dump.wanted.clone();
        // The loop takes the dump after the handler returns: it needs the
        // vCPU threads to kick them.
        move || wanted.store(true, Ordering::SeqCst)
    };
    events.add_subscriber(Arc::new(Mutex::new(
        signals::SignalHandler::new(
            stop.clone(),
            Box::new(print_stats.clone()),
            Box::new(want_dump),
        )
        .map_err(io_err("create a signalfd"))?,
    )));
    events.add_subscriber(Arc::new(Mutex::new(console::StdinConsole::new(
        serial.clone(),
        stop.clone(),
        raw_mode.is_some(),
    ))));

    for r in &remotes {
        events.add_subscriber(r.watcher.clone() as Subscriber);
    }

    let mut threads = VcpuThreads::new()?;
    let outcome = run_vcpus(
        &mut threads,
        vcpus,
        &buses,
        &stop,
        &serial,
        &mut events,
        &dump,
    );
    drop(raw_mode);
    if config.stats && outcome.is_ok() {
        print_stats();
    }
    // Whatever ended the run, no vCPU may outlive guest RAM's mapping.
    threads.kick_all();
    threads.join(VCPU_KICK_WAIT);
    for r in &remotes {
        r.watcher.lock().expect("watcher lock").hang_up();
    }
    for r in &remotes {
        remote::stop_child(&r.name, &r.child, true);
    }
    threads.join(VCPU_EXIT_WAIT);
    release_ram(&vm, ram, &threads);
    outcome
}

/// What a state dump needs, and the flag SIGUSR2 raises.
struct StateDump {
    vm: Arc<VmFd>,
    slots: Vec<Arc<dump::VcpuDumpSlot>>,
    wanted: Arc<AtomicBool>,
    forward: Box<dyn Fn()>,
}

impl StateDump {
    fn log(&self, why: &str, threads: &VcpuThreads) {
        dump::log_dump(
            why,
            &self.vm,
            &self.slots,
            |i| {
                threads.kick(&format!("vcpu{i}"));
            },
            &*self.forward,
        );
    }
}

/// Starts the vCPUs and runs the event loop until a stop is requested.
fn run_vcpus(
    threads: &mut VcpuThreads,
    vcpus: Vec<kvm_ioctls::VcpuFd>,
    buses: &Arc<Buses>,
    stop: &Arc<StopSignal>,
    serial: &Arc<Mutex<serial::SerialDevice>>,
    events: &mut EventManager<Subscriber>,
    dump: &StateDump,
) -> Result<StopReason, VmmError> {
    for (id, vcpu) in vcpus.into_iter().enumerate() {
        vcpu::spawn(
            threads,
            id as u8,
            vcpu,
            buses.clone(),
            stop.clone(),
            dump.slots[id].clone(),
        )?;
    }
    loop {
        // Poll briefly while console input waits for the guest to take it.
        let timeout = if serial.lock().expect("serial lock").has_pending_input() {
            10
        } else {
            -1
        };
        events
            .run_with_timeout(timeout)
            .map_err(VmmError::EventLoop)?;
        if let Some(reason) = stop.reason() {
            // While the other vCPUs still run and the remotes are up: the
            // evidence of a crash, before the exit tears it down.
            if let StopReason::VcpuFault(_) = &reason {
                dump.log("a vCPU faulted; the VMM exits after this dump", threads);
            }
            return Ok(reason);
        }
        if dump.wanted.swap(false, Ordering::SeqCst) {
            dump.log("SIGUSR2; the VM keeps running", threads);
        }
        serial.lock().expect("serial lock").flush_input();
    }
}
