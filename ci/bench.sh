#!/usr/bin/env bash
# fio inside the guest on our remote LSI against QEMU, one command:
#   ours       our VMM + our LSI remote, ioregionfd=auto
#   ours-off   our VMM + our LSI remote, ioregionfd=off (control-socket messages)
#   qemu       QEMU 7.2's in-process lsi53c895a
#   qemu-mp    QEMU 7.2 multiprocess: x-pci-proxy-dev + x-remote LSI
#   qemu-memfd (by name) QEMU 7.2's in-process LSI with guest RAM a shared
#              memfd (memory-backend-memfd,share=on), as our VMM's and
#              qemu-mp's RAM is, rather than anonymous memory
# and, by name in --configs:
#   ours-user  our VMM + our LSI remote, ioregionfd=userspace
#   ours-posted  ioregionfd=userspace with register writes posted
#              (register-writes=posted, the default since 2026-12-03)
#   ours-waited  ioregionfd=userspace with register writes waited for
#              (register-writes=waited, the default before)
#   ours-doorbells-posted  every doorbell (the SIGP write) posted, as the
#              other register writes (doorbells=posted, the way before
#              2026-12-05) rather than waited for while the guest rings
#              once per completion (doorbells=adaptive)
#   ours-doorbells-waited  every doorbell waited for (doorbells=waited)
#   ours-sched-normal  ioregionfd=userspace with the remote's threads under
#              SCHED_OTHER (sched=normal: each wake-up preempts the vCPU;
#              the default before 2026-12-03) rather than SCHED_BATCH
#   ours-workers  ioregionfd=auto with every disk command on the disk worker
#              threads while the target disconnects (disk-io=workers; the
#              way before 2026-12-04) rather than at once on the device's
#              thread where it cannot wait (the image is on the rig's tmpfs)
#   ours-nomirror  ioregionfd=userspace, every register read asks the remote
#              (register-mirror=off: no ISTAT reads from the shared page)
#   ours-vfio-user  our VMM + our LSI remote over vfio-user (proto=vfio-user),
#              region fds from DEVICE_GET_REGION_IO_FDS, ioregionfd=auto
#   qemu-vfio-user  QEMU 11.1 (Debian sid, ci/fetch-qemu.sh) with its
#              vfio-user-pci client in front of our LSI remote
#              (vmm remote lsi --protocol vfio-user): no region fds, every
#              access a socket message; guest RAM a memfd by DMA_MAP
#   ours-kernel  ioregionfd=kernel: needs --kvm-modules (our KVM_SET_IOREGION,
#              kernel/), which builds our kvm modules and boots the rig on them;
#              there `ours` (ioregionfd=auto) takes the kernel path as well
#   NAME@base  any of ours' configurations above with the vmm built from
#              the commit --baseline names, in the same run, so a change is
#              measured both ways (`--baseline HEAD~1 --configs ours@base,ours`)
# Same kernel, initramfs and disk image; one guest boot per configuration
# and round, rounds interleaved (A B C D A B C D) so noise shows. Runs in the
# KVM test rig unless /dev/kvm is hardware-backed. Prints a markdown table
# (medians over rounds, ratios against the first configuration) and the
# cost of one I/O per job (KVM exits, also by reason, injected interrupts, context switches
# of the VMM, remote and QEMU threads), and keeps them with fio's raw JSON
# and the console log in the output folder.
#
# --pin CPUS runs every process of a configuration (VMM, remote, vCPU) under
# `taskset -c CPUS`; the default in the rig is 0, because there a wake-up
# of a process on the other (idle) CPU costs milliseconds and would swamp
# every multi-process row; on hardware the default is no pinning.
#
# --syscalls also counts the system calls of every thread per I/O, by call
# (an ftrace histogram in the kernel that runs the VMs; it slows every
# call a little, so take speed from a run without it).
#
# --perf samples, while each job runs, where the rig's CPU is (`perf record
# -a` on the cpu-clock event inside the kernel that runs the VMs, Debian's
# perf) and keeps the profile per configuration, round and job in
# OUT/perf/: shares by thread and binary, by function (QEMU's binary is
# stripped, so its functions are addresses), and the nested guest's
# samples by guest function; the table turns the shares into time per
# I/O in the guest, the rig kernel, userspace and idle. Sampling costs
# exits too: take speed from a run without it.
#
# --exit-reasons also counts KVM's exits per I/O by the hardware's exit
# code (an ftrace histogram of kvm:kvm_exit in the kernel that runs the
# VMs): KVM's own counters name device accesses, HLT, host interrupts and
# interrupt windows, and leave the rest (MSR writes, CPUID, page faults
# that are not device accesses, ...) as "other". Every exit then costs a
# little more: take speed from a run without it.
#
# usage: ci/bench.sh [--rounds N] [--runtime SECS] [--jobs a,b,...]
#                    [--configs ours,ours-off,qemu,qemu-mp] [--pin CPUS|none]
#                    [--kvm-modules] [--baseline REV] [--syscalls] [--perf]
#                    [--exit-reasons] [--out DIR]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$VMM_ROOT"

rounds=2
runtime=5
jobs=""
configs="ours,ours-off,qemu,qemu-mp"
out=""
pin=""
kvm_modules=0
baseline=""
syscalls=0
perf=0
exit_reasons=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --runtime) runtime=$2; shift 2 ;;
        --jobs) jobs=$2; shift 2 ;;
        --configs) configs=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --pin) pin=$2; shift 2 ;;
        --kvm-modules) kvm_modules=1; shift ;;
        --baseline) baseline=$2; shift 2 ;;
        --syscalls) syscalls=1; shift ;;
        --perf) perf=1; shift ;;
        --exit-reasons) exit_reasons=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;p}' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[ -n "$out" ] || out=$VMM_BUILD/bench/fio-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
ensure_packages qemu-system-x86 busybox-static cpio kmod gzip python3
[ -n "$jobs" ] || jobs=$(ls resources/fio/bench | sed 's/\.fio$//' | paste -sd, -)
case ",$configs," in
    *@base,*) [ -n "$baseline" ] || die "--configs names @base configurations: say which commit with --baseline REV" ;;
esac
njobs=$(echo "$jobs" | tr ',' '\n' | wc -l)
nconfigs=$(echo "$configs" | tr ',' '\n' | wc -l)

if [ -e /dev/kvm ] && [ ! -e /sys/module/kvm_pvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
    where="hardware KVM"
else
    where="the KVM test rig (QEMU TCG, nested SVM)"
    [ -n "$pin" ] || pin=0
fi
[ "$pin" = none ] && pin=""
run=${pin:+taskset -c $pin}

# The run itself, the same text on hardware and in the rig; $VMM, $GUEST,
# $EXTRA and $PAIREXEC say where things are.
body=$(cat <<SCRIPT
img=\$WORK/bench.img
dd if=/dev/zero of=\$img bs=1M count=256 2>/dev/null
cmdline="console=ttyS0 quiet iomem=relaxed vmm.run=fio-bench vmm.runtime=$runtime vmm.jobs=$jobs vmm.count=2000$([ $perf -eq 1 ] && echo ' nokaslr')"
guest="-kernel \$GUEST/bzImage -initrd \$GUEST/initramfs.cpio.gz"
qemu_vm="qemu-system-x86_64 -accel kvm -cpu host -m 512M -nodefaults -display none -serial stdio -no-reboot"
# The cost of a job, sampled when it starts (VMM-BENCH-JOB) and when fio
# has finished (VMM-FIO-JSON-BEGIN, before its JSON crosses the serial
# port, which costs an exit per byte; the guest waits at both until
# costs() answers on its console): KVM's exits and injected
# interrupts and the exits for MMIO and port I/O it prepared for userspace
# (our KVM module takes some over after KVM counted them; debugfs sums
# them over the VMs alive, here the one), and the context
# switches of every thread of the VMM, its remotes and QEMU.
mount -t debugfs nodev /sys/kernel/debug 2>/dev/null
kvm_stat() { cat /sys/kernel/debug/kvm/\$1 2>/dev/null || echo 0; }
# With --syscalls, the rig kernel counts every system call per thread and
# call (an ftrace histogram on raw_syscalls:sys_enter, keyed by thread id
# and the call's name), which costs every call a little: for the syscall
# columns, not for speed. The sampler's own short-lived processes (the
# shell's forks and its tools, hundreds per sample) are left out: each
# would add a histogram entry per call it makes, and a table grown to
# tens of thousands of entries made every later sample slow to read
# (so that guest output leaked into the job's window) and then full.
trace=/sys/kernel/debug/tracing/events/raw_syscalls/sys_enter
hist_keys='hist:keys=common_pid,id.syscall:size=32768'
hist_filter='if COMM != "sh" && COMM != "cat" && COMM != "tr" && COMM != "awk" && COMM != "sed" && COMM != "cut" && COMM != "grep" && COMM != "busybox"'
# With --exit-reasons, every exit by its exit code (a few dozen codes at
# most); SVM and VMX number them differently, so the table is told which.
exits_trace=/sys/kernel/debug/tracing/events/kvm/kvm_exit
exits_keys='hist:keys=exit_reason:size=256'
if [ $exit_reasons -eq 1 ]; then
    echo "\$exits_keys" > \$exits_trace/trigger ||
        echo "BENCH-FAILED: cannot count exits by reason (no ftrace histograms in this kernel)"
    if grep -q -w svm /proc/cpuinfo; then echo "BENCH-EXITS-ISA: svm"; else echo "BENCH-EXITS-ISA: vmx"; fi
fi
if [ $syscalls -eq 1 ]; then
    echo "\$hist_keys \$hist_filter" > \$trace/trigger ||
        echo "BENCH-FAILED: cannot count system calls (no ftrace histograms in this kernel)"
fi
cost() {
    # KVM's counters first: the scan of every thread below takes a while
    # in the rig, and a guest that does not wait for our answer (fio-bench
    # does; the ISTAT run's markers do not) runs on meanwhile.
    kvm_now="exits=\$(kvm_stat exits) irqs=\$(kvm_stat irq_injections)"
    # The system calls next, for the same reason: before fio-bench waited
    # for the answer, the guest printed fio's JSON meanwhile, an exit and a
    # VMM write per byte, which read after the scan showed as 1.5 vCPU
    # writes per I/O.
    hist=""
    [ $syscalls -eq 1 ] && hist=\$(cat \$trace/hist 2>/dev/null)
    # Histogram lines: { exit_reason: 124 } hitcount: 5
    [ $exit_reasons -eq 1 ] && echo "BENCH-EXITS: \$(sed -n 's/.*exit_reason: *\([0-9]*\) *} *hitcount: *\([0-9]*\).*/\1=\2/p' \$exits_trace/hist 2>/dev/null | tr '\n' ' ')"
    # The rig kernel's clock, to check each guest's own (fio's) against
    # (bench-table.py warns when a guest's runs fast).
    uptime=\$(cut -d' ' -f1 /proc/uptime)
    kvm_io="mmio=\$(kvm_stat mmio_exits) pio=\$(kvm_stat io_exits)"
    # The rest of the exits by reason: HLT, a host interrupt (the L1
    # timer tick or an IPI), an interrupt window the guest had closed.
    kvm_why="halt=\$(kvm_stat halt_exits) hostirq=\$(kvm_stat irq_exits) window=\$(kvm_stat irq_window_exits)"
    # A process may end between the glob and the read: no complaint (the
    # shell's own, for a failed redirection, would land inside fio's JSON).
    # Context switches per thread: voluntary (it slept) and involuntary (it
    # was preempted), summed per process role (vmm, remote, qemu) and thread
    # name without its number (vcpu0 and vcpu1 are vcpu), so a gap in the
    # total shows which thread pays it.
    per_thread=\$(for d in /proc/[0-9]*; do
        case "\$(cat \$d/cmdline 2>/dev/null | tr '\\0' ' ')" in
            grep\ *) continue ;;  # this script's own filter names "vmm: remote"
            *qemu-system*) role=qemu ;;
            *vmm*\ remote\ *) role=remote ;;
            *vmm*) role=vmm ;;
            *) continue ;;
        esac
        awk -v role=\$role '
            /^Name:/ { sub(/^Name:[ \t]*/, ""); gsub(/ /, "_"); name = \$0 }
            /^Pid:/ { tid = \$2 }
            /^voluntary_ctxt_switches/ { v = \$2 }
            /^nonvoluntary_ctxt_switches/ { print role "/" name, v, \$2, tid }' \$d/task/*/status 2>/dev/null
    done)
    switches=\$(echo "\$per_thread" | awk '{ s += \$2 + \$3 } END { print s + 0 }')
    echo "BENCH-COST: \$kvm_now switches=\$switches \$kvm_io \$kvm_why uptime=\$uptime"
    # Histogram lines: { common_pid: 123, id: sys_ioctl [ 16] } hitcount: 5
    { echo "\$hist" | sed -n 's/.*common_pid: *\([0-9]*\), *id: *\([a-z0-9_]*\) *\[ *\([0-9]*\)\] *} *hitcount: *\([0-9]*\).*/H \1 \2 \4/p'
      echo "\$per_thread"; } | awk '
        \$1 == "H" {
            calls[\$2] += \$4; name = \$3; sub(/^sys_/, "", name)
            by[\$2 " " name] += \$4; next
        }
        NF == 4 {
            k = \$1; sub(/-[0-9]+\$/, "", k); sub(/^vmm\/vcpu[0-9]+\$/, "vmm/vcpu", k)
            sub(/^remote\/ioregion.*/, "remote/ioregion", k)
            v[k] += \$2; n[k] += \$3; c[k] += calls[\$4]; total += calls[\$4]; group[\$4] = k
        }
        END {
            printf "BENCH-THREADS:"; for (k in v) printf " %s=%d/%d", k, v[k], n[k]; print ""
            if ($syscalls) {
                printf "BENCH-SYSCALLS: total=%d", total; for (k in c) printf " %s=%d", k, c[k]; print ""
                for (key in by) {
                    split(key, f, " ")
                    if (f[1] in group) g[group[f[1]] ":" f[2]] += by[key]
                }
                printf "BENCH-SYSCALLS-BY-CALL:"; for (k in g) printf " %s=%d", k, g[k]; print ""
            }
        }'
}
# With --perf, a profile of the whole rig CPU from the job's start (after
# its counters are read) to fio's end (before they are read again), one
# file per job, reported once the VM is gone so that perf's own work
# lands in no job. perf report leaves out the samples taken while the
# nested guest ran (KVM hands those to perf as guest samples) but counts
# them in its total: what the shares leave of 100% is guest time, which
# perf kvm --guest then splits by the guest's instruction addresses:
# the guest boots the rig's own kernel, both with nokaslr, so the rig's
# kallsyms name its functions (perf's own --guestkallsyms named none in
# the rig); guest modules and guest userspace are named as such.
profile_start() {
    [ $perf -eq 1 ] || return 0
    profiled=\$(echo "\$1" | tr -d '\r')
    perf record -a -B -e cpu-clock -F 1000 -o \$WORK/perf-\$profiled.data >/dev/null 2>\$WORK/perf.err &
    profiling=\$!
}
# Stopping takes no time; perf's writing out does, so it waits until the
# counters have been read.
profile_stop() {
    [ -z "\$profiling" ] || kill -INT \$profiling
}
profile_wait() {
    [ -n "\$profiling" ] || return 0
    wait \$profiling
    grep -q 'Captured and wrote' \$WORK/perf.err || sed "s/^/BENCH-FAILED: perf record (\$profiled): /" \$WORK/perf.err
    profiling=
}
# perf report's rows and its sample count, without its headings and hints.
report_lines() {
    grep -v '^\$' | grep -v '^# *\$' |
        grep -E -v '^# (Overhead|\\.|To display|Total Lost|Event count|Children|\\(Cannot load tips)'
}
# perf kvm's rows of guest addresses ("  1.23%  [g] 0xffffffff8153e7cc")
# summed by the function of the rig's kallsyms (sorted, fixed-width hex,
# so strings compare as addresses) that holds each; 0.3% and up.
guest_functions() {
    [ -s \$WORK/kallsyms ] || sort /proc/kallsyms > \$WORK/kallsyms
    awk '
        NR == FNR { if (\$2 ~ /^[tTwW]\$/) { addr[n] = \$1 ""; name[n++] = \$3 } next }
        /%/ && \$NF ~ /^0x/ {
            share = \$1; sub(/%/, "", share)
            a = substr(\$NF, 3); while (length(a) < 16) a = "0" a
            if (a < "ffff800000000000") f = "(guest userspace)"
            else if (a >= "ffffffffc0000000") f = "(a guest module)"
            else {
                lo = 0; hi = n - 1
                while (lo < hi) { mid = int((lo + hi + 1) / 2); if (addr[mid] <= a) lo = mid; else hi = mid - 1 }
                f = name[lo]
            }
            sum[f] += share
        }
        END { for (f in sum) if (sum[f] >= 0.3) printf "%8.2f%%  %s\n", sum[f], f }' \$WORK/kallsyms - |
        sort -rn
}
profile_report() {
    for data in \$WORK/perf-*.data; do
        [ -f "\$data" ] || continue
        job=\${data#\$WORK/perf-}
        job=\${job%.data}
        for sort in comm,dso comm,dso,sym; do
            perf report -i \$data --stdio --no-children --sort \$sort --percent-limit 0.3 2>/dev/null |
                report_lines |
                sed "s/^/BENCH-PERF: \$config \$round \$job \$sort:/"
        done
        # With --kvm-modules the rig runs our build of its kernel, whose
        # symbols do not name the guest's.
        [ $kvm_modules -eq 1 ] || perf kvm --guest -i \$data report --stdio --sort sym --percent-limit 0 2>/dev/null |
            guest_functions | sed "s/^/BENCH-PERF: \$config \$round \$job guest,sym:/"
        rm -f "\$data"
    done
}
costs() {
    profiling=
    while IFS= read -r line; do
        printf '%s\n' "\$line"
        case "\$line" in
            VMM-FIO-JSON-BEGIN*|VMM-BENCH-FAILED:*) profile_stop ;;
        esac
        case "\$line" in
            VMM-BENCH-JOB:*|VMM-FIO-JSON-BEGIN*|VMM-REGBENCH-*) cost ;;
        esac
        # The guest waits at these two for a line back on its console
        # (guest/scripts/fio-bench): the window is closed, or open with
        # perf running, before fio starts or its JSON crosses the serial
        # port.
        case "\$line" in
            VMM-FIO-JSON-BEGIN*) echo sampled >&7; profile_wait ;;
            VMM-BENCH-FAILED:*) profile_wait ;;
            VMM-BENCH-JOB:*) set -- \$line; profile_start "\$2"; echo sampled >&7 ;;
        esac
    done
    profile_stop
    profile_wait
}
for round in \$(seq $rounds); do
    for config in $(echo "$configs" | tr ',' ' '); do
        echo "BENCH-CONFIG: \$config round \$round"
        # The guest's console input, through which costs() answers its
        # markers: a FIFO of each boot's own, so that an answer a guest
        # never read cannot reach the next one.
        rm -f \$WORK/console-in && mkfifo \$WORK/console-in && exec 7<>\$WORK/console-in
        vmm=\$VMM
        [ "\${config%@base}" = "\$config" ] || vmm=\$BASE_VMM
        case \${config%@base} in
        ours|ours-*)
            # Our VMM with the defaults but for these device options.
            case \${config%@base} in
            ours) opts= ;;
            ours-user) opts=,ioregionfd=userspace ;;
            ours-kernel) opts=,ioregionfd=kernel ;;
            ours-posted) opts=,ioregionfd=userspace,register-writes=posted ;;
            ours-waited) opts=,ioregionfd=userspace,register-writes=waited ;;
            ours-doorbells-posted) opts=,doorbells=posted ;;
            ours-doorbells-waited) opts=,doorbells=waited ;;
            ours-sched-normal) opts=,ioregionfd=userspace,sched=normal ;;
            ours-workers) opts=,disk-io=workers ;;
            ours-nomirror) opts=,ioregionfd=userspace,register-mirror=off ;;
            ours-vfio-user) opts=,proto=vfio-user ;;
            ours-off) opts=,ioregionfd=off ;;
            *) opts=unknown ;;
            esac
            if [ "\$opts" = unknown ]; then
                echo "BENCH-UNKNOWN-CONFIG: \$config"
            else
                $run \$vmm --kernel \$GUEST/bzImage --initrd \$GUEST/initramfs.cpio.gz --cmdline "\$cmdline" \
                    --stats --log-level info --remote-dev lsi,disk=\$img\$opts <&7 2>&1
            fi ;;
        qemu-vfio-user)
            sock=\$WORK/vfio-user.sock
            rm -f \$sock
            $run \$vmm remote lsi --protocol vfio-user --socket \$sock --disk \$img 2>\$WORK/vfio-user-remote.log &
            remote=\$!
            for i in \$(seq 100); do [ -S \$sock ] && break; sleep 0.1; done
            $run \$QEMU_SID -accel kvm -cpu host -m 512M -nodefaults -display none -serial stdio -no-reboot \
                -object memory-backend-memfd,id=mem,size=512M -machine pc,memory-backend=mem \$guest -append "\$cmdline" \
                -device "{\"driver\":\"vfio-user-pci\",\"socket\":{\"type\":\"unix\",\"path\":\"\$sock\"}}" <&7 2>&1
            wait \$remote || { echo "vmm: remote exited \$?"; sed 's/^/vmm: remote: /' \$WORK/vfio-user-remote.log; } ;;
        qemu|qemu-memfd)
            ram=
            if [ \${config%@base} = qemu-memfd ]; then
                ram="-object memory-backend-memfd,id=mem,size=512M,share=on -machine pc,memory-backend=mem"
            fi
            $run \$qemu_vm \$ram \$guest -append "\$cmdline" -device lsi53c895a,id=lsi0 \
                -drive id=d0,file=\$img,format=raw,if=none -device scsi-hd,drive=d0,bus=lsi0.0 <&7 2>&1 ;;
        qemu-mp) $run \$PAIREXEC "LSI_DISK=\$img exec \$EXTRA/ci/qemu-remote-lsi.sh" \
                "exec \$qemu_vm -object memory-backend-memfd,id=mem,size=512M -numa node,memdev=mem \$guest -append '\$cmdline' -device x-pci-proxy-dev,id=lsi0,fd=4" <&7 2>&1 ;;
        *) echo "BENCH-UNKNOWN-CONFIG: \$config" ;;
        esac | costs | grep -E '^VMM-|^BENCH-COST|^BENCH-EXITS|^BENCH-THREADS|^BENCH-SYSCALLS|^BENCH-PERF|^BENCH-FAILED|^\{|^\}|^ |^vmm: remote|BAR accesses|in flight'
        [ $perf -eq 0 ] || profile_report
    done
done
[ $syscalls -eq 1 ] && echo "!\$hist_keys \$hist_filter" > \$trace/trigger
[ $exit_reasons -eq 1 ] && echo "!\$exits_keys" > \$exits_trace/trigger
echo "BENCH-DONE"
SCRIPT
)

# Roughly: a boot, the jobs (runtime + 1 s ramp + fio start-up) and regbench
# (its ISTAT run about 10 s).
per_boot=$(( 25 + njobs * (runtime + 3) ))
total_boots=$(( rounds * nconfigs ))
log "$total_boots boots of about ${per_boot}s each in $where; results in $out"

# Progress on stderr while the console streams into the log.
progress() {
    local boot=0 start
    start=$(date +%s)
    while IFS= read -r line; do
        line=${line%$'\r'}
        printf '%s\n' "$line"
        case "$line" in
            BENCH-CONFIG:*)
                boot=$((boot + 1))
                left=$(( (total_boots - boot + 1) * per_boot ))
                log "[$boot/$total_boots] ${line#BENCH-CONFIG: }, about $((left / 60)) min $((left % 60)) s left" ;;
            VMM-BENCH-JOB:*) log "    job ${line#VMM-BENCH-JOB: }" ;;
            VMM-BENCH-FAILED:*) log "    FAILED: ${line#VMM-BENCH-FAILED: }" ;;
        esac
    done
}

# The vmm of the --baseline commit, built in a worktree of its own under
# build/ (the first time a full build: a few minutes).
baseline_vmm() {
    local rev tree
    rev=$(git rev-parse --short "$baseline^{commit}") || die "--baseline $baseline: not a commit"
    tree=$VMM_BUILD/baseline/$rev
    [ -d "$tree" ] || git worktree add --quiet --detach "$tree" "$rev" >&2
    log "baseline: building the vmm of $rev in $tree"
    if [ "$1" = static ]; then
        env -u VMM_ROOT -u VMM_BUILD "$tree/ci/build-static.sh"
    else
        (cd "$tree" && env -u VMM_ROOT -u VMM_BUILD cargo build --release --locked >&2)
        echo "$tree/target/release/vmm"
    fi
}

if [ "$where" = "hardware KVM" ]; then
    base_vmm=""
    [ -z "$baseline" ] || base_vmm=$(baseline_vmm release)
    cargo build --release --locked
    guest=$(guest/build.sh)
    pairexec=$VMM_BUILD/tools/pairexec
    mkdir -p "$(dirname "$pairexec")"
    gcc -static -O2 -o "$pairexec" ci/tools/pairexec.c
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    qemu_sid=""
    case ",$configs," in *,qemu-vfio-user,*|*,qemu-vfio-user@base,*) qemu_sid=$(ci/fetch-qemu.sh sid) ;; esac
    (WORK=$work VMM=$VMM_ROOT/target/release/vmm BASE_VMM=$base_vmm GUEST=$guest EXTRA=$VMM_ROOT PAIREXEC=$pairexec QEMU_SID=$qemu_sid \
        bash -c "$body") | progress > "$out/console.log"
else
    script=$(mktemp)
    trap 'rm -f "$script"' EXIT
    printf 'WORK=/tmp VMM=/rig/vmm BASE_VMM=/rig/extra/vmm-base GUEST=/rig/guest EXTRA=/rig/extra PAIREXEC=/rig/pairexec QEMU_SID=/opt/qemu-sid/qemu-system-x86_64\n%s\n' \
        "$body" > "$script"
    timeout=$(( 300 + total_boots * per_boot * 2 ))
    modules=()
    [ "$kvm_modules" -eq 1 ] && modules=(--kvm-modules "$(ci/build-kvm-ioregion.sh)")
    case ",$configs," in *,qemu-vfio-user,*|*,qemu-vfio-user@base,*) modules+=(--with-qemu-sid) ;; esac
    if [ "$perf" -eq 1 ]; then
        modules+=(--overlay "$(ci/perf-overlay.sh)")
    fi
    if [ -n "$baseline" ]; then
        cp "$(baseline_vmm static)" "$out/vmm-base"
        modules+=(--extra "$out/vmm-base")
    fi
    ci/rig.sh --with-qemu "${modules[@]}" --timeout "$timeout" --extra "$VMM_ROOT/ci" "$script" |
        progress > "$out/console.log"
fi
grep -q BENCH-DONE "$out/console.log" || die "the benchmark did not finish; see $out/console.log"
if [ "$perf" -eq 1 ]; then
    # One file per configuration, round and job: OUT/perf/CONFIG-rROUND-JOB.txt.
    mkdir -p "$out/perf"
    sed -n 's/^BENCH-PERF: //p' "$out/console.log" | awk -v dir="$out/perf" '
        { f = dir "/" $1 "-r" $2 "-" $3 ".txt"; sort = $4; line = $0; sub(/^[^:]*:/, "", line)
          if (sort != last[f]) { print (last[f] == "" ? "" : "\n") "## by " substr(sort, 1, length(sort) - 1) > f; last[f] = sort }
          print line > f }'
    log "profiles: $out/perf/"
fi

{
    echo "# fio in the guest: our remote LSI against QEMU"
    echo
    echo "- Date: $(date -u +%Y-%m-%d)"
    echo "- Host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) CPUs; ran in $where"
    echo "- Command: \`ci/bench.sh --rounds $rounds --runtime $runtime --jobs $jobs --configs $configs --pin ${pin:-none}$([ "$kvm_modules" -eq 1 ] && echo ' --kvm-modules')${baseline:+ --baseline $baseline}$([ "$syscalls" -eq 1 ] && echo ' --syscalls')$([ "$perf" -eq 1 ] && echo ' --perf')$([ "$exit_reasons" -eq 1 ] && echo ' --exit-reasons')\`"
    echo "- Commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with local changes)')"
    [ -z "$baseline" ] || echo "- Baseline (the \`@base\` configurations): $(git rev-parse --short "$baseline^{commit}")"
    echo
    python3 ci/bench-table.py "$out/console.log" "$out/json"
} > "$out/table.md"
cat "$out/table.md"
log "table, raw fio JSON and console log: $out"
