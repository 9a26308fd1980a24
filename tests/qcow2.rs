//! qcow2 images that QEMU's own tools made and check, through our SCSI disk
//! (`vmm::scsi::ScsiDisk`, the code the remote runs), on this host: no
//! guest, no KVM. Needs `qemu-img` and `qemu-io` (Debian's qemu-utils;
//! `ci/test.sh` installs it). The same images driven by a guest, and
//! QEMU's LSI reading what ours wrote, are in `tests/remote_qemu.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

use vmm::scsi::image::Format;
use vmm::scsi::{DiskOptions, ScsiDisk};

fn tool(name: &str, args: &[&str]) -> String {
    let out = Command::new(name).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {name} ({e}): install qemu-utils (ci/test.sh does)")
    });
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmm-qcow2-it-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn cdb10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut cdb = [op, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

fn read(disk: &ScsiDisk, lba: u32, blocks: u16) -> Vec<u8> {
    disk.execute(0, &cdb10(0x28, lba, blocks), &[]).unwrap()
}

fn write(disk: &ScsiDisk, lba: u32, data: &[u8]) {
    let blocks = (data.len() / 512) as u16;
    disk.execute(0, &cdb10(0x2a, lba, blocks), data).unwrap();
}

fn sync(disk: &ScsiDisk) {
    disk.execute(0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[])
        .unwrap();
}

fn unmap(disk: &ScsiDisk, lba: u64, blocks: u32) {
    let mut list = vec![0, 22, 0, 16, 0, 0, 0, 0];
    list.extend_from_slice(&lba.to_be_bytes());
    list.extend_from_slice(&blocks.to_be_bytes());
    list.extend_from_slice(&[0; 4]);
    disk.execute(0, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &list)
        .unwrap();
}

/// `qemu-img check` passes: no corruption, no leaked cluster.
fn assert_clean(image: &Path) {
    let out = tool("qemu-img", &["check", s(image)]);
    assert!(out.contains("No errors were found"), "{out}");
}

/// What `qemu-img convert` makes of the image: its blocks, as QEMU reads
/// them.
fn as_qemu_reads(dir: &TempDir, image: &Path) -> Vec<u8> {
    let raw = dir.path("converted.raw");
    tool("qemu-img", &["convert", "-O", "raw", s(image), s(&raw)]);
    std::fs::read(raw).unwrap()
}

#[test]
fn what_we_write_to_a_qemu_img_image_qemu_reads_back_and_check_passes() {
    let dir = TempDir::new("write");
    let image = dir.path("disk.qcow2");
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", s(&image), "64M"],
    );
    let disk = ScsiDisk::open(&image, DiskOptions::new("IT")).unwrap();
    assert_eq!(disk.format(), Format::Qcow2);
    assert_eq!(disk.blocks(), 64 << 11);
    let mut expected = vec![0u8; 64 << 20];
    // Scattered writes of several sizes, some across cluster boundaries.
    for (i, (lba, blocks)) in [(0u32, 8usize), (127, 3), (4000, 256), (131_000, 72)]
        .into_iter()
        .enumerate()
    {
        let data: Vec<u8> = (0..blocks * 512).map(|b| (b / 7 + i * 31) as u8).collect();
        write(&disk, lba, &data);
        expected[lba as usize * 512..][..data.len()].copy_from_slice(&data);
    }
    // A WRITE SAME of data, and a discard of part of what was written.
    let block = [0xc3u8; 512];
    disk.execute(0, &[0x41, 0, 0, 0, 0x30, 0, 0, 0, 64, 0], &block)
        .unwrap();
    for b in expected[0x3000 * 512..][..64 * 512].chunks_mut(512) {
        b.copy_from_slice(&block);
    }
    unmap(&disk, 4000, 128);
    expected[4000 * 512..][..128 * 512].fill(0);
    sync(&disk);
    drop(disk);
    assert_clean(&image);
    assert!(
        as_qemu_reads(&dir, &image) == expected,
        "QEMU reads other data"
    );
}

#[test]
fn we_read_what_qemu_io_wrote_including_compressed_clusters() {
    let dir = TempDir::new("read");
    let image = dir.path("disk.qcow2");
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", s(&image), "16M"],
    );
    tool(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0xab 1M 256k",
            "-c",
            "write -z 1152k 64k",
            s(&image),
        ],
    );
    let disk = ScsiDisk::open(&image, DiskOptions::new("IT")).unwrap();
    let got = read(&disk, 2048, 1024);
    assert!(got[..128 << 10].iter().all(|&b| b == 0xab));
    assert!(
        got[128 << 10..192 << 10].iter().all(|&b| b == 0),
        "zero cluster"
    );
    assert!(got[192 << 10..256 << 10].iter().all(|&b| b == 0xab));
    assert!(got[256 << 10..].iter().all(|&b| b == 0));
    drop(disk);

    // The same data, compressed by qemu-img convert -c.
    let compressed = dir.path("compressed.qcow2");
    tool(
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", s(&image), s(&compressed)],
    );
    let disk = ScsiDisk::open(&compressed, DiskOptions::new("IT")).unwrap();
    assert_eq!(read(&disk, 2048, 1024), got);
    // A write into a compressed cluster: copied out, then QEMU agrees.
    write(&disk, 2050, &[0x11; 512]);
    sync(&disk);
    drop(disk);
    assert_clean(&compressed);
    let qemu = as_qemu_reads(&dir, &compressed);
    assert_eq!(&qemu[2050 * 512..2051 * 512], &[0x11; 512]);
    assert!(qemu[2048 * 512..2050 * 512].iter().all(|&b| b == 0xab));
}

#[test]
fn a_backing_chain_from_qemu_img_reads_through_and_writes_only_the_top() {
    let dir = TempDir::new("chain");
    let base = dir.path("base.raw");
    std::fs::write(&base, vec![0x42u8; 8 << 20]).unwrap();
    let overlay = dir.path("overlay.qcow2");
    tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            s(&overlay),
        ],
    );
    // Detected, not named: the backing file is refused, with the fix.
    let err = ScsiDisk::open(&overlay, DiskOptions::new("IT"))
        .err()
        .expect("a detected image may not open its backing file");
    assert!(err.to_string().contains("format=qcow2"), "{err}");
    let named = DiskOptions {
        format: Some(Format::Qcow2),
        ..DiskOptions::new("IT")
    };
    let disk = ScsiDisk::open(&overlay, named).unwrap();
    assert_eq!(read(&disk, 0, 1), vec![0x42; 512]);
    write(&disk, 1, &[0x99; 512]);
    unmap(&disk, 128, 128);
    sync(&disk);
    assert_eq!(read(&disk, 1, 1), vec![0x99; 512]);
    assert_eq!(
        read(&disk, 128, 1),
        vec![0; 512],
        "discarded: zeros, not the base"
    );
    drop(disk);
    assert!(std::fs::read(&base).unwrap().iter().all(|&b| b == 0x42));
    assert_clean(&overlay);
    let qemu = as_qemu_reads(&dir, &overlay);
    assert_eq!(&qemu[512..1024], &[0x99; 512]);
    assert!(qemu[128 * 512..256 * 512].iter().all(|&b| b == 0));
    assert!(qemu[256 * 512..].iter().all(|&b| b == 0x42));
}
