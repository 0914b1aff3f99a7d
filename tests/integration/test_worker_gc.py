"""A real worker keeps the garbage collector off only while it builds a snapshot (gcpause.py)."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

from worker_harness import WorkerRun

from polling import wait_until
from shardsync.simulator import Simulator


def test_collection_is_off_only_while_a_snapshot_is_built(sim_factory: Callable[..., Simulator],
                                                          tmp_path: Path) -> None:
    """Off from the syncrequest through a slow split snapshot, on with the result frozen once live, off again for
    a resync after a drop, and on again when the worker stops in the middle of that snapshot."""
    assert gc.isenabled()
    sim = sim_factory(snapshot_mode="split", split_chunks=3, split_end="empty", split_delay=30.0)
    frozen = gc.get_freeze_count()

    def syncing(worker: WorkerRun, reconnects: int) -> bool:
        beat = worker.last_beat()
        return beat is not None and beat.reconnects >= reconnects and beat.state == "syncing"

    try:
        with WorkerRun(sim, tmp_path) as worker:
            # The pause comes before the syncing heartbeat, the resume before the live one; each snapshot
            # below lasts a minute unless the socket is dropped.
            wait_until(lambda: syncing(worker, 0), 10, "the first snapshot under way")
            assert not gc.isenabled()
            sim.configure(split_delay=0.0)
            sim.drop()
            worker.wait_live(15, after_reconnects=1)
            assert gc.isenabled() and gc.get_freeze_count() > frozen
            sim.configure(split_delay=30.0)
            sim.drop()
            wait_until(lambda: syncing(worker, 2), 10, "the resync under way")
            assert not gc.isenabled()
        assert gc.isenabled(), "a worker stopped mid-snapshot left the collector off"
    finally:
        gc.unfreeze()
        gc.enable()
