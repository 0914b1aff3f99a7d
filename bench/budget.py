"""The API budget's figure: requests made in a simulated hour of a persistent syncrequest 400 across 16 shards.

Drives the real Arbiter in-process (the fakes of tests/unit/arbiter_fakes.py:
fake fork, clocks and selector wait; real pipes and ipc) with an injected
clock, so an hour passes in a second.  Each fake worker behaves like the real
one after the change that makes it report refusals: it asks for a connect
permit, and each permit is one handshake (authorize + ``user/syncrequest``)
that the server answers 400, which the worker reports (``Rejected``) before
waiting its own short backoff (``Backoff(backoff_initial, backoff_max)``,
the worker's own) and asking again.  The parent decides which permit is
granted; every granted permit is counted as a request made.

The configuration is the shipped default (lockout_backoff 3600 s,
max_concurrent_connects 2, connect_spacing 0.5 s, backoff 0.5..60 s).

    .venv/bin/python bench/budget.py [--shards 16] [--hours 1]

Measured here: 20 requests in the hour (16 first attempts, then the two
leading shards' second and third; every shard parked by t = 10 s), then one
probe per lockout_backoff.  The parent before the budget (f6626af's daemon/,
extracted with ``git archive`` and put first on PYTHONPATH) permits 1309: each
shard retries on its own capped, jittered backoff (the worker's equal jitter
makes the 60 s cap ~45 s on average, so more than 60 an hour per shard).
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

from arbiter_fakes import Parent

from shardsync import ipc
from shardsync.auth import Grant
from shardsync.backoff import Backoff
from shardsync.ipc import ShardState
from shardsync.logs import configure_logging

TEXT = "Invalid entityTypes: unknown entity type 'fills'"
BEAT_EVERY = 30.0


def simulate(shards: int, hours: float, seed: int) -> tuple[int, list[float]]:
    """Run the parent for ``hours`` of simulated time; the number of permits granted and their times."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        parent = Parent(Path(tmp) / "shardsync.toml", {
            "sync": {"divisor": shards},
            "supervisor": {"heartbeat_timeout": 3600.0, "backoff_initial": 0.5, "backoff_max": 60.0,
                           "max_concurrent_connects": 2, "connect_spacing": 0.5},
            "tradovate": {"lockout_backoff": 3600.0, "captcha_backoff": 3600.0},
        })
        try:
            return _run(parent, shards, hours * 3600.0, rng)
        finally:
            parent.close()


def _run(parent: Parent, shards: int, span: float, rng: random.Random) -> tuple[int, list[float]]:
    start = parent.clock()
    end = start + span
    failures = dict.fromkeys(range(shards), 0)
    backoff = Backoff(0.5, 60.0, rng)
    #: (time, remainder): a worker asks for its next permit then.
    asks: list[tuple[float, int]] = []
    granted: list[float] = []
    parent.step(shards // 4 + 4)
    parent.log_in(lifetime=10 * span)
    for remainder in range(shards):
        heapq.heappush(asks, (parent.clock(), remainder))
    next_beat = parent.clock()
    while parent.clock() < end:
        now = parent.clock()
        while asks and asks[0][0] <= now:
            _, remainder = heapq.heappop(asks)
            worker = parent.fakes.worker(remainder)
            worker.beat(ShardState.WAITING_PERMIT)
            worker.send(ipc.NeedPermit())
        if now >= next_beat:
            for remainder, worker in parent.fakes.running().items():
                beat = parent.arbiter.shards[remainder].beat
                worker.beat(beat.state if beat is not None else ShardState.WAITING_PERMIT)
            next_beat = now + BEAT_EVERY
        for helper in parent.fakes.helpers:
            if not helper.exited:
                helper.answer(Grant("tok-renewed", parent.wall() + 10 * span, 7))
        parent.step()
        for remainder, worker in parent.fakes.running().items():
            if any(isinstance(m, ipc.Permit) for m in worker.received()):
                granted.append(now - start)
                # The handshake: authorize accepted, the syncrequest refused with 400.
                worker.beat(ShardState.SYNCING)
                worker.send(ipc.Rejected("user/syncrequest", 400, TEXT))
                failures[remainder] += 1
                worker.beat(ShardState.BACKOFF)
                heapq.heappush(asks, (now + backoff.delay(failures[remainder]), remainder))
        parent.step()
        timeout = parent.selector.timeouts[-1] if parent.selector.timeouts else 1.0
        wake = min(now + (timeout if timeout is not None else 1.0), next_beat, asks[0][0] if asks else end, end)
        step = max(wake - now, 1e-3)
        parent.clock.advance(step)
        parent.wall.advance(step)
    return len(granted), granted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    # The parent's log lines are not the figure.
    configure_logging(fmt="json", level="error", stream=open(os.devnull, "w"))  # noqa: SIM115 - for the run
    started = time.perf_counter()
    count, times = simulate(args.shards, args.hours, args.seed)
    took = time.perf_counter() - started
    print(f"persistent user/syncrequest 400, {args.shards} shards, {args.hours:g} simulated hour(s): "
          f"{count} requests made (handshakes permitted: authorize + syncrequest each)")
    for hour in range(int(args.hours + 0.999)):
        in_hour = sum(1 for t in times if hour * 3600 <= t < (hour + 1) * 3600)
        print(f"  hour {hour + 1}: {in_hour}")
    if times:
        print(f"  first {min(count, 20)} at (s): {', '.join(f'{t:.1f}' for t in times[:20])}")
    print(f"  ({took:.1f} s of real time)")


if __name__ == "__main__":
    main()
