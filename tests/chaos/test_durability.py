"""Durability: a worker SIGKILLed in the middle of writing a batch loses nothing committed, in every sink.

Each round streams a burst of changes, lets the worker write for a random
moment, then freezes the parent (SIGSTOP, so nothing restarts yet), kills
the worker and reads the crash state as a consumer would: that state must
be sound (sqlite ``PRAGMA integrity_check`` on a copy with its WAL) and every
change it holds must still be there, unchanged, once the replacement worker
has opened the sink and gone live (jsonl: a torn last line is cut, complete
lines stay; the first round plants one, since a kill rarely tears the single
write() of a batch).  At the end the shard equals the simulator's truth.  That the
kills do land mid-batch is measured, not assumed: nothing changes on the
server while the worker is down, so a restarted worker whose resync writes
anything had received changes it had not committed yet.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import Daemon, alive, wait_until

from shardsync.simulator import Simulator

from . import sinkread

KILLS = 5
BURST = 6000
#: A write() torn by a crash (power loss, a kill inside a long write): planted once, in the first round.
TORN = b'{"seq":999999999,"origin":"live","entityType":"ord'
SUPERVISOR = {"heartbeat_interval": 0.25, "heartbeat_timeout": 5.0, "backoff_initial": 0.05, "backoff_max": 0.5,
              "stable_after": 0.2, "intensity": 100, "period": 5.0, "connect_spacing": 0.0}


class Shard:
    """Shard 0 of a one-shard daemon, read through its sink."""

    def __init__(self, kind: str, daemon: Daemon, dsn: str) -> None:
        self.kind, self.daemon, self.dsn = kind, daemon, dsn

    def log(self, state: Path | None = None) -> dict[int, Any]:
        where = state or self.daemon.state
        if self.kind == "sqlite":
            return sinkread.sqlite_log(sinkread.sqlite_path(where, 0, 1))
        if self.kind == "jsonl":
            return dict(sinkread.jsonl_lines(sinkread.jsonl_path(where, 0, 1))[0])
        return sinkread.pg_log(self.dsn, 0, 1)

    def entities(self) -> dict[tuple[str, int], Any]:
        if self.kind == "sqlite":
            return self.daemon.sink_entities(0)
        if self.kind == "jsonl":
            return sinkread.jsonl_state(sinkread.jsonl_path(self.daemon.state, 0, 1))
        return sinkread.pg_state(self.dsn, 0, 1)

    def origin(self, row: Any) -> str:
        return str(row["origin"] if self.kind == "jsonl" else row[0])

    def crash_state(self, copy: Path) -> tuple[dict[int, Any], list[str]]:
        """What a consumer finds right after the crash: the log, and what is wrong with it."""
        problems: list[str] = []
        if self.kind == "sqlite":
            source = sinkread.sqlite_path(self.daemon.state, 0, 1)
            copy.mkdir()
            for suffix in ("", "-wal"):
                if Path(f"{source}{suffix}").exists():
                    shutil.copy(f"{source}{suffix}", copy / f"{source.name}{suffix}")
            check = sinkread.integrity(copy / source.name)
            if check != "ok":
                problems.append(f"integrity_check after the crash: {check}")
            return self.log(copy), problems
        return self.log(), problems


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["sqlite", "jsonl", "postgres"])
def test_sigkill_mid_batch_loses_nothing_committed_and_converges(
        kind: str, sim_factory: Callable[..., Simulator], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """SIGKILL of a worker while it writes: the crash state is sound, everything in it survives the restart
    unchanged, the jsonl tail is recovered, and the shard converges; kills do land mid-batch."""
    dsn = request.getfixturevalue("pg_dsn") if kind == "postgres" else ""
    sink: dict[str, Any] = {"kind": kind, **({"dsn": dsn} if dsn else {})}
    sim = sim_factory(accounts=12, users=4)
    home = tmp_path / "daemon"
    home.mkdir()
    daemon = Daemon(home, sim, divisor=1, sections={"sink": sink, "supervisor": SUPERVISOR}).start()
    shard = Shard(kind, daemon, dsn)
    rng = random.Random(f"durability-{kind}")
    in_flight = torn = 0
    try:
        daemon.wait_live()
        for round_ in range(KILLS):
            worker = daemon.pids()[0]
            assert worker is not None
            sim.step(BURST)
            time.sleep(rng.uniform(0.0, 0.1))  # the fault's timing: where in the burst the kill lands
            os.kill(daemon.pid, signal.SIGSTOP)  # nothing restarts until the crash state is read
            try:
                os.kill(worker, signal.SIGKILL)
                wait_until(lambda w=worker: not alive(w), 5, "the killed worker gone")
                if kind == "jsonl":
                    path = sinkread.jsonl_path(daemon.state, 0, 1)
                    torn += sinkread.jsonl_lines(path)[1]
                    if round_ == 0:
                        with path.open("ab") as file:
                            file.write(TORN)
                crash, problems = shard.crash_state(tmp_path / f"crash-{round_}")
            finally:
                os.kill(daemon.pid, signal.SIGCONT)
            assert not problems, problems
            wait_until(lambda w=worker: (p := daemon.pids()[0]) is not None and p != w, 10, "a new worker")
            daemon.wait_live()
            after = shard.log()
            lost = [seq for seq, row in crash.items() if after.get(seq) != row]
            assert not lost, f"round {round_}: {len(lost)} committed changes lost or altered, e.g. seq {lost[:5]}"
            assert sorted(after) == list(range(1, len(after) + 1)), "the change log's seq has a gap"
            # Nothing changed on the server meanwhile: a resync that writes had lost uncommitted changes.
            last = max(crash, default=0)
            in_flight += any(shard.origin(row) == "resync" for seq, row in after.items() if seq > last)
            if kind == "jsonl":
                assert not sinkread.jsonl_lines(sinkread.jsonl_path(daemon.state, 0, 1))[1], "torn tail kept"
        wait_until(lambda: shard.entities() == daemon.truth(0), 20, "the shard converged")
        if kind == "sqlite":
            assert sinkread.integrity(sinkread.sqlite_path(daemon.state, 0, 1)) == "ok"
        # Evidence that the kills hit writes in progress (a batch is being written most of the burst).
        print(f"{kind}: {in_flight} of {KILLS} kills mid-batch, {torn} jsonl tails torn by a kill")
        assert in_flight >= 1, f"none of {KILLS} kills landed mid-batch: the test proved nothing"
    finally:
        daemon.stop()
