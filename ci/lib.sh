# Shared helpers for the guest, rig and test scripts. Source, don't run.
# shellcheck shell=bash

VMM_ROOT=${VMM_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
VMM_BUILD=${VMM_BUILD:-$VMM_ROOT/build}

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Installs the Debian packages that are missing (needs root, or sudo).
ensure_packages() {
    local missing=() attempt pkg
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    # Twice: installing one package can remove another of the list that
    # conflicts with it (on a host with bookworm-backports' qemu-utils
    # 10.0, bookworm's qemu-system-x86 7.2 removes it), and the second
    # round puts back what the first took away, in a matching version.
    for attempt in 1 2; do
        missing=()
        for pkg in "$@"; do
            dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
        done
        [ ${#missing[@]} -eq 0 ] && return 0
        log "installing ${missing[*]}"
        $sudo apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
            $sudo apt-get update >/dev/null 2>&1
            $sudo apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
        } || die "could not install ${missing[*]}"
    done
    missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] || die "installing the others removed ${missing[*]}: they conflict; see apt's log"
}

# The Debian kernel package that linux-image-amd64 points to, extracted once
# under $VMM_BUILD/kernel/<package>; prints that directory.
fetch_kernel() {
    local pkg dir
    pkg=${VMM_KERNEL_PACKAGE:-$(apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ {print $2; exit}')}
    [ -n "$pkg" ] || die "cannot find the kernel package behind linux-image-amd64 (apt-get update?)"
    dir=$VMM_BUILD/kernel/$pkg
    if [ ! -f "$dir/.done" ]; then
        log "fetching $pkg"
        rm -rf "$dir" && mkdir -p "$dir/deb"
        (cd "$dir/deb" && apt-get download "$pkg" >/dev/null 2>&1) || die "apt-get download $pkg failed"
        dpkg-deb -x "$dir"/deb/*.deb "$dir/root"
        rm -rf "$dir/deb"
        touch "$dir/.done"
    fi
    echo "$dir"
}

# Prints the .ko files for the named modules and everything they depend on,
# dependencies first. The package ships no modules.dep, so each module's own
# "depends" field is followed.
resolve_modules() {
    local moddir=$1; shift
    declare -A path_of=() seen=()
    local f name
    while IFS= read -r f; do
        name=$(basename "$f" .ko); name=${name//-/_}
        path_of[$name]=$f
    done < <(find "$moddir" -name '*.ko')
    visit() {
        local mod=${1//-/_} dep
        [ -n "${seen[$mod]:-}" ] && return 0
        seen[$mod]=1
        [ -n "${path_of[$mod]:-}" ] || die "module $mod not found under $moddir"
        for dep in $(modinfo -F depends "${path_of[$mod]}" | tr ',' ' '); do
            visit "$dep"
        done
        echo "${path_of[$mod]}"
    }
    for name in "$@"; do visit "$name"; done
}

# Packs directory $1 into a gzip'd newc cpio archive $2.
pack_cpio() {
    (cd "$1" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) | gzip -1 > "$2.tmp"
    mv "$2.tmp" "$2"
}

# Copies binary $2, every shared library it loads and the dynamic loader
# into staging directory $1 at their real paths (a rig overlay: the rig's
# userland is busybox, so a Debian binary brings its libraries along).
stage_with_libraries() {
    local f
    for f in "$2" $(ldd "$2" | awk '/=> \// {print $3} /^\t\/lib/ {print $1}'); do
        mkdir -p "$1$(dirname "$f")" && cp -L "$f" "$1$f"
    done
}

# True when the rig's kernel log $1 shows that kernel itself failed: a
# panic, an oops or BUG, a soft or hard lockup, an RCU stall, a hung task.
# An L2 guest's messages never reach this log (ci/rig.sh keeps them apart).
# ci/l1-death-signs.txt: one fixed string per line, shared with the test
# harness (tests/common) and ci/soak-table.py.
L1_DEATH_SIGNS=$VMM_ROOT/ci/l1-death-signs.txt
l1_died() {
    [ -f "$1" ] && grep -qF -f "$L1_DEATH_SIGNS" "$1"
}

# The rig that tests, benchmarks and soaks use unless told otherwise
# (README, "the KVM test rig", has the measurements behind it): one CPU,
# the host's QEMU as the outer emulator, and the rig kernel on a periodic
# tick (nohz=off highres=off): QEMU re-arms a periodic timer itself, so a
# timer interrupt it loses costs one tick, where a lost one-shot interrupt
# left the rig kernel waiting for ever.
# VMM_RIG_QEMU=sid (or trixie) fetches that suite's QEMU (ci/fetch-qemu.sh);
# VMM_RIG_APPEND= (empty) boots the rig kernel with its usual one-shot tick.
rig_defaults() {
    : "${VMM_RIG_CPUS:=1}"
    : "${VMM_RIG_CPU:=EPYC,-xsave}"
    : "${VMM_RIG_APPEND=nohz=off highres=off}"
    case "${VMM_RIG_QEMU:-system}" in
        system) VMM_RIG_QEMU=qemu-system-x86_64 ;;
        sid | trixie | bookworm-backports) VMM_RIG_QEMU=$("$VMM_ROOT/ci/fetch-qemu.sh" "$VMM_RIG_QEMU") ;;
    esac
    export VMM_RIG_CPUS VMM_RIG_CPU VMM_RIG_APPEND VMM_RIG_QEMU
}

# For the CPL3 probe's benchmarks (ci/bench-probe.sh, ci/bench-poll-gaps.sh):
# builds the VMM (release) and the probe guest and makes a scratch 16 MiB
# disk image for the LSI, removed at exit. Sets vmm, probe and img.
probe_bench_setup() {
    [ -e /dev/kvm ] || die "needs /dev/kvm on this host"
    cargo build --release --locked >&2
    probe=$(guest/probe/build.sh)
    img=$(mktemp)
    trap 'rm -f "$img"' EXIT
    truncate -s 16M "$img"
    vmm=target/release/vmm
}
