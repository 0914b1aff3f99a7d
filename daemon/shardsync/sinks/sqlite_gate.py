"""The lock between a shard file's one writer and its checkpointer thread (sinks/sqlite_checkpoint.py)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from types import TracebackType


class Gate:
    """Held by the writer around each write transaction, and by the checkpointer to keep it off.

    A plain lock would let the writer, which takes it again a few
    milliseconds after releasing it, barge ahead of a checkpointer the OS
    has not woken yet, round after round; the turnstile makes the writer
    queue behind a waiting checkpointer, which so waits at most one
    transaction.
    """

    def __init__(self) -> None:
        self._turnstile = threading.Lock()
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        with self._turnstile:
            pass
        self._lock.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._lock.release()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The checkpointer's turn: no transaction runs until it ends."""
        with self._turnstile, self._lock:
            yield
