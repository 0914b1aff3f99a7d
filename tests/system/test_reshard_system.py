"""Live resharding of the real daemon against the simulator at ~1,000 events/s: make before break.

The oracle is the simulator's own record of every synced socket (``stats()["subscriptions"]``): an
account is covered at time t when a socket of its shard had been sent its snapshot and was not closed.
"""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness import Daemon, wait_until

from shardsync.simulator import Simulator

RATE = 1000.0


def subscriptions(sim: Simulator) -> list[dict[str, Any]]:
    return [s for s in sim.stats()["subscriptions"] if s["divisor"] is not None and s["snapshot_sent_at"]]


def gaps(subs: list[dict[str, Any]], divisors: tuple[int, int], start: float, end: float,
         skip: frozenset[int] = frozenset()) -> dict[int, list[tuple[float, float]]]:
    """Per residue (mod lcm of ``divisors``) not in ``skip``: the moments in [start, end] no live socket held it."""
    modulus = math.lcm(*divisors)
    out: dict[int, list[tuple[float, float]]] = {}
    for residue in range(modulus):
        if residue in skip:
            continue
        spans = sorted((s["snapshot_sent_at"], s["closed_at"] or math.inf) for s in subs
                       if s["divisor"] in divisors and residue % s["divisor"] == s["remainder"])
        covered_until, holes = start, []
        for begin, finish in spans:
            if begin > covered_until and covered_until < end:
                holes.append((covered_until, min(begin, end)))
            covered_until = max(covered_until, finish)
        if covered_until < end:
            holes.append((covered_until, end))
        if holes:
            out[residue] = holes
    return out


def peak_open(subs: list[dict[str, Any]], start: float) -> int:
    """The most synced sockets open at once from ``start`` on."""
    return max(len(open_at(subs, t)) for t in moments(subs, start))


def peak_overlap(subs: list[dict[str, Any]], old: int, new: int, start: float) -> int:
    """The most sockets of ``new`` open at once while an open socket of ``old`` still holds some of their accounts
    (shard r of N and r' of M share accounts exactly when r = r' mod gcd(N, M)): the make-before-break cost."""
    g = math.gcd(old, new)

    def overlap(t: float) -> int:
        now = open_at(subs, t)
        olds = {s["remainder"] % g for s in now if s["divisor"] == old}
        return sum(1 for s in now if s["divisor"] == new and s["remainder"] % g in olds)

    return max(overlap(t) for t in moments(subs, start))


def moments(subs: list[dict[str, Any]], start: float) -> list[float]:
    return [start, *sorted(t for s in subs for t in (s["synced_at"], s["closed_at"]) if t and t >= start)]


def open_at(subs: list[dict[str, Any]], t: float) -> list[dict[str, Any]]:
    return [s for s in subs if s["synced_at"] <= t < (s["closed_at"] or math.inf)]


def workers_rss(daemon: Daemon) -> int:
    """The summed resident memory of every worker, from /metrics."""
    _, body = daemon.http("/metrics")
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in body.decode().splitlines()
               if line.startswith("shardsync_worker_resident_memory_bytes{"))


def shard_log(path: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT seq, origin, entity_type, event_type, id FROM events ORDER BY seq").fetchall()
    finally:
        db.close()
    return [tuple(row) for row in rows]


class Follow:
    """`shardsync follow --path` writing JSON lines to a file."""

    def __init__(self, tmp: Path, state: Path) -> None:
        self.out = tmp / "follow.jsonl"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDSYNC_")}
        with open(self.out, "wb") as stream, open(tmp / "follow.err", "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shardsync", "follow", "--path", str(state), "--interval", "0.1",
                 "--from-start", "--cursor", str(tmp / "follow-cursor.json")], stdout=stream, stderr=err, env=env)

    def count(self) -> int:
        return self.out.read_bytes().count(b"\n")

    def stop(self) -> list[dict[str, Any]]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(20) == 0
        return [orjson.loads(line) for line in self.out.read_bytes().splitlines()]


def wait_resharded(daemon: Daemon, divisor: int, timeout: float = 120.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.output()[-3000:]
        status = daemon.status()
        reshard = status.get("reshard")
        if reshard and reshard["divisor"] == divisor and reshard["state"] != "running":
            return status
        return None

    status: dict[str, Any] = wait_until(done, timeout, f"resharding to {divisor} ended")
    return status


def all_live(daemon: Daemon, divisor: int) -> bool:
    shards = daemon.status()["shards"]
    return len(shards) == divisor and all(s["divisor"] == divisor and s["state"] == "live" for s in shards)


def reshard(daemon: Daemon, sim: Simulator, old: int, new: int, tmp: Path, *,
            during: Callable[[], None] = lambda: None, skip: frozenset[int] = frozenset()) -> dict[str, Any]:
    """Stream events, follow them, SIGHUP from ``old`` to ``new``; check coverage, truth, retirement, follow."""
    daemon.wait_live(60)
    follow = Follow(tmp, daemon.state)
    try:
        wait_until(lambda: follow.count() > 300, 30, "follow streaming")
        start = time.time()
        daemon.write_config(credentials=daemon.tmp / "credentials.toml", divisor=new)
        daemon.signal(signal.SIGHUP)
        during()
        status = wait_resharded(daemon, new)
        assert status["reshard"]["state"] == "done", status["reshard"]
        wait_until(lambda: all_live(daemon, new), 60, f"every shard of {new} live")
        end = time.time()
        subs = subscriptions(sim)
        holes = gaps(subs, (old, new), start, end, skip)
        assert not holes, f"accounts without a live subscription: {holes}"
        sim.pause()
        daemon.divisor = new
        for r in range(new):
            wait_until(lambda r=r: daemon.sink_entities(r) == daemon.truth(r), 60,  # type: ignore[misc]
                       f"shard {r} of {new} == truth")
        retired = daemon.state / "retired"
        wait_until(lambda: all((retired / f"shard-{r:03d}-of-{old:03d}.sqlite3").exists() for r in range(old)),
                   30, "old shard files retired")
        assert not list(daemon.state.glob(f"shard-*-of-{old:03d}.sqlite3"))
        for r in range(old):
            rows = sqlite3.connect(f"file:{retired / f'shard-{r:03d}-of-{old:03d}.sqlite3'}?mode=ro", uri=True)
            try:
                assert rows.execute("SELECT state FROM shard_status").fetchone()[0] == "retired"
            finally:
                rows.close()
        logs = {(old, r): shard_log(retired / f"shard-{r:03d}-of-{old:03d}.sqlite3") for r in range(old)}
        logs |= {(new, r): shard_log(daemon.state / f"shard-{r:03d}-of-{new:03d}.sqlite3") for r in range(new)}
        total = sum(len(rows) for rows in logs.values())
        wait_until(lambda: follow.count() >= total, 60, "follow caught up with every shard's log")
    finally:
        lines = follow.stop()
    got: dict[tuple[int, int], list[tuple[Any, ...]]] = {}
    for line in lines:
        if "seq" in line:
            got.setdefault((line["divisor"], line["shard"]), []).append(
                (line["seq"], line["origin"], line["entityType"], line["eventType"], line["id"]))
    assert total > 2000, "the load was real"
    assert got == logs, "follow missed or repeated a committed change"
    return {"seconds": status["reshard"]["seconds"], "peak_open": peak_open(subs, start),
            "peak_overlap": peak_overlap(subs, old, new, start), "status": status}


def test_split_four_to_eight_keeps_every_account_live(sim_factory: Callable[..., Simulator],
                                                      daemon_factory: Callable[..., Daemon],
                                                      tmp_path: Path) -> None:
    """4 -> 8 under load: no account ever lacks a live subscription, new shards equal the truth, old files are
    retired, `shardsync follow` gets every shard's log exactly; at most 2 new sockets overlap old ones at once."""
    sim = sim_factory(event_rate=RATE, accounts=64, users=16)
    daemon = daemon_factory(sim, divisor=4)
    result = reshard(daemon, sim, 4, 8, tmp_path)
    assert result["peak_overlap"] == 2 and result["peak_open"] <= 8 + 1
    assert [m["state"] for m in result["status"]["reshard"]["moves"]] == ["done"] * 4


def test_merge_eight_to_four_keeps_every_account_live(sim_factory: Callable[..., Simulator],
                                                      daemon_factory: Callable[..., Daemon],
                                                      tmp_path: Path) -> None:
    """8 -> 4 under load: the same guarantees, one extra socket at a time."""
    sim = sim_factory(event_rate=RATE, accounts=64, users=16)
    daemon = daemon_factory(sim, divisor=8)
    result = reshard(daemon, sim, 8, 4, tmp_path)
    assert result["peak_overlap"] == 1 and result["peak_open"] <= 8 + 1


def test_faults_during_a_split_end_consistent(sim_factory: Callable[..., Simulator],
                                              daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    """During 4 -> 8: a new worker SIGKILLed, a server drop of an old shard not yet replaced, a second SIGHUP
    (refused with why): the split still ends with every account covered (but the dropped shard's, while it
    reconnects), every new shard equal to the truth, old shards retired and follow complete."""
    sim = sim_factory(event_rate=RATE, accounts=64, users=16)
    daemon = daemon_factory(sim, divisor=4)

    def faults() -> None:
        def new_worker() -> int | None:
            shards = daemon.status()["shards"]
            return next((s["pid"] for s in shards if s["divisor"] == 8 and s["pid"]), None)

        victim = wait_until(new_worker, 30, "a new worker running")
        os.kill(victim, signal.SIGKILL)
        assert sim.drop(remainder=3, divisor=4) >= 1
        daemon.write_config(credentials=daemon.tmp / "credentials.toml", divisor=16)
        daemon.signal(signal.SIGHUP)
        refused = wait_until(lambda: daemon.events("reload_refused"), 20, "the second SIGHUP refused")
        assert "resharding 4 -> 8" in refused[0]["why"]
        daemon.write_config(credentials=daemon.tmp / "credentials.toml", divisor=8)

    reshard(daemon, sim, 4, 8, tmp_path, during=faults, skip=frozenset({3, 7}))
    assert daemon.events("shard_exited"), "the SIGKILL was seen"


@pytest.mark.parametrize(("old", "new"), [(8, 16)])
def test_figures_of_a_split(sim_factory: Callable[..., Simulator], daemon_factory: Callable[..., Daemon],
                            tmp_path: Path, old: int, new: int) -> None:
    """8 -> 16 under load: measured time and peak extra sockets (printed; bounded by the plan's M/N)."""
    sim = sim_factory(event_rate=RATE, accounts=128, users=32)
    daemon = daemon_factory(sim, divisor=old)
    daemon.wait_live(60)
    wait_until(lambda: workers_rss(daemon) > 0, 30, "workers report their memory")
    before = workers_rss(daemon)
    peak = [before]

    def sample() -> None:
        def ended() -> bool:
            peak.append(workers_rss(daemon))
            return daemon.status().get("reshard", {}).get("state") not in (None, "running")

        wait_until(ended, 120, "the split ended (memory sampled meanwhile)")

    result = reshard(daemon, sim, old, new, tmp_path, during=sample)
    after = workers_rss(daemon)
    print(f"\nFIGURES {old}->{new}: workers' RSS before {before / 2**20:.1f} MiB, after {after / 2**20:.1f} MiB, "
          f"peak during {max(peak) / 2**20:.1f} MiB (+{(max(peak) - max(before, after)) / 2**20:.1f} MiB "
          f"over the larger)")
    print(f"\nFIGURES {old}->{new}: {result['seconds']:.2f} s, peak sockets open {result['peak_open']}, "
          f"peak overlapping new sockets {result['peak_overlap']}, "
          f"daemon's peak_extra_connections {result['status']['reshard']['peak_extra_connections']}")
    assert result["peak_overlap"] <= new // old
