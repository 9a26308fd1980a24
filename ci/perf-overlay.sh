#!/usr/bin/env bash
# Packs Debian's perf (linux-perf: the binary and the libraries it loads)
# into a cpio archive laid out at its real paths, for ci/bench.sh --perf to
# add to the KVM test rig's initramfs. Cached; prints its path.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ensure_packages linux-perf cpio gzip
bin=$(readlink -f /usr/bin/perf)
out=$VMM_BUILD/rig/perf-overlay.cpio.gz
if [ -f "$out" ] && [ "$out" -nt "$bin" ] && [ "$out" -nt "$0" ]; then
    echo "$out"
    exit 0
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
stage_with_libraries "$stage" "$bin"
[ "$bin" = /usr/bin/perf ] || { mkdir -p "$stage/usr/bin" && ln -s "$bin" "$stage/usr/bin/perf"; }
mkdir -p "$(dirname "$out")"
pack_cpio "$stage" "$out"
log "perf overlay: $(du -h "$out" | cut -f1)"
echo "$out"
