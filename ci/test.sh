#!/usr/bin/env bash
# The one command that runs every check and test on a fresh machine:
# installs what it needs, builds the test guest, then runs formatting,
# lints, unit tests and the end-to-end tests that boot real guests (directly
# on hardware KVM, otherwise in the KVM test rig).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$VMM_ROOT"

ensure_packages qemu-system-x86 busybox-static cpio kmod gzip
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy

log "format and lints"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings

log "test guest and static vmm"
guest/build.sh >/dev/null
VMM_STATIC_BIN=$(ci/build-static.sh)
export VMM_STATIC_BIN

log "unit and end-to-end tests"
start=$(date +%s)
cargo test --locked -- --test-threads 1
log "tests passed in $(( $(date +%s) - start ))s"

log "KVM_SET_IOREGION: our kvm modules, their selftest and the VMM's kernel path"
start=$(date +%s)
ci/test-kvm-ioregion.sh
log "kernel ioregion tests passed in $(( $(date +%s) - start ))s"
