"""Unit tests for reconciliation: deletions at once, held when the end was inferred, guarded when massive."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from shardsync.mirror import Mirror
from shardsync.protocol import PropsEvent, Response
from shardsync.sinks import open_sink
from shardsync.worker.batch import Batch
from shardsync.worker.parent import Vitals
from shardsync.worker.reconcile import Reconciler
from shardsync.worker.snapshot import SnapshotAssembler

T0, T1, T5 = "2024-01-01T00:00:00.000Z", "2024-01-01T00:00:01.000Z", "2024-01-01T00:00:05.000Z"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, tmp_path: Path, *, ratio: float = 0.5, grace: float = 10.0) -> None:
        self.path = tmp_path
        self.sink = open_sink("jsonl", path=str(tmp_path), remainder=0, divisor=1)
        self.clock = Clock()
        self.batch = Batch(self.sink, Mirror(self.sink.load()), batch_max=10_000, flush_interval=0.05,
                           clock=self.clock, vitals=Vitals(), log=structlog.get_logger())
        self.reconciler = Reconciler(self.batch, ratio=ratio, grace=grace, clock=self.clock,
                                     log=structlog.get_logger())

    def lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in (self.path / "shard-000-of-001.jsonl").read_bytes().splitlines()]

    def rows(self, origin: str | None = None) -> list[tuple[str, str, int]]:
        return [(r["origin"], r["eventType"], r["entity"]["id"]) for r in self.lines()
                if origin is None or r["origin"] == origin]

    def ids(self) -> list[int]:
        return sorted(key[1] for key, _ in self.batch.mirror.items())

    def snapshot(self, idents: range | list[int], *, how: str, events: Sequence[PropsEvent] = ()) -> Any:
        """Reconcile a snapshot of orders ``idents`` completed ``how`` (single, marker, quiet)."""
        assembler = SnapshotAssembler(1, split=how != "single", quiet=1.0)
        for event in events:
            assembler.on_event(event, T1)
        assembler.on_response(Response(200, 1, {"orders": [{"id": i} for i in idents]}), 0.0)
        if how == "marker":
            assembler.on_response(Response(200, 1, {}), 0.1)
        elif how == "quiet":
            assert assembler.check(1.0)
        assert assembler.complete
        self.assembler = assembler
        return self.reconciler.reconcile(assembler, T5)

    def close(self) -> None:
        self.sink.close()


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    r = Rig(tmp_path)
    r.snapshot(range(1, 21), how="single")
    yield r
    r.close()


def updated(ident: int, event_type: str = "Updated") -> PropsEvent:
    return PropsEvent("order", event_type, ({"id": ident, "v": 2},))


@pytest.mark.parametrize("how", ["single", "marker"])
def test_a_snapshot_known_whole_deletes_at_once(rig: Rig, how: str) -> None:
    """Single response or end marker: the missing entities are deleted in the reconcile batch itself."""
    outcome = rig.snapshot(range(1, 18), how=how)
    assert outcome.held == 0 and not outcome.resync and outcome.changes == 3
    assert rig.rows("resync") == [("resync", "Deleted", 18), ("resync", "Deleted", 19), ("resync", "Deleted", 20)]
    assert rig.ids() == list(range(1, 18))


def test_the_snapshots_table_is_let_go_before_the_sink_write(rig: Rig) -> None:
    """Once diffed, the assembler no longer holds the snapshot's entities (the mirror has them), events kept."""
    rig.snapshot(range(1, 21), how="single", events=[updated(3)])
    assert rig.assembler.entities == {} and len(rig.assembler.buffered) == 1
    assert rig.ids() == list(range(1, 21))


def test_an_inferred_end_holds_deletions_until_the_grace_ends(rig: Rig) -> None:
    """Quiet rule: creates/updates now, deletions after deletion_grace with the snapshot's origin and time."""
    outcome = rig.snapshot([*range(1, 18), 99], how="quiet")
    assert outcome.held == 3 and outcome.changes == 1
    assert rig.rows("resync") == [("resync", "Created", 99)] and 18 in rig.ids()
    rig.clock.now += 9.9
    assert not rig.reconciler.due(rig.clock.now)
    rig.clock.now += 0.1
    assert rig.reconciler.due(rig.clock.now)
    assert rig.reconciler.commit_held() == 3
    rig.batch.commit()
    deleted = [r for r in rig.lines() if r["eventType"] == "Deleted"]
    assert [(r["origin"], r["entity"]["id"], r["receivedAt"]) for r in deleted] == [
        ("resync", 18, T5), ("resync", 19, T5), ("resync", 20, T5)]
    assert rig.ids() == [*range(1, 18), 99]


def test_live_news_settles_held_deletions(rig: Rig) -> None:
    """While held, a live Updated cancels a deletion and a live Deleted deletes as a live change; the rest commit."""
    rig.snapshot(range(1, 18), how="quiet")
    rig.reconciler.apply(updated(18), T1)
    rig.reconciler.apply(updated(19, "Deleted"), T1)
    rig.batch.commit()
    rig.clock.now += 10
    assert rig.reconciler.commit_held() == 1
    rig.batch.commit()
    assert [row for row in rig.rows() if row[2] >= 18 and row[0] != "snapshot"] == [
        ("live", "Updated", 18), ("live", "Deleted", 19), ("resync", "Deleted", 20)]
    assert 18 in rig.ids() and 19 not in rig.ids() and 20 not in rig.ids()


def test_events_buffered_during_the_snapshot_settle_its_held_deletions(rig: Rig) -> None:
    """A prop of a missing entity that arrived during the snapshot means the server has it: no deletion."""
    rig.snapshot(range(1, 18), how="quiet", events=[updated(20)])
    assert len(rig.reconciler.held) == 2
    rig.clock.now += 10
    assert rig.reconciler.commit_held() == 2
    rig.batch.commit()
    assert 20 in rig.ids() and 18 not in rig.ids()


def test_an_ended_session_drops_held_deletions(rig: Rig) -> None:
    """drop(): nothing held is ever committed; live events go straight to the batch again."""
    rig.snapshot(range(1, 18), how="quiet")
    assert rig.reconciler.drop() == 3
    assert not rig.reconciler.due(rig.clock.now + 100) and rig.reconciler.apply == rig.batch.apply
    rig.batch.commit()
    assert [r for r in rig.rows() if r[1] == "Deleted"] == [] and rig.ids() == list(range(1, 21))


def test_a_mass_deletion_applies_nothing_but_creates_and_asks_to_resync(rig: Rig) -> None:
    """A snapshot missing most of the shard: creates and updates commit, no deletion, resync asked, not live."""
    outcome = rig.snapshot([1, 2, 99], how="single")
    assert outcome.resync and outcome.held == 0 and outcome.verdict.suspected == 18
    assert [r for r in rig.rows() if r[1] == "Deleted"] == [] and 99 in rig.ids() and len(rig.ids()) == 21
    again = rig.snapshot([1, 2, 99], how="single")
    assert not again.resync and again.verdict.confirmed == 18
    assert rig.ids() == [1, 2, 99]


def test_a_refused_mass_deletion_deletes_nothing(rig: Rig) -> None:
    """The second snapshot is whole again: the suspects are refused and nothing was ever deleted."""
    assert rig.snapshot([], how="single").resync
    outcome = rig.snapshot(range(1, 21), how="single")
    assert outcome.verdict.refused == 20 and not outcome.resync
    assert [r for r in rig.rows() if r[1] == "Deleted"] == [] and rig.ids() == list(range(1, 21))
