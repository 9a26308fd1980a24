#!/usr/bin/env bash
# Boot time to the guest's init marker ("VMM-GUEST: booted"), ours against
# QEMU booting the same kernel and initramfs with KVM, interleaved over
# ROUNDS rounds in one KVM test rig boot (or directly on a host with
# hardware KVM: not yet; the rig is where this host can run it). Also the
# VMM process's own resident memory at that moment (RssAnon + RssFile, i.e.
# beyond guest RAM, which both keep in a memfd and shows as RssShmem).
#
# usage: ci/bench-boot.sh [ROUNDS]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
rounds=${1:-3}
script=$(mktemp)
trap 'rm -f "$script"' EXIT
cat > "$script" <<SCRIPT
cmdline="console=ttyS0 quiet"
measure() {
    name=\$1; shift
    t0=\$(cut -d' ' -f1 /proc/uptime)
    "\$@" </dev/null 2>&1 | while IFS= read -r line; do
        case "\$line" in
        *"VMM-GUEST: booted"*)
            t=\$(cut -d' ' -f1 /proc/uptime)
            pid=\$(pidof vmm || pidof qemu-system-x86_64)
            rss=\$(awk '/^RssAnon|^RssFile/ {s += \$2} END {print s}' /proc/\$pid/status)
            echo "BOOT-RESULT: \$name \$t0 \$t \$rss"
            ;;
        esac
    done
}
for round in \$(seq $rounds); do
    measure ours /rig/vmm --kernel /rig/guest/bzImage --initrd /rig/guest/initramfs.cpio.gz \
        --mem 512M --cmdline "\$cmdline"
    measure qemu qemu-system-x86_64 -accel kvm -cpu host -m 512M \
        -object memory-backend-memfd,id=mem,size=512M -numa node,memdev=mem \
        -nodefaults -display none -serial stdio -no-reboot \
        -kernel /rig/guest/bzImage -initrd /rig/guest/initramfs.cpio.gz -append "\$cmdline"
done
SCRIPT
out=$(ci/rig.sh --with-qemu --timeout 1800 "$script" | tee /dev/stderr)
echo
echo "Boot to the guest's init marker, KVM test rig, median of $rounds interleaved rounds"
echo
echo "$out" | awk '
    /^BOOT-RESULT:/ {
        c = $2; if (!(c in seen)) { seen[c] = 1; order[n++] = c }
        t[c, ++cnt[c]] = $4 - $3; r[c, cnt[c]] = $5
    }
    function median(arr, c, k,    i, j, x, v) {
        for (i = 1; i <= k; i++) v[i] = arr[c, i]
        for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (v[j] + 0 < v[i] + 0) { x = v[i]; v[i] = v[j]; v[j] = x }
        return k ? v[int((k + 1) / 2)] : 0
    }
    END {
        print "| VMM | boot s | vs ours | VMM RSS beyond guest RAM (MiB) | runs |"
        print "| --- | ---: | ---: | ---: | ---: |"
        base = median(t, "ours", cnt["ours"])
        for (k = 0; k < n; k++) {
            c = order[k]; m = median(t, c, cnt[c])
            printf "| %s | %.2f | %.2fx | %.1f | %d |\n", c, m, (base ? m / base : 0), median(r, c, cnt[c]) / 1024, cnt[c]
        }
    }'
