#!/usr/bin/env bash
# Builds the vmm as a static binary (for the KVM test rig's initramfs) and
# prints its path. The toy vfio-user device (examples/vfio_user_toy, for
# tests/vfio_user_crate.rs) is built beside it, in examples/, where
# ci/rig.sh picks it up.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
target=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR=$VMM_BUILD/static-target
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release --locked \
    --manifest-path "$VMM_ROOT/Cargo.toml" --target $target --bins --example vfio_user_toy >&2
echo "$CARGO_TARGET_DIR/$target/release/vmm"
