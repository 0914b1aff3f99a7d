"""The campaign's schedules: deterministic per seed, inside the catalogue, spaced so no shard is ever parked."""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest

from .catalogue import KINDS, default_kinds
from .faults import CARRY_OUT
from .schedule import DIVISOR, FAULTS, GAP, KILL_SPACING, make


def test_same_seed_same_schedule_and_seeds_differ() -> None:
    """A seed fixes setup, kinds, targets, parameters and gaps; other seeds give other schedules."""
    assert make(7) == make(7)
    assert make(7, ["drop", "sigkill"]) == make(7, ["drop", "sigkill"])
    assert len({repr(make(seed)) for seed in range(1, 30)}) == 29


def test_schedules_stay_inside_the_catalogue() -> None:
    """6-15 faults per seed, gaps in range, only the chosen kinds, aimed kinds aimed at real shards."""
    for seed in range(1, 300):
        schedule = make(seed)
        assert FAULTS[0] <= len(schedule.faults) <= FAULTS[1]
        for index, fault in enumerate(schedule.faults):
            assert fault.index == index
            assert fault.kind in default_kinds()
            assert GAP[0] <= fault.gap <= GAP[1]
            if KINDS[fault.kind].aimed:
                assert fault.targets and all(0 <= t < DIVISOR for t in fault.targets)
                assert len(set(fault.targets)) == len(fault.targets)
            else:
                assert fault.targets == ()


def test_kills_are_spaced_so_no_shard_is_ever_parked() -> None:
    """Faults killing one shard's worker are KILL_SPACING s of gaps apart, and so are two sigkill_twice."""
    for seed in range(1, 500):
        elapsed = 0.0
        kills: dict[int, list[float]] = defaultdict(list)
        doubles: list[float] = []
        for fault in make(seed).faults:
            elapsed += fault.gap
            if KINDS[fault.kind].kills:
                for target in fault.targets:
                    kills[target].append(elapsed)
            if fault.kind == "sigkill_twice":
                doubles.append(elapsed)
        for times in [*kills.values(), doubles]:
            assert all(b - a >= KILL_SPACING - 1e-9 for a, b in itertools.pairwise(times)), (seed, times)


def test_every_kind_is_drawn_and_parameters_cover_their_choices() -> None:
    """Over 300 seeds every default kind occurs, each shutdown reason and split end marker too."""
    seen: set[str] = set()
    reasons: set[str] = set()
    ends: set[str] = set()
    for seed in range(1, 300):
        for fault in make(seed).faults:
            seen.add(fault.kind)
            if fault.kind == "shutdown":
                reasons.add(fault.params["reason"])
            if fault.kind == "split_spaced":
                ends.add(fault.params["end"])
                # Generated props are only interleaved into back-to-back parts (see schedule._params).
                assert fault.params["delay"] == 0.0 or fault.params["interleave"] == 0
    assert seen == set(default_kinds())
    assert reasons == {"Maintenance", "ConnectionQuotaReached", "IPQuotaReached"}
    assert ends == {"none", "empty", "flag"}


def test_every_kind_is_drawn_by_default() -> None:
    """No kind of the catalogue is left out of a default campaign."""
    assert set(default_kinds()) == set(KINDS)


def test_catalogue_and_executors_name_the_same_kinds() -> None:
    """Every kind has exactly one executor."""
    assert set(CARRY_OUT) == set(KINDS)


def test_replay_command_names_the_seed_and_custom_kinds() -> None:
    """The replay line reruns the same schedule."""
    assert make(42).replay() == "python -m tests.chaos --seed 42"
    assert make(42, ["drop", "reset"]).replay() == "python -m tests.chaos --seed 42 --kinds drop,reset"


def test_unknown_or_no_kinds_are_refused() -> None:
    """A typo in --kinds is an error, not an empty campaign."""
    with pytest.raises(ValueError, match="unknown fault kinds: nope"):
        make(1, ["drop", "nope"])
    with pytest.raises(ValueError, match="no fault kinds"):
        make(1, [])
