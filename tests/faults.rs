//! End-to-end faults: a remote that stops answering in the middle of the
//! guest's disk I/O must not hang the VMM: the access times out, the device
//! is cut off with a logged error, and the VMM still stops cleanly.

mod common;

use std::sync::OnceLock;

use common::{Mode, Outcome, Scenario};

/// Starts the VMM in the background on a disk workload, freezes its remote
/// (SIGSTOP) mid-I/O, waits for the first access to time out, then asks the
/// VMM to stop (SIGTERM) and reports how it ended. With register writes
/// posted, the guest may post its doorbell writes and then wait for
/// interrupts that never come: then the VMM's posted-write watchdog finds
/// the writes untaken after 10 s.
fn frozen_remote(mode: &str) -> String {
    format!(
        "dd if=/dev/zero of=/tmp/f.img bs=1M count=64 2>/dev/null\n\
         $VMM --kernel $KERNEL --initrd $INITRD --cmdline 'console=ttyS0 quiet vmm.run=fio-verify vmm.fio=verify-long' \
         --log-level info --stats --remote-dev lsi,disk=/tmp/f.img,ioregionfd={mode} </dev/null > /tmp/vmm.log 2>&1 &\n\
         vmm=$!\n\
         i=0; while [ $i -lt 120 ] && ! grep -q 'disk found' /tmp/vmm.log; do sleep 1; i=$((i + 1)); done\n\
         sleep 2\n\
         remote=$(sed -n 's/.*(lsi, pid \\([0-9]*\\)).*/\\1/p' /tmp/vmm.log | head -n 1)\n\
         echo \"freezing remote $remote\"\n\
         kill -STOP $remote\n\
         i=0; while [ $i -lt 200 ] && ! grep -q 'did not answer\\|did not take' /tmp/vmm.log; do sleep 1; i=$((i + 1)); done\n\
         echo \"first timeout $i s after the freeze\"\n\
         kill -TERM $vmm\n\
         wait $vmm\n\
         echo \"vmm exited $?\"\n\
         kill -KILL $remote 2>/dev/null\n\
         cat /tmp/vmm.log"
    )
}

/// Starts the VMM on fio verify, sends its remote `signal` mid-I/O and lets
/// the guest finish by itself: its driver's error handling has to end the
/// stalled commands, and the guest then reboots, which ends the VMM. If
/// the guest has not finished within 400 s the VMM is stopped with SIGTERM
/// (the driver's own recovery takes about 110 s, and fio then finishes its
/// 32 MiB verify).
fn killed_remote(spec: &str, signal: &str) -> String {
    format!(
        "dd if=/dev/zero of=/tmp/k.img bs=1M count=64 2>/dev/null\n\
         $VMM --kernel $KERNEL --initrd $INITRD --cmdline 'console=ttyS0 vmm.run=fio-verify vmm.fio=verify-long' \
         --log-level info --remote-dev lsi,disk=/tmp/k.img{spec} </dev/null > /tmp/vmm.log 2>&1 &\n\
         vmm=$!\n\
         i=0; while [ $i -lt 120 ] && ! grep -q 'disk found' /tmp/vmm.log; do sleep 1; i=$((i + 1)); done\n\
         sleep 2\n\
         remote=$(sed -n 's/.*(lsi, pid \\([0-9]*\\)).*/\\1/p' /tmp/vmm.log | head -n 1)\n\
         echo \"killing remote $remote\"\n\
         kill -{signal} $remote\n\
         i=0; while [ $i -lt 400 ] && kill -0 $vmm 2>/dev/null; do sleep 1; i=$((i + 1)); done\n\
         echo \"guest done $i s after the kill\"\n\
         kill -TERM $vmm 2>/dev/null\n\
         wait $vmm\n\
         echo \"vmm exited $?\"\n\
         kill -KILL $remote 2>/dev/null\n\
         cat /tmp/vmm.log"
    )
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "frozen-remote-ioregion",
            script: frozen_remote("userspace"),
        },
        Scenario {
            name: "frozen-remote-messages",
            script: frozen_remote("off"),
        },
        Scenario {
            // A sparse 64 MiB image on a 4 MiB tmpfs: the host runs out of
            // space under the guest's writes.
            name: "disk-full",
            script: "mkdir -p /tmp/small && mount -t tmpfs -o size=4m tmpfs /tmp/small\n\
                     dd if=/dev/zero of=/tmp/small/d.img bs=1 count=0 seek=67108864 2>/dev/null\n\
                     $VMM --kernel $KERNEL --initrd $INITRD \
                     --cmdline 'console=ttyS0 vmm.run=disk-full' \
                     --remote-dev lsi,disk=/tmp/small/d.img </dev/null\n\
                     echo \"vmm exited $?\""
                .into(),
        },
        Scenario {
            name: "image-on-read-only-fs",
            script: "mkdir -p /tmp/rofs && mount -t tmpfs -o size=80m tmpfs /tmp/rofs\n\
                     dd if=/dev/zero of=/tmp/rofs/r.img bs=1M count=64 2>/dev/null\n\
                     mount -o remount,ro /tmp/rofs\n\
                     $VMM --kernel $KERNEL --initrd $INITRD --remote-dev lsi,disk=/tmp/rofs/r.img \
                     </dev/null\n\
                     echo \"read-write: vmm exited $?\"\n\
                     $VMM --kernel $KERNEL --initrd $INITRD \
                     --cmdline 'console=ttyS0 quiet vmm.run=readonly' \
                     --remote-dev lsi,disk=/tmp/rofs/r.img,readonly=on </dev/null\n\
                     echo \"readonly=on: vmm exited $?\""
                .into(),
        },
        Scenario {
            // No machine the rig runs on has CPU 1023 online.
            name: "remote-on-a-missing-cpu",
            script: "$VMM --kernel $KERNEL --initrd $INITRD --remote-dev lsi,cpus=1023 </dev/null\n\
                     echo \"vmm exited $?\""
                .into(),
        },
        Scenario {
            // The guest unbinds the driver and programs garbage into the
            // chip (guest/scripts/hostile); the host samples the remote's
            // peak memory and CPU time while it runs.
            name: "hostile-guest",
            script: "dd if=/dev/zero of=/tmp/h.img bs=1M count=64 2>/dev/null\n\
                     $VMM --kernel $KERNEL --initrd $INITRD \
                     --cmdline 'console=ttyS0 quiet iomem=relaxed memmap=16M$0x4000000 vmm.run=hostile' \
                     --log-level info --remote-dev lsi,disk=/tmp/h.img </dev/null > /tmp/vmm.log 2>&1 &\n\
                     vmm=$!\n\
                     remote=\n\
                     i=0; while [ $i -lt 100 ] && [ -z \"$remote\" ]; do\n\
                         sleep 0.2; remote=$(cat /proc/$vmm/task/$vmm/children 2>/dev/null | tr -d ' '); i=$((i + 1))\n\
                     done\n\
                     echo \"remote pid $remote\"\n\
                     while kill -0 $vmm 2>/dev/null; do\n\
                         grep VmHWM /proc/$remote/status > /tmp/hwm.now 2>/dev/null && cp /tmp/hwm.now /tmp/hwm\n\
                         awk '{print $14 + $15}' /proc/$remote/stat > /tmp/cpu.now 2>/dev/null && cp /tmp/cpu.now /tmp/cpu\n\
                         sleep 0.5\n\
                     done\n\
                     wait $vmm\n\
                     echo \"vmm exited $?\"\n\
                     echo \"remote peak $(cat /tmp/hwm); cpu ticks $(cat /tmp/cpu)\"\n\
                     grep -a VMM-GUEST /tmp/vmm.log\n\
                     grep -av VMM-GUEST /tmp/vmm.log | sort | uniq -c | sort -rn | head -40"
                .into(),
        },
        Scenario {
            name: "killed-remote",
            script: killed_remote("", "KILL"),
        },
        Scenario {
            name: "killed-remote-restarted",
            script: killed_remote(",restart=on", "KILL"),
        },
        Scenario {
            name: "killed-remote-restarted-vfio-user",
            script: killed_remote(",restart=on,proto=vfio-user", "KILL"),
        },
    ]
}

fn outcome(name: &str) -> Option<&'static Outcome> {
    static RESULTS: common::BatchCell = OnceLock::new();
    if let Mode::Skip = common::mode() {
        eprintln!("VMM_SKIP_KVM_TESTS=1: fault tests skipped");
        return None;
    }
    common::pick(
        common::run_once(&RESULTS, || common::run_batch(&scenarios(), 600)),
        name,
    )
}

#[test]
fn a_frozen_remote_times_out_on_the_region_fd_and_the_vmm_still_stops() {
    let Some(o) = outcome("frozen-remote-ioregion") else {
        return;
    };
    o.assert_contains("freezing remote");
    // A read that waited, or the watchdog on the posted writes: whichever
    // the guest's next access makes come first.
    assert!(
        o.output.contains("did not answer within 10s")
            || o.output
                .contains("did not take its posted writes within 10s"),
        "no timeout in:\n{}",
        o.output
    );
    o.assert_contains("the device is cut off: its registers read as zeros");
    // Where the remote's threads were: all stopped (T), the signal's doing.
    let threads = o
        .output
        .lines()
        .find(|l| l.contains("the device process's threads (pid"))
        .unwrap_or_else(|| panic!("no line on the remote's threads in:\n{}", o.output));
    assert!(threads.contains("ioregion-posted T "), "{threads}");
    assert!(
        !threads.contains(" S "),
        "a thread asleep, not stopped: {threads}"
    );
    // 128 + SIGTERM: the VMM honoured the signal instead of hanging.
    o.assert_exited("vmm", 143);
}

#[test]
fn a_frozen_remote_times_out_on_the_control_socket_and_the_vmm_still_stops() {
    let Some(o) = outcome("frozen-remote-messages") else {
        return;
    };
    o.assert_contains("freezing remote");
    o.assert_contains("did not answer within 10s");
    o.assert_contains("the device is cut off: its registers read as zeros");
    o.assert_exited("vmm", 143);
}

/// A remote killed mid-I/O: the death logged with its exit status, the
/// device cut off, the guest's stalled commands failed by its SCSI error
/// handling (EIO, not a hang), and the guest's reboot ending the VMM.
/// Cut-off registers read as zeros so that the kill can land anywhere,
/// even in sym53c8xx's interrupt handler, which loops while ISTAT shows
/// work pending and so spun for ever on all ones.
#[test]
fn a_killed_remote_fails_the_guests_io_and_the_guest_reboots() {
    let Some(o) = outcome("killed-remote") else {
        return;
    };
    o.assert_contains("killing remote");
    o.assert_contains(
        "process exit: signal: 9 (SIGKILL)); the device is cut off: its registers read as zeros",
    );
    o.assert_contains("Device offlined");
    o.assert_contains("Input/output error");
    o.assert_contains("VMM-GUEST: rebooting");
    o.assert_exited("vmm", 0);
}

#[test]
fn a_killed_remote_is_restarted_and_no_completed_write_is_lost() {
    let Some(o) = outcome("killed-remote-restarted") else {
        return;
    };
    o.assert_contains("killing remote");
    o.assert_contains("process exit: signal: 9 (SIGKILL)); restarting it");
    o.assert_contains("took over the device (1 of at most 5 restarts)");
    assert_recovered_by_the_bus_reset_report(o);
    // fio's verify pass read back every block it had seen written.
    o.assert_contains("VMM-GUEST: fio done: ok");
    o.assert_exited("vmm", 0);
}

/// The new LSI told the guest's driver of a SCSI bus reset, and the driver
/// recovered from that alone: the commands that were in flight were
/// retried without first timing out (30 s each, then aborts and resets).
/// The remote's lines say it, not the guest's console: the guest's
/// `SCSI BUS reset detected` comes out one byte at a time and the VMM's
/// own log lines land in the middle of it.
fn assert_recovered_by_the_bus_reset_report(o: &Outcome) {
    o.assert_contains("lsi: took over a running device; reporting a SCSI bus reset to its driver");
    o.assert_contains("lsi: the driver took the bus reset report (read SIST0)");
    assert!(
        !o.output.contains("ABORT operation started"),
        "the driver timed its commands out instead:\n{}",
        o.output
    );
}

/// The same over vfio-user: the new remote is a new vfio-user server, and
/// the takeover gives it what the old one had.
#[test]
fn a_killed_vfio_user_remote_is_restarted_and_no_completed_write_is_lost() {
    let Some(o) = outcome("killed-remote-restarted-vfio-user") else {
        return;
    };
    o.assert_contains("killing remote");
    o.assert_contains("vfio-user server: version 0.0");
    o.assert_contains("process exit: signal: 9 (SIGKILL)); restarting it");
    o.assert_contains("took over the device (1 of at most 5 restarts)");
    assert_recovered_by_the_bus_reset_report(o);
    o.assert_contains("VMM-GUEST: fio done: ok");
    o.assert_exited("vmm", 0);
}

#[test]
fn a_full_host_file_system_fails_the_writes_with_sense_and_reads_go_on() {
    let Some(o) = outcome("disk-full") else {
        return;
    };
    o.assert_contains("VMM-GUEST: big write failed");
    // DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (27h/07h), as
    // Linux decodes the sense data.
    o.assert_contains("Sense Key : Data Protect");
    o.assert_contains("Space allocation failed write protect");
    o.assert_contains("VMM-GUEST: read after: ok");
    assert!(
        !o.output.contains("closed its connection"),
        "the remote kept running"
    );
    o.assert_exited("vmm", 0);
}

#[test]
fn an_image_on_a_read_only_file_system_needs_readonly_on() {
    let Some(o) = outcome("image-on-read-only-fs") else {
        return;
    };
    o.assert_contains("cannot open disk image /tmp/rofs/r.img: Read-only file system");
    o.assert_contains("exited during setup (exit status: 1)");
    o.assert_exited("read-write: vmm", 1);
    o.assert_contains("VMM-GUEST: write refused");
    o.assert_exited("readonly=on: vmm", 0);
}

#[test]
fn a_remote_that_cannot_run_on_its_cpus_says_so_and_the_vmm_exits_1() {
    let Some(o) = outcome("remote-on-a-missing-cpu") else {
        return;
    };
    o.assert_contains("cannot run on CPUs 1023 (are they online?): Invalid argument");
    o.assert_contains("exited during setup (exit status: 1)");
    o.assert_exited("vmm", 1);
}

#[test]
fn a_hostile_guest_gets_error_interrupts_and_the_disk_back() {
    let Some(o) = outcome("hostile-guest") else {
        return;
    };
    // Each run ended with an interrupt the guest could read in DSTAT.
    o.assert_contains("VMM-GUEST: endless loop: DSTAT");
    o.assert_contains("SCRIPTS ran 1000001 instructions without stopping");
    o.assert_contains("MiB without stopping; aborting them");
    o.assert_contains("bus fault");
    o.assert_contains("VMM-GUEST: register storm done");
    // The stock driver re-initialises the chip and the disk works.
    o.assert_contains("VMM-GUEST: disk back: ok");
    o.assert_contains("VMM-GUEST: rebinds: 5 of 5 ok");
    o.assert_contains("remote peak VmHWM");
    assert!(
        !o.output.contains("cut off"),
        "the device was never cut off"
    );
    assert!(
        !o.output.contains("blocked syscall"),
        "nothing outside the sandbox"
    );
    o.assert_exited("vmm", 0);
}
