#!/usr/bin/env bash
# Packs Debian sid's QEMU (11.1: it has the vfio-user-pci client) with its
# own loader, the libraries it loads, its modules and x86 firmware into a
# cpio archive for the KVM test rig's initramfs, under /opt/qemu-sid, with
# a wrapper /opt/qemu-sid/qemu-system-x86_64 that runs it there. The rig's
# userland is busybox and Debian 12's QEMU, so sid's binary needs its own
# glibc: the same way ci/fetch-qemu.sh runs it on the host. Cached; prints
# the archive's path.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ensure_packages cpio gzip
src=$(dirname "$("$VMM_ROOT/ci/fetch-qemu.sh" sid)")/root
out=$VMM_BUILD/rig/qemu-sid-overlay.cpio.gz
bin=$src/usr/bin/qemu-system-x86_64
if [ -f "$out" ] && [ "$out" -nt "$bin" ] && [ "$out" -nt "$0" ]; then
    echo "$out"
    exit 0
fi
libdir=usr/lib/x86_64-linux-gnu
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
dest=$stage/opt/qemu-sid
mkdir -p "$dest/$libdir" "$dest/usr/bin" "$dest/usr/share"
cp "$bin" "$dest/usr/bin/"
cp -L "$src/$libdir/ld-linux-x86-64.so.2" "$dest/$libdir/"
# Only what the binary loads: the loader lists it resolved against sid's
# libraries (about 40 MiB of sid's 78).
"$src/$libdir/ld-linux-x86-64.so.2" --library-path "$src/$libdir" --list "$bin" |
    awk '$2 == "=>" && $3 ~ /^\// {print $3}' | while read -r lib; do
    cp -L "$lib" "$dest/$libdir/"
done
cp -r "$src/$libdir/qemu" "$dest/$libdir/qemu"
cp -rL "$src/usr/share/qemu" "$src/usr/share/seabios" "$dest/usr/share/"
# Firmware of other machines.
(cd "$dest/usr/share/qemu" && rm -rf openbios-* skiboot.lid slof.bin s390-* hppa-firmware* npcm* \
    ./*.dtb u-boot* palcode-* QEMU,*)
cat > "$dest/qemu-system-x86_64" <<'WRAPPER'
#!/bin/sh
# Debian sid's QEMU with its own loader and libraries (ci/qemu-sid-overlay.sh).
d=/opt/qemu-sid
QEMU_MODULE_DIR=$d/usr/lib/x86_64-linux-gnu/qemu exec $d/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 \
    --library-path $d/usr/lib/x86_64-linux-gnu $d/usr/bin/qemu-system-x86_64 \
    -L $d/usr/share/qemu -L $d/usr/share/seabios "$@"
WRAPPER
chmod 0755 "$dest/qemu-system-x86_64"
mkdir -p "$(dirname "$out")"
pack_cpio "$stage" "$out"
log "QEMU sid overlay: $(du -h "$out" | cut -f1)"
echo "$out"
