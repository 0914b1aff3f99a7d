"""Load: N shards at R events/s each for T seconds; heartbeat deadlines, parent CPU, sink lag.

The simulator runs as its own process (``shardsync simulate``), so neither it nor this probe shares a GIL
with anything it measures.  Its generator is set to the rate that gives R subscribed changes per second
per shard on average (calibrated on the generator itself); what the shards really received is read from
their event counters and printed, since a simulator on a shared 2-core machine may not keep up.

Sink lag is measured as a consumer sees it: about once a second the probe updates one user through the
admin API (a user-level change reaches every shard, stamped with the simulator's clock) and reads each
shard's sqlite file until the new row is there.  Lag = readable in the sink - changed on the server.

Heartbeat deadlines: the parent logs ``shard_hung`` when a worker misses one (and kills it); both that
and any ``shard_exited`` are counted.  The largest heartbeat age /status showed is printed too.

    .venv/bin/python bench/load.py                          # 64 shards x 200 events/s for 600 s
    .venv/bin/python bench/load.py --shards 16 --rate 100 --seconds 60
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "system"))

from harness import Daemon

from shardsync.simulator.generator import Generator
from shardsync.simulator.truth import Truth

TICK = os.sysconf("SC_CLK_TCK")
TYPES = frozenset({"user", "account", "accountRiskStatus", "cashBalance", "position", "order", "fill"})


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def subscribed_per_step(accounts: int, users: int, steps: int = 20_000) -> float:
    """How many subscribed changes one generator step makes on average (what the shards receive)."""
    truth = Truth()
    generator = Generator(truth, seed=5)
    generator.populate(users, accounts)
    made = sum(1 for _ in range(steps) for change in generator.step() if change.entity_type in TYPES)
    return made / steps


@dataclass
class Sim:
    """A `shardsync simulate` process; the attributes the harness' config needs."""

    proc: subprocess.Popen[bytes]
    rest_url: str
    ws_url: str
    admin_url: str

    @classmethod
    def start(cls, **options: Any) -> Sim:
        argv = [sys.executable, "-m", "shardsync", "simulate", "--port", "0"]
        for key, value in options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        announce = json.loads(proc.stdout.readline())
        return cls(proc, announce["rest_url"], announce["ws_url"], announce["admin_url"])

    def admin(self, knob: str, **arguments: Any) -> Any:
        request = urllib.request.Request(  # noqa: S310 - the simulator's loopback admin URL
            f"{self.admin_url}/{knob}", data=json.dumps(arguments).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
            return json.loads(response.read())["result"]

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(fraction * len(ordered) + 0.999999) - 1)] if ordered else float("nan")


def _user_row(conn: sqlite3.Connection, user_id: int) -> str | None:
    try:
        row = conn.execute("SELECT data FROM entities WHERE entity_type = 'user' AND id = ?", (user_id,)).fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else json.loads(row[0]).get("timestamp")


def probe(sim: Sim, daemon: Daemon, shards: int, conns: dict[int, sqlite3.Connection]) -> list[float] | None:
    """One user update; per shard, seconds until a reader sees it (a missing shard is not listed); None when
    the simulator, busy generating, did not take the update within its admin timeout."""
    try:
        change = sim.admin("touch_users", count=1)[0]
    except OSError:  # URLError and socket timeouts
        return None
    user_id, stamp = change["entity"]["id"], change["entity"]["timestamp"]
    changed = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    waiting = set(range(shards))
    lags: list[float] = []
    deadline = time.monotonic() + 10.0
    while waiting and time.monotonic() < deadline:
        for remainder in list(waiting):
            if remainder not in conns:
                path = daemon.db_path(remainder)
                if not path.exists():
                    continue
                conns[remainder] = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            if _user_row(conns[remainder], user_id) == stamp:
                lags.append(time.time() - changed)
                waiting.discard(remainder)
        time.sleep(0.005)
    return lags


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--rate", type=float, default=200.0, help="subscribed changes per second per shard")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--probe-interval", type=float, default=1.0)
    args = parser.parse_args()

    accounts, users = args.shards * 2, 16
    per_step = subscribed_per_step(accounts, users)
    event_rate = args.shards * args.rate / per_step
    sim = Sim.start(accounts=accounts, users=users, event_rate=event_rate, batch=16, seed=5)
    home = Path(tempfile.mkdtemp(prefix="bench-load-"))
    sections = {"supervisor": {"connect_spacing": 0.05, "max_concurrent_connects": 4, "start_timeout": 300.0,
                               "heartbeat_interval": 1.0, "heartbeat_timeout": 10.0},
                "tradovate": {"idle_timeout": 10.0}}
    daemon = Daemon(home, sim, divisor=args.shards, sections=sections)  # type: ignore[arg-type]
    conns: dict[int, sqlite3.Connection] = {}
    try:
        began = time.monotonic()
        daemon.start()
        daemon.wait_live(300)
        print(f"{args.shards} shards live after {time.monotonic() - began:.1f}s; generator at {event_rate:.0f} "
              f"steps/s ({per_step:.2f} subscribed changes a step)")
        time.sleep(5.0)  # the steady state, not the start-up burst
        start_status = daemon.shards()
        t0, parent0, sim0 = time.monotonic(), cpu_seconds(daemon.pid), cpu_seconds(sim.proc.pid)
        workers0 = {r: cpu_seconds(s["pid"]) for r, s in start_status.items() if s["pid"]}
        lags: list[float] = []
        missed = unanswered = 0
        max_beat_age = 0.0
        next_status = t0
        while time.monotonic() - t0 < args.seconds:
            round_start = time.monotonic()
            got = probe(sim, daemon, args.shards, conns)
            if got is None:
                unanswered += 1
            else:
                lags += got
                missed += args.shards - len(got)
            if time.monotonic() >= next_status:
                ages = [s["last_heartbeat_age"] or 0.0 for s in daemon.shards().values()]
                max_beat_age = max(max_beat_age, *ages)
                next_status = time.monotonic() + 5.0
            time.sleep(max(0.0, args.probe_interval - (time.monotonic() - round_start)))
        elapsed = time.monotonic() - t0
        end_status = daemon.shards()
        parent_cpu = (cpu_seconds(daemon.pid) - parent0) / elapsed
        sim_cpu = (cpu_seconds(sim.proc.pid) - sim0) / elapsed
        worker_cpu = sum(cpu_seconds(s["pid"]) - workers0.get(r, 0.0) for r, s in end_status.items()
                         if s["pid"] and s["pid"] == start_status[r]["pid"]) / elapsed
        rates = [(end_status[r]["events"] - start_status[r]["events"]) / elapsed for r in end_status]
        hung, exited = len(daemon.events("shard_hung")), len(daemon.events("shard_exited"))
        print(f"measured {elapsed:.0f}s: received {sum(rates):.0f} events/s in all, per shard p50 "
              f"{percentile(rates, 0.5):.0f}, min {min(rates):.0f}, max {max(rates):.0f} (target {args.rate:g})")
        print(f"heartbeat deadlines missed (shard_hung): {hung}; worker exits: {exited}; largest heartbeat age "
              f"seen {max_beat_age:.2f}s (deadline {sections['supervisor']['heartbeat_timeout']}s)")
        print(f"CPU (share of one core): parent {parent_cpu:.1%}, all workers {worker_cpu:.1%}, simulator "
              f"{sim_cpu:.1%}")
        print(f"sink lag (server change -> readable in sqlite): p50 {percentile(lags, 0.5) * 1000:.0f} ms, p99 "
              f"{percentile(lags, 0.99) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms over {len(lags)} samples; "
              f"not seen within 10 s: {missed}; probes the simulator did not take: {unanswered}")
        return 0 if hung == 0 and exited == 0 else 1
    finally:
        for conn in conns.values():
            conn.close()
        with contextlib.suppress(Exception):
            daemon.stop(timeout=60)
        sim.stop()


if __name__ == "__main__":
    sys.exit(main())
