#!/usr/bin/env bash
# KVM_SET_IOREGION end to end: builds our kvm.ko/kvm-amd.ko
# (ci/build-kvm-ioregion.sh) and the selftest (kernel/selftest), boots the
# KVM test rig on those modules, runs the selftest, then runs the VMM twice
# with the LSI remote on the kernel ioregionfd path (fio-verify, --stats),
# over mpqemu and over vfio-user.
#
# Usage: ci/test-kvm-ioregion.sh [--no-vmm]
# Exits non-zero if the selftest fails, or if the VMM run does not pass
# fio verify with every ioregion range served by KVM (none reaching the VMM).
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
    for run in mpqemu vfio-user; do
        for want in "KVM_SET_IOREGION works" "fio done: ok" \
            "over ioregion fds 0 reads / 0 writes" "3 ranges served by KVM itself" "exited 0"; do
            grep -q "$want" "$work/$run.log" ||
                die "VMM on the kernel ioregion path over $run: no '$want' in the output"
        done
    done
    grep -q "vfio-user server: version 0.0" "$work/vfio-user.log" ||
        die "the second run did not speak vfio-user"
    log "VMM on the kernel ioregion path, over mpqemu and over vfio-user: fio verify passed, no ioregion access reached the VMM"
fi
