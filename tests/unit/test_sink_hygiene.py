"""Sink files against local tricks: no world-writable or foreign state directory, no planted symlink followed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shardsync.atomicfile import replace_file
from shardsync.sinks import SinkError, open_sink, shard_file_name

KINDS = ["sqlite", "jsonl"]


def opened(kind: str, path: Path) -> None:
    open_sink(kind, path=str(path), remainder=0, divisor=1).close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_world_writable_state_directory_is_refused(kind: str, tmp_path: Path) -> None:
    """mode 0777 (no sticky bit): anyone could plant files; the sink refuses it, naming the fix."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    with pytest.raises(SinkError, match=r"writable by every user.*chmod o-w"):
        opened(kind, state)
    assert not (state / shard_file_name(0, 1, "sqlite3" if kind == "sqlite" else "jsonl")).exists()


@pytest.mark.parametrize("kind", KINDS)
def test_a_sticky_shared_directory_is_accepted(kind: str, tmp_path: Path) -> None:
    """mode 1777 (like /tmp): others cannot replace our files there, so it is allowed."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o1777)
    opened(kind, state)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
@pytest.mark.parametrize("kind", KINDS)
def test_a_state_directory_owned_by_another_user_is_refused(kind: str, tmp_path: Path) -> None:
    """A directory owned by another (non-root) user is refused with its owner's uid."""
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    with pytest.raises(SinkError, match="owned by uid 65534"):
        opened(kind, state)


@pytest.mark.parametrize(("kind", "suffix"), [("sqlite", ""), ("sqlite", "-wal"), ("sqlite", "-shm"),
                                              ("sqlite", ".lock"), ("jsonl", ""), ("jsonl", ".lock")])
def test_a_planted_symlink_is_refused_and_its_target_untouched(kind: str, suffix: str, tmp_path: Path) -> None:
    """A symlink where a shard file goes is an error; the file it points at keeps its bytes (once: truncated)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    name = shard_file_name(0, 1, "sqlite3" if kind == "sqlite" else "jsonl") + suffix
    (state / name).symlink_to(victim)
    with pytest.raises(SinkError, match="symbolic link"):
        opened(kind, state)
    assert victim.read_bytes() == b"precious\n"


def test_an_atomic_replace_never_follows_a_planted_temporary(tmp_path: Path) -> None:
    """A symlink planted at the temporary name is removed, not written through."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    target = tmp_path / "status.json"
    Path(f"{target}.tmp{os.getpid()}").symlink_to(victim)
    replace_file(str(target), b'{"state":"live"}')
    assert victim.read_bytes() == b"precious\n"
    assert target.read_bytes() == b'{"state":"live"}'
    assert not target.is_symlink()


@pytest.mark.parametrize("kind", KINDS)
def test_new_sink_files_are_not_group_writable_or_world_readable(kind: str, tmp_path: Path) -> None:
    """Every file a sink creates is 0640 or stricter."""
    state = tmp_path / "state"
    opened(kind, state)
    for path in state.iterdir():
        if path.is_file():
            assert path.stat().st_mode & 0o137 == 0, (path, oct(path.stat().st_mode))
