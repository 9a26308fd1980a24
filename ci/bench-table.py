#!/usr/bin/env python3
"""Turns ci/bench.sh's console log into markdown tables.

usage: bench-table.py CONSOLE_LOG JSON_DIR

Saves each fio JSON result as JSON_DIR/<config>-r<round>-<job>.json and
prints, per job, the median over rounds of IOPS, bandwidth, mean latency
(submission to completion) and p99 completion latency for every
configuration, with IOPS ratios against the
first configuration, the spread of IOPS over rounds and in how many
rounds each configuration beat the first one in the same rig boot (the
rig's IOPS vary severalfold from round to round, so a median ratio alone
can mislead); then the cost of one I/O (KVM exits, injected
interrupts and context switches, from the BENCH-COST samples taken as a
job starts and as fio finishes, over the I/Os the guest's disk completed
between them); then the
register round trip (regbench) the same way, and the context switches
per I/O split by thread (BENCH-THREADS, sampled with BENCH-COST), and the
system calls per I/O by thread when the run counted them (BENCH-SYSCALLS);
where the rig's CPU went during each job when the run profiled it
(BENCH-PERF, `--perf`); last, our LSI remote's interrupts per SCSI command, from its exit summary
(ours run with --log-level info for it).
"""
import json
import os
from types import SimpleNamespace
import re
import statistics
import sys


def parse(log_path, json_dir):
    os.makedirs(json_dir, exist_ok=True)
    results = {}  # (config, job) -> [metrics per round]
    regs = {}  # config -> [(read_ns, write_ns)]
    istat = {}  # config -> [read_ns] of ISTAT (mirrored in ours)
    istat_widths = set()  # bytes per ISTAT read in this log
    istat_cost = {}  # config -> [(exits, MMIO exits or None, switches) per ISTAT read]
    istat_reads = None  # reads in the ISTAT run being sampled
    counters = {}  # config -> last --stats line
    interrupts = {}  # config -> [(SCSI commands, raised, raised again) per boot]
    costs = {}  # (config, job) -> [per-I/O cost per round]
    threads = {}  # (config, job) -> [{thread group: (voluntary, involuntary) per I/O}]
    syscalls = {}  # (config, job) -> [{thread group or "total": (calls,) per I/O}]
    bycall = {}  # (config, job) -> [{"group:call": (calls,) per I/O}]
    exit_codes = {}  # (config, job) -> [{exit code: (exits,) per I/O}]
    isa = None  # "svm" or "vmx": how the exit codes are numbered
    profiles = {}  # (config, job) -> [(samples, {category: percent})]
    order, jobs = [], []
    config = rnd = None
    capture = None
    # The samples of each kind (BENCH-COST, -THREADS, -SYSCALLS) taken as
    # the current job started and as its fio finished.
    window = {}
    for raw in open(log_path, errors="replace"):
        line = raw.rstrip("\r\n")
        if line.startswith("BENCH-PERF:"):
            profile_line(line, profiles)
            continue
        m = re.match(r"BENCH-EXITS-ISA: (\w+)", line)
        if m:
            isa = m.group(1)
            continue
        m = re.match(r"BENCH-CONFIG: (\S+) round (\d+)", line)
        if m:
            config, rnd = m.group(1), int(m.group(2))
            if config not in order:
                order.append(config)
            continue
        if line.startswith("VMM-BENCH-JOB:") or line.startswith("VMM-REGBENCH-BEGIN"):
            window = {}
            istat_reads = None
        m = re.match(r"VMM-(?:BENCH-JOB:|FIO-JSON-BEGIN) .* disk-ios=(\d+)", line)
        if m:
            window.setdefault("disk", []).append(int(m.group(1)))
        m = re.match(r"BENCH-COST: .* uptime=([\d.]+)", line)
        if m:
            window.setdefault("uptime", []).append(float(m.group(1)))
        kind, sample = cost_sample(line)
        if kind:
            taken = window.setdefault(kind, [])
            if len(taken) < 2:
                taken.append(sample)
            # The ISTAT run's cost: sampled at its BEGIN and END markers.
            if kind == "cost" and len(taken) == 2 and istat_reads and config:
                c = per_io(*taken, istat_reads)
                mmio = c[3] if len(c) > 3 else None
                istat_cost.setdefault(config, []).append((c[0], mmio, c[2]))
                istat_reads = None
            continue
        m = re.match(r"VMM-FIO-JSON-BEGIN (\S+)", line)
        if m:
            capture = (m.group(1), [])
            continue
        if capture and line.startswith("VMM-FIO-JSON-END"):
            job, lines = capture
            capture = None
            text = "\n".join(lines)
            with open(os.path.join(json_dir, f"{config}-r{rnd}-{job}.json"), "w") as f:
                f.write(text + "\n")
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                print(f"warning: {config} round {rnd} {job}: unreadable JSON ({e})", file=sys.stderr)
                continue
            if job not in jobs:
                jobs.append(job)
            check_guest_clock(data, window.get("uptime", []), f"{config} round {rnd} {job}")
            # The round goes last, to pair configurations round by round.
            results.setdefault((config, job), []).append(metrics(data) + (rnd,))
            ios = window_ios(window.get("disk", []), data)
            stores = (
                ("cost", costs),
                ("threads", threads),
                ("calls", syscalls),
                ("bycall", bycall),
                ("exits", exit_codes),
            )
            for kind, store in stores:
                taken = window.get(kind, [])
                if len(taken) == 2 and ios:
                    store.setdefault((config, job), []).append(per_io(*taken, ios))
            continue
        if capture:
            capture[1].append(line)
            continue
        m = re.search(r"regbench-reads: offset=0x14 (?:width=(\d) )?.*read_ns=(\d+)", line)
        if m and config:
            # Before 2026-12-03 regbench read 4 bytes, which no mirror answers.
            istat_widths.add(int(m.group(1) or 4))
            istat.setdefault(config, []).append(int(m.group(2)))
            n = re.search(r" reads=(\d+)", line)
            istat_reads = int(n.group(1)) if n else None
            continue
        m = re.search(r"read_ns=(\d+).*write_ns=(\d+)", line)
        if m and config:
            regs.setdefault(config, []).append((int(m.group(1)), int(m.group(2))))
        if "BAR accesses over messages" in line and config:
            counters[config] = line.split(": ", 1)[-1]
        m = re.search(r"lsi: (\d+) SCSI commands.*interrupt raised (\d+) times, (\d+) more", line)
        if m and config:
            commands, raised, again = (int(x) for x in m.groups())
            interrupts.setdefault(config, []).append((commands, raised, again))
    return SimpleNamespace(
        order=order, jobs=jobs, results=results, regs=regs,
        istat=istat, istat_widths=istat_widths, istat_cost=istat_cost,
        counters=counters, interrupts=interrupts, costs=costs, threads=threads,
        syscalls=syscalls, bycall=bycall, exit_codes=exit_codes, isa=isa,
        profiles=profiles,
    )


def profile_line(line, profiles):
    """Adds a `--perf` row by thread and binary to `profiles`: its share
    goes to the rig kernel (in any thread but the idle one), idle, or
    userspace; what the rows leave of 100% is the nested guest's time.
    The sample count opens each profile."""
    m = re.match(r"BENCH-PERF: (\S+) (\d+) (\S+) comm,dso:(.*)$", line)
    if not m:
        return
    config, rnd, job, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    runs = profiles.setdefault((config, job), {})
    n = re.match(r"# Samples: (\d+)(K?) ", rest.strip())
    if n:
        runs[rnd] = (int(n.group(1)) * (1000 if n.group(2) else 1), {})
        return
    row = re.match(r"\s*([\d.]+)%\s+(.*\S)\s+(\S+)\s*$", rest)
    if not row or rnd not in runs:
        return
    share, comm, dso = float(row.group(1)), row.group(2), row.group(3)
    if dso == "[kernel.kallsyms]":
        where = "idle" if comm.startswith("swapper") else "kernel"
    else:
        where = "user"
    shares = runs[rnd][1]
    shares[where] = shares.get(where, 0.0) + share


def profile_table(jobs, order, profiles, results):
    """Where the rig's one CPU went per I/O during each job, by the
    profile's shares times the time one I/O took (1/IOPS of the same,
    profiled, run)."""
    if not profiles:
        return
    print()
    print("Where the rig's CPU went during each job (`--perf`: perf record -a on")
    print("cpu-clock in the rig kernel; medians over rounds), in microseconds per I/O")
    print("(share of samples x 1/IOPS of the profiled run, whose sampling costs")
    print("exits of its own): the nested guest running (with the world switches")
    print("that land in it), the rig kernel (KVM's exit handling, system calls,")
    print("scheduling), the VMM's, remote's and QEMU's own code, and idle. The")
    print("guest column is what the rows leave of 100%, rows under 0.3% included.")
    print("Per-function profiles are in perf/.")
    print()
    print("| job | configuration | us per I/O | guest | rig kernel | userspace | idle | samples | runs |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for job in jobs:
        for config in order:
            runs = profiles.get((config, job))
            iops = {r[4]: r[0] for r in results.get((config, job), [])}
            rows = []
            for rnd, (samples, shares) in sorted(runs.items()) if runs else []:
                if not iops.get(rnd):
                    continue
                us = 1e6 / iops[rnd]
                # The rows perf left out of its report are the guest's.
                guest = max(0.0, 100.0 - sum(shares.values()))
                rows.append((us, guest * us / 100, *(shares.get(k, 0.0) * us / 100 for k in ("kernel", "user", "idle")), samples))
            if not rows:
                continue
            med = [statistics.median(r[i] for r in rows) for i in range(6)]
            print(
                f"| {job} | {config} | {med[0]:.0f} | {med[1]:.0f} | {med[2]:.0f} | {med[3]:.0f} "
                f"| {med[4]:.0f} | {med[5]:.0f} | {len(rows)} |"
            )


def check_guest_clock(data, uptimes, what):
    """Warns when fio ran longer by the guest's clock than the rig's own
    clock saw between the job's start and fio's end: IOPS are I/Os over
    the guest's time, so a guest clock that runs fast inflates them."""
    if len(uptimes) < 2:
        return
    rig_s = uptimes[1] - uptimes[0]
    guest_s = data["jobs"][0].get("job_runtime", 0) / 1000.0
    if guest_s > rig_s * 1.02 + 0.1:
        print(f"warning: {what}: fio ran {guest_s:.1f} s by the guest's clock, "
              f"{rig_s:.1f} s by the rig's", file=sys.stderr)


def cost_sample(line):
    """(kind, sample) of a BENCH-COST, BENCH-THREADS or BENCH-SYSCALLS line,
    else (None, None). A cost sample is a tuple (exits, irqs, switches and,
    where taken, MMIO and PIO exits, and then HLT, host-interrupt and
    interrupt-window exits); the others are per thread group."""
    m = re.match(
        r"BENCH-COST: exits=(\d+) irqs=(\d+) switches=(\d+)(?: mmio=(\d+) pio=(\d+))?"
        r"(?: halt=(\d+) hostirq=(\d+) window=(\d+))?",
        line,
    )
    if m:
        return "cost", tuple(int(x) for x in m.groups() if x is not None)
    if line.startswith("BENCH-THREADS:"):
        return "threads", thread_sample(line)
    if line.startswith("BENCH-SYSCALLS:"):
        return "calls", thread_sample(line)
    if line.startswith("BENCH-SYSCALLS-BY-CALL:"):
        return "bycall", thread_sample(line)
    if line.startswith("BENCH-EXITS:"):
        return "exits", thread_sample(line)
    return None, None


def per_io(start, end, ios):
    """What happened between two samples of one kind, per I/O."""
    if isinstance(start, tuple):
        return tuple((e - b) / ios for b, e in zip(start, end))
    return thread_delta(start, end, ios)


def thread_sample(line):
    """{group: (voluntary, involuntary)} from a BENCH-THREADS line, or
    {group: (calls,)} from a BENCH-SYSCALLS one."""
    sample = {}
    for item in line.split()[1:]:
        m = re.match(r"(\S+)=(\d+(?:/\d+)*)$", item)
        if m:
            sample[m.group(1)] = tuple(int(x) for x in m.group(2).split("/"))
    return sample


def thread_delta(start, end, ios):
    """Switches per I/O per thread group between two samples. A group
    missing at the start (its threads were born during the job) counts
    from zero."""
    return {
        group: tuple((e - b) / ios for b, e in zip(start.get(group, (0,) * len(counts)), counts))
        for group, counts in end.items()
    }


def thread_cells(runs):
    """'vmm/vcpu 1.2+3.4, ...': medians over rounds of voluntary and
    involuntary switches per I/O, largest first, groups under 0.05 left out."""
    groups = sorted({g for r in runs for g in r})
    med = {
        g: tuple(statistics.median(r.get(g, (0.0, 0.0))[i] for r in runs) for i in range(2))
        for g in groups
    }
    shown = sorted((g for g in med if sum(med[g]) >= 0.05), key=lambda g: -sum(med[g]))
    return ", ".join(f"{g} {med[g][0]:.1f}+{med[g][1]:.1f}" for g in shown) or "-"


def per_job_table(jobs, order, samples, title, header, row):
    """A table with a row per job and configuration that has samples; none
    at all when no configuration has any. Columns after job and
    configuration are right-aligned, except those 'by thread'."""
    if not samples:
        return
    print()
    print(title)
    print()
    print(header)
    columns = [c.strip() for c in header.strip("|").split("|")]
    print("| " + " | ".join("---" if i < 2 or c.startswith("by ") else "---:" for i, c in enumerate(columns)) + " |")
    for job in jobs:
        for config in order:
            runs = samples.get((config, job))
            if runs:
                print(row(job, config, runs))


def device_exits(runs):
    """Median MMIO + PIO exits per I/O, if the samples had them."""
    if any(len(r) < 5 for r in runs):
        return None
    return statistics.median(r[3] + r[4] for r in runs)


def median_cell(values):
    """The median of the values that were measured (not None), or '-'."""
    values = [v for v in values if v is not None]
    return f"{statistics.median(values):.2f}" if values else "-"


def floor_table(order, jobs, results, costs, istat):
    """Time per I/O against the floor: the device accesses the driver makes
    per I/O (QEMU in-process's MMIO+PIO exits, where each is one), each at
    the cost of a bare exit (the fastest ISTAT read: a mirrored or
    in-process register read is an exit and little else). All runs share
    one CPU in the rig, so 1/IOPS is the CPU time one I/O takes."""
    ref = "qemu" if "qemu" in order else None
    if ref is None or not istat:
        return
    bare = min(statistics.median(v) for v in istat.values() if v)
    print()
    print(f"The floor: the driver's device accesses per I/O ({ref}'s MMIO+PIO exits),")
    print(f"each at a bare exit ({bare:.0f} ns, the fastest ISTAT read above),")
    print("against each configuration's time per I/O (1/IOPS; one CPU runs it all):")
    print()
    print("| job | accesses per I/O | floor us | configuration | us per I/O | vs floor |")
    print("| --- | ---: | ---: | --- | ---: | ---: |")
    for job in jobs:
        ref_runs = costs.get((ref, job))
        accesses = device_exits(ref_runs) if ref_runs else None
        if accesses is None:
            continue
        floor_us = accesses * bare / 1000.0
        for config in order:
            runs = results.get((config, job))
            if not runs:
                continue
            iops = statistics.median(r[0] for r in runs)
            if not iops:
                continue
            us = 1e6 / iops
            ratio = f"{us / floor_us:.1f}x" if floor_us else "-"
            print(f"| {job} | {accesses:.1f} | {floor_us:.0f} | {config} | {us:.0f} | {ratio} |")


def call_medians(runs):
    """{key: median over rounds} of system call samples ({key: (calls,)})."""
    # Sorted: a set's order changes from run to run, and the tables sort
    # by value, so ties would print in any order.
    keys = sorted({k for r in runs for k in r})
    return {k: statistics.median(r.get(k, (0.0,))[0] for r in runs) for k in keys}


def call_cells(runs):
    """'remote/ioregion 4.1, ...': medians over rounds per thread group,
    largest first, groups under 0.05 left out."""
    med = call_medians(runs)
    shown = sorted((g for g in med if med[g] >= 0.05), key=lambda g: -med[g])
    return ", ".join(f"{g} {med[g]:.1f}" for g in shown) or "-"


def by_call_cells(runs):
    """'vmm/vcpu: ioctl 4.4, sendto 2.1; remote/ioregion: ...': medians over
    rounds per thread group and call, groups by their total, calls largest
    first, those under 0.05 left out."""
    groups = {}
    for key, value in call_medians(runs).items():
        group, _, call = key.rpartition(":")
        if value >= 0.05:
            groups.setdefault(group, []).append((call, value))
    order = sorted(groups, key=lambda g: -sum(v for _, v in groups[g]))
    return "; ".join(
        f"{g}: " + ", ".join(f"{c} {v:.1f}" for c, v in sorted(groups[g], key=lambda cv: -cv[1]))
        for g in order
    ) or "-"


# Exit codes by name, as the kernel's svm.h and vmx.h number them.
EXIT_NAMES = {
    "svm": {
        0x000: "CR0 read", 0x004: "CR4 read", 0x010: "CR0 write", 0x014: "CR4 write",
        0x030: "DR0 write", 0x060: "host interrupt", 0x061: "NMI", 0x064: "interrupt window",
        0x065: "CR0 selective write", 0x06E: "RDTSC", 0x072: "CPUID", 0x077: "PAUSE",
        0x078: "HLT", 0x079: "INVLPG", 0x07B: "port I/O", 0x07C: "MSR", 0x07F: "shutdown",
        0x081: "VMMCALL", 0x089: "WBINVD", 0x08D: "XSETBV", 0x400: "nested page fault",
    },
    "vmx": {
        0: "exception or NMI", 1: "host interrupt", 7: "interrupt window", 10: "CPUID",
        12: "HLT", 28: "CR access", 30: "port I/O", 31: "MSR read", 32: "MSR write",
        40: "PAUSE", 48: "EPT violation", 49: "EPT misconfiguration", 52: "preemption timer",
        56: "APIC write",
    },
}


def exit_cells(runs, isa):
    """'nested page fault 4.0, MSR 2.5, ...': medians over rounds per exit
    code, named where known, largest first, those under 0.005 left out."""
    names = EXIT_NAMES.get(isa, {})
    med = call_medians(runs)
    shown = sorted((c for c in med if med[c] >= 0.005), key=lambda c: -med[c])
    return ", ".join(f"{names.get(int(c), hex(int(c)))} {med[c]:.2f}" for c in shown) or "-"


def window_ios(disk, data):
    """The I/Os a job's window spent its costs on: those the guest's disk
    completed between the job's two markers, fio's ramp second included
    (logs since 2026-12-05); before that, fio's completed I/Os, which
    leave the ramp out and so overstate every per-I/O cost by about
    (runtime + ramp) / runtime."""
    if len(disk) == 2 and disk[1] > disk[0]:
        return disk[1] - disk[0]
    return total_ios(data)


def total_ios(data):
    """Completed I/Os of a fio job, reads and writes together."""
    job = data["jobs"][0]
    return sum(job[side].get("total_ios", 0) for side in ("read", "write"))


def metrics(data):
    """IOPS, MiB/s, mean latency and p99 completion latency (us), reads and
    writes together. The mean is fio's lat (submission to completion), not
    its clat (the end of the submission to completion): QEMU's in-process
    LSI runs the command inside the doorbell write, so the guest's
    io_submit returns with the command done and clat says ~40 us."""
    job = data["jobs"][0]
    iops = bw = ios = lat_sum = 0.0
    p99 = 0.0
    for side in ("read", "write"):
        s = job[side]
        if not s.get("total_ios"):
            continue
        iops += s["iops"]
        bw += s["bw"] / 1024.0
        n = s["total_ios"]
        ios += n
        lat_sum += s["lat_ns"]["mean"] * n
        pct = s["clat_ns"].get("percentile", {})
        p99 = max(p99, pct.get("99.000000", 0.0))
    mean = lat_sum / ios if ios else 0.0
    return iops, bw, mean / 1000.0, p99 / 1000.0


def main():
    b = parse(sys.argv[1], sys.argv[2])
    order, jobs, results, regs, costs, threads = b.order, b.jobs, b.results, b.regs, b.costs, b.threads
    istat, istat_widths, istat_cost = b.istat, b.istat_widths, b.istat_cost
    syscalls, bycall, exit_codes, isa = b.syscalls, b.bycall, b.exit_codes, b.isa
    counters, interrupts, profiles = b.counters, b.interrupts, b.profiles
    if not jobs:
        sys.exit("no fio results in the log")
    first = order[0]
    print(
        f"| job | configuration | IOPS | MiB/s | mean lat us | p99 clat us | IOPS vs {first} "
        f"| IOPS min-max | rounds ahead of {first} | runs |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for job in jobs:
        base = None
        base_by_round = {r[4]: r[0] for r in results.get((first, job), [])}
        for config in order:
            runs = results.get((config, job))
            if not runs:
                print(f"| {job} | {config} | failed | | | | | | | 0 |")
                continue
            med = [statistics.median(r[i] for r in runs) for i in range(4)]
            if base is None:
                base = med[0]
            ratio = f"{med[0] / base:.2f}x" if base else "-"
            spread = f"{min(r[0] for r in runs):.0f}-{max(r[0] for r in runs):.0f}"
            paired = [(r[0], base_by_round[r[4]]) for r in runs if r[4] in base_by_round]
            ahead = "-" if config == first else f"{sum(a > b for a, b in paired)}/{len(paired)}"
            print(
                f"| {job} | {config} | {med[0]:.0f} | {med[1]:.1f} | {med[2]:.0f} | {med[3]:.0f} "
                f"| {ratio} | {spread} | {ahead} | {len(runs)} |"
            )
    def cost_row(job, config, runs):
        med = [statistics.median(r[i] for r in runs) for i in range(3)]
        accesses = device_exits(runs)
        shown = f"{accesses:.1f}" if accesses is not None else "-"
        return f"| {job} | {config} | {med[0]:.1f} | {med[1]:.2f} | {med[2]:.1f} | {shown} | {len(runs)} |"

    def reasons_row(job, config, runs):
        med = [statistics.median(r[i] for r in runs) for i in (0, 5, 6, 7)]
        device = device_exits(runs)
        other = med[0] - med[1] - med[2] - med[3] - device
        return (
            f"| {job} | {config} | {med[0]:.1f} | {device:.1f} | {med[1]:.2f} | {med[2]:.2f} "
            f"| {med[3]:.2f} | {other:.2f} | {len(runs)} |"
        )

    def calls_row(job, config, runs):
        total = statistics.median(r.get("total", (0.0,))[0] for r in runs)
        groups = [{g: v for g, v in r.items() if g != "total"} for r in runs]
        return f"| {job} | {config} | {total:.1f} | {call_cells(groups)} | {len(runs)} |"

    per_job_table(
        jobs, order, costs,
        "Cost of one I/O (medians over rounds): KVM exits and injected interrupts\n"
        "(the rig kernel's debugfs), and context switches of every VMM, remote and\n"
        "QEMU thread, from the job's start to the end of its fio run, over the\n"
        "I/Os the guest's disk completed in that time (fio's ramp included).\n"
        "The MMIO+PIO column is KVM's count of device-access exits it prepared\n"
        "for userspace (mmio_exits + io_exits): every register access of the\n"
        "driver, on our kernel path too, where our KVM module serves an access\n"
        "by taking over that exit after KVM counted it (kernel/README.md):",
        "| job | configuration | exits | injected irqs | context switches | MMIO+PIO exits | runs |",
        cost_row,
    )
    # Older logs have no exit reasons; a table only of runs that have them.
    with_reasons = {k: v for k, v in costs.items() if all(len(r) >= 8 for r in v)}
    per_job_table(
        jobs, order, with_reasons,
        "KVM exits per I/O by reason (medians over rounds): device accesses\n"
        "(MMIO+PIO), HLT (the vCPU had nothing to run), host interrupts (the rig\n"
        "kernel's timer tick or an IPI arrived while the guest ran), interrupt\n"
        "windows (an interrupt waited for the guest to enable interrupts), and the\n"
        "rest (NPT faults, MSR writes, CPUID, ...):",
        "| job | configuration | exits | MMIO+PIO | HLT | host irq | irq window | other | runs |",
        reasons_row,
    )
    per_job_table(
        jobs, order, exit_codes,
        "The same KVM exits per I/O by exit code (medians over rounds; the rig\n"
        "kernel's ftrace histogram of kvm:kvm_exit, `--exit-reasons`; device\n"
        f"accesses are {'nested page faults and port I/O' if isa == 'svm' else 'EPT misconfigurations and port I/O'}):",
        "| job | configuration | by exit code | runs |",
        lambda job, config, runs: f"| {job} | {config} | {exit_cells(runs, isa)} | {len(runs)} |",
    )
    per_job_table(
        jobs, order, threads,
        "Context switches per I/O by thread (medians over rounds), voluntary (the\n"
        "thread slept) + involuntary (it was preempted), per process role and\n"
        "thread name:",
        "| job | configuration | switches per I/O by thread | runs |",
        lambda job, config, runs: f"| {job} | {config} | {thread_cells(runs)} | {len(runs)} |",
    )
    per_job_table(
        jobs, order, syscalls,
        "System calls per I/O (medians over rounds; the rig kernel's ftrace\n"
        "histogram of raw_syscalls:sys_enter by thread, `--syscalls`):",
        "| job | configuration | system calls | by thread | runs |",
        calls_row,
    )
    per_job_table(
        jobs, order, bycall,
        "The same system calls per I/O by thread and call (medians over rounds):",
        "| job | configuration | by thread and call | runs |",
        lambda job, config, runs: f"| {job} | {config} | {by_call_cells(runs)} | {len(runs)} |",
    )
    profile_table(jobs, order, profiles, results)
    print()
    print("Register round trip from guest userspace (SCRATCHB, BAR1 + 0x5c, regbench):")
    print()
    print(f"| configuration | read ns | write ns | read vs {order[0]} | runs |")
    print("| --- | ---: | ---: | ---: | ---: |")
    base = None
    for config in order:
        runs = regs.get(config)
        if not runs:
            print(f"| {config} | failed | | | 0 |")
            continue
        r = statistics.median(x[0] for x in runs)
        w = statistics.median(x[1] for x in runs)
        if base is None:
            base = r
        print(f"| {config} | {r:.0f} | {w:.0f} | {r / base:.2f}x | {len(runs)} |")
    if istat and istat_widths == {1}:
        print()
        print("ISTAT reads from guest userspace (BAR1 + 0x14, one byte, as sym53c8xx")
        print("reads it, `regbench ... reads 1`): our VMM answers them from the register")
        print("mirror, QEMU in-process from its model; the nearest a trapped access gets")
        print("to a bare exit:")
    elif istat:
        print()
        widths = "/".join(str(w) for w in sorted(istat_widths))
        print(f"Reads of BAR1 + 0x14 from guest userspace, {widths} bytes wide: a")
        print("read wider than ISTAT0's one byte is not answered by the register mirror")
        print("but by the device, so this is a round trip, not a mirrored read:")
    if istat:
        print()
        ref = "qemu" if "qemu" in istat else order[0]
        # Exits (all, and MMIO ones handed to userspace) and context
        # switches per read (medians), where the run was sampled: a mirrored
        # read is one MMIO exit and no switch. The serial port's exits for
        # the result line and the timer's fall in the window too.
        print(f"| configuration | read ns | vs {ref} | exits per read | MMIO exits per read | switches per read | runs |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        base = statistics.median(istat[ref]) if istat.get(ref) else None
        for config in order:
            runs = istat.get(config)
            if not runs:
                continue
            r = statistics.median(runs)
            ratio = f"{r / base:.2f}x" if base else "-"
            sampled = istat_cost.get(config) or []
            cells = " | ".join(median_cell([c[i] for c in sampled]) for i in range(3))
            print(f"| {config} | {r:.0f} | {ratio} | {cells} | {len(runs)} |")
    floor_table(order, jobs, results, costs, istat)
    if counters:
        print()
        print("Our proxy's counters (`--stats`, last round):")
        print()
        for config, line in counters.items():
            print(f"- {config}: {line}")
    if interrupts:
        print()
        print("Our LSI remote's interrupts (its exit summary, all jobs of a boot, summed")
        print("over rounds): the device's part of the injected interrupts above.")
        print()
        print("| configuration | SCSI commands | raised | per command | raised again while asserted | runs |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for config in order:
            runs = interrupts.get(config)
            if not runs:
                continue
            commands, raised, again = (sum(r[i] for r in runs) for i in range(3))
            per = f"{raised / commands:.2f}" if commands else "-"
            print(f"| {config} | {commands} | {raised} | {per} | {again} | {len(runs)} |")
    print()
    print("Note: Debian's QEMU 7.2 LSI stops SCRIPTS after 100 instructions and resumes")
    print("them on a 500 us timer, which caps its iodepth-16 rows near its iodepth-1 rates.")


if __name__ == "__main__":
    main()
