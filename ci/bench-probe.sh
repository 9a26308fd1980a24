#!/usr/bin/env bash
# Register round trip from a 64-bit CPL3 probe guest (guest/probe/probe.S),
# run directly on this host's /dev/kvm: on PVM hosts CPL3 guest code runs
# natively there, so the costs are real ones, not the rig's emulated world
# switches. Rows:
#   exit            MMIO read of an unmapped address: one KVM exit answered
#                   in the vCPU thread (the floor for any trapped access)
#   sockrtt         32-byte SOCK_SEQPACKET ping-pong between two processes
#   messages-*      our LSI's SCRATCHB (BAR1 + 0x5c) with ioregionfd=off
#   ioregion-*      the same register over its region fd (ioregionfd=auto);
#                   register writes waited for (register-writes=waited)
#                   or posted (the default)
#   ioregion-posted SCRIPTS RAM (BAR2) writes, posted
#   ...-normal      the same with the remote's threads under SCHED_OTHER
#                   (sched=normal), which preempt the vCPU when they wake;
#                   the default, sched=batch, lets the vCPU run on
#   ...-cpu1        the remote's threads on CPU 1 (cpus=1), the VMM on CPU 0:
#                   -sleep with reply-poll=off,device-poll=off (the vCPU
#                   thread sleeps until the answer comes, the remote's
#                   until the next access), -vcpu-poll with device-poll=off
#                   (only the vCPU polls), the others with the defaults
#                   (both poll); sockrtt-cpu1 is the round trip between
#                   the two CPUs
# Each access count is timed as whole VMM runs at two counts; the difference
# divided by the extra accesses is the cost of one access. Everything is
# pinned to CPU 0 but the -cpu1 rows' remotes. Prints a markdown table of
# medians over ROUNDS.
#
# usage: ci/bench-probe.sh [ROUNDS] [EXTRA_ACCESSES]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$VMM_ROOT"
rounds=${1:-3}
extra=${2:-65536}
probe_bench_setup
sockrtt=$VMM_BUILD/tools/sockrtt
mkdir -p "$(dirname "$sockrtt")"
gcc -O2 -o "$sockrtt" ci/tools/sockrtt.c
bar1=0xc0000000
bar2=0xc0002000

# Microseconds for one VMM run of the probe.
run_us() {
    local start
    start=$(date +%s%N)
    taskset -c 0 "$vmm" --kernel "$probe" --cmdline "$1" "${@:2}" >/dev/null 2>&1 ||
        die "probe run failed: $*"
    echo $(( ($(date +%s%N) - start) / 1000 ))
}

# ns per access: runs with 4096 and 4096 + extra accesses.
per_access() {
    local op=$1 addr=$2
    shift 2
    local a b
    a=$(run_us "$op $addr 0x1000" "$@")
    b=$(run_us "$op $addr $(printf '%x' $((4096 + extra)))" "$@")
    echo $(( (b - a) * 1000 / extra ))
}

results=$(
    for round in $(seq "$rounds"); do
        log "round $round/$rounds"
        echo "exit $(per_access r 0xd0000000 --remote-dev "lsi,disk=$img")"
        echo "sockrtt $(taskset -c 0 "$sockrtt" 100000 | cut -d= -f2)"
        echo "messages-read $(per_access r $(printf 0x%x $((bar1 + 0x5c))) --remote-dev "lsi,disk=$img,ioregionfd=off")"
        echo "ioregion-read $(per_access r $(printf 0x%x $((bar1 + 0x5c))) --remote-dev "lsi,disk=$img")"
        echo "messages-write $(per_access w $(printf 0x%x $((bar1 + 0x5c))) --remote-dev "lsi,disk=$img,ioregionfd=off")"
        echo "ioregion-write $(per_access w $(printf 0x%x $((bar1 + 0x5c))) --remote-dev "lsi,disk=$img,register-writes=waited")"
        echo "ioregion-write-posted $(per_access w $(printf 0x%x $((bar1 + 0x5c))) --remote-dev "lsi,disk=$img,register-writes=posted")"
        echo "ioregion-posted-write $(per_access w $(printf 0x%x $((bar2 + 0x100))) --remote-dev "lsi,disk=$img")"
        echo "ioregion-read-normal $(per_access r $(printf 0x%x $((bar1 + 0x5c))) --remote-dev "lsi,disk=$img,sched=normal")"
        echo "ioregion-posted-write-normal $(per_access w $(printf 0x%x $((bar2 + 0x100))) --remote-dev "lsi,disk=$img,sched=normal")"
        if [ "$(nproc)" -gt 1 ]; then
            echo "sockrtt-cpu1 $("$sockrtt" 100000 0 1 | cut -d= -f2)"
            echo "ioregion-read-cpu1-sleep $(per_access r $(printf 0x%x $((bar1 + 0x5c))) --remote-dev "lsi,disk=$img,cpus=1,reply-poll=off,device-poll=off")"
            echo "ioregion-read-cpu1-vcpu-poll $(per_access r $(printf 0x%x $((bar1 + 0x5c))) --remote-dev "lsi,disk=$img,cpus=1,device-poll=off")"
            echo "ioregion-read-cpu1 $(per_access r $(printf 0x%x $((bar1 + 0x5c))) --remote-dev "lsi,disk=$img,cpus=1")"
            echo "ioregion-write-cpu1 $(per_access w $(printf 0x%x $((bar1 + 0x5c))) --remote-dev "lsi,disk=$img,cpus=1,register-writes=waited")"
            echo "ioregion-posted-write-cpu1 $(per_access w $(printf 0x%x $((bar2 + 0x100))) --remote-dev "lsi,disk=$img,cpus=1")"
        fi
    done
)
kind=$([ -e /sys/module/kvm_pvm ] && echo "PVM" || echo "hardware KVM")
echo
echo "Register round trip from a CPL3 probe guest on this host's /dev/kvm ($kind), ns per access, median of $rounds rounds, pinned to CPU 0"
echo
echo "$results" | awk '
    { v[$1, ++n[$1]] = $2; if (!($1 in seen)) { seen[$1] = 1; order[k++] = $1 } }
    function median(name,    i, j, t, c, a) {
        c = n[name]
        for (i = 1; i <= c; i++) a[i] = v[name, i]
        for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
        return a[int((c + 1) / 2)]
    }
    END {
        floor = median("exit") + median("sockrtt")
        bare = median("exit")
        # The -cpu1 rows against a round trip between the two CPUs.
        across = ("sockrtt-cpu1" in n) ? median("exit") + median("sockrtt-cpu1") : 0
        print "| access | ns | vs exit + socket round trip (" floor " ns) | vs exit | vs exit + round trip across CPUs (" across " ns) |"
        print "| --- | ---: | ---: | ---: | ---: |"
        for (i = 0; i < k; i++) {
            m = median(order[i])
            x = (across && order[i] ~ /cpu1/) ? sprintf("%.2fx", m / across) : "-"
            printf "| %s | %d | %.2fx | %.2fx | %s |\n", order[i], m, m / floor, m / bare, x
        }
    }'
