#!/usr/bin/env bash
# Soak: runs each scenario N times per configuration, interleaved (round 1
# of every configuration and scenario, then round 2, ...), in the KVM test
# rig (or directly on hardware KVM), and prints how each run ended:
#   ok, stalled (ran into its time limit), triple fault, guest panic or
#   lockup, verify failure, other failure (with its exit status), and rig
#   died (the rig's own kernel failed, or the rig stopped before the run
#   ended: every run it did not reach counts as not run).
# A benchmark, not a test: it exits 0 whenever it could produce the table.
# The table and the logs (compressed) are kept under resources/soak/.
#
# Configurations:
#   ours         our VMM and LSI remote, defaults (register writes posted
#                since 2026-12-03; before, waited for; disk commands in
#                place on the tmpfs image since 2026-12-04)
#   ours-posted  ioregionfd=userspace,register-writes=posted
#   ours-waited  ioregionfd=userspace,register-writes=waited
#   ours-workers disk-io=workers: every disk command on a worker thread
#                while the target disconnects (the way before 2026-12-04)
#   ours-vfio-user  over vfio-user (proto=vfio-user), region fds
#   ours-kernel  ioregionfd=kernel (boots the rig on our KVM_SET_IOREGION
#                modules, ci/build-kvm-ioregion.sh; implies --kvm-modules)
#   qemu         QEMU's in-process lsi53c895a (Debian's QEMU in the rig)
#   qemu-mp      QEMU multiprocess: x-pci-proxy-dev + x-remote LSI
# Scenarios (the guest has 512 MiB; the disk is a 256 MiB image in tmpfs):
#   fio2      2 vCPUs, fio randwrite 4k, 32 MiB, iodepth 16, crc32c verify
#   fio1      the same on 1 vCPU
#   restart   ours only: fio2's job on 1 vCPU, the remote is killed
#             mid-I/O and restart=on brings a new one; the guest must finish
#             with fio verify passing
#   hostile   ours only: the guest unbinds sym53c8xx, programs garbage into
#             the chip (guest/scripts/hostile), binds it again and reads
#             the disk, then lets go of it and takes it back 5 times; a run
#             is ok when the disk came back every time and the device was
#             never cut off (its chip reset lost a read in 3 of 14 runs
#             until 8af3ab1)
#
# A soak longer than one sitting runs in parts: `--part-of NAME` adds
# --runs more rounds to the record resources/soak/NAME.md, with the same
# limits and rig, and only at the commit the record was started at (check
# that commit out, e.g. in a git worktree); the table is then made over
# every part's logs. A part runs the record's configurations and
# scenarios unless --configs or --scenarios name others (say, 10 restart
# runs of ours after 30 fio2 rounds of everything); the table counts each
# pair's runs against the rounds the parts gave it.
#
# usage: ci/soak.sh [--runs N] [--configs a,b] [--scenarios a,b]
#                   [--timeout SECS] [--cpus N] [--kvm-modules] [--out DIR]
#                   [--part-of NAME]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$VMM_ROOT"
rig_defaults

runs=3
configs="ours,ours-posted,qemu,qemu-mp"
scenarios="fio2,fio1,restart"
per_run=400
cpus=$VMM_RIG_CPUS
kvm_modules=0
out=""
part_of=""
given_configs="" given_scenarios=""
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs=$2; shift 2 ;;
        --configs) configs=$2; given_configs=$2; shift 2 ;;
        --scenarios) scenarios=$2; given_scenarios=$2; shift 2 ;;
        --timeout) per_run=$2; shift 2 ;;
        --cpus) cpus=$2; shift 2 ;;
        --kvm-modules) kvm_modules=1; shift ;;
        --out) out=$2; shift 2 ;;
        --part-of) part_of=$2; shift 2 ;;
        -h|--help) sed -n '2,38p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
case ",$configs," in *,ours-kernel,*) kvm_modules=1 ;; esac
records=$VMM_ROOT/resources/soak
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo '+local-changes')
# A later part takes the first part's settings, at its commit only, and
# its configurations and scenarios unless it names its own.
round0=0
record_configs="" record_scenarios="" expected=""
if [ -n "$part_of" ]; then
    params=$records/$part_of.params
    [ -f "$params" ] || die "no soak record $part_of to continue ($params missing)"
    # shellcheck disable=SC1090
    . "$params"
    [ "$commit" = "$soak_commit" ] ||
        die "$part_of ran at $soak_commit, this tree is $commit: check that commit out (git worktree add) to continue it"
    case ",$given_configs," in
        *,ours-kernel,*) [ "$soak_kvm_modules" -eq 1 ] ||
            die "$part_of runs on the stock kvm modules: ours-kernel cannot join it" ;;
    esac
    configs=${given_configs:-$soak_configs} scenarios=${given_scenarios:-$soak_scenarios}
    per_run=$soak_per_run cpus=$soak_cpus kvm_modules=$soak_kvm_modules round0=$soak_rounds
    record_configs=$soak_configs record_scenarios=$soak_scenarios
    # Records made before parts could differ ran every pair each round.
    expected=${soak_expected:-}
    if [ -z "$expected" ]; then
        for c in $(echo "$soak_configs" | tr ',' ' '); do
            for sc in $(echo "$soak_scenarios" | tr ',' ' '); do
                expected="$expected $c:$sc=$soak_rounds"
            done
        done
    fi
fi
# The record's lists, in order of first appearance, and how many runs of
# each pair its parts asked for (this one included).
union() { printf '%s,%s\n' "$1" "$2" | tr ',' '\n' | awk 'NF && !seen[$0]++' | paste -sd, -; }
record_configs=$(union "$record_configs" "$configs")
record_scenarios=$(union "$record_scenarios" "$scenarios")
for c in $(echo "$configs" | tr ',' ' '); do
    for sc in $(echo "$scenarios" | tr ',' ' '); do
        old=$(printf '%s\n' $expected | sed -n "s/^$c:$sc=//p")
        expected="$(printf '%s\n' $expected | { grep -v "^$c:$sc=" || true; }) $c:$sc=$(( ${old:-0} + runs ))"
    done
done
expected=$(echo $expected)
[ -n "$out" ] || out=$VMM_BUILD/soak/soak-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
ensure_packages qemu-system-x86 busybox-static cpio kmod gzip python3

if [ -e /dev/kvm ] && [ ! -e /sys/module/kvm_pvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
    where="hardware KVM"
else
    where="the KVM test rig"
fi

# One run: $1 config, $2 scenario. Prints the guest's and the VMM's output;
# its exit status is the run's.
body=$(cat <<'SCRIPT'
fio_cmdline="console=ttyS0 quiet vmm.run=fio-verify vmm.fio=verify-long"
guest="-kernel $GUEST/bzImage -initrd $GUEST/initramfs.cpio.gz"
qemu_vm="qemu-system-x86_64 -accel kvm -cpu host -m 512M -nodefaults -display none -serial stdio -no-reboot"
ours() { # $1 vCPUs, $2 extra --remote-dev keys, $3 the guest's command line
    $VMM --kernel $GUEST/bzImage --initrd $GUEST/initramfs.cpio.gz --cmdline "${3:-$fio_cmdline}" \
        --cpus "$1" --mem 512M --log-level info --remote-dev "lsi,disk=$img$2" </dev/null 2>&1
}
# The --remote-dev keys of one of our configurations; fails for QEMU's.
ours_keys() {
    case $1 in
        ours) echo "" ;;
        ours-posted) echo ",ioregionfd=userspace,register-writes=posted" ;;
        ours-waited) echo ",ioregionfd=userspace,register-writes=waited" ;;
        ours-kernel) echo ",ioregionfd=kernel" ;;
        ours-workers) echo ",disk-io=workers" ;;
        ours-vfio-user) echo ",proto=vfio-user" ;;
        *) return 1 ;;
    esac
}
one_run() {
    config=$1 scenario=$2
    img=$WORK/soak.img
    rm -f "$img"; dd if=/dev/zero of="$img" bs=1M count=256 2>/dev/null
    case $scenario in
        fio2) n=2 ;;
        fio1) n=1 ;;
        restart) n=1 ;;
        hostile) n=1 ;;
    esac
    keys=$(ours_keys "$config") || keys=none
    if [ "$scenario" = hostile ]; then
        [ "$keys" = none ] && { echo "SOAK-NOT-APPLICABLE"; return 0; }
        # memmap= keeps the guest out of the RAM its SCRIPTS copy over.
        ours 1 "$keys" 'console=ttyS0 quiet iomem=relaxed memmap=16M$0x4000000 vmm.run=hostile'
        return
    fi
    if [ "$scenario" = restart ]; then
        [ "$keys" = none ] && { echo "SOAK-NOT-APPLICABLE"; return 0; }
        # The last run's log must be gone first, or its 'disk found'
        # would have the remote killed before this guest booted.
        rm -f $WORK/vmm.log
        ours 1 ",restart=on$keys" > $WORK/vmm.log &
        vmm=$!
        i=0; while [ $i -lt 120 ] && ! grep -q 'disk found' $WORK/vmm.log 2>/dev/null; do sleep 1; i=$((i + 1)); done
        sleep 5
        remote=$(sed -n 's/.*(lsi, pid \([0-9]*\)).*/\1/p' $WORK/vmm.log | head -n 1)
        if grep -q 'disk found' $WORK/vmm.log; then
            echo "killing remote $remote, 5 s after the guest found its disk (mid-I/O)"
        else
            echo "killing remote $remote; the guest had not found its disk in 120 s"
        fi
        kill -KILL "$remote"
        wait $vmm
        rc=$?
        cat $WORK/vmm.log
        return $rc
    fi
    if [ "$keys" != none ]; then
        ours $n "$keys"
        return
    fi
    case $config in
        qemu) $qemu_vm -smp $n $guest -append "$fio_cmdline" -device lsi53c895a,id=lsi0 \
                -drive id=d0,file=$img,format=raw,if=none -device scsi-hd,drive=d0,bus=lsi0.0 </dev/null 2>&1 ;;
        qemu-mp) $PAIREXEC "LSI_DISK=$img exec $EXTRA/ci/qemu-remote-lsi.sh" \
                "exec $qemu_vm -smp $n -object memory-backend-memfd,id=mem,size=512M -numa node,memdev=mem $guest -append '$fio_cmdline' -device x-pci-proxy-dev,id=lsi0,fd=4" </dev/null 2>&1 ;;
        *) echo "SOAK-UNKNOWN-CONFIG: $config"; return 2 ;;
    esac
}
# KVM's own counters, for the cost of a run: exits and injected
# interrupts. The rig kernel's debugfs keeps them per VM, and only while
# the VM lives (its global files sum over the VMs alive when read), so a
# sampler copies every VM's counters once a second and the run's figures
# are the last copies, summed over the VMs it made.
mount -t debugfs nodev /sys/kernel/debug 2>/dev/null
KVM_STATS="exits irq_injections irq_exits io_exits mmio_exits halt_exits"
kvm_sampler() {
    while :; do
        for d in /sys/kernel/debug/kvm/*-*; do
            [ -f "$d/exits" ] || continue
            line=""
            for f in $KVM_STATS; do line="$line$f=$(cat "$d/$f" 2>/dev/null || echo 0) "; done
            echo "$line" > "$WORK/kvm-sample.$(basename "$d")"
        done
        sleep 1
    done
}
kvm_sums() {
    cat $WORK/kvm-sample.* 2>/dev/null | tr ' ' '\n' |
        awk -F= 'NF == 2 { s[$1] += $2 } END { for (k in s) printf "%s=%d ", k, s[k] }'
}
for round in $(seq $RUNS); do
    for scenario in $(echo "$SCENARIOS" | tr ',' ' '); do
        for config in $(echo "$CONFIGS" | tr ',' ' '); do
            echo "SOAK-RUN: $config $scenario $((ROUND0 + round))"
            rm -f $WORK/kvm-sample.*
            kvm_sampler & sampler=$!
            start=$(date +%s)
            # Each run in its own shell under a time limit; whatever it
            # left running is killed before the next one.
            ( one_run "$config" "$scenario" ) > $WORK/run.log 2>&1 &
            runner=$!
            ( sleep $PER_RUN; kill -TERM $runner 2>/dev/null; sleep 10; kill -KILL $runner 2>/dev/null ) &
            limiter=$!
            wait $runner
            rc=$?
            pkill -P $limiter 2>/dev/null; kill $limiter 2>/dev/null
            # The limiter's TERM reached the runner: a stall.
            [ $(( $(date +%s) - start )) -ge $PER_RUN ] && rc=124
            for p in $(pidof vmm qemu-system-x86_64 pairexec); do kill -9 $p 2>/dev/null; done
            cat $WORK/run.log
            kill $sampler 2>/dev/null; wait $sampler 2>/dev/null
            echo "SOAK-KVM: $(kvm_sums)"
            echo "SOAK-END: $config $scenario $((ROUND0 + round)) rc=$rc secs=$(( $(date +%s) - start ))"
        done
    done
done
echo "SOAK-DONE"
SCRIPT
)

nruns=$(( runs * $(echo "$configs" | tr ',' '\n' | wc -l) * $(echo "$scenarios" | tr ',' '\n' | wc -l) ))
log "$nruns runs of at most ${per_run}s in $where; results in $out"

progress() {
    local n=0
    while IFS= read -r line; do
        line=${line%$'\r'}
        printf '%s\n' "$line"
        case "$line" in
            SOAK-RUN:*) n=$((n + 1)); log "[$n/$nruns] ${line#SOAK-RUN: }" ;;
            SOAK-END:*) log "    ${line#SOAK-END: }" ;;
        esac
    done
}

vars="RUNS=$runs ROUND0=$round0 CONFIGS=$configs SCENARIOS=$scenarios PER_RUN=$per_run"
if [ "$where" = "hardware KVM" ]; then
    cargo build --release --locked
    guest=$(guest/build.sh)
    pairexec=$VMM_BUILD/tools/pairexec
    mkdir -p "$(dirname "$pairexec")"
    gcc -static -O2 -o "$pairexec" ci/tools/pairexec.c
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (export $vars WORK=$work VMM=$VMM_ROOT/target/release/vmm GUEST=$guest EXTRA=$VMM_ROOT PAIREXEC=$pairexec
     bash -c "$body") | progress > "$out/console.log"
    : > "$out/l1.log"
    rig_desc="hardware KVM, $(uname -r)"
else
    script=$(mktemp)
    trap 'rm -f "$script"' EXIT
    {
        echo "export $vars WORK=/tmp VMM=/rig/vmm GUEST=/rig/guest EXTRA=/rig/extra PAIREXEC=/rig/pairexec"
        echo 'echo "SOAK-RIG: L1 $(uname -r), kvm_amd $(for p in npt nested vgif avic; do printf "%s=%s " $p "$(cat /sys/module/kvm_amd/parameters/$p 2>/dev/null)"; done)"'
        printf '%s\n' "$body"
    } > "$script"
    modules=()
    [ "$kvm_modules" -eq 1 ] && modules=(--kvm-modules "$(ci/build-kvm-ioregion.sh)")
    set +e
    ci/rig.sh --with-qemu "${modules[@]}" --cpus "$cpus" --l1-log "$out/l1.log" \
        --timeout $(( 300 + nruns * (per_run + 20) )) --extra "$VMM_ROOT/ci" "$script" |
        progress > "$out/console.log"
    set -e
    rig_desc="$("$VMM_RIG_QEMU" --version | head -n 1), -cpu $VMM_RIG_CPU -smp $cpus -m 4G${VMM_RIG_APPEND:+, rig kernel with $VMM_RIG_APPEND}, $(sed -n 's/^SOAK-RIG: //p' "$out/console.log" | tr -d '\r' | head -n 1)"
fi

# The record: the table over every part, and each part's logs compressed,
# under resources/soak.
mkdir -p "$records"
if [ -n "$part_of" ]; then
    name=$part_of
    part=$((soak_parts + 1))
    logs=$records/$name-part$part-logs.tar.gz
    parts_desc=$(cat "$records/$name.parts")
else
    name=$(date -u +%Y-%m-%d-%H%M)-soak
    part=1
    logs=$records/$name-logs.tar.gz
    parts_desc=""
fi
tar -C "$out" -czf "$logs" console.log l1.log
rounds=$((round0 + runs))
line="- Part $part: $(date -u '+%Y-%m-%d %H:%M') UTC, rounds $((round0 + 1)) to $rounds of $configs x $scenarios, logs \`$(basename "$logs")\`"
printf '%s\n' "${parts_desc:+$parts_desc}" "$line" | sed '/^$/d' > "$records/$name.parts"
{
    echo "soak_commit=$commit"
    echo "soak_configs=$record_configs"
    echo "soak_scenarios=$record_scenarios"
    echo "soak_expected=\"$expected\""
    echo "soak_per_run=$per_run"
    echo "soak_cpus=$cpus"
    echo "soak_kvm_modules=$kvm_modules"
    echo "soak_rounds=$rounds"
    echo "soak_parts=$part"
} > "$records/$name.params"
# Every part's console and rig-kernel logs, for the table.
unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked" "${script:-}" "${work:-}"' EXIT
pairs=()
for p in $(seq "$part"); do
    f=$records/$name-part$p-logs.tar.gz
    [ "$p" -eq 1 ] && f=$records/$name-logs.tar.gz
    mkdir -p "$unpacked/$p"
    tar -C "$unpacked/$p" -xzf "$f"
    pairs+=("$unpacked/$p/console.log:$unpacked/$p/l1.log")
done
kvm_flag=""
[ "$kvm_modules" -eq 1 ] && kvm_flag=" --kvm-modules"
in_parts=""
[ "$part" -gt 1 ] && in_parts=", in $part parts (\`--part-of $name\`)"
{
    echo "# Soak: how each run ended"
    echo
    echo "- Where: $where ($rig_desc)"
    echo "- Guest kernel: $(basename "$(readlink -f "$VMM_BUILD/guest/bzImage")") from $(ls "$VMM_BUILD/kernel" | head -n 1)"
    if [ "$part" -eq 1 ]; then
        echo "- Command: \`ci/soak.sh --runs $rounds --configs $configs --scenarios $scenarios --timeout $per_run --cpus $cpus$kvm_flag\`"
    else
        echo "- Command: \`ci/soak.sh --timeout $per_run --cpus $cpus$kvm_flag\` with --runs, --configs and --scenarios per part$in_parts"
    fi
    echo "- Commit: $commit"
    cat "$records/$name.parts"
    echo
    python3 ci/soak-table.py "$expected" "$record_configs" "$record_scenarios" "${pairs[@]}"
} > "$out/table.md"
cat "$out/table.md"
cp "$out/table.md" "$records/$name.md"
log "table: $records/$name.md (part $part, logs $logs); more rounds: ci/soak.sh --runs N --part-of $name"
