#!/usr/bin/env bash
# Builds the CPL3 probe guest (probe.S) into an ELF the VMM boots with
# --kernel; prints its path.
set -euo pipefail
. "$(dirname "$0")/../../ci/lib.sh"
out=$VMM_BUILD/probe
mkdir -p "$out"
src=$(dirname "$0")/probe.S
if [ ! -f "$out/probe.elf" ] || [ "$src" -nt "$out/probe.elf" ]; then
    as --64 -o "$out/probe.o" "$src"
    ld -static -nostdlib -z max-page-size=4096 -Ttext=0x200000 -e _start -o "$out/probe.elf" "$out/probe.o"
fi
echo "$out/probe.elf"
