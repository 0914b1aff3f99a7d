"""Where the real sqlite worker spends its time under bursts of live events: py-spy on the forked worker.

A simulator process and a worker (``run_in_process`` forked, sqlite sink) as
in ``throughput.py``; after a warm-up burst, ``py-spy record`` samples the
worker (every thread, ``--rate`` Hz; py-spy drops samples of threads
waiting in a system call, so the shares are of busy time) while the simulator is asked for bursts of generated
changes for ``--seconds``.  The collapsed stacks go to ``bench/results/``
and the table printed is the share of samples per leaf function and per
function on the stack.  Needs ``py-spy`` in the venv (``.venv/bin/pip
install py-spy``) and ptrace rights over the child (root, or
``kernel.yama.ptrace_scope = 0``).

    .venv/bin/python bench/profile.py [--seconds 10] [--label after]
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forked import ForkedWorker, SimProcess, quiet_logs
from machine import RESULTS, header, info
from throughput import burst

PY_SPY = Path(sys.executable).with_name("py-spy")


def record(pid: int, out: Path, rate: int, *extra: str) -> subprocess.Popen[bytes]:
    """``py-spy record`` of every thread of ``pid`` into ``out`` (collapsed stacks); it writes on exit or SIGINT."""
    return subprocess.Popen([str(PY_SPY), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                             "--threads", "-o", str(out), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def aggregate(path: Path, top: int) -> list[str]:
    """Shares of samples: per thread, per leaf function, per function anywhere on the stack."""
    total = 0
    threads: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, count_text = line.rsplit(" ", 1)
        count = int(count_text)
        total += count
        frames = [re.sub(r":\d+\)", ")", frame) for frame in stack.split(";")]
        threads[re.sub(r"thread \(\d+\): ", "", frames[0])] += count
        leaves[frames[-1]] += count
        for frame in set(frames[1:]):
            anywhere[frame] += count
    out = [f"{total} samples; per thread: "
           + ", ".join(f"{name} {100 * n / total:.1f} %" for name, n in threads.most_common())]
    for title, counter in (("leaf (self)", leaves), ("on the stack (inclusive)", anywhere)):
        out += ["", f"| {title} | % of samples |", "|---|---|"]
        out += [f"| {name} | {100 * n / total:.1f} |" for name, n in counter.most_common(top)]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--steps", type=int, default=4000, help="generator steps per burst")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--label", default="", help="a word for the results file name")
    args = parser.parse_args()
    quiet_logs()
    machine = info()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = RESULTS / f"profile{'-' + args.label if args.label else ''}-{stamp}.txt"
    RESULTS.mkdir(parents=True, exist_ok=True)
    events = 0
    with SimProcess("--accounts", "200", "--users", "20", "--batch", "1") as sim:
        state = tempfile.mkdtemp(prefix="bench-profile-")
        worker = ForkedWorker(sim, kind="sqlite", path=state, heartbeat_interval=0.01, snapshot_quiet=0.2,
                              idle_timeout=120.0)
        try:
            worker.wait(lambda b: b.state == "live", 60, "live")
            burst(sim, args.steps)
            spy = record(worker.pid, out, args.rate, "--duration", str(int(args.seconds) + 1))
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                events += burst(sim, args.steps)
            spy.wait(60)
        finally:
            worker.stop()
            shutil.rmtree(state, ignore_errors=True)
    print(f"py-spy on the sqlite worker ({header(machine)}), {args.seconds:g} s, {events:,} live events sent:")
    print("\n".join(aggregate(out, args.top)))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
