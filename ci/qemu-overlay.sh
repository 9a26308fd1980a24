#!/usr/bin/env bash
# Packs Debian's QEMU (binary, shared libraries, loader, TCG accelerator
# module, firmware and data files) and qemu-img (qcow2 images made and
# checked in the rig) into a cpio archive laid out at its real
# paths, to be added to the KVM test rig's initramfs. Cached; prints its path.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ensure_packages qemu-system-x86 qemu-utils cpio gzip
out=$VMM_BUILD/rig/qemu-overlay.cpio.gz
bin=/usr/bin/qemu-system-x86_64
if [ -f "$out" ] && [ "$out" -nt "$bin" ] && [ "$out" -nt /usr/bin/qemu-img ] && [ "$out" -nt "$0" ]; then
    echo "$out"
    exit 0
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
stage_with_libraries "$stage" "$bin"
stage_with_libraries "$stage" /usr/bin/qemu-img
stage_with_libraries "$stage" /usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so
mkdir -p "$stage/usr/share"
cp -rL /usr/share/qemu "$stage/usr/share/qemu"
cp -rL /usr/share/seabios "$stage/usr/share/seabios"
rm -rf "$stage/usr/share/qemu/"{openbios-*,skiboot.lid,slof.bin,s390-*,hppa-firmware.img,opensbi-*,npcm7xx_bootrom.bin,*.dtb}
mkdir -p "$(dirname "$out")"
pack_cpio "$stage" "$out"
log "QEMU overlay: $(du -h "$out" | cut -f1)"
echo "$out"
