"""Resharding in the real arbiter (in-process, fake processes, real pipes and sqlite files): make before break."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from arbiter_fakes import FakeWorker, Parent, exited_with, killed_by

from shardsync import ipc
from shardsync.ipc import ShardState
from shardsync.sinks import open_sink
from shardsync.supervisor.status import render_status


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o750)
    return path


@pytest.fixture
def make(tmp_path: Path, state: Path) -> Iterator[Any]:
    """Parents whose sqlite sink is ``state``; each is cleaned up after the test."""
    parents: list[Parent] = []

    def build(divisor: int, **sync: Any) -> Parent:
        parent = Parent(tmp_path / f"p{len(parents)}.toml", sections(state, divisor, **sync))
        parents.append(parent)
        parent.step(8)
        parent.log_in()
        for worker in running(parent).values():
            worker.beat(ShardState.LIVE)
        parent.step(2)
        return parent

    yield build
    for parent in parents:
        parent.close()


def sections(state: Path, divisor: int, **sync: Any) -> dict[str, dict[str, Any]]:
    return {"sink": {"path": str(state)}, "sync": {"divisor": divisor, "remainders": "all", **sync},
            "supervisor": {"max_concurrent_connects": 2}}


def running(parent: Parent) -> dict[tuple[int, int], FakeWorker]:
    """Every worker not yet exited, by (divisor, remainder)."""
    out: dict[tuple[int, int], FakeWorker] = {}
    for worker in parent.fakes.workers:
        if not worker.exited:
            assert worker.launch is not None
            key = (worker.launch.options.divisor, worker.remainder)
            assert key not in out, f"two workers for {key}"
            out[key] = worker
    return out


def beat(parent: Parent, *keys: tuple[int, int], state: ShardState = ShardState.LIVE) -> None:
    for key in keys:
        running(parent)[key].beat(state)
    parent.step(3)


def stop_asked(parent: Parent) -> set[tuple[int, int]]:
    return {key for key, w in running(parent).items() if signal.SIGTERM in w.signals}


def exit_stopped(parent: Parent) -> None:
    """The workers asked to stop exit cleanly (like real ones do)."""
    for key in stop_asked(parent):
        running(parent)[key].exit(exited_with(0))
    parent.step(4)


def status(parent: Parent) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(render_status(parent.arbiter.snapshot()))
    return doc


def shard_file(state: Path, remainder: int, divisor: int) -> Path:
    open_sink("sqlite", path=str(state), remainder=remainder, divisor=divisor).close()
    return state / f"shard-{remainder:03d}-of-{divisor:03d}.sqlite3"


def test_split_two_to_four_stops_each_old_shard_only_after_both_children_are_live(make: Any, state: Path) -> None:
    """2 -> 4: old 0 runs until 0 and 2 of 4 are live, then stops and is retired; then 1 -> 1, 3; never more
    than two new shards at once; status, STATUS= and metrics show the plan."""
    parent: Parent = make(2)
    old_files = [shard_file(state, r, 2) for r in (0, 1)]
    with structlog.testing.capture_logs() as logs:
        parent.reload(sections(state, 4))
    assert set(running(parent)) == {(2, 0), (2, 1), (4, 0), (4, 2)}, "first move: both children of 0 start"
    assert not stop_asked(parent)
    assert [line["shape"] for line in logs if line["event"] == "reshard_started"] == ["split"]
    doc = status(parent)
    assert doc["reshard"]["state"] == "running" and doc["reshard"]["moves"][0]["state"] == "starting"
    assert {(s["divisor"], s["remainder"]) for s in doc["shards"]} == {(2, 0), (2, 1), (4, 0), (4, 2)}
    assert "resharding 2 -> 4: 0/2 moves done" in parent.arbiter.status_line()

    beat(parent, (4, 0))
    assert not stop_asked(parent), "one child live is not enough"
    beat(parent, (4, 2))
    assert stop_asked(parent) == {(2, 0)}
    assert (4, 1) not in running(parent), "the next move waits until the old shard's connection is closed"
    exit_stopped(parent)
    assert not old_files[0].exists() and (state / "retired" / old_files[0].name).exists()
    assert old_files[1].exists(), "old 1 still runs: not retired"
    assert set(running(parent)) == {(2, 1), (4, 0), (4, 2), (4, 1), (4, 3)}
    beat(parent, (4, 1), (4, 3))
    assert stop_asked(parent) == {(2, 1)}
    exit_stopped(parent)
    assert set(running(parent)) == {(4, r) for r in range(4)}
    assert not old_files[1].exists()
    # Each old shard is retired as replaced (PostgreSQL drops its state rows); the start-up file scan may add
    # plain jobs for the same files, which only a file sink gets.
    jobs = [job for batch in parent.fakes.retired for job in batch]
    assert {(j.divisor, j.remainder) for j in jobs if j.replaced} == {(2, 0), (2, 1)}
    doc = status(parent)
    assert doc["reshard"]["state"] == "done" and doc["reshard"]["peak_extra_connections"] == 2
    assert [m["state"] for m in doc["reshard"]["moves"]] == ["done", "done"]
    assert "resharding" not in parent.arbiter.status_line()
    assert parent.arbiter.table.all_live_now()


def test_merge_four_to_two_starts_one_and_stops_its_two_parents(make: Any) -> None:
    """4 -> 2: new 0 replaces old 0 and 2 once live; one extra connection at a time."""
    parent: Parent = make(4)
    parent.reload(sections(parent_state(parent), 2))
    assert set(running(parent)) == {(4, 0), (4, 1), (4, 2), (4, 3), (2, 0)}
    beat(parent, (2, 0))
    assert stop_asked(parent) == {(4, 0), (4, 2)}
    assert (2, 1) not in running(parent), "one move at a time"
    exit_stopped(parent)
    beat(parent, (2, 1))
    exit_stopped(parent)
    assert set(running(parent)) == {(2, 0), (2, 1)}
    assert status(parent)["reshard"]["state"] == "done"


def parent_state(parent: Parent) -> Path:
    return Path(parent.arbiter.settings.sink.path)


def test_a_second_sighup_during_a_resharding_is_refused_and_changes_nothing(make: Any, state: Path) -> None:
    """A SIGHUP while a plan runs: reload_refused says why; the table and the plan are untouched."""
    parent: Parent = make(2)
    parent.reload(sections(state, 4))
    before = set(running(parent))
    with structlog.testing.capture_logs() as logs:
        parent.reload(sections(state, 8))
    refused = [line for line in logs if line["event"] == "reload_refused"]
    assert refused and "resharding 2 -> 4" in refused[0]["why"] and "once it has ended" in refused[0]["why"]
    assert set(running(parent)) == before
    assert parent.arbiter.settings.sync.divisor == 4
    beat(parent, (4, 0), (4, 2))
    assert stop_asked(parent) == {(2, 0)}


def test_a_new_shard_parked_by_refusals_aborts_its_move_and_the_old_shard_keeps_running(
        make: Any, state: Path) -> None:
    """A new shard the server keeps refusing (parked by the budget) aborts its move: its siblings stop, the old
    shard is never asked to stop; the other moves go on; a later SIGHUP retries the aborted one."""
    parent: Parent = make(2)
    with structlog.testing.capture_logs() as logs:
        parent.reload(sections(state, 4))
        beat(parent, (4, 0))
        refused = running(parent)[(4, 2)]
        for _ in range(3):
            refused.send(ipc.Rejected("user/syncrequest", 400, "bad shardingExpression"))
            parent.step()
        parent.step(2)
    aborted = [line for line in logs if line["event"] == "reshard_move_aborted"]
    assert aborted and aborted[0]["kept"] == [0] and "bad shardingExpression" in aborted[0]["why"]
    assert (2, 0) not in stop_asked(parent) and signal.SIGTERM not in running(parent)[(2, 0)].signals
    assert stop_asked(parent) >= {(4, 0), (4, 2)}, "the aborted move's new shards are stopped"
    exit_stopped(parent)
    assert (2, 0) in running(parent) and (4, 1) in running(parent) and (4, 3) in running(parent)
    beat(parent, (4, 1), (4, 3))
    exit_stopped(parent)
    assert set(running(parent)) == {(2, 0), (4, 1), (4, 3)}, "a consistent mix: every account has a shard"
    doc = status(parent)
    assert doc["reshard"]["state"] == "aborted"
    assert [m["state"] for m in doc["reshard"]["moves"]] == ["aborted", "done"]
    assert "bad shardingExpression" in doc["reshard"]["moves"][0]["why"]
    # The operator fixed the cause: the same config again retries only what was aborted.
    parent.reload(sections(state, 4))
    assert set(running(parent)) == {(2, 0), (4, 1), (4, 3), (4, 0), (4, 2)}
    beat(parent, (4, 0), (4, 2))
    assert stop_asked(parent) == {(2, 0)}
    exit_stopped(parent)
    assert set(running(parent)) == {(4, r) for r in range(4)}


def test_a_new_worker_killed_once_restarts_and_its_move_completes(make: Any, state: Path) -> None:
    """SIGKILL of a new worker mid-move: the restart policy restarts it; the old shard waits for it."""
    parent: Parent = make(2)
    parent.reload(sections(state, 4))
    beat(parent, (4, 0))
    running(parent)[(4, 2)].exit(killed_by(signal.SIGKILL))
    parent.step(2)
    assert not stop_asked(parent), "a child died: its old shard keeps running"
    parent.advance(5.0)  # past the restart backoff
    parent.step(2)
    assert (4, 2) in running(parent)
    beat(parent, (4, 2))
    assert stop_asked(parent) == {(2, 0)}


def test_inexact_remainders_are_logged_and_the_old_shard_still_waits(make: Any, state: Path) -> None:
    """New remainders missing some of the old accounts: reshard_uncovered names them; old 1 still stops only
    after the child it keeps (1 of 4) is live."""
    parent: Parent = make(2)
    with structlog.testing.capture_logs() as logs:
        parent.reload(sections(state, 4, remainders=[0, 1, 2]))
    uncovered = [line for line in logs if line["event"] == "reshard_uncovered"]
    assert uncovered and uncovered[0]["accounts"] == "account id % 4 in 3"
    beat(parent, (4, 0), (4, 2))
    exit_stopped(parent)
    assert not stop_asked(parent)
    beat(parent, (4, 1))
    assert stop_asked(parent) == {(2, 1)}


def test_status_command_and_metrics_show_the_plan(make: Any, state: Path) -> None:
    """`shardsync status` lists the plan's moves and names old shards r/d; /metrics says a resharding runs."""
    from prometheus_client.parser import text_string_to_metric_families

    from shardsync import statusclient
    from shardsync.supervisor import metrics

    parent: Parent = make(2)
    parent.reload(sections(state, 4))
    beat(parent, (4, 0))
    text = statusclient.render_table(status(parent))
    assert "resharding 2 -> 4 (split): running, move 1/2" in text
    assert "  1. new 0, 2 / old 0: starting" in text and "  2. new 1, 3 / old 1: pending" in text
    assert {line.split()[0] for line in text.splitlines()[4:8]} == {"0/2", "1/2", "0", "2"}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(metrics.render(parent.arbiter.snapshot).decode())
               for s in f.samples}
    assert samples[("shardsync_resharding", ())] == 1.0
    assert samples[("shardsync_reshard_moves", (("state", "starting"),))] == 1.0
    assert samples[("shardsync_shard_up", (("shard", "0/2"),))] == 1.0
    assert samples[("shardsync_shard_up", (("shard", "2"),))] == 0.0
    notified = [m["STATUS"] for m in parent.notifier.said("STATUS")]
    assert any("resharding 2 -> 4" in line for line in notified)


def test_healthz_stays_ok_while_a_move_waits_for_its_new_shards(make: Any, state: Path) -> None:
    """A resharding's pending new shards (their old shard still live) do not make /healthz 503; an old shard
    that is down does; each shard's part shows in /status."""
    from shardsync.supervisor.status import render_healthz

    parent: Parent = make(2)
    parent.reload(sections(state, 4))
    assert render_healthz(parent.arbiter.snapshot())[0] == 200
    roles = {(s["divisor"], s["remainder"]): s["reshard"] for s in status(parent)["shards"]}
    assert roles == {(2, 0): "old", (2, 1): "old", (4, 0): "pending", (4, 2): "pending"}
    beat(parent, (2, 1), state=ShardState.SYNCING)
    code, body = render_healthz(parent.arbiter.snapshot())
    assert code == 503 and b"1/4 live" in body


def test_after_an_abort_the_old_divisor_back_merges_the_completed_moves_back(make: Any, state: Path) -> None:
    """2 -> 4 with move 1 aborted (old 0 kept, 1 replaced by 1 and 3 of 4); a SIGHUP with divisor 2 again merges
    1 and 3 of 4 back into 1 of 2 and leaves old 0 alone."""
    parent: Parent = make(2)
    parent.reload(sections(state, 4))
    for _ in range(3):
        running(parent)[(4, 2)].send(ipc.Rejected("user/syncrequest", 400, "refused"))
        parent.step()
    parent.step(2)
    exit_stopped(parent)
    beat(parent, (4, 1), (4, 3))
    exit_stopped(parent)
    assert set(running(parent)) == {(2, 0), (4, 1), (4, 3)}
    parent.reload(sections(state, 2))
    assert set(running(parent)) == {(2, 0), (4, 1), (4, 3), (2, 1)}
    assert status(parent)["reshard"]["shape"] == "merge"
    beat(parent, (2, 1))
    assert stop_asked(parent) == {(4, 1), (4, 3)}
    exit_stopped(parent)
    assert set(running(parent)) == {(2, 0), (2, 1)}
    assert parent.arbiter.table.all_live_now()
    assert status(parent)["reshard"]["state"] == "done"


def test_a_resharding_ends_only_once_the_shards_it_stopped_are_gone(make: Any, state: Path) -> None:
    """The last move done, its old shard still stopping: the plan still runs (a SIGHUP now is refused);
    it ends when that worker is reaped."""
    parent: Parent = make(2)
    parent.reload(sections(state, 4))
    beat(parent, (4, 0), (4, 2))
    exit_stopped(parent)
    beat(parent, (4, 1), (4, 3))
    assert stop_asked(parent) == {(2, 1)}
    assert status(parent)["reshard"]["state"] == "running"
    with structlog.testing.capture_logs() as logs:
        parent.reload(sections(state, 4))
    assert [line["event"] for line in logs if line["event"] == "reload_refused"] == ["reload_refused"]
    exit_stopped(parent)
    assert status(parent)["reshard"]["state"] == "done"


def test_old_and_new_shard_of_one_remainder_get_their_own_permits(make: Any, state: Path) -> None:
    """Shard 0 of 2 reconnecting and shard 0 of 4 connecting both wait for a permit: each gets its own."""
    parent: Parent = make(2)
    parent.reload(sections(state, 4))
    old, new = running(parent)[(2, 0)], running(parent)[(4, 0)]
    old.received()
    new.received()
    old.send(ipc.NeedPermit())
    new.send(ipc.NeedPermit())
    parent.step(3)
    assert "Permit" in [type(m).__name__ for m in old.received()]
    assert "Permit" in [type(m).__name__ for m in new.received()]
