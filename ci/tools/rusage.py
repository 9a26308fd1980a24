#!/usr/bin/env python3
"""Runs a command and prints its wall time and the CPU time (user + system)
of it and every child it reaped, both in microseconds: "WALL_US CPU_US".

The VMM reaps the remote it spawned, so the CPU time covers both. Output of
the command is discarded; a failing command fails this script.

usage: rusage.py COMMAND [ARG...]
"""

import resource
import subprocess
import sys
import time


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    start = time.monotonic()
    done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - start
    if done.returncode != 0:
        print(f"rusage.py: {sys.argv[1:]} exited {done.returncode}", file=sys.stderr)
        return 1
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"{int(wall * 1e6)} {int((used.ru_utime + used.ru_stime) * 1e6)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
