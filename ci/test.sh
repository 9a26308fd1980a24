#!/usr/bin/env bash
# The one command that runs every check and test on a fresh machine:
# installs what it needs, builds the test guest, then runs formatting,
# lints, unit tests and the end-to-end tests that boot real guests (directly
# on hardware KVM, otherwise in the KVM test rig).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$VMM_ROOT"

# qemu-utils: qemu-img and qemu-io for tests/qcow2.rs and the rig's qcow2 scenarios.
ensure_packages qemu-system-x86 qemu-utils busybox-static cpio kmod gzip
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy

log "format and lints"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings

log "test guest and static vmm"
guest/build.sh >/dev/null
VMM_STATIC_BIN=$(ci/build-static.sh)
export VMM_STATIC_BIN

# Every second rig boot (allowed only when the rig's own kernel failed) is
# announced where it happens and listed here at the end, pass or fail.
export VMM_RIG_RETRY_LOG=$VMM_BUILD/rig-retries.log
rm -f "$VMM_RIG_RETRY_LOG"
report_retries() {
    local n=0
    [ -f "$VMM_RIG_RETRY_LOG" ] && n=$(wc -l < "$VMM_RIG_RETRY_LOG")
    log "rig retries in this run: $n (a retry only follows a failure of the rig itself: its kernel failed, or it froze whole)"
    [ "$n" -eq 0 ] || sed 's/^/  retry: /' "$VMM_RIG_RETRY_LOG" >&2
}
trap report_retries EXIT

log "QEMU with vfio-user-pci (Debian sid's, fetched privately) for tests/vfio_user.rs"
VMM_QEMU_VFIO_USER=$(ci/fetch-qemu.sh sid)
export VMM_QEMU_VFIO_USER

log "unit and end-to-end tests"
start=$(date +%s)
cargo test --locked -- --test-threads 1
log "tests passed in $(( $(date +%s) - start ))s"

log "KVM_SET_IOREGION: our kvm modules, their selftest and the VMM's kernel path"
start=$(date +%s)
ci/test-kvm-ioregion.sh
log "kernel ioregion tests passed in $(( $(date +%s) - start ))s"
