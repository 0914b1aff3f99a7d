"""The campaign in CI: a fixed pair of seeds that together carry out every fault kind once or more."""

from __future__ import annotations

from pathlib import Path

import pytest

from .catalogue import default_kinds
from .runner import run
from .schedule import make

#: Together these two seeds draw every kind (no quota shutdown: each would add its 60 s backoff).
CI_SEEDS = (396, 2821)


def test_ci_seeds_cover_every_kind() -> None:
    """The CI pair still carries out every kind of the catalogue (a new kind needs a new CI seed)."""
    drawn = {fault.kind for seed in CI_SEEDS for fault in make(seed).faults}
    assert drawn == set(default_kinds())


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", CI_SEEDS)
def test_seed_passes_the_oracle(seed: int, tmp_path: Path) -> None:
    """The real daemon, faulted by this seed's schedule, converges and passes every check of the oracle."""
    result = run(make(seed), base=tmp_path)
    assert result.ok, result.report()
    assert len(result.journal) == len(make(seed).faults)
