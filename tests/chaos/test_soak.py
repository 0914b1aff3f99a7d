"""The soak's short CI variant (bench/soak.py): no fd leak and bounded RSS across reconnects and restarts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


def _soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_soak", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_worker_reconnects_and_events_keep_fds_and_rss_bounded() -> None:
    """One worker through 150 reconnects and ~15k events: the same pid throughout, no fd more, RSS growth
    within the stated bound (bench/soak.py runs 10,000 and 1M)."""
    soak = _soak()
    result = soak.worker_soak(150, 15_000, say=None)
    assert result.events >= 15_000
    assert result.within_bounds, result.report()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_parent_worker_restarts_keep_fds_and_rss_bounded() -> None:
    """The parent through 100 SIGKILLed workers: each restarted and counted, no fd more, RSS within bound."""
    soak = _soak()
    result = soak.parent_soak(100, say=None)
    assert result.within_bounds, result.report()
