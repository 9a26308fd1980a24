#!/usr/bin/env bash
# Builds kvm.ko and kvm-amd.ko with our KVM_SET_IOREGION (kernel/kvm/, GPL-2.0)
# for the Debian kernel the KVM test rig boots, out of tree against Debian's
# linux-headers, from Debian's linux-source of exactly the same version.
#
# Usage: ci/build-kvm-ioregion.sh
# Prints the directory holding kvm.ko and kvm-amd.ko on stdout (pass it to
# ci/rig.sh --kvm-modules); logs go to stderr. Results are cached under
# build/kvm-ioregion/<kernel release>/<hash of kernel/kvm and this script>.
# VMM_KERNEL_PACKAGE picks another linux-image package, as for ci/rig.sh.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ensure_packages xz-utils patch make gcc bc kmod binutils libelf-dev

# The rig's kernel package (same rule as fetch_kernel in ci/lib.sh).
pkg=${VMM_KERNEL_PACKAGE:-$(apt-cache depends linux-image-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ {print $2; exit}')}
[ -n "$pkg" ] || die "cannot find the kernel package behind linux-image-amd64 (apt-get update?)"
kver=${pkg#linux-image-}                       # e.g. 6.1.0-48-amd64
series=$(echo "$kver" | cut -d. -f1,2)         # e.g. 6.1
version=$(apt-cache show "$pkg" 2>/dev/null | awk '/^Version:/ {print $2; exit}')
[ -n "$version" ] || die "apt knows no $pkg"

# Headers for that ABI, and the source package of exactly that version:
# modversions and vermagic must match the kernel image the rig boots.
ensure_packages "linux-headers-$kver"
hdr_version=$(dpkg-query -W -f='${Version}' "linux-headers-$kver")
[ "$hdr_version" = "$version" ] ||
    die "linux-headers-$kver is $hdr_version but $pkg is $version"
src_pkg=linux-source-$series
src_version=$(dpkg-query -W -f='${Version}' "$src_pkg" 2>/dev/null || true)
if [ "$src_version" != "$version" ]; then
    log "installing $src_pkg=$version (have: ${src_version:-none})"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "$src_pkg=$version" >/dev/null 2>&1 ||
        die "$src_pkg $version is not installable; the archive's linux-source must match $pkg" \
            "(apt-cache policy $src_pkg; set VMM_KERNEL_PACKAGE to the linux-image of its version)"
fi
tarball=/usr/src/linux-source-$series.tar.xz
headers=/usr/src/linux-headers-$kver
[ -f "$tarball" ] && [ -d "$headers" ] || die "missing $tarball or $headers"

hash=$(cd "$VMM_ROOT" && {
    find kernel/kvm -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    sha256sum ci/build-kvm-ioregion.sh
} | sha256sum | cut -c1-16)
base=$VMM_BUILD/kvm-ioregion/$kver
out=$base/$hash
if [ -f "$out/.done" ]; then
    log "cached: $out"
    echo "$out"
    exit 0
fi

# The KVM sources of the tarball, extracted once per package version.
pristine=$base/pristine
if [ ! -f "$pristine/.version" ] || [ "$(cat "$pristine/.version")" != "$version" ]; then
    log "extracting arch/x86/kvm and virt/kvm from $tarball"
    rm -rf "$pristine" "$base/tree"
    mkdir -p "$pristine"
    tar -xJf "$tarball" -C "$pristine" --strip-components=1 \
        "linux-source-$series/arch/x86/kvm" "linux-source-$series/virt/kvm"
    echo "$version" > "$pristine/.version"
fi

# The build tree: pristine sources + out-of-tree build fixes + our hooks and
# files. Kept between builds so make only recompiles what changed.
tree=$base/tree
hooks=$VMM_ROOT/kernel/kvm/hooks.patch
patched_files() { sed -n 's|^+++ b/||p' "$1"; }
if [ ! -d "$tree" ]; then
    mkdir -p "$tree"
    cp -r "$pristine/arch" "$pristine/virt" "$tree/"
    # Out of tree, $(srctree) is the headers package: find our own files.
    sed -i -e 's|^ccflags-y += -I $(srctree)/arch/x86/kvm$|ccflags-y += -I $(src) -I $(src)/../../../include/trace|' \
        -e 's|^include $(srctree)/virt/kvm/Makefile.kvm$|include $(src)/../../../virt/kvm/Makefile.kvm|' \
        "$tree/arch/x86/kvm/Makefile"
    grep -q 'include $(src)/../../../virt/kvm/Makefile.kvm' "$tree/arch/x86/kvm/Makefile" ||
        die "arch/x86/kvm/Makefile did not take the out-of-tree fixes"
    # trace.h includes itself as ../../arch/x86/kvm/trace.h relative to a
    # directory two levels below the tree's root.
    mkdir -p "$tree/include/trace"
fi
if ! cmp -s "$hooks" "$tree/.hooks.patch"; then
    # Undo the previous hooks (fresh mtimes, so make sees the change).
    for f in $( { [ -f "$tree/.hooks.patch" ] && patched_files "$tree/.hooks.patch"; patched_files "$hooks"; } | sort -u); do
        cp "$pristine/$f" "$tree/$f"
    done
    log "applying kernel/kvm/hooks.patch"
    patch -d "$tree" -p1 --no-backup-if-mismatch -s < "$hooks" >&2 || die "hooks.patch does not apply"
    cp "$hooks" "$tree/.hooks.patch"
fi
for f in ioregion.c ioregion.h; do
    cmp -s "$VMM_ROOT/kernel/kvm/$f" "$tree/virt/kvm/$f" || cp "$VMM_ROOT/kernel/kvm/$f" "$tree/virt/kvm/$f"
done

log "building kvm.ko and kvm-amd.ko for $kver ($version)"
start=$(date +%s)
make -C "$headers" M="$tree/arch/x86/kvm" CONFIG_KVM_INTEL= \
    -j"$(($(nproc) + 1))" modules >&2 || die "module build failed"
log "built in $(($(date +%s) - start))s"

rm -rf "$out.tmp" && mkdir -p "$out.tmp"
for m in kvm kvm-amd; do
    strip --strip-debug -o "$out.tmp/$m.ko" "$tree/arch/x86/kvm/$m.ko"
done
vermagic=$(modinfo -F vermagic "$out.tmp/kvm.ko" | awk '{print $1}')
[ "$vermagic" = "$kver" ] || die "built for $vermagic, expected $kver"
printf 'kernel=%s\npackage=%s\nversion=%s\nhash=%s\n' "$kver" "$pkg" "$version" "$hash" > "$out.tmp/build-info"
rm -rf "$out" && mv "$out.tmp" "$out"
touch "$out/.done"
echo "$out"
