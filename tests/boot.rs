//! End-to-end: the stock Debian kernel boots in our VMM under real KVM.
//! All scenarios share one batch (one rig boot on hosts without VT-x/AMD-V).

mod common;

use std::collections::HashMap;
use std::sync::OnceLock;

use common::{Mode, Outcome, Scenario};

const CMDLINE: &str = "console=ttyS0 quiet";

fn scenarios() -> Vec<Scenario> {
    let run = |name: &'static str, args: &str, script: &str| Scenario {
        name,
        script: format!(
            "{{ {script} }} | $VMM --kernel $KERNEL --initrd $INITRD {args}\necho \"vmm exited $?\""
        ),
    };
    vec![
        run(
            "boot",
            &format!("--cmdline '{CMDLINE}' --log-level info"),
            "true;",
        ),
        run(
            "cpus",
            &format!("--cpus 2 --cmdline '{CMDLINE} vmm.run=cpus'"),
            "true;",
        ),
        run(
            "shell",
            &format!("--cmdline '{CMDLINE} vmm.run=shell'"),
            "printf 'echo hello-$((6*7))\\nexit\\n';",
        ),
        run(
            "big-memory",
            &format!("--mem 3200M --cmdline '{CMDLINE} vmm.run=cpus'"),
            "true;",
        ),
        run(
            "pci",
            &format!("--cmdline '{CMDLINE} vmm.run=pci'"),
            "true;",
        ),
        Scenario {
            name: "garbage-kernel",
            script: "$VMM --kernel $VMM --initrd $INITRD; echo \"vmm exited $?\"".into(),
        },
    ]
}

fn results() -> Option<&'static HashMap<String, Outcome>> {
    static RESULTS: common::BatchCell = OnceLock::new();
    if let Mode::Skip = common::mode() {
        eprintln!("VMM_SKIP_KVM_TESTS=1: guest boot tests skipped");
        return None;
    }
    Some(common::run_once(&RESULTS, || {
        common::run_batch(&scenarios(), 180)
    }))
}

fn outcome(name: &str) -> Option<&'static Outcome> {
    common::pick(results()?, name)
}

#[test]
fn guest_reaches_init_and_reboot_exits_zero() {
    let Some(o) = outcome("boot") else { return };
    o.assert_contains("VMM-GUEST: booted");
    o.assert_contains("VMM-GUEST: rebooting");
    o.assert_contains("guest reset through the i8042");
    o.assert_exited("vmm", 0);
    assert_eq!(o.status, 0);
}

#[test]
fn two_vcpus_are_seen_by_the_guest() {
    let Some(o) = outcome("cpus") else { return };
    o.assert_contains("VMM-GUEST: cpus=2 online=0-1");
    // KVM has the TSC-deadline timer wherever it runs a stock guest, and
    // our CPUID says so (it is not in KVM's supported list).
    o.assert_contains("VMM-GUEST: apic timer: tsc-deadline");
    o.assert_exited("vmm", 0);
}

#[test]
fn stdin_reaches_the_guest_shell() {
    let Some(o) = outcome("shell") else { return };
    o.assert_contains("VMM-GUEST: shell ready");
    // The shell computed this from what we typed; the echo of our input
    // only contains the unexpanded expression.
    o.assert_contains("hello-42");
    o.assert_exited("vmm", 0);
}

#[test]
fn memory_above_the_mmio_hole_is_usable() {
    let Some(o) = outcome("big-memory") else {
        return;
    };
    o.assert_contains("VMM-GUEST: cpus=1");
    o.assert_exited("vmm", 0);
}

#[test]
fn garbage_kernel_fails_with_a_clear_error() {
    let Some(o) = outcome("garbage-kernel") else {
        return;
    };
    o.assert_contains("is not a bzImage or ELF kernel");
    o.assert_exited("vmm", 1);
    assert!(!o.output.contains("panicked"), "{}", o.output);
}

#[test]
fn guest_enumerates_the_pci_host_bridge() {
    let Some(o) = outcome("pci") else { return };
    o.assert_contains("VMM-GUEST: pci 0000:00:00.0 0x8086:0x0d57 class=0x060000");
    assert!(!o.output.contains("No config space access"), "{}", o.output);
}
