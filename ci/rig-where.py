#!/usr/bin/env python3
"""Where is the rig's CPU? Asks a running rig's QEMU monitor (ci/rig.sh
--monitor SOCK) for its registers a few times, a second apart, and names
the rig kernel's function at each RIP from System.map (the rig kernel runs
with nokaslr, so the map's addresses are the real ones). For a rig that
went silent: a RIP that moves inside one function is a spin, one that
stays on hlt is an idle CPU waiting for an interrupt, one outside the rig
kernel's text is the nested guest (its KVM-randomised kernel) or user code.

usage: rig-where.py MONITOR_SOCKET SYSTEM_MAP [SAMPLES]"""
import bisect
import re
import socket
import sys
import time


def load_map(path):
    addrs, names = [], []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in "tTwW":
                    addrs.append(int(parts[0], 16))
                    names.append(parts[2])
    except OSError as e:
        print(f"rig-where: no System.map ({e}): RIPs stay unnamed")
    if not addrs:
        # Debian ships a one-line stub; the real map is in the -dbg package.
        print(f"rig-where: {path} names no functions (Debian's stub: the real map is in the "
              "kernel's -dbg package); the rig kernel runs with nokaslr, so the RIPs below can "
              "be looked up there later")
    order = sorted(range(len(addrs)), key=addrs.__getitem__)
    return [addrs[i] for i in order], [names[i] for i in order]


def name_of(rip, addrs, names):
    if not addrs:
        kind = "kernel" if rip >= 0xffff800000000000 else "user or real mode"
        return f"({kind} address)"
    i = bisect.bisect_right(addrs, rip) - 1
    if i < 0 or rip - addrs[i] > 0x100000:
        return "outside the rig kernel's text (nested guest or user code)"
    return f"{names[i]}+{rip - addrs[i]:#x}"


def until_prompt(sock):
    """What the monitor prints up to its next prompt (3 s at most)."""
    out = b""
    deadline = time.time() + 3
    sock.settimeout(0.2)
    while time.time() < deadline and not out.rstrip().endswith(b"(qemu)"):
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        out += chunk
    return out.decode(errors="replace")


def ask(sock, command):
    """Sends one monitor command; its answer, without the echo and prompt."""
    sock.sendall(command.encode() + b"\n")
    text = until_prompt(sock)
    # The monitor echoes the line with terminal escapes.
    lines = [l for l in text.splitlines() if "\x1b[" not in l and "(qemu)" not in l]
    return "\n".join(lines).strip()


def main():
    sock_path, map_path = sys.argv[1], sys.argv[2]
    samples = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    addrs, names = load_map(map_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sock_path)
    until_prompt(sock)  # the banner
    print("rig-where: " + ask(sock, "info cpus").strip().replace("\n", "; "))
    for n in range(samples):
        regs = ask(sock, "info registers")
        rip = re.search(r"[RE]IP=([0-9a-f]+)", regs)
        hlt = re.search(r"HLT=(\d)", regs)
        cr3 = re.search(r"CR3=([0-9a-f]+)", regs)
        if not rip:
            print("rig-where: no registers from the monitor:\n" + regs)
            return
        value = int(rip.group(1), 16)
        print(f"rig-where: sample {n + 1}: RIP={value:#x} {name_of(value, addrs, names)} "
              f"HLT={hlt.group(1) if hlt else '?'} CR3={cr3.group(1) if cr3 else '?'}")
        if n == 0:
            for line in regs.splitlines():
                print("rig-where:   " + line.rstrip())
            # The instructions it is stuck on, decoded by QEMU through the
            # current page tables (the nested guest's, if it runs).
            for line in ask(sock, "x/6i $pc").splitlines():
                print("rig-where:   code: " + line.rstrip())
            # A lost timer interrupt shows as the timer's vector (0xec,
            # 236) pending in the LAPIC's IRR with nothing in service
            # (resources/soak/2026-12-02-freeze-cause.md); the IOAPIC's
            # entries name the vector of an HPET tick.
            for command in ("info lapic", "info pic"):
                for line in ask(sock, command).splitlines():
                    print(f"rig-where:   {command[5:]}: " + line.rstrip())
        time.sleep(1)


main()
