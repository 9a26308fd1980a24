#!/usr/bin/env bash
# Builds the test guest from Debian packages: the stock kernel's bzImage and
# an initramfs with busybox, the SCSI modules and our /init. Cached and
# idempotent. Prints the output directory.
set -euo pipefail
. "$(dirname "$0")/../ci/lib.sh"

OUT=$VMM_BUILD/guest
GUEST_MODULES=(sym53c8xx sd_mod ext4 crc32c_generic uio_pci_generic)

ensure_packages busybox-static cpio kmod gzip gcc libc6-dev make curl libaio-dev zlib1g-dev e2fsprogs
kdir=$(fetch_kernel)
kver=$(ls "$kdir/root/lib/modules")
mkdir -p "$OUT"
cp -u "$kdir/root/boot/vmlinuz-$kver" "$OUT/bzImage"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,tmp,mnt,lib/modules,scripts}
cp /bin/busybox "$stage/bin/busybox"
install -m 0755 "$VMM_ROOT/guest/init" "$stage/init"
install -m 0755 "$VMM_ROOT"/guest/scripts/* "$stage/scripts/"
: > "$stage/lib/modules/load.order"
while IFS= read -r ko; do
    cp "$ko" "$stage/lib/modules/"
    basename "$ko" >> "$stage/lib/modules/load.order"
done < <(resolve_modules "$kdir/root/lib/modules/$kver/kernel" "${GUEST_MODULES[@]}")
# fio, built static from Debian's source: the packaged binary needs ~60
# shared libraries.
fio_version=$(apt-cache show fio 2>/dev/null | awk '/^Version:/ {print $2; exit}')
fio_upstream=${fio_version%%-*}
fio_bin=$VMM_BUILD/fio/fio-$fio_upstream
if [ ! -x "$fio_bin" ]; then
    log "building static fio $fio_upstream"
    src=$(mktemp -d)
    curl -sSf "http://deb.debian.org/debian/pool/main/f/fio/fio_$fio_upstream.orig.tar.gz" |
        tar xz -C "$src" --strip-components=1 || die "cannot fetch fio $fio_upstream source"
    (cd "$src" && ./configure --build-static --disable-native >/dev/null && make -j"$(nproc)" >/dev/null 2>&1) ||
        die "fio build failed in $src"
    mkdir -p "$(dirname "$fio_bin")"
    strip -o "$fio_bin" "$src/fio"
    rm -rf "$src"
fi
cp "$fio_bin" "$stage/bin/fio"
mkdir -p "$stage/etc/fio/bench"
cp "$VMM_ROOT"/resources/fio/*.fio "$stage/etc/fio/"
cp "$VMM_ROOT"/resources/fio/bench/*.fio "$stage/etc/fio/bench/"

# e2fsprogs' real mkfs.ext4 (busybox's mke2fs only makes ext2), with the
# shared libraries and loader it needs.
install -D -m 0755 /sbin/mke2fs "$stage/sbin/mkfs.ext4"
install -D -m 0644 /etc/mke2fs.conf "$stage/etc/mke2fs.conf"
for lib in $(ldd /sbin/mke2fs | grep -o '/[^ ]*'); do
    install -D -m 0755 "$lib" "$stage$lib"
done

# Guest-side tools, built static so they need nothing from the initramfs.
for tool in "$VMM_ROOT"/guest/tools/*.c; do
    gcc -static -O2 -Wall -o "$stage/bin/$(basename "$tool" .c)" "$tool"
done
echo "$kver" > "$stage/kernel-version"
pack_cpio "$stage" "$OUT/initramfs.cpio.gz"
log "guest ready: $OUT/bzImage (kernel $kver), $OUT/initramfs.cpio.gz"
echo "$OUT"
