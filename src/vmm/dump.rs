//! `kill -USR2` on the VMM logs a state dump without stopping the VM: what
//! each vCPU is doing, its registers, pending events and LAPIC, the
//! in-kernel IOAPIC's pins and each vCPU's last device accesses. The VMM
//! logs the same by itself when a vCPU faults (a triple fault), before it
//! exits.
//!
//! A vCPU's registers, events and LAPIC can only be read by its own thread,
//! and only outside KVM_RUN: the requester raises the vCPU's flag and
//! kicks it, the vCPU answers into its slot when KVM_RUN returns and runs
//! on. A vCPU that does not answer in time is reported as stuck, with what
//! the cheap per-vCPU atomics say it was doing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_sregs, kvm_vcpu_events};

/// The signal that asks for a state dump, as in the remotes.
pub use crate::remote::dump::DUMP_SIGNAL;

/// How long the requester waits for the vCPUs' answers (all together).
pub const ANSWER_WAIT: Duration = Duration::from_millis(500);
/// Accesses each vCPU remembers.
pub const RING_LEN: usize = 64;

/// Nanoseconds on the monotonic clock since the first call in the process.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// "1.234ms", "12.5us", "2.000s": short enough for one log line per vCPU.
pub fn fmt_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.3}ms", ns as f64 / 1e6),
        _ => format!("{:.3}s", ns as f64 / 1e9),
    }
}

/// Where a vCPU thread is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    NotStarted,
    InKvmRun,
    InVmm,
    Exited,
}

impl RunState {
    fn bits(self) -> u64 {
        match self {
            RunState::NotStarted => 0,
            RunState::InKvmRun => 1,
            RunState::InVmm => 2,
            RunState::Exited => 3,
        }
    }

    fn from_bits(bits: u64) -> Self {
        match bits & 3 {
            0 => RunState::NotStarted,
            1 => RunState::InKvmRun,
            2 => RunState::InVmm,
            _ => RunState::Exited,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            RunState::NotStarted => "not started",
            RunState::InKvmRun => "in KVM_RUN",
            RunState::InVmm => "in VMM code",
            RunState::Exited => "thread ended",
        }
    }
}

/// A device access a vCPU has started but not finished, packed in one
/// word: bit 63 says there is one, bit 62 that it is port I/O.
const ACCESS_VALID: u64 = 1 << 63;
const ACCESS_PIO: u64 = 1 << 62;

#[derive(Default)]
struct Answer {
    /// Requests made so far.
    asked: u64,
    /// The request the lines answer (a fault's final report answers the
    /// latest one).
    answered: u64,
    /// When the lines were written, on `now_ns`'s clock.
    at_ns: u64,
    lines: Vec<String>,
}

/// What the requester and one vCPU thread share. The vCPU thread writes
/// the atomics on every exit, so they are relaxed single stores.
#[derive(Default)]
pub struct VcpuDumpSlot {
    /// `now_ns() << 2 | RunState` at the last change: one store keeps
    /// state and time consistent.
    state: AtomicU64,
    exits: AtomicU64,
    access: AtomicU64,
    requested: AtomicBool,
    answer: Mutex<Answer>,
    answered: Condvar,
}

impl VcpuDumpSlot {
    fn set_state(&self, state: RunState) -> u64 {
        let now = now_ns();
        self.state.store(now << 2 | state.bits(), Ordering::Relaxed);
        now
    }

    /// Just before KVM_RUN.
    pub fn entering_run(&self) {
        self.access.store(0, Ordering::Relaxed);
        self.set_state(RunState::InKvmRun);
    }

    /// Just after KVM_RUN returned, whatever it returned; returns the
    /// time, which the access ring reuses rather than read the clock again.
    pub fn left_run(&self) -> u64 {
        // Only this thread writes the count: no locked add needed.
        let exits = self.exits.load(Ordering::Relaxed);
        self.exits.store(exits + 1, Ordering::Relaxed);
        self.set_state(RunState::InVmm)
    }

    /// The vCPU thread is about to return.
    pub fn exited(&self) {
        self.set_state(RunState::Exited);
    }

    /// A device access starts; a vCPU that does not answer shows it.
    pub fn accessing(&self, pio: bool, addr: u64) {
        let kind = if pio { ACCESS_PIO } else { 0 };
        self.access.store(
            ACCESS_VALID | kind | (addr & !(ACCESS_VALID | ACCESS_PIO)),
            Ordering::Relaxed,
        );
    }

    /// Whether a dump was requested since the last look; clears the flag.
    pub fn take_request(&self) -> bool {
        // A load first: the common case (no request) stays a plain read.
        self.requested.load(Ordering::Relaxed) && self.requested.swap(false, Ordering::SeqCst)
    }

    /// The vCPU thread's report, for the request in progress or, when it
    /// faulted, for the next one.
    pub fn answer(&self, lines: Vec<String>) {
        let mut answer = self.answer.lock().expect("dump slot lock");
        answer.answered = answer.asked;
        answer.at_ns = now_ns();
        answer.lines = lines;
        self.answered.notify_all();
    }

    fn state(&self) -> (RunState, u64) {
        let word = self.state.load(Ordering::Relaxed);
        (RunState::from_bits(word), word >> 2)
    }

    /// "in KVM_RUN for 1.2ms, 1234 exits" as of `now`.
    fn summary(&self, now: u64) -> String {
        let (state, since) = self.state();
        let exits = self.exits.load(Ordering::Relaxed);
        let mut line = format!(
            "{} for {}, {exits} exits",
            state.describe(),
            fmt_ns(now.saturating_sub(since))
        );
        if state == RunState::InVmm {
            let access = self.access.load(Ordering::Relaxed);
            if access & ACCESS_VALID != 0 {
                let kind = if access & ACCESS_PIO != 0 {
                    "port"
                } else {
                    "mmio"
                };
                let addr = access & !(ACCESS_VALID | ACCESS_PIO);
                line.push_str(&format!(", in a device access to {kind} {addr:#x}"));
            }
        }
        line
    }
}

/// Asks every vCPU for its report and returns the dump's vCPU lines.
/// `kick(i)` gets vCPU `i` out of KVM_RUN; each vCPU gets until `wait`
/// from now, all together.
pub fn collect_vcpus(
    slots: &[std::sync::Arc<VcpuDumpSlot>],
    kick: impl Fn(usize),
    wait: Duration,
) -> Vec<String> {
    let now = now_ns();
    // Before the kicks change them.
    let summaries: Vec<String> = slots.iter().map(|s| s.summary(now)).collect();
    // Per vCPU: the request it is to answer, and whether its thread had
    // ended already (then it gets no request, and its last report shows).
    let mut asked = Vec::with_capacity(slots.len());
    for (i, slot) in slots.iter().enumerate() {
        let exited = slot.state().0 == RunState::Exited;
        let seq = {
            let mut answer = slot.answer.lock().expect("dump slot lock");
            if !exited {
                answer.asked += 1;
            }
            answer.asked
        };
        asked.push((seq, exited));
        if !exited {
            // Before the kick: a vCPU that takes it must see the flag.
            slot.requested.store(true, Ordering::SeqCst);
            kick(i);
        }
    }
    let deadline = Instant::now() + wait;
    let mut lines = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        lines.push(format!("vCPU {i}: {}", summaries[i]));
        let (seq, exited) = asked[i];
        let guard = slot.answer.lock().expect("dump slot lock");
        let guard = if exited {
            guard
        } else {
            let left = deadline.saturating_duration_since(Instant::now());
            slot.answered
                .wait_timeout_while(guard, left, |a| a.answered < seq)
                .expect("dump slot lock")
                .0
        };
        if guard.answered >= seq && !guard.lines.is_empty() {
            if exited {
                lines.push(format!(
                    "vCPU {i}: its last report, from {} ago:",
                    fmt_ns(now_ns().saturating_sub(guard.at_ns))
                ));
            }
            lines.extend(guard.lines.iter().map(|l| format!("vCPU {i}: {l}")));
        } else if exited {
            lines.push(format!("vCPU {i}: no report (its thread has ended)"));
        } else {
            drop(guard);
            // Withdrawn, so that a vCPU that comes back later does not
            // answer a request nobody waits for.
            slot.requested.store(false, Ordering::SeqCst);
            if slot.state().0 == RunState::Exited {
                lines.push(format!("vCPU {i}: its thread ended before it answered"));
                continue;
            }
            lines.push(format!(
                "vCPU {i} did not answer (stuck {})",
                slot.summary(now_ns())
            ));
        }
    }
    lines
}

/// One device access a vCPU made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Access {
    pub at_ns: u64,
    pub addr: u64,
    pub value: u64,
    pub size: u8,
    pub pio: bool,
    pub write: bool,
}

/// A vCPU's last `RING_LEN` device accesses, owned by its thread.
pub struct AccessRing {
    entries: [Access; RING_LEN],
    /// Accesses recorded so far; the next goes to `count % RING_LEN`.
    count: u64,
    /// COM1 accesses left out: a printk is one port write per character
    /// and would push every other access out of the ring.
    skipped_serial: u64,
}

impl Default for AccessRing {
    fn default() -> Self {
        AccessRing {
            entries: [Access::default(); RING_LEN],
            count: 0,
            skipped_serial: 0,
        }
    }
}

impl AccessRing {
    /// Records a finished access that exited at `at_ns`; `data` is what
    /// was read or written.
    pub fn record(&mut self, at_ns: u64, pio: bool, write: bool, addr: u64, data: &[u8]) {
        use crate::devices::serial::{COM1_BASE, COM1_LEN};
        if pio && (COM1_BASE..COM1_BASE + COM1_LEN).contains(&addr) {
            self.skipped_serial += 1;
            return;
        }
        let mut bytes = [0u8; 8];
        let len = data.len().min(8);
        bytes[..len].copy_from_slice(&data[..len]);
        self.entries[(self.count % RING_LEN as u64) as usize] = Access {
            at_ns,
            addr,
            value: u64::from_le_bytes(bytes),
            size: data.len() as u8,
            pio,
            write,
        };
        self.count += 1;
    }

    /// The remembered accesses, oldest first.
    pub fn accesses(&self) -> Vec<Access> {
        let kept = self.count.min(RING_LEN as u64);
        (self.count - kept..self.count)
            .map(|n| self.entries[(n % RING_LEN as u64) as usize])
            .collect()
    }

    /// One line per access, oldest first, with its age at `now`.
    pub fn lines(&self, now: u64) -> Vec<String> {
        let accesses = self.accesses();
        let mut lines = vec![format!(
            "last {} of {} device accesses ({} COM1 accesses not recorded):",
            accesses.len(),
            self.count,
            self.skipped_serial
        )];
        for a in accesses {
            let kind = if a.pio { "port" } else { "mmio" };
            let dir = if a.write { 'W' } else { 'R' };
            let width = usize::from(a.size) * 2;
            lines.push(format!(
                "  {} ago {kind} {dir} {:#x}/{} = {:#0w$x}",
                fmt_ns(now.saturating_sub(a.at_ns)),
                a.addr,
                a.size,
                a.value,
                w = width + 2
            ));
        }
        lines
    }
}

/// The vectors whose bits are set in the 256-bit LAPIC register at
/// `offset` of the LAPIC page (IRR, ISR, TMR): eight 32-bit registers, one
/// every 16 bytes.
pub fn lapic_vectors(page: &[u8; 1024], offset: usize) -> Vec<u8> {
    let mut vectors = Vec::new();
    for reg in 0..8 {
        let at = offset + reg * 16;
        let word = u32::from_le_bytes(page[at..at + 4].try_into().expect("4 bytes"));
        for bit in 0..32 {
            if word & (1 << bit) != 0 {
                vectors.push((reg * 32 + bit) as u8);
            }
        }
    }
    vectors
}

/// LAPIC register offsets (Intel SDM, "Local APIC Register Address Map").
const LAPIC_TPR: usize = 0x80;
const LAPIC_ISR: usize = 0x100;
const LAPIC_IRR: usize = 0x200;

/// "lapic: tpr=0x0 irr=[0x31] isr=[]" from a KVM_GET_LAPIC page.
pub fn format_lapic(page: &[u8; 1024]) -> String {
    let list = |v: Vec<u8>| {
        v.iter()
            .map(|x| format!("{x:#x}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let tpr = u32::from_le_bytes(page[LAPIC_TPR..LAPIC_TPR + 4].try_into().expect("4 bytes"));
    format!(
        "lapic: tpr={tpr:#x} irr=[{}] isr=[{}]",
        list(lapic_vectors(page, LAPIC_IRR)),
        list(lapic_vectors(page, LAPIC_ISR))
    )
}

/// The registers worth a look when a guest stalls or dies.
pub fn format_regs(regs: &kvm_regs, sregs: Option<&kvm_sregs>) -> Vec<String> {
    let mut first = format!(
        "regs: rip={:#x} rsp={:#x} rflags={:#x}",
        regs.rip, regs.rsp, regs.rflags
    );
    if let Some(s) = sregs {
        first.push_str(&format!(
            " cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x} ss={:#x}",
            s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.ss.selector
        ));
    }
    let gprs = format!(
        "regs: rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x} \
         r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x}",
        regs.rax,
        regs.rbx,
        regs.rcx,
        regs.rdx,
        regs.rsi,
        regs.rdi,
        regs.rbp,
        regs.r8,
        regs.r9,
        regs.r10,
        regs.r11,
        regs.r12,
        regs.r13,
        regs.r14,
        regs.r15
    );
    vec![first, gprs]
}

/// KVM_GET_VCPU_EVENTS in one line. Vector numbers only where an event
/// is pending or injected: KVM leaves the last one's in place after.
pub fn format_events(e: &kvm_vcpu_events) -> String {
    let x = &e.exception;
    let i = &e.interrupt;
    let n = &e.nmi;
    let exception = if x.pending != 0 || x.injected != 0 {
        let mut s = format!(
            "{} nr={}",
            if x.pending != 0 {
                "pending"
            } else {
                "injected"
            },
            x.nr
        );
        if x.has_error_code != 0 {
            s.push_str(&format!(" error_code={:#x}", x.error_code));
        }
        s
    } else {
        "none".into()
    };
    let interrupt = if i.injected != 0 {
        format!(
            "injected vec={:#x}{}",
            i.nr,
            if i.soft != 0 { " soft" } else { "" }
        )
    } else {
        "none".into()
    };
    format!(
        "events: exception {exception}; interrupt {interrupt}; nmi pending={} injected={} \
         masked={}; shadow={:#x}",
        n.pending, n.injected, n.masked, i.shadow
    )
}

/// IOAPIC pins in the in-kernel irqchip.
pub const IOAPIC_PINS: usize = 24;

/// One redirection entry's fields (82093AA datasheet, "I/O Redirection
/// Table Registers").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedirEntry {
    pub vector: u8,
    pub delivery_mode: u8,
    pub remote_irr: bool,
    pub level: bool,
    pub masked: bool,
    pub dest: u8,
}

impl RedirEntry {
    pub fn from_bits(bits: u64) -> Self {
        RedirEntry {
            vector: bits as u8,
            delivery_mode: ((bits >> 8) & 7) as u8,
            remote_irr: bits & (1 << 14) != 0,
            level: bits & (1 << 15) != 0,
            masked: bits & (1 << 16) != 0,
            dest: (bits >> 56) as u8,
        }
    }
}

/// One line with the pins that can matter: unmasked, or with remote IRR
/// or IRR set. A level-triggered pin stuck with remote_irr=1 is a missed
/// EOI; irr set on a masked pin is an interrupt nobody will take.
pub fn format_ioapic(irr: u32, entries: &[u64; IOAPIC_PINS]) -> String {
    let mut pins = Vec::new();
    for (pin, &bits) in entries.iter().enumerate() {
        let e = RedirEntry::from_bits(bits);
        let pending = irr & (1 << pin) != 0;
        if e.masked && !e.remote_irr && !pending {
            continue;
        }
        pins.push(format!(
            "{pin}:vec={:#x},dm={},dest={:#x},{},{}{}{}",
            e.vector,
            e.delivery_mode,
            e.dest,
            if e.level { "level" } else { "edge" },
            if e.masked { "masked" } else { "unmasked" },
            if e.remote_irr { ",remote_irr" } else { "" },
            if pending { ",irr" } else { "" }
        ));
    }
    if pins.is_empty() {
        return format!("ioapic: irr={irr:#x}, every pin masked and idle");
    }
    format!("ioapic: irr={irr:#x} pins {}", pins.join(" "))
}

/// KVM_GET_IRQCHIP's chip_id for the IOAPIC.
const KVM_IRQCHIP_IOAPIC: u32 = 2;

/// The in-kernel IOAPIC's line, read with KVM_GET_IRQCHIP (any thread may).
pub fn ioapic_line(vm: &kvm_ioctls::VmFd) -> String {
    let mut chip = kvm_bindings::kvm_irqchip {
        chip_id: KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    if let Err(e) = vm.get_irqchip(&mut chip) {
        return format!("ioapic: KVM_GET_IRQCHIP failed: {e}");
    }
    // SAFETY: chip_id 2 makes KVM fill the `ioapic` member of the union.
    let ioapic = unsafe { chip.chip.ioapic };
    let mut entries = [0u64; IOAPIC_PINS];
    for (e, r) in entries.iter_mut().zip(ioapic.redirtbl.iter()) {
        // SAFETY: both union members cover the same 64 bits; `bits` is
        // the plain-integer view of the whole entry.
        *e = unsafe { r.bits };
    }
    format_ioapic(ioapic.irr, &entries)
}

/// Logs a dump: the vCPUs (kicked with `kick`), the IOAPIC, then asks the
/// remotes for theirs with `forward`.
pub fn log_dump(
    why: &str,
    vm: &kvm_ioctls::VmFd,
    slots: &[std::sync::Arc<VcpuDumpSlot>],
    kick: impl Fn(usize),
    forward: &dyn Fn(),
) {
    log::warn!("state dump: {why}");
    // First, so that the remotes log while the vCPUs are looked at.
    forward();
    for line in collect_vcpus(slots, kick, ANSWER_WAIT) {
        log::warn!("state dump: {line}");
    }
    log::warn!("state dump: {}", ioapic_line(vm));
    log::warn!("state dump: end");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_ring_keeps_the_last_64_oldest_first_and_skips_com1() {
        let mut ring = AccessRing::default();
        assert!(ring.accesses().is_empty());
        for n in 0..100u64 {
            ring.record(
                1000 + n,
                false,
                n % 2 == 0,
                0xfebf_0000 + n,
                &(n as u32).to_le_bytes(),
            );
        }
        ring.record(2000, true, true, 0x3f8, b"x");
        ring.record(3000, true, false, 0x70, &[0x0b]);
        let got = ring.accesses();
        assert_eq!(got.len(), RING_LEN);
        assert_eq!(got[0].addr, 0xfebf_0000 + 37);
        assert_eq!(got[0].value, 37);
        assert_eq!(got[0].size, 4);
        assert!(!got[0].write);
        assert_eq!(got[62].addr, 0xfebf_0000 + 99);
        assert!(!got[62].write);
        assert_eq!(
            got[63],
            Access {
                at_ns: got[63].at_ns,
                addr: 0x70,
                value: 0x0b,
                size: 1,
                pio: true,
                write: false
            }
        );
        assert_eq!(got[0].at_ns, 1037);
        assert_eq!(got[63].at_ns, 3000);
        let lines = ring.lines(3000);
        assert_eq!(
            lines[0],
            "last 64 of 101 device accesses (1 COM1 accesses not recorded):"
        );
        assert_eq!(lines.len(), 65);
        assert_eq!(lines[64], "  0ns ago port R 0x70/1 = 0x0b");
        assert_eq!(lines[63], "  1.9us ago mmio R 0xfebf0063/4 = 0x00000063");
    }

    #[test]
    fn lapic_irr_and_isr_are_read_from_the_page() {
        let mut page = [0u8; 1024];
        // IRR: vectors 0x31 (register 1, bit 17) and 0xef (register 7, bit 15).
        page[LAPIC_IRR + 16..LAPIC_IRR + 20].copy_from_slice(&(1u32 << 17).to_le_bytes());
        page[LAPIC_IRR + 7 * 16..LAPIC_IRR + 7 * 16 + 4]
            .copy_from_slice(&(1u32 << 15).to_le_bytes());
        // ISR: vector 0x20, and noise in the padding between registers,
        // which is not part of any register.
        page[LAPIC_ISR + 16] = 1;
        page[LAPIC_ISR + 20] = 0xff;
        page[LAPIC_TPR] = 0x10;
        assert_eq!(lapic_vectors(&page, LAPIC_IRR), [0x31, 0xef]);
        assert_eq!(lapic_vectors(&page, LAPIC_ISR), [0x20]);
        assert_eq!(
            format_lapic(&page),
            "lapic: tpr=0x10 irr=[0x31,0xef] isr=[0x20]"
        );
    }

    #[test]
    fn ioapic_lists_only_pins_that_matter() {
        let mut entries = [1u64 << 16; IOAPIC_PINS];
        // Pin 2: timer, unmasked edge, vector 0x30 to APIC 0.
        entries[2] = 0x30;
        // Pin 11: level, remote_irr set (an EOI never came), vector 0x41
        // to APIC 1, lowest priority.
        entries[11] = 0x41 | (1 << 8) | (1 << 14) | (1 << 15) | (1 << 56);
        // Pin 9: masked, but its line is asserted.
        entries[9] = (1 << 16) | 0x39;
        let line = format_ioapic(1 << 9, &entries);
        assert_eq!(
            line,
            "ioapic: irr=0x200 pins 2:vec=0x30,dm=0,dest=0x0,edge,unmasked \
             9:vec=0x39,dm=0,dest=0x0,edge,masked,irr \
             11:vec=0x41,dm=1,dest=0x1,level,unmasked,remote_irr"
        );
        assert_eq!(
            format_ioapic(0, &[1u64 << 16; IOAPIC_PINS]),
            "ioapic: irr=0x0, every pin masked and idle"
        );
    }

    /// A fake vCPU loop: "KVM_RUN" is a wait for a kick, after which it
    /// answers a request as the real loop does.
    fn fake_vcpu(
        slot: Arc<VcpuDumpSlot>,
        kicks: std::sync::mpsc::Receiver<bool>,
        answer_with: &'static str,
    ) {
        slot.entering_run();
        while let Ok(go_on) = kicks.recv() {
            slot.left_run();
            if slot.take_request() {
                slot.answer(vec![answer_with.to_string()]);
            }
            if !go_on {
                break;
            }
            slot.entering_run();
        }
        slot.exited();
    }

    #[test]
    fn vcpus_answer_and_a_stuck_one_is_reported_after_the_wait() {
        let slots: Vec<Arc<VcpuDumpSlot>> = (0..3).map(|_| Arc::default()).collect();
        let (tx0, rx0) = std::sync::mpsc::channel();
        let (tx1, rx1) = std::sync::mpsc::channel();
        let s0 = slots[0].clone();
        let t0 = std::thread::spawn(move || fake_vcpu(s0, rx0, "regs of 0"));
        let s1 = slots[1].clone();
        let t1 = std::thread::spawn(move || fake_vcpu(s1, rx1, "regs of 1"));
        // vCPU 2 is stuck in a device access and never takes its kick.
        slots[2].left_run();
        slots[2].accessing(false, 0xfebf_1014);
        // Both reach their "KVM_RUN" before the request.
        while slots[..2].iter().any(|s| s.state().0 != RunState::InKvmRun) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let kicks = [tx0.clone(), tx1.clone()];
        let start = Instant::now();
        let lines = collect_vcpus(
            &slots,
            |i| {
                if let Some(k) = kicks.get(i) {
                    k.send(true).unwrap();
                }
            },
            Duration::from_millis(300),
        );
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert!(
            lines[0].starts_with("vCPU 0: in KVM_RUN for "),
            "{}",
            lines[0]
        );
        assert!(lines[0].ends_with(", 0 exits"), "{}", lines[0]);
        assert_eq!(lines[1], "vCPU 0: regs of 0");
        assert_eq!(lines[3], "vCPU 1: regs of 1");
        assert!(
            lines[4].starts_with("vCPU 2: in VMM code for "),
            "{}",
            lines[4]
        );
        assert!(
            lines[5].starts_with("vCPU 2 did not answer (stuck in VMM code for ")
                && lines[5].ends_with(", 1 exits, in a device access to mmio 0xfebf1014)"),
            "{}",
            lines[5]
        );
        // The request to the stuck vCPU was withdrawn.
        assert!(!slots[2].take_request());

        // A second dump without a stuck vCPU waits for no one; vCPU 1's
        // thread ends after its answer, and then has its last report shown.
        slots[2].exited();
        let start = Instant::now();
        let lines = collect_vcpus(
            &slots,
            |i| {
                if let Some(k) = kicks.get(i) {
                    k.send(i != 1).unwrap();
                }
            },
            Duration::from_secs(10),
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(lines[0].ends_with(", 1 exits"), "{}", lines[0]);
        assert_eq!(lines[1], "vCPU 0: regs of 0");
        assert_eq!(lines[3], "vCPU 1: regs of 1");
        assert_eq!(lines[5], "vCPU 2: no report (its thread has ended)");
        t1.join().unwrap();
        let lines = collect_vcpus(
            &slots,
            |i| {
                assert_eq!(i, 0, "only running vCPUs are kicked");
                kicks[0].send(true).unwrap();
            },
            Duration::from_secs(10),
        );
        assert_eq!(lines[1], "vCPU 0: regs of 0");
        assert!(
            lines[2].starts_with("vCPU 1: thread ended for "),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].starts_with("vCPU 1: its last report, from "),
            "{}",
            lines[3]
        );
        assert_eq!(lines[4], "vCPU 1: regs of 1");
        drop(kicks);
        drop((tx0, tx1));
        t0.join().unwrap();
    }

    #[test]
    fn events_show_vectors_only_for_live_events() {
        let mut e = kvm_vcpu_events::default();
        // What KVM leaves behind after a delivered page fault.
        e.exception.nr = 14;
        e.exception.has_error_code = 1;
        e.interrupt.nr = 0xec;
        assert_eq!(
            format_events(&e),
            "events: exception none; interrupt none; nmi pending=0 injected=0 masked=0; \
             shadow=0x0"
        );
        e.exception.pending = 1;
        e.exception.error_code = 2;
        e.interrupt.injected = 1;
        e.nmi.masked = 1;
        e.interrupt.shadow = 1;
        assert_eq!(
            format_events(&e),
            "events: exception pending nr=14 error_code=0x2; interrupt injected vec=0xec; \
             nmi pending=0 injected=0 masked=1; shadow=0x1"
        );
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(fmt_ns(999), "999ns");
        assert_eq!(fmt_ns(12_500), "12.5us");
        assert_eq!(fmt_ns(1_234_567), "1.235ms");
        assert_eq!(fmt_ns(2_000_000_000), "2.000s");
    }
}
