//! vCPU threads and what they do with each KVM exit.

use std::sync::Arc;

use kvm_ioctls::{VcpuExit, VcpuFd};

use super::dump::{self, AccessRing, VcpuDumpSlot};
use super::kick::{self, KickError, VcpuThreads};
use super::stop::{StopReason, StopSignal};
use crate::bus::Buses;

/// KVM_SYSTEM_EVENT types.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;

/// What the vCPU loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum VcpuAction {
    Continue,
    Stop(StopReason),
    /// The vCPU cannot go on; the caller adds register state to `what`.
    Fault(String),
}

/// What a vCPU thread keeps for state dumps: the slot it answers in, and
/// its own access ring (no lock: only this thread touches it).
#[derive(Default)]
pub struct DumpState {
    pub slot: Arc<VcpuDumpSlot>,
    pub ring: AccessRing,
    /// When the exit being handled left KVM_RUN.
    pub exit_ns: u64,
}

/// The message for a triple fault. On AMD the registers KVM reports after
/// it are useless for finding the crash, which has misled readers before.
/// (Elsewhere they can be real: a PVM host reports the faulting rip.)
pub const TRIPLE_FAULT: &str = "triple fault (KVM_EXIT_SHUTDOWN); on AMD hosts the registers \
     that follow are the post-reset state KVM reports after a shutdown intercept (KVM \
     reinitialises the VMCB), so they do not show where the guest died";

/// Handles one exit. A free function over plain data so tests can feed it
/// synthetic exits without KVM.
pub fn handle_exit(exit: VcpuExit, buses: &Buses, dump: &mut DumpState) -> VcpuAction {
    match exit {
        VcpuExit::IoIn(port, data) => {
            let port = u64::from(port);
            dump.slot.accessing(true, port);
            if !buses.pio.read(port, data) {
                log::trace!("unhandled port read {port:#x} ({} bytes)", data.len());
            }
            dump.ring.record(dump.exit_ns, true, false, port, data);
            VcpuAction::Continue
        }
        VcpuExit::IoOut(port, data) => {
            let port = u64::from(port);
            dump.slot.accessing(true, port);
            if !buses.pio.write(port, data) {
                log::trace!("unhandled port write {port:#x} = {data:x?}");
            }
            dump.ring.record(dump.exit_ns, true, true, port, data);
            VcpuAction::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            dump.slot.accessing(false, addr);
            if !buses.mmio.read(addr, data) {
                log::debug!("unhandled MMIO read {addr:#x} ({} bytes)", data.len());
            }
            dump.ring.record(dump.exit_ns, false, false, addr, data);
            VcpuAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            dump.slot.accessing(false, addr);
            if !buses.mmio.write(addr, data) {
                log::debug!("unhandled MMIO write {addr:#x} = {data:x?}");
            }
            dump.ring.record(dump.exit_ns, false, true, addr, data);
            VcpuAction::Continue
        }
        VcpuExit::SystemEvent(SYSTEM_EVENT_RESET, _) => VcpuAction::Stop(StopReason::GuestReset),
        VcpuExit::SystemEvent(SYSTEM_EVENT_SHUTDOWN, _) => {
            VcpuAction::Stop(StopReason::GuestShutdown)
        }
        VcpuExit::SystemEvent(SYSTEM_EVENT_CRASH, _) => {
            VcpuAction::Fault("guest crashed (KVM system event)".into())
        }
        VcpuExit::SystemEvent(kind, data) => {
            log::warn!("ignoring KVM system event {kind} {data:x?}");
            VcpuAction::Continue
        }
        VcpuExit::Shutdown => VcpuAction::Fault(TRIPLE_FAULT.into()),
        VcpuExit::FailEntry(reason, cpu) => VcpuAction::Fault(format!(
            "KVM entry failure (hardware reason {reason:#x} on cpu {cpu})"
        )),
        VcpuExit::InternalError => VcpuAction::Fault("KVM internal error".into()),
        // With the in-kernel irqchip KVM handles HLT itself; an exit here
        // is only a hint, and an interrupt will wake the vCPU again.
        VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen | VcpuExit::IoapicEoi(_) => {
            VcpuAction::Continue
        }
        other => VcpuAction::Fault(format!("unexpected KVM exit {other:?}")),
    }
}

/// One line of registers for a fault report.
fn describe_state(vcpu: &VcpuFd) -> String {
    let regs = match vcpu.get_regs() {
        Ok(r) => r,
        Err(e) => return format!("registers unavailable: {e}"),
    };
    let sregs = vcpu.get_sregs().ok();
    let mut line = format!(
        "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x}",
        regs.rip, regs.rsp, regs.rflags, regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi
    );
    if let Some(s) = sregs {
        line.push_str(&format!(
            " cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}",
            s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector
        ));
    }
    line
}

/// This vCPU's part of a state dump; only its own thread may ask KVM.
fn vcpu_report(vcpu: &VcpuFd, ring: &AccessRing) -> Vec<String> {
    let mut lines = match vcpu.get_regs() {
        Ok(regs) => dump::format_regs(&regs, vcpu.get_sregs().ok().as_ref()),
        Err(e) => vec![format!("regs: unavailable: {e}")],
    };
    lines.push(match vcpu.get_vcpu_events() {
        Ok(events) => dump::format_events(&events),
        Err(e) => format!("events: unavailable: {e}"),
    });
    lines.push(match vcpu.get_lapic() {
        Ok(lapic) => dump::format_lapic(&lapic.regs.map(|b| b as u8)),
        Err(e) => format!("lapic: unavailable: {e}"),
    });
    lines.extend(ring.lines(dump::now_ns()));
    lines
}

/// KVM's sub-error code for an internal error, read from the shared run page.
fn internal_error_detail(vcpu: &mut VcpuFd) -> String {
    let run = vcpu.get_kvm_run();
    // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, so `internal` is
    // the union member KVM filled in.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    format!("suberror {}", internal.suberror)
}

/// Runs vCPU `id` until the VM stops, as one of `threads`, which stops it.
pub fn spawn(
    threads: &mut VcpuThreads,
    id: u8,
    mut vcpu: VcpuFd,
    buses: Arc<Buses>,
    stop: Arc<StopSignal>,
    slot: Arc<VcpuDumpSlot>,
) -> Result<(), KickError> {
    threads.spawn(format!("vcpu{id}"), move |stopping, run_mask| {
        let mut dump = DumpState {
            slot,
            ..Default::default()
        };
        run_vcpu(
            id, &mut vcpu, &buses, &stop, &stopping, &run_mask, &mut dump,
        );
        dump.slot.exited();
    })
}

fn run_vcpu(
    id: u8,
    vcpu: &mut VcpuFd,
    buses: &Buses,
    stop: &StopSignal,
    stopping: &kick::StopFlag,
    run_mask: &kick::RunMask,
    dump: &mut DumpState,
) {
    crate::bus::set_current_vcpu(usize::from(id));
    if let Err(e) = kick::set_kvm_signal_mask(vcpu, run_mask) {
        // Without it a kick could not end KVM_RUN, and the exit could
        // not wait for this vCPU before unmapping guest RAM.
        stop.request(StopReason::VcpuFault(format!(
            "vCPU {id}: KVM_SET_SIGNAL_MASK failed: {e}"
        )));
        return;
    }
    loop {
        dump.slot.entering_run();
        let result = vcpu.run();
        dump.exit_ns = dump.slot.left_run();
        let action = match result {
            Ok(exit) => {
                let internal = matches!(exit, VcpuExit::InternalError);
                match handle_exit(exit, buses, dump) {
                    VcpuAction::Fault(what) if internal => {
                        let detail = internal_error_detail(vcpu);
                        VcpuAction::Fault(format!("{what} ({detail})"))
                    }
                    action => action,
                }
            }
            Err(e) if e.errno() == libc::EINTR => {
                if stopping.is_set() {
                    return;
                }
                kick::discard_kicks();
                // The flag goes up before the kick: if the one just
                // discarded was ours, the flag shows it now.
                if stopping.is_set() {
                    return;
                }
                VcpuAction::Continue
            }
            Err(e) if e.errno() == libc::EAGAIN => VcpuAction::Continue,
            Err(e) => VcpuAction::Fault(format!("KVM_RUN failed: {e}")),
        };
        match action {
            VcpuAction::Continue => {
                if dump.slot.take_request() {
                    dump.slot.answer(vcpu_report(vcpu, &dump.ring));
                }
            }
            VcpuAction::Stop(reason) => {
                stop.request(reason);
                return;
            }
            VcpuAction::Fault(what) => {
                let state = describe_state(vcpu);
                // The dump the main loop logs before exiting shows it,
                // as this thread's last report.
                let mut report = vcpu_report(vcpu, &dump.ring);
                if what == TRIPLE_FAULT {
                    report.insert(
                        0,
                        "after a triple fault: on AMD hosts the registers are KVM's \
                         post-reset state, not where the guest died"
                            .into(),
                    );
                }
                dump.slot.answer(report);
                dump.slot.exited();
                stop.request(StopReason::VcpuFault(format!("vCPU {id}: {what}: {state}")));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use std::sync::Mutex;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(self.0);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    fn buses() -> Buses {
        let buses = Buses::default();
        buses
            .pio
            .insert(Arc::new(Mutex::new(Echo(0x11))), 0x80, 1)
            .unwrap();
        buses
            .mmio
            .insert(Arc::new(Mutex::new(Echo(0x22))), 0xd000_0000, 0x1000)
            .unwrap();
        buses
    }

    #[test]
    fn port_io_reaches_the_pio_bus() {
        let buses = buses();
        assert_eq!(
            handle_exit(
                VcpuExit::IoOut(0x80, &[0x42]),
                &buses,
                &mut DumpState::default()
            ),
            VcpuAction::Continue
        );
        let mut data = [0u8; 1];
        assert_eq!(
            handle_exit(
                VcpuExit::IoIn(0x80, &mut data),
                &buses,
                &mut DumpState::default()
            ),
            VcpuAction::Continue
        );
        assert_eq!(data, [0x42]);
    }

    #[test]
    fn mmio_reaches_the_mmio_bus_and_unmapped_reads_are_ones() {
        let buses = buses();
        let mut data = [0u8; 4];
        handle_exit(
            VcpuExit::MmioRead(0xd000_0010, &mut data),
            &buses,
            &mut DumpState::default(),
        );
        assert_eq!(data, [0x22; 4]);
        handle_exit(
            VcpuExit::MmioRead(0xe000_0000, &mut data),
            &buses,
            &mut DumpState::default(),
        );
        assert_eq!(data, [0xff; 4]);
        let mut port = [0u8; 2];
        handle_exit(
            VcpuExit::IoIn(0x1234, &mut port),
            &buses,
            &mut DumpState::default(),
        );
        assert_eq!(port, [0xff; 2]);
    }

    #[test]
    fn device_accesses_are_recorded_with_the_value_read_or_written() {
        let buses = buses();
        let mut dump = DumpState::default();
        handle_exit(
            VcpuExit::MmioWrite(0xd000_0004, &[1, 2, 3, 4]),
            &buses,
            &mut dump,
        );
        let mut data = [0u8; 2];
        handle_exit(
            VcpuExit::MmioRead(0xd000_0008, &mut data),
            &buses,
            &mut dump,
        );
        handle_exit(VcpuExit::IoOut(0x3f8, b"A"), &buses, &mut dump);
        let got = dump.ring.accesses();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].addr, got[0].value, got[0].write),
            (0xd000_0004, 0x0403_0201, true)
        );
        assert_eq!(
            (got[1].addr, got[1].value, got[1].size),
            (0xd000_0008, 0x0101, 2)
        );
        assert!(!got[1].write && !got[1].pio);
    }

    #[test]
    fn guest_power_events_stop_the_vm() {
        let buses = buses();
        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(SYSTEM_EVENT_RESET, &[]),
                &buses,
                &mut DumpState::default()
            ),
            VcpuAction::Stop(StopReason::GuestReset)
        );
        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(SYSTEM_EVENT_SHUTDOWN, &[]),
                &buses,
                &mut DumpState::default()
            ),
            VcpuAction::Stop(StopReason::GuestShutdown)
        );
    }

    /// A real vCPU blocked in KVM_RUN: an application processor waiting
    /// for INIT/SIPI, which never comes. The kick must end its thread.
    #[test]
    fn a_kicked_vcpu_leaves_kvm_run_and_its_thread_is_joined() {
        let Some(vm) = test_vm() else { return };
        let mut threads = VcpuThreads::new().unwrap();
        let (stop, _) = spawn_test_vcpu(&mut threads, 1, vm.create_vcpu(1).unwrap());
        // Time to get into KVM_RUN; a kick that came earlier would wait
        // for it there, so this only makes the test harder.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(threads.names(), ["vcpu1"], "{:?}", stop.reason());
        threads.kick_all();
        assert_eq!(threads.join(std::time::Duration::from_secs(10)), 0);
        assert_eq!(stop.reason(), None, "a kick is not a fault");
    }

    /// Runs `vcpu` as vCPU `id` of `threads` on empty buses: its stop
    /// signal and dump slot.
    fn spawn_test_vcpu(
        threads: &mut VcpuThreads,
        id: u8,
        vcpu: VcpuFd,
    ) -> (Arc<StopSignal>, Arc<VcpuDumpSlot>) {
        let stop = Arc::new(StopSignal::new().unwrap());
        let slot: Arc<VcpuDumpSlot> = Arc::default();
        let buses = Arc::new(Buses::default());
        spawn(threads, id, vcpu, buses, stop.clone(), slot.clone()).unwrap();
        (stop, slot)
    }

    /// A VM with an in-kernel irqchip, or None (and a note) without KVM.
    fn test_vm() -> Option<kvm_ioctls::VmFd> {
        match kvm_ioctls::Kvm::new().and_then(|kvm| kvm.create_vm()) {
            Ok(vm) => {
                vm.create_irq_chip().unwrap();
                Some(vm)
            }
            Err(e) => {
                eprintln!("skipping: cannot create a VM: {e}");
                None
            }
        }
    }

    /// A real vCPU blocked in KVM_RUN (an AP waiting for its SIPI) answers
    /// a dump request with its registers and LAPIC, and runs on.
    #[test]
    fn a_vcpu_in_kvm_run_answers_a_dump_request_and_runs_on() {
        let Some(vm) = test_vm() else { return };
        let mut threads = VcpuThreads::new().unwrap();
        let (stop, slot) = spawn_test_vcpu(&mut threads, 1, vm.create_vcpu(1).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(200));
        let slots = [slot];
        let lines = dump::collect_vcpus(
            &slots,
            |_| assert!(threads.kick("vcpu1")),
            std::time::Duration::from_secs(5),
        );
        assert!(
            lines[0].starts_with("vCPU 0: in KVM_RUN for "),
            "{lines:#?}"
        );
        // The architectural INIT state of an AP.
        assert!(
            lines[1].starts_with("vCPU 0: regs: rip=0xfff0 ") && lines[1].contains(" cs=0xf000 "),
            "{lines:#?}"
        );
        assert!(lines[3].starts_with("vCPU 0: events: "), "{lines:#?}");
        assert!(lines[4].starts_with("vCPU 0: lapic: "), "{lines:#?}");
        assert_eq!(
            lines[5],
            "vCPU 0: last 0 of 0 device accesses (0 COM1 accesses not recorded):"
        );
        // Back in KVM_RUN, not stopped.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let again = dump::collect_vcpus(
            &slots,
            |_| assert!(threads.kick("vcpu1")),
            std::time::Duration::from_secs(5),
        );
        assert!(
            again[0].starts_with("vCPU 0: in KVM_RUN for "),
            "{again:#?}"
        );
        assert!(again[0].ends_with(", 1 exits"), "{again:#?}");
        assert_eq!(threads.names(), ["vcpu1"]);
        assert_eq!(stop.reason(), None);
        threads.kick_all();
        assert_eq!(threads.join(std::time::Duration::from_secs(10)), 0);
    }

    /// A real triple fault: long mode (as the boot vCPU starts) with an
    /// empty IDT, then `ud2`. The vCPU leaves its last report, says its
    /// registers are post-reset, and stops the VM. (Long mode, not real
    /// mode: PVM hosts deliver real-mode exceptions past an IVT's limit.)
    #[test]
    fn a_triple_fault_leaves_a_report_and_stops_the_vm() {
        let Some(vm) = test_vm() else { return };
        let ram = crate::memory::GuestRam::new(64 << 20).unwrap();
        crate::vmm::register_memory(&vm, &ram).unwrap();
        {
            use vm_memory::{Bytes, GuestAddress};
            ram.memory
                .write_slice(&[0x0f, 0x0b], GuestAddress(CODE))
                .unwrap();
        }
        const CODE: u64 = 0x10_0000;
        let vcpu = vm.create_vcpu(0).unwrap();
        crate::vmm::regs::setup_sregs(&ram.memory, &vcpu).unwrap();
        crate::vmm::regs::setup_regs(&vcpu, CODE).unwrap();
        let mut sregs = vcpu.get_sregs().unwrap();
        sregs.idt.limit = 0;
        vcpu.set_sregs(&sregs).unwrap();
        let mut threads = VcpuThreads::new().unwrap();
        let (stop, slot) = spawn_test_vcpu(&mut threads, 0, vcpu);
        if threads.join(std::time::Duration::from_secs(10)) != 0 {
            let lines = dump::collect_vcpus(
                std::slice::from_ref(&slot),
                |_| {
                    threads.kick("vcpu0");
                },
                std::time::Duration::from_secs(2),
            );
            threads.kick_all();
            threads.join(std::time::Duration::from_secs(10));
            panic!("no triple fault: {lines:#?}");
        }
        let reason = stop.reason();
        assert!(
            matches!(&reason, Some(StopReason::VcpuFault(what))
                if what.starts_with(&format!("vCPU 0: {TRIPLE_FAULT}: rip="))),
            "{reason:?}"
        );
        let lines = dump::collect_vcpus(&[slot], |_| panic!("kicked"), Default::default());
        assert!(
            lines[0].starts_with("vCPU 0: thread ended for "),
            "{lines:#?}"
        );
        assert!(
            lines[1].starts_with("vCPU 0: its last report, from "),
            "{lines:#?}"
        );
        assert!(
            lines[2].starts_with("vCPU 0: after a triple fault: "),
            "{lines:#?}"
        );
        assert!(lines[3].starts_with("vCPU 0: regs: rip="), "{lines:#?}");
        drop(vm);
        drop(ram);
    }

    #[test]
    fn faults_are_reported() {
        let buses = buses();
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &buses, &mut DumpState::default()),
            VcpuAction::Fault(TRIPLE_FAULT.into())
        );
        assert!(matches!(
            handle_exit(VcpuExit::InternalError, &buses, &mut DumpState::default()),
            VcpuAction::Fault(_)
        ));
        assert!(matches!(
            handle_exit(VcpuExit::FailEntry(7, 0), &buses, &mut DumpState::default()),
            VcpuAction::Fault(_)
        ));
        assert_eq!(
            handle_exit(VcpuExit::Hlt, &buses, &mut DumpState::default()),
            VcpuAction::Continue
        );
    }
}
