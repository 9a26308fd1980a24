#!/usr/bin/env bash
# Builds the vmm as a static binary (for the KVM test rig's initramfs) and
# prints its path.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
target=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR=$VMM_BUILD/static-target
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release --locked \
    --manifest-path "$VMM_ROOT/Cargo.toml" --target $target --bins >&2
echo "$CARGO_TARGET_DIR/$target/release/vmm"
