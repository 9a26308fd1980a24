#!/usr/bin/env bash
# What polling costs when accesses do not come back to back: the CPL3
# probe (guest/probe/probe.S) spins GAP microseconds after each access, as
# a driver does between the accesses of one I/O, on this host's /dev/kvm.
# For each gap and configuration it prints the wall time one access adds
# over a bare exit at the same gap, and the CPU time (VMM and remote, user
# and system) one access with its gap costs the host, so that a poll that
# waits in vain shows as CPU time, and one that saves a wake-up as wall time.
# Rows (SCRATCHB reads, posted SCRIPTS RAM writes; the VMM on CPU 0):
#   exit                 MMIO read of an unmapped address (the floor)
#   read-one-cpu         the remote beside the vCPU on CPU 0 (auto: no polling)
#   read-cpu1-sleep      the remote on CPU 1, reply-poll=off,device-poll=off
#   read-cpu1-poll       the remote on CPU 1, both sides poll (the defaults)
#   read-cpu1-poll200    the same with 200 us windows (reply-poll=200,device-poll=200)
#   posted-cpu1-sleep    posted writes, the remote on CPU 1, device-poll=off
#   posted-cpu1-poll     posted writes, the remote on CPU 1, polling
# Medians over ROUNDS; GAPS in microseconds.
#
# usage: ci/bench-poll-gaps.sh [ROUNDS] [GAPS]     e.g. ci/bench-poll-gaps.sh 3 "0 10 30 100"
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$VMM_ROOT"
rounds=${1:-3}
gaps=${2:-0 10 30 100}
[ "$(nproc)" -gt 1 ] || die "needs two CPUs (the remote runs on CPU 1)"
probe_bench_setup
scratchb=0xc000005c
scripts_ram=0xc0002100
unmapped=0xd0000000

# "WALL_US CPU_US" for one VMM run of the probe with command line $1.
run() {
    python3 ci/tools/rusage.py taskset -c 0 "$vmm" --kernel "$probe" --cmdline "$1" "${@:2}" ||
        die "probe run failed: $*"
}

# "WALL_NS CPU_NS" per access: runs with 1024 and 1024 + $extra accesses.
per_access() {
    local op=$1 addr=$2 gap=$3 extra=$4
    shift 4
    local a b
    read -r -a a <<<"$(run "$op $addr 0x400 $gap" "$@")"
    read -r -a b <<<"$(run "$op $addr $(printf '%x' $((1024 + extra))) $gap" "$@")"
    echo "$(((b[0] - a[0]) * 1000 / extra)) $(((b[1] - a[1]) * 1000 / extra))"
}

# Loop iterations per microsecond of the probe's gap: 4096 exits with and
# without a gap of 2^20 iterations after each.
log "calibrating the gap loop"
read -r -a plain <<<"$(run "r $unmapped 0x1000 0" --remote-dev "lsi,disk=$img")"
read -r -a spun <<<"$(run "r $unmapped 0x1000 0x100000" --remote-dev "lsi,disk=$img")"
per_us=$((1048576 * 4096 / (spun[0] - plain[0])))
[ "$per_us" -gt 0 ] || die "the gap loop did not take time"
log "$per_us iterations per microsecond"

results=$(
    for round in $(seq "$rounds"); do
        log "round $round/$rounds"
        for gap in $gaps; do
            iters=$(printf '%x' $((gap * per_us)))
            # About two seconds of accesses per run.
            extra=$((2000000 / (gap + 50)))
            row() { echo "$gap $1 $(per_access "$2" "$3" "$iters" "$extra" --remote-dev "lsi,disk=$img${4:+,$4}")"; }
            row exit r $unmapped
            row read-one-cpu r $scratchb
            row read-cpu1-sleep r $scratchb cpus=1,reply-poll=off,device-poll=off
            row read-cpu1-poll r $scratchb cpus=1
            row read-cpu1-poll200 r $scratchb cpus=1,reply-poll=200,device-poll=200
            row posted-cpu1-sleep w $scripts_ram cpus=1,device-poll=off
            row posted-cpu1-poll w $scripts_ram cpus=1
        done
    done
)
kind=$([ -e /sys/module/kvm_pvm ] && echo "PVM" || echo "hardware KVM")
echo
echo "Accesses with a gap after each, CPL3 probe on this host's /dev/kvm ($kind), median of $rounds rounds; the VMM on CPU 0"
echo
echo "$results" | awk '
    {
        key = $1 " " $2
        wall[key, ++n[key]] = $3; cpu[key, n[key]] = $4
        if (!(key in seen)) { seen[key] = 1; order[k++] = key }
    }
    function median(arr, key,    i, j, t, c, a) {
        c = n[key]
        for (i = 1; i <= c; i++) a[i] = arr[key, i]
        for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
        return a[int((c + 1) / 2)]
    }
    END {
        print "| gap us (measured) | access | ns per access over an exit with the same gap | CPU ns per access and gap | over the exit | CPUs busy |"
        print "| --- | --- | ---: | ---: | ---: | ---: |"
        for (i = 0; i < k; i++) {
            split(order[i], f, " ")
            ex = f[1] " exit"
            measured = (median(wall, ex) - median(wall, "0 exit")) / 1000
            w = median(wall, order[i]); c = median(cpu, order[i])
            printf "| %d (%.1f) | %s | %d | %d | %d | %.2f |\n", f[1], measured, f[2], \
                w - median(wall, ex), c, c - median(cpu, ex), c / w
        }
    }'
