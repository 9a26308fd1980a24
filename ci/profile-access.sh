#!/usr/bin/env bash
# Where one register access over a region fd (the userspace ioregion path)
# spends its work: the CPL3 probe guest on this host's /dev/kvm reads or
# writes SCRATCHB (BAR1 + 0x5c) COUNT times through our LSI remote, which
# runs as a separate `vmm remote lsi --socket` process.
#   - callgrind on the remote: instructions per access (difference of two
#     runs, 4096 and 4096 + EXTRA accesses) and the top functions;
#   - strace -c on both processes: syscalls per access.
# Needs /dev/kvm (PVM runs the probe's CPL3 code natively; on hardware KVM
# it runs as well). Prints a markdown report; raw files stay in OUT.
#
# usage: ci/profile-access.sh [EXTRA_ACCESSES] [OUT]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$VMM_ROOT"
extra=${1:-16384}
out=${2:-$VMM_BUILD/profile-$(date +%Y%m%d-%H%M%S)}
[ -e /dev/kvm ] || die "needs /dev/kvm on this host"
ensure_packages valgrind strace
cargo build --release --locked >&2
vmm=$VMM_ROOT/target/release/vmm
probe=$(guest/probe/build.sh)
mkdir -p "$out"
img=$out/disk.img
truncate -s 16M "$img"
base=4096

# Runs the probe for `count` accesses of kind `op` (r or w) with the remote
# under the wrapper command given after the first two arguments.
run() {
    local op=$1 count=$2 tag=$3
    shift 3
    local sock=$out/$tag.sock
    rm -f "$sock"
    "$@" "$vmm" remote lsi --socket "$sock" --disk "$img" --no-sandbox --log-level error &
    local remote=$!
    for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
    [ -S "$sock" ] || die "the remote did not listen on $sock"
    local vmm_wrap=()
    [ "$1" = strace ] && vmm_wrap=(strace -f -c -o "$out/$tag.vmm.strace")
    "${vmm_wrap[@]}" taskset -c 0 "$vmm" --kernel "$probe" --cmdline "$op 0xc000005c $(printf 0x%x "$count")" \
        --remote-dev "socket=$sock,proto=vmm" >/dev/null 2>"$out/$tag.vmm.log" ||
        die "probe run failed: $(tail -n 3 "$out/$tag.vmm.log")"
    wait "$remote" || true
}

total_ir() { awk '/^(summary|totals):/ {print $2; exit}' "$1"; }
calls() { awk -v s="$2" '$NF == s && $4 ~ /^[0-9]+$/ {print $4; found=1} END {if (!found) print 0}' "$1"; }

echo "# One register access on the userspace ioregion path"
echo
echo "- Date: $(date -u +%Y-%m-%d); host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) CPUs, $([ -e /sys/module/kvm_pvm ] && echo PVM || echo 'hardware KVM')"
echo "- Command: \`ci/profile-access.sh $extra\`, commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with local changes)')"
echo "- Each figure is the difference between runs of $base and $((base + extra)) accesses, over $extra."
echo
echo "| access | remote instructions | remote syscalls | VMM syscalls |"
echo "| --- | ---: | ---: | ---: |"
for op in r w; do
    for count in $base $((base + extra)); do
        run "$op" "$count" "cg-$op-$count" valgrind --tool=callgrind --callgrind-out-file="$out/cg-$op-$count.out"
        run "$op" "$count" "st-$op-$count" strace -f -c -o "$out/st-$op-$count.remote.strace"
    done
    a=$(total_ir "$out/cg-$op-$base.out")
    b=$(total_ir "$out/cg-$op-$((base + extra)).out")
    per_sys() {
        local side=$1 sum=0 s x y
        for s in recvfrom sendto poll ppoll recvmsg sendmsg ioctl read write futex; do
            x=$(calls "$out/st-$op-$base.$side.strace" "$s")
            y=$(calls "$out/st-$op-$((base + extra)).$side.strace" "$s")
            [ $((y - x)) -gt $((extra / 2)) ] && printf '%s %s ' "$s" "$(awk -v d=$((y - x)) -v n="$extra" 'BEGIN {printf "%.2f", d / n}')"
            sum=$((sum + y - x))
        done
        printf '(%s)' "$(awk -v d=$sum -v n="$extra" 'BEGIN {printf "%.2f", d / n}')"
    }
    name=$([ "$op" = r ] && echo read || echo write)
    echo "| $name | $(( (b - a) / extra )) | $(per_sys remote) | $(per_sys vmm) |"
done
echo
echo "Top functions in the remote, $((base + extra)) reads (callgrind, self cost):"
echo
echo '```'
callgrind_annotate "$out/cg-r-$((base + extra)).out" 2>/dev/null |
    awk '/file:function/ {on=1; getline; next} on && NF {print} on && !NF && n++ {exit}' | head -15 | cut -c1-120
echo '```'
log "raw callgrind and strace files: $out"
