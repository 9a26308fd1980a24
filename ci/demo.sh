#!/usr/bin/env bash
# The main job, end to end: boots the test guest with our LSI SCSI
# controller in its own process (`--remote-dev lsi`); the guest says what it
# found, runs about 10 s of fio, and the VMM prints which path served the
# device's registers (--stats). Directly where /dev/kvm is hardware-backed,
# in the KVM test rig otherwise. On a terminal (hardware KVM only) the guest
# then leaves you at its shell: `exit` or Ctrl-A x ends it.
#
# Usage: ci/demo.sh [--cpus N] [--disk IMG] [--ioregionfd auto|kernel|userspace|off]
#                   [--register-writes posted|waited]
# In the rig, --disk IMG is copied into the rig's memory (4 GiB in all) and
# the guest writes to that copy: keep it small there.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$VMM_ROOT"

cpus=2
disk=
ioregionfd=auto
writes=posted
usage="usage: ci/demo.sh [--cpus N] [--disk IMG] [--ioregionfd auto|kernel|userspace|off] [--register-writes posted|waited]"
while [ $# -gt 0 ]; do
    case "$1" in
        --cpus) cpus=${2:?$usage}; shift 2 ;;
        --disk) disk=$(readlink -f "${2:?$usage}"); shift 2 ;;
        --ioregionfd) ioregionfd=${2:?$usage}; shift 2 ;;
        --register-writes) writes=${2:?$usage}; shift 2 ;;
        -h | --help) echo "$usage"; exit 0 ;;
        *) die "$usage" ;;
    esac
done
[ -z "$disk" ] || [ -f "$disk" ] || die "--disk $disk: no such file"

hardware=0
if [ -e /dev/kvm ] && [ ! -e /sys/module/kvm_pvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
    hardware=1
fi
started=$(date +%s)
ensure_packages busybox-static cpio kmod gzip
log "[1/3] the test guest (Debian's kernel, busybox, fio; cached after the first run)"
guest=$(guest/build.sh)
args="console=ttyS0 quiet vmm.run=demo"
spec="lsi${disk:+,disk=$disk},ioregionfd=$ioregionfd,register-writes=$writes"
if [ "$hardware" -eq 1 ]; then
    log "[2/3] vmm (cargo build --release)"
    cargo build --release --locked
    [ -t 0 ] && [ -t 1 ] && args="$args vmm.then=shell"
    log "[3/3] booting: vmm --cpus $cpus --remote-dev $spec --stats"
    set +e
    target/release/vmm --kernel "$guest/bzImage" --initrd "$guest/initramfs.cpio.gz" \
        --cpus "$cpus" --cmdline "$args" --remote-dev "$spec" --stats --log-level warn
    rc=$?
    set -e
else
    log "[2/3] vmm, static (no hardware-backed /dev/kvm here: the guest boots inside the KVM test rig)"
    vmm=$(ci/build-static.sh)
    extras=()
    # The rig sees only what it is given: the image goes in (its copy is
    # what the guest writes to).
    if [ -n "$disk" ]; then
        extras=(--extra "$disk")
        spec="lsi,disk=/rig/extra/$(basename "$disk"),ioregionfd=$ioregionfd,register-writes=$writes"
    fi
    script=$(mktemp)
    trap 'rm -f "$script"' EXIT
    cat > "$script" <<SCRIPT
echo "demo: vmm --cpus $cpus --remote-dev $spec --stats"
/rig/vmm --kernel /rig/guest/bzImage --initrd /rig/guest/initramfs.cpio.gz \
    --cpus $cpus --cmdline "$args" --remote-dev "$spec" --stats --log-level warn
SCRIPT
    log "[3/3] booting the rig, then the guest in it"
    set +e
    VMM_STATIC_BIN=$vmm ci/rig.sh --timeout 600 "${extras[@]}" "$script"
    rc=$?
    set -e
fi
log "done in $(( $(date +%s) - started )) s, vmm exited $rc"
exit "$rc"
