"""Fixtures for system tests: simulators (``sim_`` prefix) and daemons that never outlive their test."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Daemon, children, proc_state

from shardsync.simulator import Simulator


def _is_worker(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"shardsync: shard")
    except OSError:
        return False


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start `shardsync run` daemons (``Daemon(...)`` arguments); at teardown each is stopped and any worker
    left behind is SIGKILLed, so nothing leaks into the next test."""
    daemons: list[Daemon] = []

    def make(sim: Simulator, *, name: str = "daemon", **kwargs: Any) -> Daemon:
        home = tmp_path / name
        home.mkdir()
        daemon = Daemon(home, sim, **kwargs).start()
        daemons.append(daemon)
        return daemon

    yield make
    for daemon in daemons:
        workers: set[int] = set()
        if daemon.proc is not None and daemon.proc.poll() is None:
            workers.update(children(daemon.pid))
            with contextlib.suppress(AssertionError):
                daemon.stop()
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(5)
        with contextlib.suppress(OSError, ValueError):
            daemon.stop()
        for pid in workers:
            if proc_state(pid) not in (None, "Z") and _is_worker(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
