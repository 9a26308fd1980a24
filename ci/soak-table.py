#!/usr/bin/env python3
"""Reads ci/soak.sh's console logs and the rig kernel's logs (one pair per
part of the soak), and prints the soak table: one row per configuration and
scenario, one column per way a run can end.
Usage: soak-table.py EXPECTED CONFIGS SCENARIOS CONSOLE:L1LOG...
EXPECTED says how many runs each pair was to have, as CONFIG:SCENARIO=N
separated by spaces (or one number for every pair); the difference to the
runs found counts as 'rig died / not run'."""
import os
import re
import statistics
import sys

# The signs that the rig's own kernel failed, shared with ci/lib.sh and the
# test harness: one fixed string per line.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "l1-death-signs.txt")) as f:
    L1_DEATH = re.compile("|".join(re.escape(l.rstrip("\n")) for l in f if l.strip()))
GUEST_LOCKUP = re.compile(
    r"Kernel panic|soft lockup|BUG: |Oops|rcu: INFO|detected stall|hung_task|"
    r"blocked for more than")
# The fio job of every scenario: 32 MiB of 4k writes, then as many reads
# to verify them.
IOS_PER_RUN = 2 * (32 << 20) // 4096
COLUMNS = ["runs", "ok", "stalled", "triple fault / reset", "guest panic or lockup",
           "verify failure", "other failure", "rig died / not run"]


def classify(text, rc, scenario):
    """The column a finished run belongs in, and a short reason."""
    if scenario == "hostile":
        cut_off = next((l for l in text.splitlines() if "the device is cut off" in l), None)
        if cut_off:
            return "other failure", cut_off.strip()[:160]
        rebinds = next((l for l in text.splitlines() if "VMM-GUEST: rebinds:" in l), None)
        if rebinds and "5 of 5 ok" not in rebinds:
            return "other failure", rebinds.strip()
        if "VMM-GUEST: disk back: ok" in text and rc == 0:
            return "ok", ""
    if "the guest had not found its disk" in text:
        return "other failure", "the remote was not killed mid-I/O: no disk in 120 s"
    if "VMM-GUEST: fio done: FAILED" in text:
        return "verify failure", "fio verify failed"
    m = GUEST_LOCKUP.search(text)
    if m:
        line = next(l for l in text.splitlines() if m.group(0) in l)
        return "guest panic or lockup", line.strip()[:120]
    if "triple fault" in text:
        return "triple fault / reset", "triple fault"
    if rc == 124:
        return "stalled", "ran into its time limit"
    if "VMM-GUEST: fio done: ok" in text and rc == 0:
        return "ok", ""
    if "VMM-GUEST: booted" in text and "VMM-GUEST: rebooting" not in text and rc == 0:
        return "triple fault / reset", "the guest reset without finishing"
    return "other failure", f"exit status {rc}"


def main():
    expected_arg, configs, scenarios = sys.argv[1:4]
    if expected_arg.isdigit():
        expected = lambda key: int(expected_arg)  # noqa: E731
    else:
        pairs = dict(kv.split("=") for kv in expected_arg.split())
        expected = lambda key: int(pairs.get(f"{key[0]}:{key[1]}", 0))  # noqa: E731
    configs = configs.split(",")
    scenarios = scenarios.split(",")
    texts, l1_texts = [], []
    for pair in sys.argv[4:]:
        console, _, l1 = pair.partition(":")
        texts.append(open(console, errors="replace").read().replace("\r", ""))
        l1_texts.append(open(l1, errors="replace").read() if l1 else "")
    text = "\n".join(texts)
    counts = {}
    secs = {}
    kvm = {}
    notes = []
    current = None
    body = []
    for line in text.splitlines():
        m = re.match(r"SOAK-RUN: (\S+) (\S+) (\d+)", line)
        if m:
            current, body = m.groups(), []
            continue
        m = re.match(r"SOAK-END: (\S+) (\S+) (\d+) rc=(\d+) secs=(\d+)", line)
        if m and current:
            key = (m.group(1), m.group(2))
            out = "\n".join(body)
            if "SOAK-NOT-APPLICABLE" in out:
                counts.setdefault(key, None)
            else:
                col, why = classify(out, int(m.group(4)), key[1])
                row = counts.setdefault(key, {c: 0 for c in COLUMNS}) or {}
                row["runs"] += 1
                row[col] += 1
                if col == "ok":
                    secs.setdefault(key, []).append(int(m.group(5)))
                    counts_line = next((l for l in body if l.startswith("SOAK-KVM: ")), "")
                    stats = dict(kv.split("=") for kv in counts_line[10:].split() if "=" in kv)
                    # KVM's debugfs sums over the VMs alive when read:
                    # zero before and after a run means no reading.
                    if (stats and int(stats.get("exits", 0)) > 0
                            and key[1] not in ("restart", "hostile")):
                        kvm.setdefault(key, []).append(
                            (int(stats.get("exits", 0)), int(stats.get("irq_injections", 0))))
                else:
                    notes.append(f"{key[0]} {key[1]} round {m.group(3)}: {col}: {why} "
                                 f"({m.group(5)} s)")
            current = None
            continue
        if current:
            body.append(line)
    print("| configuration | scenario | " + " | ".join(COLUMNS)
          + " | median s (ok) | KVM exits per I/O | interrupts injected per I/O |")
    print("|---|---|" + "---:|" * (len(COLUMNS) + 3))
    for scenario in scenarios:
        for config in configs:
            key = (config, scenario)
            if key in counts and counts[key] is None:
                continue
            row = counts.get(key) or {c: 0 for c in COLUMNS}
            if expected(key) == 0 and row["runs"] == 0:
                continue
            row["rig died / not run"] = expected(key) - row["runs"]
            row["runs"] = expected(key)
            med = statistics.median(secs[key]) if key in secs else "-"
            exits = inj = "-"
            if kvm.get(key):
                exits = f"{statistics.median(e for e, _ in kvm[key]) / IOS_PER_RUN:.1f}"
                inj = f"{statistics.median(i for _, i in kvm[key]) / IOS_PER_RUN:.2f}"
            print(f"| {config} | {scenario} | "
                  + " | ".join(str(row[c]) for c in COLUMNS) + f" | {med} | {exits} | {inj} |")
    print()
    print(f"Per I/O: KVM's counters of the run's VM (sampled each second while it lived), divided by the job's "
          f"{IOS_PER_RUN} I/Os (boot and shutdown included; medians).")
    for n, (part_text, l1_text) in enumerate(zip(texts, l1_texts), 1):
        which = f" (part {n})" if len(texts) > 1 else ""
        death = next((l.strip() for l in l1_text.splitlines() if L1_DEATH.search(l)), None)
        print(f"The rig's own kernel{which}: "
              + (f"failed: `{death}`" if death else "no failure in its log") + ".")
        if "SOAK-DONE" not in part_text:
            print(f"The rig ended before the soak{which} did: runs not reached count as "
                  "'rig died / not run'.")
    if notes:
        print()
        print("Failures:")
        for n in notes:
            print(f"- {n}")


main()
