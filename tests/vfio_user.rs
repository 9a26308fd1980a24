//! End-to-end over vfio-user: QEMU's own client (`vfio-user-pci`, QEMU
//! 11.1 from Debian sid, which `ci/test.sh` fetches with
//! `ci/fetch-qemu.sh sid` and names in `VMM_QEMU_VFIO_USER`) drives our
//! LSI remote (`vmm remote lsi --protocol vfio-user`). The guest's own
//! `sym53c8xx` must find the disk, write a pattern that lands in the image
//! byte for byte, and pass a fio verify job; QEMU and the remote must both
//! exit 0.
//!
//! QEMU runs on this host under TCG: vfio-user needs no KVM, so this test
//! runs outside the KVM test rig.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{Mode, PATTERN_MD5};

/// A guest run's limit: a TCG boot and a small fio job take about 15 s.
const LIMIT: Duration = Duration::from_secs(240);

fn qemu() -> Option<PathBuf> {
    if matches!(common::mode(), Mode::Skip) {
        eprintln!("VMM_SKIP_KVM_TESTS=1: skipping the vfio-user guest tests");
        return None;
    }
    let path = std::env::var_os("VMM_QEMU_VFIO_USER").unwrap_or_else(|| {
        panic!(
            "set VMM_QEMU_VFIO_USER to a QEMU with vfio-user-pci (10.1 or later); \
             ci/test.sh sets it to the one ci/fetch-qemu.sh sid fetches"
        )
    });
    Some(PathBuf::from(path))
}

/// Waits for `child` up to `limit`; kills it past that.
fn wait(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

struct Run {
    guest: String,
    remote: String,
}

/// Boots the test guest in QEMU with our remote as its vfio-user LSI on
/// `image`, running guest script `script`.
fn run(qemu: &Path, image: &Path, script: &str) -> Run {
    let dir = image.parent().unwrap();
    let socket = dir.join(format!("{script}.sock"));
    let remote_log = dir.join(format!("{script}-remote.log"));
    let mut remote = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args([
            "remote",
            "lsi",
            "--protocol",
            "vfio-user",
            "--log-level",
            "info",
        ])
        .arg("--socket")
        .arg(&socket)
        .arg("--disk")
        .arg(image)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&remote_log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let guest = common::build_guest();
    let mut qemu = Command::new(qemu)
        .args([
            "-accel",
            "tcg",
            "-m",
            "512M",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args(["-object", "memory-backend-memfd,id=mem,size=512M"])
        .args([
            "-machine",
            "pc,memory-backend=mem",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(guest.join("bzImage"))
        .arg("-initrd")
        .arg(guest.join("initramfs.cpio.gz"))
        .args(["-append", &format!("console=ttyS0 quiet vmm.run={script}")])
        .arg("-device")
        .arg(format!(
            "{{\"driver\":\"vfio-user-pci\",\"socket\":{{\"type\":\"unix\",\"path\":\"{}\"}}}}",
            socket.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = qemu.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let qemu_status = wait(&mut qemu, LIMIT);
    let mut guest = reader.join().unwrap();
    let mut err = String::new();
    let _ = qemu.stderr.take().unwrap().read_to_string(&mut err);
    guest.push_str(&err);
    let remote_status = wait(&mut remote, Duration::from_secs(10));
    let remote = std::fs::read_to_string(&remote_log).unwrap_or_default();
    eprintln!("--- guest ({script}) ---\n{guest}--- remote ---\n{remote}");
    assert_eq!(
        qemu_status.and_then(|s| s.code()),
        Some(0),
        "QEMU did not exit 0 within {LIMIT:?}"
    );
    assert_eq!(
        remote_status.and_then(|s| s.code()),
        Some(0),
        "the remote did not exit 0 once QEMU had gone"
    );
    assert!(remote.contains("VMM disconnected; exiting"), "{remote}");
    Run { guest, remote }
}

fn image(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-vfio-user-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(64 << 20).unwrap();
    path
}

#[test]
fn qemu_vfio_user_pci_writes_a_pattern_through_our_lsi_that_lands_in_the_image() {
    let Some(qemu) = qemu() else { return };
    let img = image("pattern.img");
    let r = run(&qemu, &img, "disk-pattern");
    assert!(
        r.guest.contains("VMM-GUEST: disk found: 131072 sectors"),
        "{}",
        r.guest
    );
    assert!(
        r.guest
            .contains(&format!("VMM-GUEST: pattern ok {PATTERN_MD5}")),
        "{}",
        r.guest
    );
    let bytes = std::fs::read(&img).unwrap();
    let landed = &bytes[256 * 4096..272 * 4096];
    let expected: Vec<u8> = b"VMM-PATTERN-0123456789abcdef\n"
        .iter()
        .copied()
        .cycle()
        .take(65536)
        .collect();
    assert!(
        landed == &expected[..],
        "the image does not hold the pattern"
    );
    assert!(
        r.remote.contains("vfio-user client: version 0.0"),
        "{}",
        r.remote
    );
}

#[test]
fn qemu_vfio_user_pci_runs_fio_verify_on_our_lsi() {
    let Some(qemu) = qemu() else { return };
    let img = image("fio.img");
    let r = run(&qemu, &img, "fio-verify");
    assert!(r.guest.contains("VMM-GUEST: fio done: ok"), "{}", r.guest);
    // fio's verify header (magic 0xacca) on the blocks it wrote.
    let bytes = std::fs::read(&img).unwrap();
    let written = bytes
        .chunks(4096)
        .filter(|b| b[..2] == [0xca, 0xac])
        .count();
    assert!(written >= 256, "only {written} blocks carry fio's header");
}
