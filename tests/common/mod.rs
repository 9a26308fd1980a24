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

#[derive(Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub script: String,
}

/// `VMM_SCENARIOS=a,b` runs only those scenarios of a batch, for working
/// on one fault without waiting for the rest; CI never sets it.
fn is_selected(name: &str) -> bool {
    match std::env::var("VMM_SCENARIOS") {
        Ok(list) => list.split(',').any(|n| n.trim() == name),
        Err(_) => true,
    }
}

/// A scenario's outcome, or None (the test then passes vacuously) when
/// `VMM_SCENARIOS` left it out.
pub fn pick(results: &'static HashMap<String, Outcome>, name: &str) -> Option<&'static Outcome> {
    if !is_selected(name) {
        eprintln!("{name}: not in VMM_SCENARIOS, skipped");
        return None;
    }
    Some(&results[name])
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

    /// In the rig: the scenario's VMM stopped every process it started
    /// (the sweep after each scenario found none).
    pub fn assert_nothing_left_running(&self) {
        assert!(
            !self.output.contains("left running: "),
            "processes outlived the scenario:\n{}",
            self.output
        );
    }

    /// Every "`what` exited N" line of the scenario has exactly `code`
    /// (a plain substring match would let "exited 1" pass for 101, 139 or
    /// 143), and there is at least one.
    pub fn assert_exited(&self, what: &str, code: i32) {
        let codes = exit_codes(&self.output, what);
        assert!(
            !codes.is_empty() && codes.iter().all(|&c| c == Some(code)),
            "expected \"{what} exited {code}\", found {codes:?} in the output:\n{}",
            self.output
        );
    }

    pub fn assert_contains(&self, needle: &str) {
        assert!(
            self.output.contains(needle),
            "expected {needle:?} in the output:\n{}",
            self.output
        );
    }
}

/// The status after each "`what` exited " in `output` (None where no
/// number follows).
fn exit_codes(output: &str, what: &str) -> Vec<Option<i32>> {
    let needle = format!("{what} exited ");
    output
        .match_indices(&needle)
        .map(|(at, _)| {
            let rest = &output[at + needle.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

#[test]
fn exit_codes_are_read_whole() {
    let out = "vmm exited 101\nread-write: vmm exited 1\nvmm exited 0\n";
    assert_eq!(exit_codes(out, "vmm"), [Some(101), Some(1), Some(0)]);
    assert_eq!(exit_codes(out, "read-write: vmm"), [Some(1)]);
    assert_eq!(exit_codes("qemu exited \n", "qemu"), [None]);
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

/// Processes that a scenario in the rig may start. Any still running when
/// it ends are killed, so the next scenario starts clean: busybox's
/// `timeout` signals only the scenario's shell, so a VMM that a timeout
/// left behind would otherwise keep its remote, and the remote its disk
/// image locked, into the scenarios after it (CI of cd4e0f4).
const RIG_PROCESSES: &str = "vmm qemu-system-x86_64 pairexec vfio_user_toy";

/// The script that runs every scenario in turn and frames its output.
/// A scenario writes to a file that `tail -f` streams: a process it left
/// running cannot hold the stream open, and the file is there to search.
/// With `sweep`, leftovers of each scenario are named in its output
/// ("left running: ...") and killed.
fn batch_script(
    scenarios: &[&Scenario],
    vmm: &str,
    guest: &str,
    repo: &str,
    pairexec: &str,
    timeout_s: u32,
    sweep: Option<&str>,
) -> String {
    let mut s = String::from("set +e\n");
    s.push_str(&format!(
        "export VMM={vmm} KERNEL={guest}/bzImage INITRD={guest}/initramfs.cpio.gz REPO={repo} \
         PAIREXEC={pairexec}\n"
    ));
    if sweep.is_some() {
        s.push_str(RIG_TRACE_SETUP);
    }
    for sc in scenarios {
        s.push_str(&format!(
            "echo '{BEGIN}{name} ==='\ncat > /tmp/scenario-{name}.sh <<'VMM_SCENARIO_EOF'\n{script}\nVMM_SCENARIO_EOF\n\
             : > /tmp/scenario.out; tail -n +1 -f /tmp/scenario.out & tailer=$!\n\
             {dumper}timeout -k 10 {timeout_s} sh /tmp/scenario-{name}.sh > /tmp/scenario.out 2>&1\nrc=$?\n\
             {undumper}{sweep}sleep 1.5; kill $tailer; wait $tailer 2>/dev/null\n{trace}echo \"{END}{name} rc=$rc ===\"\n",
            name = sc.name,
            script = sc.script,
            sweep = sweep.map(sweep_script).unwrap_or_default(),
            trace = if sweep.is_some() { RIG_TRACE_TAIL } else { "" },
            dumper = if sweep.is_some() {
                dump_before_timeout(timeout_s)
            } else {
                String::new()
            },
            undumper = if sweep.is_some() {
                "pkill -P $dumper 2>/dev/null; kill $dumper 2>/dev/null\n"
            } else {
                ""
            },
        ));
    }
    s
}

/// In the rig: 15 s before a scenario's time limit, every vmm process (the
/// VMM and its remotes) is asked for a state dump (`kill -USR2`), so a
/// scenario that is about to be killed leaves its evidence.
fn dump_before_timeout(timeout_s: u32) -> String {
    format!(
        "( sleep {}; echo 'harness: 15 s before the time limit, asking every vmm process for a state dump' \
         >> /tmp/scenario.out; for p in $(pidof vmm); do kill -USR2 $p; done ) & dumper=$!\n",
        timeout_s.saturating_sub(15)
    )
}

/// In the rig, the rig kernel keeps a small ring of KVM's view of the
/// guest (exits, injected interrupts, nested exits), so that a scenario
/// that fails shows what KVM saw last.
const RIG_TRACE_SETUP: &str = "T=/sys/kernel/tracing\n\
    mount -t tracefs nodev $T 2>/dev/null\n\
    if [ -w $T/set_event ]; then echo 512 > $T/buffer_size_kb; \
    echo 'kvm:kvm_exit kvm:kvm_inj_virq kvm:kvm_nested_vmexit' > $T/set_event; echo 1 > $T/tracing_on; \
    else echo 'rig: no tracefs, no KVM trace on failures'; fi\n";

/// After a scenario: a failed one (non-zero status, a triple fault, a
/// guest lockup or a timeout in its output) prints the tail of that ring;
/// the ring starts empty for the next one.
const RIG_TRACE_TAIL: &str = "if [ -r $T/trace ]; then \
    if [ \"$rc\" != 0 ] || grep -qE 'triple fault|soft lockup|Kernel panic|did not answer|timed out' /tmp/scenario.out; then \
    echo '--- the rig kernel KVM trace, last 150 events'; grep -v '^#' $T/trace | tail -n 150; echo '--- end of KVM trace'; fi; \
    echo > $T/trace; fi\n";

/// Shell lines that name and kill the processes in `names` that are still
/// running, then wait up to 10 s for them to be gone (and their files
/// closed).
fn sweep_script(names: &str) -> String {
    format!(
        "for p in $(pidof {names}); do echo \"left running: $p $(tr '\\0' ' ' < /proc/$p/cmdline)\"; \
         kill -9 $p; done\n\
         i=0; while [ -n \"$(pidof {names})\" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n"
    )
}

/// The scenario a framing line starts, if it is a BEGIN line.
fn begun_scenario(line: &str) -> Option<&str> {
    line.strip_prefix(BEGIN)
        .map(|rest| rest.trim_end_matches(" ==="))
}

/// Splits framed output into per-scenario outcomes.
pub fn parse_batch(output: &str) -> HashMap<String, Outcome> {
    let mut results = HashMap::new();
    let mut current: Option<(String, String)> = None;
    for line in output.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(name) = begun_scenario(line) {
            current = Some((name.to_string(), String::new()));
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

pub fn build_guest() -> PathBuf {
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
    run_batch_inner(scenarios, timeout_s, None)
}

/// The QEMU builds a batch's scenarios use besides our VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qemu {
    /// Debian's (the interop peer and baseline), with $PAIREXEC for its
    /// multiprocess mode.
    Debian,
    /// Debian's, and Debian sid's 11.1 for its vfio-user-pci client: in
    /// the rig /opt/qemu-sid/qemu-system-x86_64 (ci/qemu-sid-overlay.sh),
    /// on hardware KVM whatever `VMM_QEMU_VFIO_USER` names.
    DebianAndSid,
}

/// As `run_batch`, with `qemu` available to the scenarios.
pub fn run_batch_with(
    scenarios: &[Scenario],
    timeout_s: u32,
    qemu: Qemu,
) -> HashMap<String, Outcome> {
    run_batch_inner(scenarios, timeout_s, Some(qemu))
}

fn run_batch_inner(
    scenarios: &[Scenario],
    timeout_s: u32,
    qemu: Option<Qemu>,
) -> HashMap<String, Outcome> {
    let scenarios: Vec<Scenario> = scenarios
        .iter()
        .filter(|sc| is_selected(sc.name))
        .cloned()
        .collect();
    let scenarios = &scenarios[..];
    let (output, how) = match mode() {
        Mode::Skip => panic!("run_batch called with VMM_SKIP_KVM_TESTS=1"),
        Mode::Local => {
            let guest = build_guest();
            // QEMU's multiprocess mode needs ci/tools/pairexec.c as its launcher.
            let pairexec = repo_root().join("build/tools/pairexec");
            if qemu.is_some() {
                std::fs::create_dir_all(pairexec.parent().unwrap()).unwrap();
                let built = Command::new("gcc")
                    .args(["-static", "-O2", "-o"])
                    .arg(&pairexec)
                    .arg(repo_root().join("ci/tools/pairexec.c"))
                    .status()
                    .expect("run gcc");
                assert!(built.success(), "building ci/tools/pairexec.c failed");
            }
            let all: Vec<&Scenario> = scenarios.iter().collect();
            let script = batch_script(
                &all,
                env!("CARGO_BIN_EXE_vmm"),
                guest.to_str().unwrap(),
                repo_root().to_str().unwrap(),
                pairexec.to_str().unwrap(),
                timeout_s,
                None,
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
        Mode::Rig => (run_in_rig(scenarios, timeout_s, qemu), "the KVM test rig"),
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

/// Runs the batch in the rig. A scenario's failure is the test's failure,
/// whatever it was: a timeout, a guest that triple-faulted or locked up,
/// a wrong result. The one exception is the rig itself failing: its own
/// kernel's panic, oops or lockup in its log (which ci/rig.sh keeps apart
/// from everything the scenarios print), or the whole rig frozen, so that
/// not even a scenario's own timeout inside it fired. Then the scenarios
/// it did not finish get one more rig boot, announced on the test's real stderr (libtest
/// does not capture it, so CI's log shows it) and counted in the retry log
/// that ci/test.sh sums up at the end.
fn run_in_rig(scenarios: &[Scenario], timeout_s: u32, qemu: Option<Qemu>) -> String {
    let mut finished = HashMap::new();
    let mut output = String::new();
    for attempt in 1..=2 {
        let pending: Vec<&Scenario> = scenarios
            .iter()
            .filter(|s| !finished.contains_key(s.name))
            .collect();
        if pending.is_empty() {
            break;
        }
        let script = batch_script(
            &pending,
            "/rig/vmm",
            "/rig/guest",
            "/rig/extra",
            "/rig/pairexec",
            timeout_s,
            Some(RIG_PROCESSES),
        );
        let path = std::env::temp_dir().join(format!("vmm-rig-{}.sh", std::process::id()));
        let l1_path =
            std::env::temp_dir().join(format!("vmm-rig-{}-l1-{attempt}.log", std::process::id()));
        std::fs::write(&path, script).unwrap();
        let total = 120 + timeout_s * pending.len() as u32;
        // A scenario's own `timeout` fires inside the rig; past this much
        // wall time the rig itself has stopped making progress.
        let stall = std::time::Duration::from_secs(u64::from(timeout_s) + 120);
        let run = run_rig(&path, &l1_path, total, stall, qemu);
        if let Some(where_) = &run.rig_cpu {
            notice(&format!(
                "where the rig's CPU was when it went silent:\n{where_}"
            ));
        }
        let _ = std::fs::remove_file(&path);
        let l1_log = std::fs::read_to_string(&l1_path).unwrap_or_default();
        let _ = std::fs::remove_file(&l1_path);
        assert!(
            run.console.contains("RIG: ready, /dev/kvm present"),
            "the KVM test rig did not come up with /dev/kvm:\n{}\nits kernel log:\n{}",
            run.console,
            tail(&l1_log, 60)
        );
        let results = parse_batch(&run.console);
        let ran: Vec<String> = results.keys().cloned().collect();
        finished.extend(results);
        output.push_str(&run.console);
        let unfinished: Vec<&str> = pending
            .iter()
            .map(|s| s.name)
            .filter(|n| !ran.iter().any(|r| r == n))
            .collect();
        if unfinished.is_empty() {
            break;
        }
        // The rig itself failed when its kernel says so, or when it froze
        // whole: nothing inside it ran any more, not even the scenario's
        // own `timeout` (which ends a scenario whose guest hangs, inside a
        // rig that still runs), for 120 s past that timeout. Then the
        // monitor's registers (rig_cpu) are the evidence.
        let death = l1_death(&l1_log)
            .map(|d| format!("its own kernel said \"{d}\""))
            .or_else(|| {
                run.stalled
                    .as_ref()
                    .map(|s| format!("the whole rig froze ({s})"))
            });
        let what = format!(
            "the KVM test rig went down (boot {attempt} of at most 2): {}; {} scenario(s) \
             unfinished: {}",
            death.clone().unwrap_or_else(|| run.why_it_ended()),
            unfinished.len(),
            unfinished.join(", ")
        );
        output.push_str(&format!(
            "\n{what}\nthe rig kernel's log ends:\n{}\n{}",
            tail(&l1_log, 60),
            run.rig_cpu.as_deref().unwrap_or_default()
        ));
        match death {
            Some(_) if attempt == 1 => {
                report_retry(&format!(
                    "{what}\nRIG RETRY: the rig itself failed, so they get one more rig boot. \
                     Its kernel's log ends:\n{}\n{}",
                    tail(&l1_log, 40),
                    run.rig_cpu.as_deref().unwrap_or_default()
                ));
            }
            _ => {
                // Without the rig's kernel to blame, the failure is ours
                // to explain: no second boot.
                notice(&format!(
                    "{what}\nno retry: {}",
                    if attempt == 1 {
                        "the rig's own kernel shows no failure and the rig did not freeze"
                    } else {
                        "this was the second boot"
                    }
                ));
                break;
            }
        }
    }
    output
}

/// Signs in the rig kernel's own log that it failed, one per line (shared
/// with ci/lib.sh and ci/soak-table.py); the first line that shows one.
fn l1_death(l1_log: &str) -> Option<String> {
    const SIGNS: &str = include_str!("../../ci/l1-death-signs.txt");
    let signs: Vec<&str> = SIGNS.lines().filter(|s| !s.trim().is_empty()).collect();
    l1_log
        .lines()
        .find(|l| signs.iter().any(|s| l.contains(s)))
        .map(|l| l.trim().to_string())
}

/// Writes to the test process's real stderr: libtest captures `eprintln!`
/// of a passing test, and a notice that CI's log never shows is no notice.
fn notice(text: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "\n{text}\n");
}

/// A retry is announced and counted: ci/test.sh prints the count (and
/// the reasons) at the end of the run from `VMM_RIG_RETRY_LOG`.
fn report_retry(text: &str) {
    use std::io::Write;
    notice(text);
    let path = std::env::var_os("VMM_RIG_RETRY_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build/rig-retries.log"));
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let first = text.lines().next().unwrap_or_default();
        let _ = writeln!(f, "{first}");
    }
}

#[test]
fn only_the_rig_kernels_own_failures_count_as_its_death() {
    let l1 = "[    1.0] kvm: Nested Virtualization enabled\n\
              [  300.1] watchdog: BUG: soft lockup - CPU#0 stuck for 258s! [vcpu0:123]\n";
    assert_eq!(
        l1_death(l1).as_deref(),
        Some("[  300.1] watchdog: BUG: soft lockup - CPU#0 stuck for 258s! [vcpu0:123]")
    );
    assert_eq!(l1_death("[    1.0] kvm: Nested Paging enabled\n"), None);
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What one rig boot printed, and whether the watchdog had to stop it.
struct RigRun {
    console: String,
    stalled: Option<String>,
    /// What ci/rig-where.py said of the rig's CPU before a stalled rig
    /// was stopped.
    rig_cpu: Option<String>,
}

impl RigRun {
    /// The likeliest reason the rig ended before its batch did.
    fn why_it_ended(&self) -> String {
        if let Some(s) = &self.stalled {
            return s.clone();
        }
        "it ended without a reason on its console".into()
    }
}

/// One boot of the rig on `script`. The rig runs in its own process group,
/// so that the watchdog can stop QEMU with it when one scenario has run for
/// longer than `stall`.
fn run_rig(
    script: &std::path::Path,
    l1_log: &std::path::Path,
    total: u32,
    stall: std::time::Duration,
    qemu: Option<Qemu>,
) -> RigRun {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    use std::time::Instant;

    let mut rig = Command::new(repo_root().join("ci/rig.sh"));
    rig.args(["--timeout", &total.to_string()]);
    rig.arg("--l1-log").arg(l1_log);
    let monitor = l1_log.with_extension("monitor");
    rig.arg("--monitor").arg(&monitor);
    if qemu.is_some() {
        rig.arg("--with-qemu");
    }
    if qemu == Some(Qemu::DebianAndSid) {
        rig.arg("--with-qemu-sid");
    }
    let mut child = rig
        .args(["--extra", repo_root().join("ci").to_str().unwrap()])
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("run ci/rig.sh");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 || tx.send(chunk[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    // VMM_RIG_LOG=FILE follows the rig's console while it runs; a second
    // boot appends, so what stalled the first stays readable.
    let mut log = std::env::var_os("VMM_RIG_LOG").map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .expect("open VMM_RIG_LOG")
    });
    let mut bytes = Vec::new();
    let mut scanned = 0;
    let mut running: Option<(String, Instant)> = None;
    let mut stalled = None;
    let mut rig_cpu = None;
    loop {
        match rx.recv_timeout(std::time::Duration::from_secs(1)) {
            Ok(chunk) => {
                if let Some(f) = log.as_mut() {
                    let _ = f.write_all(&chunk);
                }
                bytes.extend_from_slice(&chunk);
                while let Some(nl) = bytes[scanned..].iter().position(|&b| b == b'\n') {
                    let line = String::from_utf8_lossy(&bytes[scanned..scanned + nl]);
                    if let Some(name) = begun_scenario(line.trim_end()) {
                        running = Some((name.to_string(), Instant::now()));
                    } else if line.starts_with(END) {
                        running = None;
                    }
                    scanned += nl + 1;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let Some((name, since)) = &running
            && stalled.is_none()
            && since.elapsed() > stall
        {
            stalled = Some(format!(
                "scenario {name} was still running after {} s, past its own timeout \
                 inside the rig, so the rig had stopped and the watchdog ended it",
                since.elapsed().as_secs()
            ));
            // Before it goes: where the rig's CPU is (a spin, an idle
            // hlt, the nested guest), from QEMU's monitor.
            let map = format!("{}.map", monitor.display());
            rig_cpu = Command::new(repo_root().join("ci/rig-where.py"))
                .arg(&monitor)
                .arg(&map)
                .output()
                .ok()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout).into_owned()
                        + &String::from_utf8_lossy(&o.stderr)
                });
            // The whole group: rig.sh (whose exit trap cleans up), its
            // timeout and QEMU.
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        }
    }
    let _ = child.wait();
    let _ = std::fs::remove_file(&monitor);
    let _ = std::fs::remove_file(format!("{}.map", monitor.display()));
    RigRun {
        console: String::from_utf8_lossy(&bytes).into_owned(),
        stalled,
        rig_cpu,
    }
}

#[test]
fn a_batch_streams_each_scenarios_output_and_status() {
    let scenarios = [
        Scenario {
            name: "a",
            script: "echo one\necho two >&2\nexit 3".into(),
        },
        Scenario {
            name: "b",
            // A process left running must not hold the batch up.
            script: "sleep 30 &\necho three".into(),
        },
    ];
    let all: Vec<&Scenario> = scenarios.iter().collect();
    let script = batch_script(&all, "vmm", "/guest", "/repo", "pairexec", 20, None);
    let started = std::time::Instant::now();
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        started.elapsed().as_secs() < 15,
        "the batch waited for a leftover"
    );
    let r = parse_batch(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(r["a"].output, "one\ntwo\n");
    assert_eq!(r["a"].status, 3);
    assert_eq!(r["b"].output, "three\n");
    assert_eq!(r["b"].status, 0);
}
