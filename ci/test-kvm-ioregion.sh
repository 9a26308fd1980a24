#!/usr/bin/env bash
# KVM_SET_IOREGION end to end: builds our kvm.ko/kvm-amd.ko
# (ci/build-kvm-ioregion.sh) and the selftest (kernel/selftest), boots the
# KVM test rig on those modules, runs the selftest, then runs the VMM three
# times with the LSI remote on the kernel ioregionfd path (fio-verify,
# --stats): over mpqemu, over vfio-user, and over mpqemu with two vCPUs
# (KVM's fd shared by both, each vCPU thread's own fd beside it). A fourth
# run freezes the remote (SIGSTOP) in the middle of fio: KVM waits for the
# device without a timeout, so the VMM's watchdog must find KVM's commands
# untaken, cut the device off and take its ranges back from KVM, and the
# guest must then fail its I/O and reboot by itself.
#
# Usage: ci/test-kvm-ioregion.sh [--no-vmm]
# Exits non-zero if the selftest fails, or if a VMM run does not pass fio
# verify with every ioregion range served by KVM but the mirrored register
# (ISTAT0): KVM leaves its reads and writes to the VMM, which answers the
# reads from the register mirror and posts the writes through the ring in
# the mirror page (KVM then waits for the writes it serves), so only
# ISTAT0's writes, and its reads behind writes not applied yet, reach the
# remote from the VMM.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

run_vmm=1
[ "${1:-}" = "--no-vmm" ] && run_vmm=0

ensure_packages gcc libc6-dev
mods=$("$VMM_ROOT/ci/build-kvm-ioregion.sh")
log "modules: $mods"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -static -O2 -Wall -pthread -o "$work/ioregion_test" \
    "$VMM_ROOT/kernel/selftest/ioregion_test.c"

cat > "$work/run.sh" <<EOF
echo "RIG: kernel \$(uname -r)"
grep -q . /sys/module/kvm/taint 2>/dev/null && echo "RIG: kvm taint \$(cat /sys/module/kvm/taint)"
echo "=== selftest"
/rig/extra/ioregion_test
st=\$?
echo "=== selftest exit \$st"
if [ $run_vmm -eq 1 ]; then
    echo "=== vmm ioregionfd=kernel fio-verify"
    dd if=/dev/zero of=/tmp/a.img bs=1M count=64 2>/dev/null
    /rig/vmm --kernel /rig/guest/bzImage --initrd /rig/guest/initramfs.cpio.gz \\
        --cmdline 'console=ttyS0 quiet vmm.run=fio-verify' --log-level info --stats \\
        --remote-dev lsi,disk=/tmp/a.img,ioregionfd=kernel </dev/null
    echo "=== vmm exited \$?"
    echo "=== vmm over vfio-user ioregionfd=kernel fio-verify"
    dd if=/dev/zero of=/tmp/b.img bs=1M count=64 2>/dev/null
    /rig/vmm --kernel /rig/guest/bzImage --initrd /rig/guest/initramfs.cpio.gz \\
        --cmdline 'console=ttyS0 quiet vmm.run=fio-verify' --log-level info --stats \\
        --remote-dev lsi,disk=/tmp/b.img,ioregionfd=kernel,proto=vfio-user </dev/null
    echo "=== vmm over vfio-user exited \$?"
    echo "=== vmm on 2 vCPUs ioregionfd=kernel fio-verify"
    dd if=/dev/zero of=/tmp/c.img bs=1M count=64 2>/dev/null
    /rig/vmm --kernel /rig/guest/bzImage --initrd /rig/guest/initramfs.cpio.gz \\
        --cmdline 'console=ttyS0 quiet vmm.run=fio-verify vmm.fio=verify-smp' --log-level info \\
        --stats --cpus 2 --remote-dev lsi,disk=/tmp/c.img,ioregionfd=kernel </dev/null
    echo "=== vmm on 2 vCPUs exited \$?"
    echo "=== vmm ioregionfd=kernel with its remote frozen"
    dd if=/dev/zero of=/tmp/d.img bs=1M count=64 2>/dev/null
    /rig/vmm --kernel /rig/guest/bzImage --initrd /rig/guest/initramfs.cpio.gz \\
        --cmdline 'console=ttyS0 vmm.run=fio-verify vmm.fio=verify-long' --log-level info \\
        --remote-dev lsi,disk=/tmp/d.img,ioregionfd=kernel </dev/null > /tmp/frozen.log 2>&1 &
    vmm=\$!
    i=0; while [ \$i -lt 120 ] && ! grep -q 'disk found' /tmp/frozen.log; do sleep 1; i=\$((i + 1)); done
    sleep 2
    remote=\$(sed -n 's/.*(lsi, pid \\([0-9]*\\)).*/\\1/p' /tmp/frozen.log | head -n 1)
    echo "freezing remote \$remote"
    kill -STOP \$remote
    i=0; while [ \$i -lt 400 ] && kill -0 \$vmm 2>/dev/null; do sleep 1; i=\$((i + 1)); done
    echo "guest done \$i s after the freeze"
    kill -TERM \$vmm 2>/dev/null
    wait \$vmm
    echo "=== vmm with its remote frozen exited \$?"
    kill -KILL \$remote 2>/dev/null
    cat /tmp/frozen.log
    dmesg | grep -i -E 'ioregion|kvm|BUG|WARN|Oops|hung' | tail -n 30
fi
exit \$st
EOF
# A second rig boot only when the rig's own kernel failed (its log shows a
# panic, oops or lockup): announced on stderr and counted in
# $VMM_RIG_RETRY_LOG (ci/test.sh). Any other failure, a stall included, fails.
for attempt in 1 2; do
    set +e
    "$VMM_ROOT/ci/rig.sh" --timeout "${RIG_TIMEOUT:-900}" --kvm-modules "$mods" \
        --l1-log "$work/l1.log" --extra "$work/ioregion_test" "$work/run.sh" | tee "$work/out.log"
    rc=${PIPESTATUS[0]}
    set -e
    [ "$rc" -eq 0 ] && break
    l1_died "$work/l1.log" || break
    sign=$(grep -m 1 -F -f "$L1_DEATH_SIGNS" "$work/l1.log")
    [ "$attempt" -eq 2 ] && die "the rig's own kernel failed twice: $sign"
    log "RIG RETRY: the rig's own kernel failed ($sign); booting it once more"
    [ -z "${VMM_RIG_RETRY_LOG:-}" ] || echo "ci/test-kvm-ioregion.sh: $sign" >> "$VMM_RIG_RETRY_LOG"
done
[ "$rc" -eq 0 ] || die "the KVM_SET_IOREGION selftest failed"
grep -q "ALL PASSED" "$work/out.log" || die "the selftest did not report ALL PASSED"
if [ $run_vmm -eq 1 ]; then
    # The VMM's kernel path: the probe finds the ioctl, the guest's fio
    # verify passes, and the counters show no ioregion access reaching us.
    # Each of the two runs, mpqemu and vfio-user, on its own part of the log.
    sed -n '/=== vmm ioregionfd=kernel/,/=== vmm exited/p' "$work/out.log" > "$work/mpqemu.log"
    sed -n '/=== vmm over vfio-user ioregionfd=kernel/,/=== vmm over vfio-user exited/p' \
        "$work/out.log" > "$work/vfio-user.log"
    sed -n '/=== vmm on 2 vCPUs ioregionfd=kernel/,/=== vmm on 2 vCPUs exited/p' \
        "$work/out.log" > "$work/two-vcpus.log"
    for run in mpqemu vfio-user two-vcpus; do
        for want in "KVM_SET_IOREGION works" "KVM counts the posted writes it sends" \
            "KVM waits for the writes it serves; the VMM posts writes of the mirrored registers" \
            "posted writes go through the ring in its mirror page" \
            "fio done: ok" "3 ranges served by KVM itself" "exited 0"; do
            grep -q "$want" "$work/$run.log" ||
                die "VMM on the kernel ioregion path over $run: no '$want' in the output"
        done
        # Reads of ISTAT0 exit to the VMM and are answered from the page;
        # the only ones that go on to the remote (over a vCPU thread's fd,
        # never KVM's) are those behind a posted write not applied yet.
        # Writes of ISTAT0 exit to the VMM, which posts them. Nothing else
        # exits.
        stats=$(grep -m 1 "ranges served by KVM itself" "$work/$run.log")
        read -r fd_reads fd_writes mirrored behind istat_writes <<<"$(echo "$stats" | sed -E \
            's/.*over ioregion fds ([0-9]+) reads \/ ([0-9]+) writes.*, ([0-9]+) reads from the register mirror \(([0-9]+) more.*of the writes above ([0-9]+) to mirrored registers.*/\1 \2 \3 \4 \5/')"
        log "kernel path over $run: $mirrored ISTAT reads from the mirror, $behind behind posted writes, $fd_reads reads and $fd_writes writes ($istat_writes of ISTAT) over vCPU threads' fds or the ring"
        [ "${mirrored:-0}" -gt 0 ] ||
            die "VMM on the kernel ioregion path over $run: no read answered from the mirror ($stats)"
        [ "${istat_writes:-0}" -gt 0 ] ||
            die "VMM on the kernel ioregion path over $run: no ISTAT write reached the VMM ($stats)"
        [ "$fd_writes" -eq "$istat_writes" ] && [ "$fd_reads" -eq "$behind" ] ||
            die "VMM on the kernel ioregion path over $run: accesses besides the mirrored register's reached the VMM ($stats)"
    done
    grep -q "vfio-user server: version 0.0" "$work/vfio-user.log" ||
        die "the second run did not speak vfio-user"
    for want in "disk found on 2 CPUs" "(kernel path, KVM's fd and 2 fds of vCPU threads"; do
        grep -qF "$want" "$work/two-vcpus.log" ||
            die "VMM on the kernel ioregion path on 2 vCPUs: no '$want' in the output"
    done
    log "VMM on the kernel ioregion path, over mpqemu, over vfio-user and on 2 vCPUs: fio verify passed, only the mirrored register's accesses reached the VMM"
    # The frozen remote: found out (by the watchdog on KVM's fd, or by a
    # mirrored read behind a posted write that went on a vCPU thread's fd),
    # cut off, its ranges taken back from KVM; the guest's SCSI error
    # handling then fails the I/O and the guest reboots, which ends the VMM
    # with 0. Before the watchdog watched KVM's fd the vCPU stayed in the
    # kernel until SIGTERM.
    sed -n '/=== vmm ioregionfd=kernel with its remote frozen/,$p' "$work/out.log" > "$work/frozen.log"
    for want in "freezing remote" "the device is cut off: its registers read as zeros" \
        "KVM no longer serves the range" "Device offlined" "VMM-GUEST: rebooting" \
        "=== vmm with its remote frozen exited 0"; do
        grep -qF "$want" "$work/frozen.log" ||
            die "VMM on the kernel ioregion path with its remote frozen: no '$want' in the output"
    done
    found=$(grep -m 1 -o -E "did not (take KVM's commands|answer|take its posted writes) within 10s" \
        "$work/frozen.log") ||
        die "VMM on the kernel ioregion path with its remote frozen: no timeout in the output"
    log "kernel path with its remote frozen: '$found', cut off, $(grep -o 'guest done [0-9]* s after the freeze' "$work/frozen.log")"
fi
