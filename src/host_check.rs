//! `vmm host-check`: what this host offers the VMM, one line per item, with
//! what to do about each missing piece, and whether the main job
//! (`--remote-dev lsi` on hardware KVM) can run here.

use std::fmt;
use std::io::Write;

use kvm_ioctls::{Cap, Kvm};

use vmm::vmm::host::{self, HostError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Something optional is missing, or something works less well.
    Warning,
    Missing,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Missing => "missing",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// What to do about it; only shown when the status is not ok.
    pub hint: Option<String>,
    /// Whether `--remote-dev lsi` on hardware KVM cannot run without it.
    pub needed: bool,
}

impl Check {
    fn ok(name: &'static str, needed: bool, detail: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            hint: None,
            needed,
        }
    }

    fn not_ok(
        name: &'static str,
        needed: bool,
        status: Status,
        detail: impl Into<String>,
        hint: Option<&str>,
    ) -> Self {
        Check {
            name,
            status,
            detail: detail.into(),
            hint: hint.map(str::to_string),
            needed,
        }
    }
}

/// One line of the report.
pub fn format_line(check: &Check) -> String {
    let mut line = format!("{:<8}{}: {}", check.status, check.name, check.detail);
    if let (Some(hint), false) = (&check.hint, check.status == Status::Ok) {
        line.push_str(" -- ");
        line.push_str(hint);
    }
    line
}

/// The checks the main job cannot do without that failed; empty when it
/// can run here.
pub fn blockers(checks: &[Check]) -> Vec<&'static str> {
    checks
        .iter()
        .filter(|c| c.needed && c.status == Status::Missing)
        .map(|c| c.name)
        .collect()
}

pub fn verdict_line(checks: &[Check]) -> String {
    let blockers = blockers(checks);
    if blockers.is_empty() {
        "=> the main job (vmm --kernel ... --remote-dev lsi) can run here".to_string()
    } else {
        format!(
            "=> the main job (vmm --kernel ... --remote-dev lsi) cannot run here: missing {}",
            blockers.join(", ")
        )
    }
}

/// Which /dev/kvm this is. PVM is checked first: its /dev/kvm works, but
/// runs guest kernel code through KVM's instruction emulator.
pub fn kvm_flavour(pvm: bool, vendor_module: Option<&str>, cpu_has_virt: bool) -> Check {
    const NAME: &str = "hardware KVM";
    if pvm {
        return Check::not_ok(
            NAME,
            true,
            Status::Missing,
            "/dev/kvm is PVM (kvm_pvm): a stock guest kernel runs through KVM's instruction \
             emulator and will not boot at a useful speed",
            Some("use a host with VT-x/AMD-V, or run the job in the KVM test rig (ci/rig.sh)"),
        );
    }
    match (vendor_module, cpu_has_virt) {
        (Some(module), _) => Check::ok(NAME, true, format!("hardware-backed ({module})")),
        (None, true) => Check::ok(
            NAME,
            true,
            "the CPU has VT-x/AMD-V (no kvm_intel or kvm_amd module: built into the kernel?)",
        ),
        (None, false) => Check::not_ok(
            NAME,
            true,
            Status::Missing,
            "neither kvm_intel nor kvm_amd is loaded and the CPU shows no vmx or svm flag",
            Some(
                "enable VT-x/AMD-V in the firmware (or nested virtualization in the hypervisor) \
                 and load kvm_intel or kvm_amd, or use the KVM test rig (ci/rig.sh)",
            ),
        ),
    }
}

/// What `user=` can do, from the effective uid and the effective
/// capability mask (`CapEff` in /proc/self/status).
pub fn user_switch(euid: u32, cap_eff: Option<u64>) -> Check {
    const NAME: &str = "user= (setuid)";
    const HINT: &str = "run the VMM as root for user=, or start the remote by hand as \
                        another user (vmm remote lsi --socket PATH) and connect with socket=PATH,proto=vmm";
    // Bit numbers from linux/capability.h, which libc does not export.
    const CAP_SETGID: u32 = 6;
    const CAP_SETUID: u32 = 7;
    let setuid_caps = (1u64 << CAP_SETUID) | (1u64 << CAP_SETGID);
    match (euid, cap_eff) {
        (0, Some(caps)) if caps & setuid_caps == setuid_caps => Check::ok(
            NAME,
            false,
            "running as root with CAP_SETUID and CAP_SETGID: remotes can drop to another user",
        ),
        (0, Some(_)) => Check::not_ok(
            NAME,
            false,
            Status::Warning,
            "root, but without CAP_SETUID/CAP_SETGID (a container?): user= will fail",
            Some(HINT),
        ),
        (0, None) => Check::not_ok(
            NAME,
            false,
            Status::Warning,
            "root, but CapEff is unreadable: cannot tell whether user= will work",
            None,
        ),
        (uid, _) => Check::not_ok(
            NAME,
            false,
            Status::Warning,
            format!("running as uid {uid}, not root: user= needs root"),
            Some(HINT),
        ),
    }
}

/// The value of a `Key:\tvalue` line of /proc/self/status.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then(|| v.trim())
    })
}

fn check_kvm() -> (Check, Option<Kvm>) {
    const NAME: &str = "/dev/kvm";
    match host::open_kvm() {
        Ok(kvm) => {
            let api = kvm.get_api_version();
            (
                Check::ok(NAME, true, format!("opened, KVM API {api}")),
                Some(kvm),
            )
        }
        Err(e) => {
            let status = Status::Missing;
            // HostError's messages already say what to do.
            let hint = match e {
                HostError::KvmOpen(_) => Some("check dmesg for why KVM refuses to open".into()),
                HostError::KvmPermission => kvm_node_hint(),
                _ => None,
            };
            let mut check = Check::not_ok(NAME, true, status, e.to_string(), None);
            check.hint = hint;
            (check, None)
        }
    }
}

/// Group membership only helps if the node is group-accessible, which it
/// is not everywhere (mode 0600 root:root on some hosts).
fn kvm_node_hint() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata("/dev/kvm").ok()?;
    let (mode, gid) = (meta.mode() & 0o777, meta.gid());
    if mode & 0o060 == 0o060 && gid != 0 {
        return Some(format!(
            "/dev/kvm is mode {mode:04o}, gid {gid}: join that group, then log in again"
        ));
    }
    Some(format!(
        "/dev/kvm is mode {mode:04o}, gid {gid}, so joining a group does not help: as root, \
         `chgrp kvm /dev/kvm && chmod 0660 /dev/kvm` (a udev rule keeps it across boots)"
    ))
}

fn check_hardware() -> Check {
    let vendor = ["kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|m| std::path::Path::new("/sys/module").join(m).exists());
    let cpu_has_virt = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .filter(|l| l.starts_with("flags"))
            .flat_map(|l| l.split_whitespace())
            .any(|flag| flag == "vmx" || flag == "svm")
    });
    kvm_flavour(host::is_pvm(), vendor, cpu_has_virt)
}

fn check_ioregion(kvm: Option<&Kvm>) -> Check {
    const NAME: &str = "KVM_SET_IOREGION";
    const HINT: &str = "our KVM patch lives in kernel/; ci/build-kvm-ioregion.sh builds kvm.ko \
                        and kvm-amd.ko from it and ci/test-kvm-ioregion.sh runs them in the rig";
    let Some(kvm) = kvm else {
        return Check::not_ok(
            NAME,
            false,
            Status::Warning,
            "not checked: no /dev/kvm",
            None,
        );
    };
    let vm = match kvm.create_vm() {
        Ok(vm) => vm,
        Err(e) => {
            return Check::not_ok(
                NAME,
                false,
                Status::Warning,
                format!("not checked: cannot create a VM: {e}"),
                None,
            );
        }
    };
    // The address the VMM probes at too; this VM has nothing there.
    use vmm::layout::{PCI_MMIO_SIZE, PCI_MMIO_START};
    let scratch = PCI_MMIO_START + PCI_MMIO_SIZE - 0x1000;
    match vmm::ioregion::probe(&vm, scratch) {
        vmm::ioregion::Probe::Available => Check::ok(
            NAME,
            false,
            if vmm::ioregion::kernel::counts_posted_writes(&vm, scratch) {
                "available: ioregionfd=auto lets KVM serve region fds itself; it counts the \
                 writes it posts, so it can leave the mirrored registers to the VMM (reads from \
                 the page, writes posted by the VMM)"
            } else {
                "available: ioregionfd=auto lets KVM serve region fds itself; it does not count \
                 the writes it posts (no KVM_IOREGION_POSTED_COUNT), so every register read \
                 goes through KVM to the remote"
            },
        ),
        vmm::ioregion::Probe::Unavailable { errno } => Check::not_ok(
            NAME,
            false,
            Status::Warning,
            format!(
                "not in this kernel ({}; no mainline kernel has it): ioregionfd=auto uses \
                 vCPU threads, ioregionfd=kernel fails",
                std::io::Error::from_raw_os_error(errno)
            ),
            Some(HINT),
        ),
    }
}

fn check_irqfd_resample(kvm: Option<&Kvm>) -> Check {
    const NAME: &str = "irqfd resample";
    let Some(kvm) = kvm else {
        return Check::not_ok(
            NAME,
            true,
            Status::Warning,
            "not checked: no /dev/kvm",
            None,
        );
    };
    if kvm.check_extension(Cap::IrqfdResample) {
        Check::ok(
            NAME,
            true,
            "KVM_CAP_IRQFD_RESAMPLE: remotes can drive level-triggered INTx",
        )
    } else {
        Check::not_ok(
            NAME,
            true,
            Status::Missing,
            "KVM lacks KVM_CAP_IRQFD_RESAMPLE, which remote devices' INTx lines need",
            Some("use a kernel whose KVM has irqfd resampling (x86 Linux 3.13 or later)"),
        )
    }
}

fn check_memfd_sealing() -> Check {
    const NAME: &str = "memfd sealing";
    let detail = || -> std::io::Result<()> {
        let file = vmm::sys::memfd(c"vmm-host-check", true)?;
        vmm::sys::add_seals(&file, libc::F_SEAL_SHRINK)
    };
    match detail() {
        Ok(()) => Check::ok(NAME, false, "MFD_ALLOW_SEALING and F_SEAL_SHRINK work"),
        Err(e) => Check::not_ok(
            NAME,
            false,
            Status::Warning,
            format!("{e}: remotes run without the register mirror, mirrored reads go the long way"),
            Some("use a kernel with memfd_create and file sealing (Linux 3.17 or later)"),
        ),
    }
}

fn check_seccomp() -> Check {
    const NAME: &str = "seccomp";
    let action: u32 = libc::SECCOMP_RET_TRAP;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL only reads the u32 it is given,
    // which lives until the call returns; it changes nothing.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    if ret != 0 {
        let e = std::io::Error::last_os_error();
        return Check::not_ok(
            NAME,
            true,
            Status::Missing,
            format!("seccomp filters with SECCOMP_RET_TRAP are not available ({e})"),
            Some(
                "use a kernel with CONFIG_SECCOMP_FILTER, or run the remote unsandboxed \
                 with lsi,sandbox=off",
            ),
        );
    }
    let mode = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| status_field(&s, "Seccomp").map(str::to_string));
    let detail = match mode.as_deref() {
        Some("2") => "filters available; this process is already filtered (a container?), \
                      the remote's filter stacks on that one"
            .to_string(),
        _ => "filters available: remotes sandbox themselves (sandbox=on)".to_string(),
    };
    Check::ok(NAME, true, detail)
}

fn check_user() -> Check {
    // SAFETY: geteuid cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| status_field(&s, "CapEff").and_then(|v| u64::from_str_radix(v, 16).ok()));
    user_switch(euid, cap_eff)
}

pub fn run_checks() -> Vec<Check> {
    let (kvm_check, kvm) = check_kvm();
    vec![
        kvm_check,
        check_hardware(),
        check_irqfd_resample(kvm.as_ref()),
        check_ioregion(kvm.as_ref()),
        check_seccomp(),
        check_memfd_sealing(),
        check_user(),
    ]
}

/// Prints the report; the exit code is 0 when the main job can run here.
pub fn main(args: &[String]) -> i32 {
    match args {
        [] => {}
        [flag] if flag == "--help" || flag == "-h" => {
            println!(
                "Usage: vmm host-check\n\nSays what this host offers the VMM, one line per \
                 item, and what to do about missing pieces. Exits 0 when \
                 `vmm --kernel ... --remote-dev lsi` can run here, 1 otherwise."
            );
            return 0;
        }
        other => {
            eprintln!(
                "vmm host-check: takes no arguments (got {})",
                other.join(" ")
            );
            return 2;
        }
    }
    let checks = run_checks();
    let mut out = std::io::stdout().lock();
    // A closed pipe (`vmm host-check | head -1`) is no reason to panic;
    // the exit code still carries the verdict.
    for check in &checks {
        let _ = writeln!(out, "{}", format_line(check));
    }
    let _ = writeln!(out, "{}", verdict_line(&checks));
    if blockers(&checks).is_empty() { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &'static str, status: Status, needed: bool) -> Check {
        Check {
            name,
            status,
            detail: "d".into(),
            hint: Some("h".into()),
            needed,
        }
    }

    #[test]
    fn only_missing_needed_checks_block_the_main_job() {
        let all_ok = [check("a", Status::Ok, true), check("b", Status::Ok, false)];
        assert!(blockers(&all_ok).is_empty());
        assert!(verdict_line(&all_ok).contains("can run here"));
        let optional = [
            check("a", Status::Ok, true),
            check("b", Status::Missing, false),
            check("c", Status::Warning, true),
        ];
        assert!(blockers(&optional).is_empty());
        let blocked = [
            check("kvm", Status::Missing, true),
            check("b", Status::Missing, false),
            check("pvm", Status::Missing, true),
        ];
        assert_eq!(blockers(&blocked), ["kvm", "pvm"]);
        assert!(verdict_line(&blocked).ends_with("cannot run here: missing kvm, pvm"));
    }

    #[test]
    fn lines_show_status_name_detail_and_hint_unless_ok() {
        assert_eq!(
            format_line(&check("seccomp", Status::Missing, true)),
            "missing seccomp: d -- h"
        );
        assert_eq!(
            format_line(&check("memfd", Status::Warning, false)),
            "warning memfd: d -- h"
        );
        assert_eq!(format_line(&check("x", Status::Ok, true)), "ok      x: d");
        let mut no_hint = check("y", Status::Missing, true);
        no_hint.hint = None;
        assert_eq!(format_line(&no_hint), "missing y: d");
    }

    #[test]
    fn pvm_blocks_and_points_at_the_rig() {
        let c = kvm_flavour(true, Some("kvm_amd"), true);
        assert_eq!((c.status, c.needed), (Status::Missing, true));
        assert!(c.hint.unwrap().contains("ci/rig.sh"));
        assert_eq!(kvm_flavour(false, Some("kvm_amd"), true).status, Status::Ok);
        assert_eq!(kvm_flavour(false, None, true).status, Status::Ok);
        assert_eq!(kvm_flavour(false, None, false).status, Status::Missing);
    }

    #[test]
    fn user_needs_root_with_setuid_caps() {
        let all = Some(u64::MAX);
        assert_eq!(user_switch(0, all).status, Status::Ok);
        assert_eq!(user_switch(0, Some(0)).status, Status::Warning);
        let c = user_switch(1000, all);
        assert_eq!((c.status, c.needed), (Status::Warning, false));
        assert!(c.detail.contains("uid 1000"));
        assert!(c.hint.unwrap().contains("socket="));
    }

    #[test]
    fn status_fields_are_found_by_key() {
        let status = "Name:\tvmm\nSeccomp:\t2\nSeccomp_filters:\t1\nCapEff:\t000001ffffffffff\n";
        assert_eq!(status_field(status, "Seccomp"), Some("2"));
        assert_eq!(status_field(status, "CapEff"), Some("000001ffffffffff"));
        assert_eq!(status_field(status, "Uid"), None);
    }
}
