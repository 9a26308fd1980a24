#!/usr/bin/env bash
# Fetches another Debian suite's qemu-system-x86 (with every library it
# needs) into a private directory, without touching the host's packages,
# and prints the path of a wrapper that runs it with its own loader,
# libraries, firmware and modules.
#
# Usage: ci/fetch-qemu.sh SUITE        (sid, trixie, bookworm-backports)
# Used to try other outer QEMUs for the KVM test rig (VMM_RIG_QEMU=...).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
[ $# -eq 1 ] || die "usage: ci/fetch-qemu.sh SUITE (sid, trixie, bookworm-backports)"
suite=$1
case "$suite" in
    sid | trixie | bookworm-backports) ;;
    *) die "unknown suite $suite: sid, trixie or bookworm-backports" ;;
esac
dir=$VMM_BUILD/qemu-$suite
wrapper=$dir/qemu-system-x86_64
if [ -x "$wrapper" ] && [ "$wrapper" -nt "$0" ]; then
    echo "$wrapper"
    exit 0
fi
rm -rf "$dir"
mkdir -p "$dir"/apt/{lists/partial,archives/partial,etc} "$dir/root"
cat > "$dir/apt/etc/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main
EOF
# An empty dpkg status: apt resolves the whole closure as if nothing were
# installed, so the libraries come from the same suite as the binary.
: > "$dir/apt/status"
apt_opts=(-o "Dir::Etc::SourceList=$dir/apt/etc/sources.list" -o "Dir::Etc::SourceParts=-"
    -o "Dir::State::Lists=$dir/apt/lists" -o "Dir::State::Status=$dir/apt/status"
    -o "Dir::Cache::Archives=$dir/apt/archives" -o "Dir::Cache=$dir/apt"
    -o "APT::Install-Recommends=false" -o "Debug::NoLocking=true")
log "fetching qemu-system-x86 from $suite"
apt-get "${apt_opts[@]}" update >/dev/null 2>&1 || die "apt-get update for $suite failed"
apt-get "${apt_opts[@]}" -y --download-only install qemu-system-x86 >/dev/null 2>&1 ||
    die "downloading $suite's qemu-system-x86 failed"
for deb in "$dir"/apt/archives/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
rm -rf "$dir/apt"
libdir=$dir/root/usr/lib/x86_64-linux-gnu
[ -x "$dir/root/usr/bin/qemu-system-x86_64" ] || die "$suite's package has no qemu-system-x86_64"
cat > "$wrapper" <<EOF
#!/bin/sh
# $suite's QEMU, fetched by ci/fetch-qemu.sh.
QEMU_MODULE_DIR=$libdir/qemu exec $libdir/ld-linux-x86-64.so.2 --library-path $libdir \\
    $dir/root/usr/bin/qemu-system-x86_64 -L $dir/root/usr/share/qemu -L $dir/root/usr/share/seabios "\$@"
EOF
chmod +x "$wrapper"
"$wrapper" --version | head -n 1 >&2
echo "$wrapper"
