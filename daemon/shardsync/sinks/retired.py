"""Moving a retired shard's files out of the state directory, so nothing mistakes them for current data."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

from shardsync.sinks.base import DIR_MODE, SinkError

RETIRED_DIR = "retired"


def move_to_retired(sink: str, directory: str, names: Sequence[str]) -> str | None:
    """Move the existing files among ``names`` into ``<directory>/retired/``; returns where they went.

    A shard retired before (the divisor went 4 -> 8 -> 4 -> 8) keeps its
    earlier files: the new group goes into ``retired/N/`` with the first free
    N, so a group never mixes two retirements.  The shard's writer lock must
    be held (or the shard known dead) while this runs.
    """
    present = [name for name in names if os.path.lexists(os.path.join(directory, name))]
    if not present:
        return None
    target = os.path.join(directory, RETIRED_DIR)
    n = 0
    while any(os.path.lexists(os.path.join(target, name)) for name in present):
        n += 1
        target = os.path.join(directory, RETIRED_DIR, str(n))
    try:
        os.makedirs(target, mode=DIR_MODE, exist_ok=True)
        for name in present:
            os.rename(os.path.join(directory, name), os.path.join(target, name))
        for synced in (target, directory):
            sync_directory(synced)
    except OSError as exc:
        raise SinkError(f"{sink} sink: cannot move {', '.join(present)} to {target}: {exc.strerror}") from exc
    return target


def sync_directory(path: str) -> None:
    """fsync a directory so renames and creations in it survive power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
            os.fsync(fd)
    finally:
        os.close(fd)
