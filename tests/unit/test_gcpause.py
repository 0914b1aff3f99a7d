"""The collector around bulk snapshots: off while one is built, its result frozen, a full collection now and then."""

from __future__ import annotations

import gc

import pytest

from shardsync.worker.gcpause import FULL_EVERY, SnapshotGc


class Recorder:
    """The gc calls SnapshotGc makes, in order, with the enabled flag they imply."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.enabled = True

    def disable(self) -> None:
        self.calls.append("disable")
        self.enabled = False

    def enable(self) -> None:
        self.calls.append("enable")
        self.enabled = True

    def isenabled(self) -> bool:
        return self.enabled

    def freeze(self) -> None:
        self.calls.append("freeze")

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")

    def collect(self) -> int:
        self.calls.append("collect")
        return 0


def test_a_snapshot_runs_without_collection_and_its_result_is_frozen() -> None:
    """pause disables (after a full collection the first time), resume freezes then enables; both idempotent."""
    recorder = Recorder()
    snapshots = SnapshotGc(recorder)
    snapshots.pause()
    snapshots.pause()  # a penalty's resend: still one pause
    assert recorder.calls == ["unfreeze", "collect", "disable"] and snapshots.paused
    snapshots.resume()
    snapshots.resume(freeze=False)  # the session's end after live: nothing more
    assert recorder.calls[3:] == ["freeze", "enable"] and recorder.enabled and not snapshots.paused


def test_an_abandoned_snapshot_is_not_frozen_and_a_full_collection_comes_every_full_every() -> None:
    """A snapshot the session gave up leaves nothing frozen; unfreeze+collect runs on the 1st, 17th... pause."""
    recorder = Recorder()
    snapshots = SnapshotGc(recorder)
    snapshots.pause()
    snapshots.resume(freeze=False)
    assert recorder.calls == ["unfreeze", "collect", "disable", "enable"]
    full = []
    for n in range(1, 2 * FULL_EVERY + 1):
        recorder.calls.clear()
        snapshots.pause()
        snapshots.resume()
        if "collect" in recorder.calls:
            full.append(n)
    assert full == [FULL_EVERY, 2 * FULL_EVERY]


def test_collection_switched_off_by_someone_else_stays_theirs() -> None:
    """When gc is already disabled, pause does nothing and resume does not switch it on."""
    recorder = Recorder()
    recorder.enabled = False
    snapshots = SnapshotGc(recorder)
    snapshots.pause()
    snapshots.resume()
    assert recorder.calls == [] and not recorder.enabled


def test_bulk_freezes_only_what_a_successful_block_built() -> None:
    """bulk() pauses for its block; a block that raises resumes without freezing and the error goes on."""
    recorder = Recorder()
    snapshots = SnapshotGc(recorder)
    with pytest.raises(RuntimeError), snapshots.bulk():
        raise RuntimeError("sink unreadable")
    assert recorder.calls[-2:] == ["disable", "enable"]
    with snapshots.bulk():
        assert not recorder.enabled
    assert recorder.calls[-3:] == ["disable", "freeze", "enable"]


def test_the_real_collector_is_off_during_the_snapshot_and_its_objects_frozen_after() -> None:
    """Against the gc module itself: disabled while paused, objects alive at resume are in the permanent generation."""
    if not gc.isenabled():
        pytest.skip("gc disabled by the test run")
    snapshots = SnapshotGc()
    try:
        snapshots.pause()
        assert not gc.isenabled()
        built = [{"id": n} for n in range(1000)]
        snapshots.resume()
        assert gc.isenabled() and gc.get_freeze_count() >= len(built)
    finally:
        gc.unfreeze()
        gc.enable()
