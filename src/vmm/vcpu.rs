//! vCPU threads and what they do with each KVM exit.

use std::sync::Arc;

use kvm_ioctls::{VcpuExit, VcpuFd};

use super::kick::{self, KickError, VcpuThreads};
use super::stop::{StopReason, StopSignal};
use crate::bus::Bus;

/// KVM_SYSTEM_EVENT types.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;

/// The two address spaces a vCPU exit can target.
#[derive(Default)]
pub struct Buses {
    pub pio: Bus,
    pub mmio: Bus,
}

/// What the vCPU loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum VcpuAction {
    Continue,
    Stop(StopReason),
    /// The vCPU cannot go on; the caller adds register state to `what`.
    Fault(String),
}

/// Handles one exit. A free function over plain data so tests can feed it
/// synthetic exits without KVM.
pub fn handle_exit(exit: VcpuExit, buses: &Buses) -> VcpuAction {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !buses.pio.read(u64::from(port), data) {
                log::trace!("unhandled port read {port:#x} ({} bytes)", data.len());
            }
            VcpuAction::Continue
        }
        VcpuExit::IoOut(port, data) => {
            if !buses.pio.write(u64::from(port), data) {
                log::trace!("unhandled port write {port:#x} = {data:x?}");
            }
            VcpuAction::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !buses.mmio.read(addr, data) {
                log::debug!("unhandled MMIO read {addr:#x} ({} bytes)", data.len());
            }
            VcpuAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !buses.mmio.write(addr, data) {
                log::debug!("unhandled MMIO write {addr:#x} = {data:x?}");
            }
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
        VcpuExit::Shutdown => VcpuAction::Fault("triple fault".into()),
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

/// KVM's sub-error code for an internal error, read from the shared run page.
fn internal_error_detail(vcpu: &mut VcpuFd) -> String {
    let run = vcpu.get_kvm_run();
    // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, so `internal` is
    // the union member KVM filled in.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    format!("suberror {}", internal.suberror)
}

thread_local! {
    static CURRENT_VCPU: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The index of the vCPU the calling thread runs (0 outside vCPU threads),
/// so devices can keep per-vCPU state such as ioregion fds without a lock.
pub fn current_vcpu() -> usize {
    CURRENT_VCPU.with(|c| c.get())
}

/// Runs vCPU `id` until the VM stops, as one of `threads`, which stops it.
pub fn spawn(
    threads: &mut VcpuThreads,
    id: u8,
    mut vcpu: VcpuFd,
    buses: Arc<Buses>,
    stop: Arc<StopSignal>,
) -> Result<(), KickError> {
    threads.spawn(format!("vcpu{id}"), move |stopping, run_mask| {
        CURRENT_VCPU.with(|c| c.set(usize::from(id)));
        if let Err(e) = kick::set_kvm_signal_mask(&vcpu, &run_mask) {
            // Without it a kick could not end KVM_RUN, and the exit could
            // not wait for this vCPU before unmapping guest RAM.
            stop.request(StopReason::VcpuFault(format!(
                "vCPU {id}: KVM_SET_SIGNAL_MASK failed: {e}"
            )));
            return;
        }
        loop {
            let action = match vcpu.run() {
                Ok(exit) => {
                    let internal = matches!(exit, VcpuExit::InternalError);
                    match handle_exit(exit, &buses) {
                        VcpuAction::Fault(what) if internal => {
                            let detail = internal_error_detail(&mut vcpu);
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
                VcpuAction::Continue => {}
                VcpuAction::Stop(reason) => {
                    stop.request(reason);
                    return;
                }
                VcpuAction::Fault(what) => {
                    let state = describe_state(&vcpu);
                    stop.request(StopReason::VcpuFault(format!("vCPU {id}: {what}: {state}")));
                    return;
                }
            }
        }
    })
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
            handle_exit(VcpuExit::IoOut(0x80, &[0x42]), &buses),
            VcpuAction::Continue
        );
        let mut data = [0u8; 1];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x80, &mut data), &buses),
            VcpuAction::Continue
        );
        assert_eq!(data, [0x42]);
    }

    #[test]
    fn mmio_reaches_the_mmio_bus_and_unmapped_reads_are_ones() {
        let buses = buses();
        let mut data = [0u8; 4];
        handle_exit(VcpuExit::MmioRead(0xd000_0010, &mut data), &buses);
        assert_eq!(data, [0x22; 4]);
        handle_exit(VcpuExit::MmioRead(0xe000_0000, &mut data), &buses);
        assert_eq!(data, [0xff; 4]);
        let mut port = [0u8; 2];
        handle_exit(VcpuExit::IoIn(0x1234, &mut port), &buses);
        assert_eq!(port, [0xff; 2]);
    }

    #[test]
    fn guest_power_events_stop_the_vm() {
        let buses = buses();
        assert_eq!(
            handle_exit(VcpuExit::SystemEvent(SYSTEM_EVENT_RESET, &[]), &buses),
            VcpuAction::Stop(StopReason::GuestReset)
        );
        assert_eq!(
            handle_exit(VcpuExit::SystemEvent(SYSTEM_EVENT_SHUTDOWN, &[]), &buses),
            VcpuAction::Stop(StopReason::GuestShutdown)
        );
    }

    /// A real vCPU blocked in KVM_RUN: an application processor waiting
    /// for INIT/SIPI, which never comes. The kick must end its thread.
    #[test]
    fn a_kicked_vcpu_leaves_kvm_run_and_its_thread_is_joined() {
        let vm = match kvm_ioctls::Kvm::new().and_then(|kvm| kvm.create_vm()) {
            Ok(vm) => vm,
            Err(e) => {
                eprintln!("skipping: cannot create a VM: {e}");
                return;
            }
        };
        vm.create_irq_chip().unwrap();
        let vcpu = vm.create_vcpu(1).unwrap();
        let stop = Arc::new(StopSignal::new().unwrap());
        let mut threads = VcpuThreads::new().unwrap();
        spawn(
            &mut threads,
            1,
            vcpu,
            Arc::new(Buses::default()),
            stop.clone(),
        )
        .unwrap();
        // Time to get into KVM_RUN; a kick that came earlier would wait
        // for it there, so this only makes the test harder.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(threads.names(), ["vcpu1"], "{:?}", stop.reason());
        threads.kick_all();
        assert_eq!(threads.join(std::time::Duration::from_secs(10)), 0);
        assert_eq!(stop.reason(), None, "a kick is not a fault");
    }

    #[test]
    fn faults_are_reported() {
        let buses = buses();
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &buses),
            VcpuAction::Fault("triple fault".into())
        );
        assert!(matches!(
            handle_exit(VcpuExit::InternalError, &buses),
            VcpuAction::Fault(_)
        ));
        assert!(matches!(
            handle_exit(VcpuExit::FailEntry(7, 0), &buses),
            VcpuAction::Fault(_)
        ));
        assert_eq!(handle_exit(VcpuExit::Hlt, &buses), VcpuAction::Continue);
    }
}
