#!/usr/bin/env bash
# The KVM test rig: boots the stock Debian kernel under QEMU's software
# emulation with nested SVM, where it offers a real /dev/kvm, and runs a
# shell script inside it with the static vmm and the test guest at hand:
#   /rig/vmm, /rig/guest/bzImage, /rig/guest/initramfs.cpio.gz, /rig/extra/...,
#   and /rig/examples/vfio_user_toy when the static build made it
#
# Usage: ci/rig.sh [--timeout SECS] [--cpus N] [--l1-log FILE] [--monitor SOCK] [--with-qemu] [--with-qemu-sid] [--extra FILE]...
#                  [--overlay CPIO]... [--kvm-modules DIR] SCRIPT
# --with-qemu adds Debian's qemu-system-x86_64 (the interop peer and baseline)
# and /rig/pairexec (ci/tools/pairexec.c) to launch its multiprocess mode.
# --with-qemu-sid adds Debian sid's QEMU 11.1 (its vfio-user-pci client) as
# /opt/qemu-sid/qemu-system-x86_64 (ci/qemu-sid-overlay.sh).
# --overlay CPIO adds a gzip'd cpio archive laid out at real paths (as
# ci/perf-overlay.sh makes) to the rig's initramfs.
# --kvm-modules DIR loads DIR/kvm.ko and DIR/kvm-amd.ko (ci/build-kvm-ioregion.sh)
# instead of Debian's, and boots the kernel they were built for.
# --cpus N gives the rig N CPUs (default $VMM_RIG_CPUS, from rig_defaults).
# The defaults are ci/lib.sh's rig_defaults. To try other rigs:
# VMM_RIG_QEMU names the outer QEMU (a path, "system" for the host's, or
# sid/trixie/bookworm-backports for that suite's, fetched by
# ci/fetch-qemu.sh), VMM_RIG_CPU its -cpu model (default EPYC,-xsave),
# VMM_RIG_APPEND the rig kernel's extra command line.
# --l1-log FILE keeps the rig's own kernel log (its console, on a second
# serial port, so nothing a script prints can be mistaken for it).
# --monitor SOCK opens QEMU's monitor there while the rig runs, and links
# the rig kernel's System.map at SOCK.map (the rig kernel runs with
# nokaslr), for ci/rig-where.py to say where a silent rig's CPU is.
# Streams the script's output to stdout and exits with the script's status.
#
set -euo pipefail
. "$(dirname "$0")/lib.sh"
rig_defaults

timeout=600
cpus=$VMM_RIG_CPUS
qemu=$VMM_RIG_QEMU
cpu_model=$VMM_RIG_CPU
l1_log=
monitor=
extras=()
overlays=()
with_qemu=0
with_qemu_sid=0
kvm_modules=
while [ $# -gt 1 ]; do
    case "$1" in
        --timeout) timeout=$2; shift 2 ;;
        --cpus) cpus=$2; shift 2 ;;
        --l1-log) l1_log=$2; shift 2 ;;
        --monitor) monitor=$2; shift 2 ;;
        --with-qemu) with_qemu=1; shift ;;
        --with-qemu-sid) with_qemu_sid=1; shift ;;
        --extra) extras+=("$2"); shift 2 ;;
        --overlay) [ -f "$2" ] || die "--overlay $2: no such archive"; overlays+=("$2"); shift 2 ;;
        --kvm-modules) kvm_modules=$2; shift 2 ;;
        *) die "unknown option $1" ;;
    esac
done
[ $# -eq 1 ] && [ -f "$1" ] || die "usage: ci/rig.sh [--timeout SECS] [--cpus N] [--l1-log FILE] [--monitor SOCK] [--with-qemu] [--with-qemu-sid] [--extra FILE]... [--overlay CPIO]... [--kvm-modules DIR] SCRIPT"
script=$1

ensure_packages qemu-system-x86 busybox-static cpio kmod gzip
if [ -n "$kvm_modules" ]; then
    [ -f "$kvm_modules/kvm.ko" ] && [ -f "$kvm_modules/kvm-amd.ko" ] ||
        die "--kvm-modules $kvm_modules: no kvm.ko and kvm-amd.ko there"
    # Modules load only into the kernel they were built for: boot that one.
    mod_kver=$(modinfo -F vermagic "$kvm_modules/kvm.ko" | awk '{print $1}')
    kdir=$(VMM_KERNEL_PACKAGE=${VMM_KERNEL_PACKAGE:-linux-image-$mod_kver} fetch_kernel)
else
    kdir=$(fetch_kernel)
fi
kver=$(ls "$kdir/root/lib/modules")
[ -z "$kvm_modules" ] || [ "$mod_kver" = "$kver" ] ||
    die "--kvm-modules are for $mod_kver but the rig boots $kver"
guest=$("$VMM_ROOT/guest/build.sh")
vmm=${VMM_STATIC_BIN:-$("$VMM_ROOT/ci/build-static.sh")}

rig=$VMM_BUILD/rig
mkdir -p "$rig"
base=$rig/base-$kver.cpio.gz
if [ ! -f "$base" ] || [ "$VMM_ROOT/ci/rig-init" -nt "$base" ]; then
    stage=$(mktemp -d)
    mkdir -p "$stage"/{bin,dev,proc,sys,tmp,lib/modules,rig}
    cp /bin/busybox "$stage/bin/busybox"
    install -m 0755 "$VMM_ROOT/ci/rig-init" "$stage/init"
    : > "$stage/lib/modules/load.order"
    while IFS= read -r ko; do
        cp "$ko" "$stage/lib/modules/"
        basename "$ko" >> "$stage/lib/modules/load.order"
    done < <(resolve_modules "$kdir/root/lib/modules/$kver/kernel" kvm_amd)
    pack_cpio "$stage" "$base"
    rm -rf "$stage"
fi

work=$(mktemp -d)
# Outside $work, which is what gets packed.
payload=$(mktemp --suffix=.cpio.gz)
trap 'rm -rf "$work" "$payload"' EXIT
mkdir -p "$work/rig/guest" "$work/rig/extra"
cp "$vmm" "$work/rig/vmm"
# The toy vfio-user device, where ci/build-static.sh put it.
toy=$(dirname "$vmm")/examples/vfio_user_toy
[ -x "$toy" ] && mkdir -p "$work/rig/examples" && cp "$toy" "$work/rig/examples/"
cp "$guest/bzImage" "$guest/initramfs.cpio.gz" "$work/rig/guest/"
cp "$script" "$work/rig/run.sh"
for f in "${extras[@]}"; do cp -r "$f" "$work/rig/extra/"; done
# rig-init loads /lib/modules/override/X.ko instead of the stock X.ko.
if [ -n "$kvm_modules" ]; then
    mkdir -p "$work/lib/modules/override"
    cp "$kvm_modules/kvm.ko" "$kvm_modules/kvm-amd.ko" "$work/lib/modules/override/"
fi
# QEMU's multiprocess mode needs an orchestrator for its socketpair.
[ "$with_qemu" -eq 1 ] && gcc -static -O2 -o "$work/rig/pairexec" "$VMM_ROOT/ci/tools/pairexec.c"
# The kernel unpacks concatenated archives in order: base, then this run's files.
pack_cpio "$work" "$payload"
[ "$with_qemu" -eq 1 ] && overlays+=("$("$VMM_ROOT/ci/qemu-overlay.sh")")
[ "$with_qemu_sid" -eq 1 ] && overlays+=("$("$VMM_ROOT/ci/qemu-sid-overlay.sh")")
cat "$base" "${overlays[@]}" "$payload" > "$work/initrd.cpio.gz"

status=$work/status
[ -n "$l1_log" ] || l1_log=$work/l1.log
[ -n "$monitor" ] || monitor=$work/monitor.sock
ln -sf "$kdir/root/boot/System.map-$kver" "$monitor.map"
: > "$l1_log"
log "rig: $("$qemu" --version | head -n 1), -cpu $cpu_model, $cpus CPU(s), L1 kernel $kver${VMM_RIG_APPEND:+ with $VMM_RIG_APPEND}"
set +e
# ttyS0 carries the script's output (rig-init sends it there), ttyS1 the
# rig kernel's console: a panic of the rig's own kernel lands only in
# $l1_log, an L2 guest's only on ttyS0.
timeout --foreground -k 10 "$timeout" "$qemu" \
    -accel tcg,thread=multi -cpu "$cpu_model" -smp "$cpus" -m 4G \
    -nodefaults -display none -serial stdio -serial "file:$l1_log" -no-reboot \
    -monitor "unix:$monitor,server,nowait" \
    -kernel "$kdir/root/boot/vmlinuz-$kver" -initrd "$work/initrd.cpio.gz" \
    -append "console=ttyS1 loglevel=5 panic=-1 transparent_hugepage=never nokaslr $VMM_RIG_APPEND" \
    </dev/null 2> >(grep -v "TCG doesn't support requested feature" >&2) |
    tee "$status" | sed -u 's/\r$//'
qemu_rc=${PIPESTATUS[0]}
set -e
rc=$(sed -n 's/^RIG-EXIT: \([0-9]*\).*/\1/p' "$status" | tail -n 1)
# The rig's own kernel failing is the rig's fault, not the script's: say so
# with its last words, wherever it happened.
if l1_died "$l1_log"; then
    log "the rig's own kernel failed; its console ends:"
    tail -n 60 "$l1_log" | sed 's/^/L1: /' >&2
fi
if [ -z "$rc" ]; then
    [ "$qemu_rc" -eq 124 ] && die "the rig timed out after ${timeout}s"
    die "the rig ended without reporting the script's status (qemu exit $qemu_rc)"
fi
exit "$rc"
