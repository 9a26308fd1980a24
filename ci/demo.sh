#!/usr/bin/env bash
# Builds everything and boots the test guest: directly where /dev/kvm is
# hardware-backed, in the KVM test rig otherwise. Pass guest kernel
# arguments to add them, e.g. `ci/demo.sh vmm.run=cpus`.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$VMM_ROOT"
ensure_packages qemu-system-x86 busybox-static cpio kmod gzip
guest=$(guest/build.sh)
args="console=ttyS0 $*"
if [ -e /dev/kvm ] && [ ! -e /sys/module/kvm_pvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
    cargo build --release --locked
    exec target/release/vmm --kernel "$guest/bzImage" --initrd "$guest/initramfs.cpio.gz" \
        --cpus 2 --cmdline "$args" --log-level info
fi
log "no hardware-backed /dev/kvm here: booting inside the KVM test rig"
script=$(mktemp)
trap 'rm -f "$script"' EXIT
cat > "$script" <<SCRIPT
/rig/vmm --kernel /rig/guest/bzImage --initrd /rig/guest/initramfs.cpio.gz \
    --cpus 2 --cmdline "$args" --log-level info
SCRIPT
ci/rig.sh --timeout 300 "$script"
