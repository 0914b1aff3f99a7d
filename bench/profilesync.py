"""Where a snapshot's time goes in the real sqlite worker: py-spy from syncrequest to live, first and resync.

A simulator grown to ``--size`` entities in shard 0/1 (as in ``scale.py``)
and a forked worker (sqlite sink, every entity type).  ``py-spy record``
samples the worker from fork until its first snapshot is live, then again
from a dropped connection (1 % of the shard changed meanwhile, as in
``scale.py``) until it is live once more.  Each recording's collapsed stacks
go to ``bench/results/`` and the tables printed are the shares of samples
per leaf function and per function anywhere on the stack (``profile.py``'s
``aggregate``).  Needs ``py-spy`` in the venv (``.venv/bin/pip install
py-spy``) and ptrace rights over the child.

    .venv/bin/python bench/profilesync.py [--size 1000000] [--label after]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile import aggregate, record

from forked import ForkedWorker, quiet_logs
from machine import RESULTS, header, info
from scale import LIVE_TIMEOUT, churn, sim_for
from shardsync.simulator.truth import ENTITY_TYPES


def stop(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    spy.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--label", default="", help="a word for the results file name")
    args = parser.parse_args()
    quiet_logs()
    machine = info()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    outs = {phase: RESULTS / f"profilesync-{phase}{'-' + args.label if args.label else ''}-{stamp}.txt"
            for phase in ("first", "resync")}
    sim, _ = sim_for(args.size)
    state = tempfile.mkdtemp(prefix="bench-profilesync-")
    try:
        worker = ForkedWorker(sim, kind="sqlite", path=state, entity_types=ENTITY_TYPES, backoff_initial=0.05,
                              backoff_max=0.2)
        spy = record(worker.pid, outs["first"], args.rate)
        worker.wait(lambda b: b.state == "live", LIVE_TIMEOUT, "live")
        stop(spy)
        reconnects = worker.last.reconnects if worker.last else 0
        sim.admin("refuse", {"seconds": 3600})
        sim.admin("drop", {})
        worker.wait(lambda b: b.state != "live", 60, "a lost connection")
        churn(sim, args.size)
        spy = record(worker.pid, outs["resync"], args.rate)
        sim.admin("refuse", {"seconds": 0})
        worker.wait(lambda b: b.state == "live" and b.reconnects > reconnects, LIVE_TIMEOUT, "live again")
        stop(spy)
        worker.stop()
    finally:
        sim.close()
        shutil.rmtree(state, ignore_errors=True)
    for phase, out in outs.items():
        print(f"\npy-spy on the sqlite worker, {phase} snapshot of {args.size:,} entities ({header(machine)}):")
        print("\n".join(aggregate(out, args.top)))
        print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
