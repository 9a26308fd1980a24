#!/usr/bin/env bash
# BAR register round trip: one guest read (and write) of the LSI's SCRATCHB
# register, measured from guest userspace, through
#   ours      our VMM's proxy      -> QEMU's x-remote LSI (message path)
#   ours-lsi-off  our VMM's proxy  -> our own LSI remote (message path, ioregionfd=off)
#   ours-lsi  our VMM              -> our own LSI remote over ioregion fds
#             (ioregionfd=auto: the userspace path on kernels without
#             KVM_SET_IOREGION, i.e. every mainline kernel)
#   qemu-mp   QEMU's x-pci-proxy-dev -> the same QEMU x-remote LSI
#   qemu      QEMU's in-process lsi53c895a (reference)
# in one KVM test rig boot, interleaved over ROUNDS rounds. Prints a markdown
# table of medians with ratios against "ours". The rig has 2 vCPUs; with
# PIN=<cpu list> every configuration runs under `taskset -c PIN` (VMM,
# remote and guest vCPU together), otherwise the scheduler places them.
#
# usage: [PIN=0] ci/bench-bar.sh [ROUNDS] [ACCESSES]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
rounds=${1:-3}
reads=${2:-2000}
pin=""
[ -n "${PIN:-}" ] && pin="taskset -c $PIN"

script=$(mktemp)
trap 'rm -f "$script"' EXIT
cat > "$script" <<SCRIPT
dd if=/dev/zero of=/tmp/a.img bs=1M count=64 2>/dev/null
cmdline="console=ttyS0 quiet iomem=relaxed vmm.run=regbench vmm.count=$reads"
guest="-kernel /rig/guest/bzImage -initrd /rig/guest/initramfs.cpio.gz"
qemu_vm="qemu-system-x86_64 -accel kvm -cpu host -m 512M -nodefaults -display none -serial stdio -no-reboot"
for round in \$(seq $rounds); do
    echo "BENCH-CONFIG: ours"
    LSI_DISK=/tmp/a.img $pin /rig/vmm --kernel /rig/guest/bzImage --initrd /rig/guest/initramfs.cpio.gz \
        --cmdline "\$cmdline" --remote-dev exec=/rig/extra/ci/qemu-remote-lsi.sh </dev/null 2>&1 | grep regbench
    echo "BENCH-CONFIG: ours-lsi-off"
    $pin /rig/vmm --kernel /rig/guest/bzImage --initrd /rig/guest/initramfs.cpio.gz \
        --cmdline "\$cmdline" --remote-dev lsi,disk=/tmp/a.img,ioregionfd=off </dev/null 2>&1 | grep regbench
    echo "BENCH-CONFIG: ours-lsi"
    $pin /rig/vmm --kernel /rig/guest/bzImage --initrd /rig/guest/initramfs.cpio.gz \
        --cmdline "\$cmdline" --remote-dev lsi,disk=/tmp/a.img </dev/null 2>&1 | grep regbench
    echo "BENCH-CONFIG: qemu-mp"
    $pin /rig/pairexec "LSI_DISK=/tmp/a.img exec /rig/extra/ci/qemu-remote-lsi.sh" \
        "exec \$qemu_vm -object memory-backend-memfd,id=mem,size=512M -numa node,memdev=mem \$guest -append '\$cmdline' -device x-pci-proxy-dev,id=lsi0,fd=4" </dev/null 2>&1 | grep regbench
    echo "BENCH-CONFIG: qemu"
    $pin \$qemu_vm \$guest -append "\$cmdline" -device lsi53c895a,id=lsi0 \
        -drive id=d0,file=/tmp/a.img,format=raw,if=none -device scsi-hd,drive=d0,bus=lsi0.0 </dev/null 2>&1 | grep regbench
done
SCRIPT
out=$(ci/rig.sh --with-qemu --timeout 1800 --extra "$VMM_ROOT/ci" "$script" | tee /dev/stderr)
echo
echo "BAR register round trip, guest userspace, ns per access (median of $rounds rounds, $reads accesses each, ${PIN:+pinned to CPU }${PIN:-unpinned})"
echo
echo "$out" | awk -v reads="$reads" '
    /^BENCH-CONFIG:/ { cfg = $2; if (!(cfg in seen)) { seen[cfg] = 1; order[n++] = cfg } }
    # SCRATCHB only: the "regbench-reads:" line (ISTAT, reads alone) is for bench.sh.
    /regbench: reads=/ {
        for (i = 1; i <= NF; i++) {
            if ($i ~ /^read_ns=/) { split($i, a, "="); r[cfg, ++nr[cfg]] = a[2] }
            if ($i ~ /^write_ns=/) { split($i, a, "="); w[cfg, ++nw[cfg]] = a[2] }
        }
    }
    function median(arr, cfg, cnt,    i, j, t, v) {
        for (i = 1; i <= cnt; i++) v[i] = arr[cfg, i]
        for (i = 1; i <= cnt; i++) for (j = i + 1; j <= cnt; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
        return cnt ? v[int((cnt + 1) / 2)] : 0
    }
    END {
        print "| configuration | read ns | write ns | read vs ours | runs |"
        print "| --- | ---: | ---: | ---: | ---: |"
        base = median(r, "ours", nr["ours"])
        for (k = 0; k < n; k++) {
            c = order[k]; mr = median(r, c, nr[c]); mw = median(w, c, nw[c])
            printf "| %s | %d | %d | %.2fx | %d |\n", c, mr, mw, (base ? mr / base : 0), nr[c]
        }
    }'
