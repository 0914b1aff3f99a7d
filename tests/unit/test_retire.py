"""Retiring shards the configuration no longer owns: which (pure), and when, by the real Arbiter in-process."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import structlog
from arbiter_fakes import Parent, config_text, exited_with

from shardsync.config import load_config
from shardsync.ipc import ShardState
from shardsync.sinks import open_sink
from shardsync.supervisor.retire import RetireJob, removed_by_reload, stale_files, still_stale


def settings(tmp_path: Path, name: str = "c.toml", **sections: dict[str, Any]) -> Any:
    path = tmp_path / name
    path.write_text(config_text(sections))
    return load_config(str(path))


def test_stale_files_are_other_divisors_and_remainders_this_host_does_not_run(tmp_path: Path) -> None:
    """In the state directory: every shard file of another divisor, or of a remainder not in the config; never
    an owned one, never a file that is not a shard's."""
    s = settings(tmp_path, sync={"divisor": 4, "remainders": [0, 1]}, sink={"kind": "sqlite", "path": "/st"})
    names = ["shard-000-of-004.sqlite3", "shard-000-of-004.sqlite3-wal", "shard-001-of-004.sqlite3",
             "shard-002-of-004.sqlite3", "shard-002-of-004.sqlite3.lock", "shard-000-of-002.sqlite3",
             "shard-001-of-002.jsonl", "daemon-status.json", "retired", "shard-009-of-004.sqlite3", "notes.txt"]
    assert stale_files(names, s) == [
        RetireJob("sqlite", "/st", "", 0, 2), RetireJob("sqlite", "/st", "", 1, 2),
        RetireJob("sqlite", "/st", "", 2, 4),
    ]
    pg = settings(tmp_path, sink={"kind": "postgres", "dsn": "dbname=x"})
    assert stale_files(names, pg) == []


def test_postgres_retires_only_what_this_host_ran_before_a_reload(tmp_path: Path) -> None:
    """A reload dropping remainder 3 (or changing the divisor) retires exactly this host's old shards, in the old
    database; shards it never ran are left to their hosts."""
    pg = {"kind": "postgres", "dsn": "dbname=x"}
    old = settings(tmp_path, "a.toml", sync={"divisor": 8, "remainders": [2, 3]}, sink=pg)
    new = settings(tmp_path, "b.toml", sync={"divisor": 8, "remainders": [2]}, sink=pg)
    assert removed_by_reload(old, new) == [RetireJob("postgres", "", "dbname=x", 3, 8)]
    split = settings(tmp_path, "c.toml", sync={"divisor": 16, "remainders": [2, 3, 10, 11]}, sink=pg)
    assert removed_by_reload(old, split) == [RetireJob("postgres", "", "dbname=x", 2, 8),
                                             RetireJob("postgres", "", "dbname=x", 3, 8)]
    files = settings(tmp_path, "d.toml", sync={"divisor": 8, "remainders": [2]})
    assert removed_by_reload(files, new) == []


def test_a_shard_taken_back_by_a_later_reload_is_never_retired(tmp_path: Path) -> None:
    """still_stale drops the pending jobs the current configuration owns again."""
    back = settings(tmp_path, sync={"divisor": 4, "remainders": "all"}, sink={"kind": "sqlite", "path": "/st"})
    jobs = [RetireJob("sqlite", "/st", "", 3, 4), RetireJob("sqlite", "/st", "", 3, 8),
            RetireJob("sqlite", "/elsewhere", "", 3, 4)]
    assert still_stale(jobs, back) == [RetireJob("sqlite", "/elsewhere", "", 3, 4),
                                       RetireJob("sqlite", "/st", "", 3, 8)]


def make_shard_file(state: Path, remainder: int, divisor: int) -> Path:
    sink = open_sink("sqlite", path=str(state), remainder=remainder, divisor=divisor)
    sink.close()
    return state / f"shard-{remainder:03d}-of-{divisor:03d}.sqlite3"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o750)
    return path


def test_at_start_files_of_another_divisor_are_retired_once_every_shard_is_live(tmp_path: Path,
                                                                                  state: Path) -> None:
    """Old divisor-2 files stay while the divisor-4 shards are not all live; then they move to retired/."""
    old = [make_shard_file(state, r, 2) for r in (0, 1)]
    parent = Parent(tmp_path / "shardsync.toml", {"sink": {"path": str(state)}})
    try:
        parent.step(4)
        parent.log_in()
        parent.all_live([0, 1, 2])
        parent.step(3)
        assert parent.fakes.retired == [] and all(p.exists() for p in old)
        with structlog.testing.capture_logs() as logs:
            parent.all_live()
            parent.step(3)
        assert [sorted((j.remainder, j.divisor) for j in jobs) for jobs in parent.fakes.retired] == [[(0, 2), (1, 2)]]
        assert not any(p.exists() for p in old)
        assert all((state / "retired" / p.name).exists() for p in old)
        assert sorted(line["shard"] for line in logs if line["event"] == "shard_retired") == [0, 1]
        parent.step(3)
        assert len(parent.fakes.retired) == 1, "retired once"
    finally:
        parent.close()


def test_a_remainder_removed_by_sighup_is_retired_after_its_worker_is_gone_and_the_rest_live(
    tmp_path: Path, state: Path
) -> None:
    """SIGHUP dropping remainder 3: its file is retired only once its worker exited and 0-2 are live."""
    parent = Parent(tmp_path / "shardsync.toml", {"sink": {"path": str(state)}})
    try:
        parent.step(4)
        parent.log_in()
        parent.all_live()
        mine = make_shard_file(state, 3, 4)  # what worker 3 wrote
        for r in (0, 1, 2):
            make_shard_file(state, r, 4)
        parent.reload({"sink": {"path": str(state)}, "sync": {"remainders": [0, 1, 2]}})
        parent.all_live([0, 1, 2])
        assert parent.fakes.retired == [], "its worker still stops"
        leaving = parent.fakes.worker(3)
        assert signal.SIGTERM in leaving.signals
        leaving.exit(exited_with(0))
        parent.step(3)
        assert [[(j.remainder, j.divisor) for j in jobs] for jobs in parent.fakes.retired] == [[(3, 4)]]
        assert not mine.exists() and (state / "retired" / mine.name).exists()
        assert all((state / f"shard-{r:03d}-of-004.sqlite3").exists() for r in (0, 1, 2))
    finally:
        parent.close()


def test_a_shard_file_still_locked_is_reported_not_retired(tmp_path: Path, state: Path) -> None:
    """A writer still holding a stale file's lock (another process): retire_failed, the file stays, the daemon
    runs on."""
    held = open_sink("sqlite", path=str(state), remainder=1, divisor=8)
    try:
        parent = Parent(tmp_path / "shardsync.toml", {"sink": {"path": str(state)}, "sync": {"divisor": 1}})
        try:
            parent.step(4)
            parent.log_in()
            with structlog.testing.capture_logs() as logs:
                parent.all_live()
                parent.step(3)
            assert [line for line in logs if line["event"] == "retire_failed"]
            assert (state / "shard-001-of-008.sqlite3").exists()
            assert parent.arbiter.shards[0].state is ShardState.LIVE
        finally:
            parent.close()
    finally:
        held.close()
