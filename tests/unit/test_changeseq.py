"""A batch's changes as segments read exactly as the list of changes they stand for, in a fraction of its memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import orjson
import pytest

from shardsync.change import UNPARSED, Change
from shardsync.changeseq import Changes, SnapshotRun
from shardsync.sinks import sqlite as sqlite_module
from shardsync.sinks.sqlite import SqliteSink

T = "2026-01-01T00:00:00.000Z"


def order(n: int, account: int | None = 7) -> str:
    return orjson.dumps({"id": n, "accountId": account, "ordStatus": "Working"}).decode()


def run_of(numbers: range, *, updated: bool = False, origin: str = "snapshot") -> tuple[SnapshotRun, list[Change]]:
    """A run and the list of Change objects it stands for."""
    run = SnapshotRun(origin, T)  # type: ignore[arg-type]
    expected = []
    for n in numbers:
        account = None if n % 5 == 0 else 4_000_000 + n % 3
        run.append(("order", n), order(n, account), account, updated)
        expected.append(Change(origin, "order", "Updated" if updated else "Created", n, UNPARSED, T,  # type: ignore[arg-type]
                               account, order(n, account)))
    return run, expected


def live(n: int) -> Change:
    return Change("live", "order", "Updated", n, {"id": n, "accountId": 1}, T, 1)


def test_a_run_reads_back_its_changes_by_index_slice_and_iteration() -> None:
    """Every index (negative too), slice and the iteration give changes equal to the list's, texts and all;
    an index past the end raises IndexError."""
    run, expected = run_of(range(10, 20), updated=True)
    assert len(run) == 10
    assert list(run) == expected and run == expected
    assert [run[i] for i in range(-10, 10)] == [expected[i] for i in range(-10, 10)]
    for start in range(-11, 12):
        for stop in range(-11, 12):
            assert run[start:stop] == expected[start:stop]
    assert [c.data for c in run] == [c.data for c in expected] and run[3].entity == orjson.loads(expected[3].data or "")
    with pytest.raises(IndexError):
        run[10]


def test_a_run_keeps_one_int_per_account_and_takes_a_late_account() -> None:
    """Changes of one account share its int object; set_account (the orphan's second look) is what is read."""
    run = SnapshotRun("snapshot", T)
    run.append(("fill", 1), '{"id":1}', int("4000001"), False)
    run.append(("fill", 2), '{"id":2}', int("4000001"), False)
    run.append(("fill", 3), '{"id":3}', None, False)
    assert run[0].account_id is run[1].account_id
    run.set_account(2, int("4000001"))
    assert run[2].account_id is run[0].account_id


def test_segments_read_as_one_sequence_across_their_boundaries() -> None:
    """Lists and runs chained: length, every index and every slice (across segment ends too) equal the joined
    list's; a list given is copied, so the caller changing it later changes nothing."""
    first, one = run_of(range(0, 7))
    given = [live(100), live(101)]
    second, two = run_of(range(200, 205), updated=True)
    changes = Changes()
    for segment in (first, given, [live(102)], second, [], [live(103)]):
        changes.extend(segment)
    expected = [*one, live(100), live(101), live(102), *two, live(103)]
    given.append(live(999))
    assert len(changes) == len(expected) == 16
    assert list(changes) == expected and changes == expected
    for start in range(-17, 18):
        assert changes[start:] == expected[start:]
        for stop in range(-17, 18):
            assert changes[start:stop] == expected[start:stop]
    assert [changes[i] for i in range(-16, 16)] == [expected[i] for i in range(-16, 16)]
    assert changes[::2] == expected[::2]
    assert Changes(changes) == expected  # another sequence's segments are adopted in order
    with pytest.raises(IndexError):
        changes[16]
    assert Changes() == [] and not Changes()


def test_a_run_holds_a_fraction_of_what_its_change_objects_take() -> None:
    """100,000 snapshot changes: the run takes under a quarter of the memory of the Change objects it replaces
    (the texts, which the mirror holds either way, made beforehand and not counted)."""
    size = 100_000
    texts = [order(n, 4_000_000 + n % 50) for n in range(size)]
    keys = [("order", n) for n in range(size)]
    # int() of the digits makes a new int per change, as parsing each entity does.
    digits = [str(4_000_000 + n % 50) for n in range(size)]

    def measured(build: object) -> int:
        tracemalloc.start()
        try:
            held = build()  # type: ignore[operator]
            used = tracemalloc.get_traced_memory()[0]
            del held
            return used
        finally:
            tracemalloc.stop()

    def as_run() -> SnapshotRun:
        run = SnapshotRun("snapshot", T)
        for key, text, account in zip(keys, texts, digits, strict=True):
            run.append(key, text, int(account), False)
        return run

    def as_changes() -> list[Change]:
        return [Change("snapshot", "order", "Created", key[1], UNPARSED, T, int(account), text)
                for key, text, account in zip(keys, texts, digits, strict=True)]

    assert as_run()[5].account_id == as_changes()[5].account_id == 4_000_005
    run_bytes, change_bytes = measured(as_run), measured(as_changes)
    assert run_bytes * 4 < change_bytes, (run_bytes, change_bytes)


def test_sqlite_writes_segments_piece_by_piece_as_it_would_the_list(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of runs and lists written in pieces that cut across segments logs every change in order and leaves
    each key in its last state, exactly as the joined list does."""
    monkeypatch.setattr(sqlite_module, "WRITE_PIECE", 3)
    first, one = run_of(range(0, 5))
    second, two = run_of(range(3, 8), updated=True)
    deletion = Change("live", "order", "Deleted", 1, {"id": 1}, T, 7)
    changes = Changes()
    for segment in (first, [live(0), deletion], second):
        changes.extend(segment)
    expected = [*one, live(0), deletion, *two]

    def written(batch: object, where: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
        where.mkdir()
        with SqliteSink(str(where), remainder=0, divisor=1, checkpoints=None) as sink:
            sink.write(batch)  # type: ignore[arg-type]
            conn = sink._connection()
            log = conn.execute("SELECT origin, event_type, id, account_id, data FROM events ORDER BY seq").fetchall()
            state = conn.execute("SELECT entity_type, id, account_id, data FROM entities ORDER BY id").fetchall()
        return log, state

    assert written(changes, tmp_path / "segments") == written(expected, tmp_path / "list")
    log, state = written(Changes(expected), tmp_path / "again")
    assert len(log) == 12 and [row[1] for row in state] == [0, 2, 3, 4, 5, 6, 7]


def test_a_snapshot_of_texts_and_objects_mixed_keeps_its_order() -> None:
    """diff_snapshot cuts its run at each entity given as an object, so the changes come in the snapshot's order,
    each with its own entity, text and account (a fill's through its order, given later), as the same snapshot
    given all as objects yields."""
    from shardsync.mirror import Mirror

    entities = {("fill", 1): {"id": 1, "orderId": 50}, ("order", 7): {"id": 7, "accountId": 3},
                ("order", 8): {"id": 8, "accountId": 4}, ("order", 50): {"id": 50, "accountId": 9},
                ("position", 2): {"id": 2, "accountId": 3}}
    mixed = {key: (entity if key[1] in (7, 2) else orjson.dumps(entity).decode()) for key, entity in entities.items()}
    ours = Mirror().diff_snapshot(mixed, types=None, received_at=T)
    reference = Mirror().diff_snapshot(entities, types=None, received_at=T)
    assert isinstance(ours, Changes)
    assert [(c.entity_type, c.id, c.event_type, c.entity, c.data, c.account_id) for c in ours] == \
        [(c.entity_type, c.id, c.event_type, c.entity, c.data, c.account_id) for c in reference]
    assert [c.account_id for c in ours] == [9, 3, 4, 9, 3]
