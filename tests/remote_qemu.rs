//! End-to-end interop: our VMM as the proxy, QEMU's own multiprocess remote
//! (`-machine x-remote` + `x-remote-object`) serving an LSI 53C895A with a
//! SCSI disk. The guest's stock sym53c8xx driver must find the disk, and
//! what the guest writes must land byte-exact in the image on our side.

mod common;

use std::sync::OnceLock;

use common::{Mode, Outcome, Qemu, Scenario};

fn scenarios() -> Vec<Scenario> {
    let vmm = |run: &str, remotes: &str| {
        format!(
            "$VMM --kernel $KERNEL --initrd $INITRD --cmdline 'console=ttyS0 quiet vmm.run={run}' \
             --log-level info {remotes} </dev/null"
        )
    };
    let remote = "--remote-dev exec=$REPO/ci/qemu-remote-lsi.sh";
    // QEMU's own in-process LSI on a qcow2 image, and qemu-img's verdict.
    let qemu_lsi = |run: &str, image: &str| {
        format!(
            "qemu-system-x86_64 -accel kvm -cpu host -m 512M -nodefaults -display none \
             -serial stdio -no-reboot -kernel $KERNEL -initrd $INITRD \
             -append 'console=ttyS0 quiet vmm.run={run}' -device lsi53c895a,id=lsi0 \
             -drive id=d0,file={image},format=qcow2,if=none -device scsi-hd,drive=d0,bus=lsi0.0 \
             </dev/null; echo \"qemu exited $?\""
        )
    };
    let check = |image: &str| format!("qemu-img check {image} 2>&1 | sed 's/^/qemu-img check: /'");
    let qcow2 = "qemu-img create -q -f qcow2 /tmp/q.qcow2 64M";
    vec![
        // Our remote writes a file system into a qcow2 image and fio
        // verifies through it; QEMU's own LSI reads the files back.
        Scenario {
            name: "qcow2-ours-then-qemu",
            script: format!(
                "{qcow2}\n{}; echo \"vmm exited $?\"\n{}\n{}\n\
                 qemu-img create -q -f qcow2 /tmp/f.qcow2 64M\n{}; echo \"vmm exited $?\"\n{}",
                vmm("fs-write", "--remote-dev lsi,disk=/tmp/q.qcow2"),
                check("/tmp/q.qcow2"),
                qemu_lsi("fs-read", "/tmp/q.qcow2"),
                vmm("fio-verify", "--remote-dev lsi,disk=/tmp/f.qcow2,format=qcow2"),
                check("/tmp/f.qcow2").replace("check: ", "check fio: "),
            ),
        },
        // The other way: QEMU's LSI writes, ours reads (and mounts, which
        // writes the journal), and the image stays clean.
        Scenario {
            name: "qcow2-qemu-then-ours",
            script: format!(
                "{qcow2}\n{}\n{}; echo \"vmm exited $?\"\n{}",
                qemu_lsi("fs-write", "/tmp/q.qcow2"),
                vmm("fs-read", "--remote-dev lsi,disk=/tmp/q.qcow2"),
                check("/tmp/q.qcow2"),
            ),
        },
        Scenario {
            name: "qemu-disk-pattern",
            script: format!(
                "dd if=/dev/zero of=/tmp/a.img bs=1M count=64 2>/dev/null\n\
                 LSI_DISK=/tmp/a.img {}\necho \"vmm exited $?\"\n\
                 echo \"image md5 $(dd if=/tmp/a.img bs=4096 skip=256 count=16 2>/dev/null | md5sum)\"",
                vmm("disk-pattern", remote)
            ),
        },
        Scenario {
            name: "qemu-fio-verify",
            script: format!(
                "dd if=/dev/zero of=/tmp/a.img bs=1M count=64 2>/dev/null\n\
                 LSI_DISK=/tmp/a.img {}\necho \"vmm exited $?\"",
                vmm("fio-verify", remote)
            ),
        },
        Scenario {
            name: "qemu-two-remotes",
            script: format!(
                "dd if=/dev/zero of=/tmp/a.img bs=1M count=64 2>/dev/null\n\
                 dd if=/dev/zero of=/tmp/b.img bs=1M count=32 2>/dev/null\n\
                 cat > /tmp/second.sh <<'X'\n#!/bin/sh\nLSI_DISK=/tmp/b.img exec $REPO/ci/qemu-remote-lsi.sh\nX\n\
                 chmod +x /tmp/second.sh\n\
                 LSI_DISK=/tmp/a.img {}\necho \"vmm exited $?\"",
                vmm(
                    "two-disks",
                    &format!("{remote} --remote-dev exec=/tmp/second.sh")
                )
            ),
        },
        Scenario {
            name: "qemu-remote-killed",
            script: format!(
                "dd if=/dev/zero of=/tmp/a.img bs=1M count=64 2>/dev/null\n\
                 (LSI_DISK=/tmp/a.img {}; echo \"vmm exited $?\") > /tmp/out 2>&1 &\n\
                 i=0; while ! grep -q ready-for-kill /tmp/out && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done\n\
                 kill -9 $(pidof qemu-system-x86_64)\n\
                 wait\ncat /tmp/out",
                vmm("remote-gone", remote)
            ),
        },
        Scenario {
            // The other direction: QEMU's x-pci-proxy-dev (SeaBIOS probes
            // the controller first) driving our remote.
            name: "qemu-proxy-our-lsi",
            script: "dd if=/dev/zero of=/tmp/a.img bs=1M count=64 2>/dev/null\n\
                     $PAIREXEC \"exec $VMM remote lsi --fd 3 --disk /tmp/a.img\" \
                     \"exec qemu-system-x86_64 -accel kvm -cpu host -m 512M \
                     -object memory-backend-memfd,id=mem,size=512M -numa node,memdev=mem \
                     -nodefaults -display none -serial stdio -no-reboot \
                     -kernel $KERNEL -initrd $INITRD \
                     -append 'console=ttyS0 quiet vmm.run=disk-pattern' \
                     -device x-pci-proxy-dev,id=lsi0,fd=4\" </dev/null\n\
                     echo \"qemu exited $?\"\n\
                     echo \"image md5 $(dd if=/tmp/a.img bs=4096 skip=256 count=16 2>/dev/null | md5sum)\""
                .into(),
        },
        // QEMU 11.1's own vfio-user client (Debian sid's, under KVM in the
        // rig) in front of our LSI remote: a pattern, then fio verify.
        Scenario {
            name: "qemu-vfio-user-client",
            script: "qemu_sid=${VMM_QEMU_VFIO_USER:-/opt/qemu-sid/qemu-system-x86_64}\n\
                     vfio_user_boot() {\n\
                     rm -f /tmp/vu.sock\n\
                     $VMM remote lsi --protocol vfio-user --socket /tmp/vu.sock --disk $2 \
                     --log-level info 2> /tmp/vu-remote.log & remote=$!\n\
                     i=0; while [ ! -S /tmp/vu.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done\n\
                     $qemu_sid -accel kvm -cpu host -m 512M -nodefaults -display none \
                     -serial stdio -no-reboot -object memory-backend-memfd,id=mem,size=512M \
                     -machine pc,memory-backend=mem -kernel $KERNEL -initrd $INITRD \
                     -append \"console=ttyS0 quiet vmm.run=$1\" \
                     -device '{\"driver\":\"vfio-user-pci\",\"socket\":{\"type\":\"unix\",\"path\":\"/tmp/vu.sock\"}}' \
                     </dev/null\n\
                     echo \"$1: qemu exited $?\"\n\
                     wait $remote; echo \"$1: remote exited $?\"\n\
                     sed \"s/^/$1: /\" /tmp/vu-remote.log\n\
                     }\n\
                     dd if=/dev/zero of=/tmp/p.img bs=1M count=64 2>/dev/null\n\
                     vfio_user_boot disk-pattern /tmp/p.img\n\
                     echo \"image md5 $(dd if=/tmp/p.img bs=4096 skip=256 count=16 2>/dev/null | md5sum)\"\n\
                     dd if=/dev/zero of=/tmp/f.img bs=1M count=64 2>/dev/null\n\
                     vfio_user_boot fio-verify /tmp/f.img\n\
                     blocks=0; for i in $(seq 0 63); do \
                     [ \"$(od -An -tx1 -j $((8388608 + i * 32768)) -N 2 /tmp/f.img | tr -d ' ')\" = caac ] \
                     && blocks=$((blocks + 1)); done; echo \"fio headers in image: $blocks of 64\""
                .into(),
        },
        Scenario {
            name: "remote-missing",
            script:
                "$VMM --kernel $KERNEL --initrd $INITRD --remote-dev socket=/tmp/nothing-here; \
                     echo \"vmm exited $?\""
                    .into(),
        },
    ]
}

fn outcome(name: &str) -> Option<&'static Outcome> {
    static RESULTS: common::BatchCell = OnceLock::new();
    if let Mode::Skip = common::mode() {
        eprintln!("VMM_SKIP_KVM_TESTS=1: QEMU interop tests skipped");
        return None;
    }
    common::pick(
        common::run_once(&RESULTS, || {
            common::run_batch_with(&scenarios(), 240, Qemu::DebianAndSid)
        }),
        name,
    )
}

/// The second boot read back the checksum of the files the first wrote.
fn assert_files_read_back(o: &Outcome) {
    let find = |prefix: &str| {
        o.output
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no '{prefix}' in:\n{}", o.output))
            .trim()
            .to_string()
    };
    let written = find("VMM-GUEST: wrote ");
    let read = find("VMM-GUEST: read ");
    assert_eq!(
        read,
        format!("{written}, written {written}"),
        "{}",
        o.output
    );
}

#[test]
fn qemu_11_vfio_user_client_under_kvm_drives_our_lsi_remote() {
    let Some(o) = outcome("qemu-vfio-user-client") else {
        return;
    };
    o.assert_pattern_landed();
    o.assert_contains("VMM-GUEST: fio done: ok");
    o.assert_contains("fio headers in image: 64 of 64");
    o.assert_exited("disk-pattern: qemu", 0);
    o.assert_exited("disk-pattern: remote", 0);
    o.assert_exited("fio-verify: qemu", 0);
    o.assert_exited("fio-verify: remote", 0);
    o.assert_contains("disk-pattern: vmm-remote: [INFO] vfio-user client: version 0.0");
    o.assert_contains("fio-verify: vmm-remote: [INFO] VMM disconnected; exiting");
    o.assert_nothing_left_running();
}

#[test]
fn qemu_reads_the_files_our_remote_wrote_into_a_qcow2_image() {
    let Some(o) = outcome("qcow2-ours-then-qemu") else {
        return;
    };
    o.assert_contains("vmm-remote: [INFO] SCSI id 0: /tmp/q.qcow2 (qcow2, 131072 blocks, serial ");
    assert_files_read_back(o);
    o.assert_contains("qemu-img check: No errors were found on the image.");
    o.assert_contains("qemu exited 0");
    o.assert_contains("VMM-GUEST: fio done: ok");
    o.assert_contains("qemu-img check fio: No errors were found on the image.");
    assert_eq!(o.output.matches("vmm exited 0").count(), 2, "{}", o.output);
}

#[test]
fn our_remote_reads_the_files_qemu_wrote_into_a_qcow2_image() {
    let Some(o) = outcome("qcow2-qemu-then-ours") else {
        return;
    };
    o.assert_contains("qemu exited 0");
    o.assert_contains("(qcow2, 131072 blocks, serial ");
    assert_files_read_back(o);
    o.assert_contains("qemu-img check: No errors were found on the image.");
    o.assert_exited("vmm", 0);
}

#[test]
fn qemu_remote_lsi_disk_is_found_and_written_byte_exact() {
    let Some(o) = outcome("qemu-disk-pattern") else {
        return;
    };
    o.assert_contains("PCI 1000:0012 class 010000, INTA# on GSI 16");
    o.assert_contains("sym0: <895a> rev 0x0 at pci 0000:00:01.0 irq 16");
    o.assert_pattern_landed();
    o.assert_exited("vmm", 0);
    o.assert_nothing_left_running();
}

#[test]
fn fio_verify_passes_on_the_qemu_remote_disk() {
    let Some(o) = outcome("qemu-fio-verify") else {
        return;
    };
    o.assert_contains("VMM-GUEST: fio done: ok");
    o.assert_exited("vmm", 0);
}

#[test]
fn two_remotes_get_their_own_slots_and_disks() {
    let Some(o) = outcome("qemu-two-remotes") else {
        return;
    };
    o.assert_contains("INTA# on GSI 16");
    o.assert_contains("INTA# on GSI 17");
    // One controller per remote, in slot order: host 0 is the first remote.
    o.assert_contains("VMM-GUEST: disk 0:0:0:0 131072 sectors");
    o.assert_contains("VMM-GUEST: disk 1:0:0:0 65536 sectors");
    o.assert_exited("vmm", 0);
    o.assert_nothing_left_running();
}

#[test]
fn killed_remote_is_noticed_and_the_guest_can_still_reboot() {
    let Some(o) = outcome("qemu-remote-killed") else {
        return;
    };
    o.assert_contains("VMM-GUEST: vendor before: 1000");
    o.assert_contains("closed its connection (process exit: signal: 9 (SIGKILL))");
    o.assert_contains("VMM-GUEST: vendor after: ffff");
    o.assert_contains("VMM-GUEST: rebooting");
    o.assert_exited("vmm", 0);
    o.assert_nothing_left_running();
}

#[test]
fn qemu_proxy_drives_our_lsi_remote() {
    let Some(o) = outcome("qemu-proxy-our-lsi") else {
        return;
    };
    o.assert_pattern_landed();
    o.assert_exited("qemu", 0);
}

#[test]
fn unreachable_remote_is_a_clear_error() {
    let Some(o) = outcome("remote-missing") else {
        return;
    };
    o.assert_contains("cannot connect to remote socket /tmp/nothing-here");
    o.assert_exited("vmm", 1);
}
