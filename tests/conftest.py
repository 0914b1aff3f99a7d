"""Fixtures shared by every test directory (simulator fixtures carry the ``sim_`` prefix)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pgserver import pg_dsn, pg_server
from shardsync.simulator import Simulator

# PostgreSQL fixtures for every test directory (see tests/pgserver.py).
__all__ = ["pg_dsn", "pg_server"]


@pytest.fixture
def sim_factory() -> Iterator[Callable[..., Simulator]]:
    """Start simulators with option overrides (quiet generator unless asked); all stop at teardown."""
    started: list[Simulator] = []

    def make(**overrides: Any) -> Simulator:
        overrides.setdefault("event_rate", 0)
        overrides.setdefault("accounts", 12)
        overrides.setdefault("users", 4)
        sim = Simulator(**overrides).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def sim_server(sim_factory: Callable[..., Simulator]) -> Simulator:
    """A default simulator with the generator quiet, so snapshots can be compared with the truth."""
    return sim_factory()
