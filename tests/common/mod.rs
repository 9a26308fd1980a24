//! Runs batches of guest scenarios under real KVM: directly where /dev/kvm
//! is hardware-backed, otherwise inside the KVM test rig (ci/rig.sh), with
//! every scenario of a test binary sharing one rig boot.
//!
//! A scenario is a shell snippet run with $VMM (the vmm binary), $KERNEL and
//! $INITRD (the test guest) set. Its output and exit status come back to the
//! test that asked for it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Scenario {
    pub name: &'static str,
    pub script: String,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub output: String,
    pub status: i32,
}

/// md5 of the 64 KiB that guest/scripts/disk-pattern writes at 1 MiB
/// ("VMM-PATTERN-0123456789abcdef\n" repeated).
pub const PATTERN_MD5: &str = "490a7713ff7577db95d6c2771a902087";

impl Outcome {
    /// The disk-pattern script found a 64 MiB disk, read its pattern back,
    /// and the scenario found the same bytes in the image ("image md5").
    pub fn assert_pattern_landed(&self) {
        self.assert_contains("VMM-GUEST: disk found: 131072 sectors");
        self.assert_contains(&format!("VMM-GUEST: pattern ok {PATTERN_MD5}"));
        self.assert_contains(&format!("image md5 {PATTERN_MD5}"));
    }

    pub fn assert_contains(&self, needle: &str) {
        assert!(
            self.output.contains(needle),
            "expected {needle:?} in the output:\n{}",
            self.output
        );
    }
}

pub enum Mode {
    /// Hardware-backed /dev/kvm on this host.
    Local,
    /// The KVM test rig.
    Rig,
    /// VMM_SKIP_KVM_TESTS=1: the caller skips.
    Skip,
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn hardware_kvm() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_vt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    Path::new("/dev/kvm").exists() && !Path::new("/sys/module/kvm_pvm").exists() && has_vt
}

pub fn mode() -> Mode {
    if std::env::var("VMM_SKIP_KVM_TESTS").as_deref() == Ok("1") {
        return Mode::Skip;
    }
    match std::env::var("VMM_TEST_MODE").as_deref() {
        Ok("rig") => Mode::Rig,
        Ok("local") => Mode::Local,
        _ if hardware_kvm() => Mode::Local,
        _ => Mode::Rig,
    }
}

const BEGIN: &str = "=== SCENARIO-BEGIN ";
const END: &str = "=== SCENARIO-END ";

/// The script that runs every scenario in turn and frames its output.
fn batch_script(
    scenarios: &[Scenario],
    vmm: &str,
    guest: &str,
    repo: &str,
    pairexec: &str,
    timeout_s: u32,
) -> String {
    let mut s = String::from("set +e\n");
    s.push_str(&format!(
        "export VMM={vmm} KERNEL={guest}/bzImage INITRD={guest}/initramfs.cpio.gz REPO={repo} \
         PAIREXEC={pairexec}\n"
    ));
    for sc in scenarios {
        s.push_str(&format!(
            "echo '{BEGIN}{name} ==='\ncat > /tmp/scenario-{name}.sh <<'VMM_SCENARIO_EOF'\n{script}\nVMM_SCENARIO_EOF\n\
             timeout {timeout_s} sh /tmp/scenario-{name}.sh 2>&1\necho \"{END}{name} rc=$? ===\"\n",
            name = sc.name,
            script = sc.script
        ));
    }
    s
}

/// Splits framed output into per-scenario outcomes.
pub fn parse_batch(output: &str) -> HashMap<String, Outcome> {
    let mut results = HashMap::new();
    let mut current: Option<(String, String)> = None;
    for line in output.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix(BEGIN) {
            current = Some((rest.trim_end_matches(" ===").to_string(), String::new()));
        } else if let Some(rest) = line.strip_prefix(END) {
            let rest = rest.trim_end_matches(" ===");
            if let (Some((name, text)), Some((_, rc))) = (current.take(), rest.rsplit_once(" rc="))
            {
                let status = rc.parse().unwrap_or(-1);
                results.insert(
                    name,
                    Outcome {
                        output: text,
                        status,
                    },
                );
            }
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    results
}

fn build_guest() -> PathBuf {
    let out = Command::new(repo_root().join("guest/build.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run guest/build.sh");
    assert!(out.status.success(), "guest/build.sh failed");
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap(),
    )
}

/// Runs all scenarios; panics loudly if they cannot run at all.
/// A test binary's batch, run once: later tests get the same results, or
/// the same failure at once instead of booting the rig again.
pub type BatchCell = std::sync::OnceLock<Result<HashMap<String, Outcome>, String>>;

pub fn run_once(
    cell: &'static BatchCell,
    run: impl FnOnce() -> HashMap<String, Outcome> + std::panic::UnwindSafe,
) -> &'static HashMap<String, Outcome> {
    let result = cell.get_or_init(|| {
        std::panic::catch_unwind(run).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the batch panicked".into())
        })
    });
    match result {
        Ok(results) => results,
        Err(e) => panic!("the scenario batch failed (see the first failing test): {e:.2000}"),
    }
}

pub fn run_batch(scenarios: &[Scenario], timeout_s: u32) -> HashMap<String, Outcome> {
    run_batch_with(scenarios, timeout_s, false)
}

/// As `run_batch`; `with_qemu` makes Debian's QEMU available to the scenarios.
pub fn run_batch_with(
    scenarios: &[Scenario],
    timeout_s: u32,
    with_qemu: bool,
) -> HashMap<String, Outcome> {
    let (output, how) = match mode() {
        Mode::Skip => panic!("run_batch called with VMM_SKIP_KVM_TESTS=1"),
        Mode::Local => {
            let guest = build_guest();
            // QEMU's multiprocess mode needs ci/tools/pairexec.c as its launcher.
            let pairexec = repo_root().join("build/tools/pairexec");
            if with_qemu {
                std::fs::create_dir_all(pairexec.parent().unwrap()).unwrap();
                let built = Command::new("gcc")
                    .args(["-static", "-O2", "-o"])
                    .arg(&pairexec)
                    .arg(repo_root().join("ci/tools/pairexec.c"))
                    .status()
                    .expect("run gcc");
                assert!(built.success(), "building ci/tools/pairexec.c failed");
            }
            let script = batch_script(
                scenarios,
                env!("CARGO_BIN_EXE_vmm"),
                guest.to_str().unwrap(),
                repo_root().to_str().unwrap(),
                pairexec.to_str().unwrap(),
                timeout_s,
            );
            let out = Command::new("sh")
                .arg("-c")
                .arg(script)
                .stdin(Stdio::null())
                .output()
                .expect("run scenarios");
            (
                String::from_utf8_lossy(&out.stdout).into_owned(),
                "hardware KVM",
            )
        }
        Mode::Rig => {
            let script = batch_script(
                scenarios,
                "/rig/vmm",
                "/rig/guest",
                "/rig/extra",
                "/rig/pairexec",
                timeout_s,
            );
            let path = std::env::temp_dir().join(format!("vmm-rig-{}.sh", std::process::id()));
            std::fs::write(&path, script).unwrap();
            let total = 120 + timeout_s * scenarios.len() as u32;
            // The rig's own kernel (KVM on QEMU's emulated nested SVM)
            // sometimes panics mid-batch; that says nothing about our code,
            // so such a batch is run once more, loudly.
            // A batch that ran into the rig's timeout is not run again.
            let mut bytes = Vec::new();
            for attempt in 1..=2 {
                let started = std::time::Instant::now();
                bytes = run_rig(&path, total, with_qemu);
                let early = started.elapsed().as_secs() + 60 < u64::from(total);
                if String::from_utf8_lossy(&bytes).contains("RIG-EXIT:") || !early {
                    break;
                }
                eprintln!(
                    "the KVM test rig went down before the batch finished (attempt {attempt} of 2)"
                );
            }
            let _ = std::fs::remove_file(&path);
            let text = String::from_utf8_lossy(&bytes).into_owned();
            assert!(
                text.contains("RIG: ready, /dev/kvm present"),
                "the KVM test rig did not come up with /dev/kvm:\n{text}"
            );
            (text, "the KVM test rig")
        }
    };
    let results = parse_batch(&output);
    for sc in scenarios {
        assert!(
            results.contains_key(sc.name),
            "scenario {} did not run in {how}; full output:\n{output}",
            sc.name
        );
    }
    eprintln!("ran {} scenarios in {how}", scenarios.len());
    results
}

#[test]
fn batch_output_parses_into_scenarios() {
    let text = "noise\n=== SCENARIO-BEGIN a ===\nline 1\r\nline 2\n=== SCENARIO-END a rc=3 ===\n\
                === SCENARIO-BEGIN b ===\n=== SCENARIO-END b rc=0 ===\n";
    let r = parse_batch(text);
    assert_eq!(r["a"].output, "line 1\nline 2\n");
    assert_eq!(r["a"].status, 3);
    assert_eq!(r["b"].status, 0);
}

/// One boot of the rig on `script`; its console output.
fn run_rig(script: &std::path::Path, total: u32, with_qemu: bool) -> Vec<u8> {
    let mut rig = Command::new(repo_root().join("ci/rig.sh"));
    rig.args(["--timeout", &total.to_string()]);
    if with_qemu {
        rig.arg("--with-qemu");
    }
    let mut child = rig
        .args(["--extra", repo_root().join("ci").to_str().unwrap()])
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run ci/rig.sh");
    // VMM_RIG_LOG=FILE follows the rig's console while it runs.
    let mut log = std::env::var_os("VMM_RIG_LOG")
        .map(|p| std::fs::File::create(p).expect("create VMM_RIG_LOG"));
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut stdout = child.stdout.take().expect("piped stdout");
    loop {
        use std::io::{Read, Write};
        let n = stdout.read(&mut chunk).expect("read the rig's console");
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        if let Some(f) = log.as_mut() {
            let _ = f.write_all(&chunk[..n]);
        }
    }
    let _ = child.wait();
    bytes
}
