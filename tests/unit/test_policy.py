"""Unit tests for the restart policy: backoff, stable reset, parking, global breaker."""

from __future__ import annotations

import heapq
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardsync.backoff import Backoff
from shardsync.config import SupervisorSettings
from shardsync.supervisor.policy import (
    Decision,
    Escalate,
    Park,
    Restart,
    RestartPolicy,
)


def make(seed: int = 0, **overrides: Any) -> RestartPolicy:
    kw: dict[str, Any] = {
        "backoff_initial": 1.0,
        "backoff_max": 60.0,
        "stable_after": 60.0,
        "intensity": 10,
        "period": 300.0,
        "rng": random.Random(seed),
    }
    kw.update(overrides)
    return RestartPolicy(**kw)


def crash(policy: RestartPolicy, remainder: int, started: float, ran: float) -> Decision | None:
    """Start ``remainder`` at ``started`` and let it fail ``ran`` seconds later."""
    policy.on_start(remainder, started)
    return policy.on_exit(remainder, started + ran, expected=False)


def fail_twice(policy: RestartPolicy, remainder: int, now: float = 0.0) -> Decision | None:
    """Two quick failures: enough to count ``remainder`` as failing."""
    first = crash(policy, remainder, now, 1.0)
    assert isinstance(first, Restart)
    return crash(policy, remainder, first.at, 1.0)


def crash_loop(policy: RestartPolicy, remainder: int, *, start: float, ran: float, times: int) -> list[Decision]:
    """Crash ``remainder`` ``times`` times, restarting it when each decision says."""
    decisions: list[Decision] = []
    at = start
    for _ in range(times):
        decision = crash(policy, remainder, at, ran)
        assert decision is not None
        decisions.append(decision)
        if isinstance(decision, Escalate):
            break
        at = decision.at if isinstance(decision, Restart) else decision.until
    return decisions


# -- rule 1: immediate first restart, then capped exponential backoff ----------------


def test_first_crash_restarts_immediately() -> None:
    """A shard's first failure is restarted at the exit time itself, attempt 1."""
    policy = make()
    assert crash(policy, 3, 100.0, 5.0) == Restart(at=105.0, delay=0.0, attempt=1)


def test_backoff_grows_exponentially_with_jitter_and_caps() -> None:
    """Attempt n >= 2 waits within [0.5, 1) x min(max, initial * 2**(n-2)), never above backoff_max."""
    policy = make(backoff_initial=1.0, backoff_max=8.0, intensity=1000, period=1e9)
    decisions = crash_loop(policy, 0, start=0.0, ran=1.0, times=12)
    assert [d.attempt for d in decisions if isinstance(d, Restart)] == list(range(1, 13))
    for decision in decisions[1:]:
        assert isinstance(decision, Restart)
        ceiling = min(8.0, 2.0 ** (decision.attempt - 2))
        assert 0.5 * ceiling <= decision.delay < ceiling <= 8.0
    assert max(d.delay for d in decisions if isinstance(d, Restart)) > 4.0


def test_backoff_uses_the_shared_backoff_curve() -> None:
    """The policy's delays are exactly Backoff.delay(n - 1) from an identically seeded rng."""
    policy = make(seed=42, backoff_initial=0.5, backoff_max=30.0, intensity=1000, period=1e9)
    reference = Backoff(0.5, 30.0, random.Random(42))
    decisions = crash_loop(policy, 0, start=0.0, ran=0.1, times=10)
    assert [d.delay for d in decisions if isinstance(d, Restart)] == [0.0] + [reference.delay(n) for n in range(1, 10)]


# -- rule 2: stable reset --------------------------------------------------------------


def test_stable_run_resets_the_attempt_counter() -> None:
    """A worker that ran stable_after seconds is restarted immediately again, as attempt 1."""
    policy = make(stable_after=60.0)
    last = crash_loop(policy, 0, start=0.0, ran=1.0, times=4)[-1]
    assert isinstance(last, Restart)
    assert last.attempt == 4
    assert crash(policy, 0, last.at, 60.0) == Restart(at=last.at + 60.0, delay=0.0, attempt=1)


def test_run_short_of_stable_keeps_counting() -> None:
    """A worker that ran just under stable_after is still a quick crash: the attempt counter grows."""
    policy = make(stable_after=60.0)
    first = crash(policy, 0, 0.0, 59.9)
    assert isinstance(first, Restart)
    second = crash(policy, 0, first.at, 59.9)
    assert isinstance(second, Restart)
    assert second.attempt == 2
    assert second.delay > 0


# -- rule 3: intensity / period and parking --------------------------------------------


def test_parks_after_intensity_plus_one_failures_within_period() -> None:
    """`intensity` failures in the window restart; the next one parks until now + backoff_max."""
    policy = make(intensity=3, period=100.0, backoff_max=20.0)
    decisions = crash_loop(policy, 0, start=0.0, ran=1.0, times=4)
    assert [type(d) for d in decisions] == [Restart, Restart, Restart, Park]
    last_restart, park = decisions[2], decisions[3]
    assert isinstance(last_restart, Restart)
    assert isinstance(park, Park)
    assert park.until == last_restart.at + 1.0 + 20.0
    assert "intensity 3" in park.reason
    assert policy.parked() == {0}


def test_failures_spread_beyond_period_never_park() -> None:
    """Failures more than period / intensity apart never fill the window, however many there are."""
    policy = make(intensity=3, period=100.0, backoff_max=30.0, stable_after=1000.0)
    at = 0.0
    for k in range(1, 51):
        policy.on_start(0, at)
        decision = policy.on_exit(0, 35.0 * k, expected=False)
        assert isinstance(decision, Restart)
        at = decision.at
    assert policy.parked() == set()


def test_window_is_half_open() -> None:
    """A failure exactly `period` after another is outside its window."""
    policy = make(intensity=1, period=10.0, stable_after=1000.0)
    assert isinstance(crash(policy, 0, 0.0, 0.0), Restart)
    assert isinstance(crash(policy, 0, 5.0, 5.0), Restart)
    assert isinstance(crash(policy, 0, 10.0, 9.9), Park)


def test_parked_shard_is_reparked_when_its_retry_crashes_quickly() -> None:
    """After the retry at `until`, a crash before stable_after parks again, even once the window has aged out."""
    policy = make(intensity=2, period=30.0, backoff_max=60.0, stable_after=10.0)
    park = crash_loop(policy, 0, start=0.0, ran=1.0, times=3)[-1]
    assert isinstance(park, Park)
    assert policy.parked() == {0}
    policy.on_start(0, park.until)
    assert policy.parked() == set()
    again = policy.on_exit(0, park.until + 9.0, expected=False)
    assert isinstance(again, Park)
    assert again.until == park.until + 9.0 + 60.0
    assert policy.parked() == {0}


def test_parked_shard_is_unparked_after_a_stable_run() -> None:
    """A retried shard that runs stable_after clears its history: immediate restart, then plain backoff."""
    policy = make(intensity=2, period=1000.0, backoff_max=60.0, stable_after=10.0)
    park = crash_loop(policy, 0, start=0.0, ran=1.0, times=3)[-1]
    assert isinstance(park, Park)
    after = crash(policy, 0, park.until, 10.0)
    assert after == Restart(at=park.until + 10.0, delay=0.0, attempt=1)
    assert policy.parked() == set()
    assert policy.failing(park.until + 10.0) == set()
    follow = crash(policy, 0, after.at, 1.0)
    assert isinstance(follow, Restart)
    assert follow.attempt == 2


def test_probation_shard_that_runs_long_stops_counting_as_failing() -> None:
    """A retried parked shard is failing until it has run stable_after, then it is not, with no exit needed."""
    policy = make(intensity=1, period=5.0, backoff_max=60.0, stable_after=10.0)
    park = crash_loop(policy, 0, start=0.0, ran=1.0, times=2)[-1]
    assert isinstance(park, Park)
    policy.on_start(0, park.until)
    assert policy.failing(park.until + 9.0) == {0}
    assert policy.failing(park.until + 10.0) == set()


# -- expected exits ----------------------------------------------------------------------


def test_expected_exits_record_nothing() -> None:
    """Exits the parent caused return None and leave attempts, window and breaker untouched."""
    policy = make(intensity=1, period=1000.0)
    policy.set_shards(range(2))
    for k in range(50):
        for remainder in (0, 1):
            policy.on_start(remainder, float(k))
            assert policy.on_exit(remainder, k + 0.5, expected=True) is None
    assert policy.failing(50.0) == set()
    assert crash(policy, 0, 50.0, 0.1) == Restart(at=50.1, delay=0.0, attempt=1)


# -- rule 4: global breaker ----------------------------------------------------------


def test_one_of_sixteen_crash_looping_never_escalates() -> None:
    """One shard looping through restarts, parks and re-parks never trips the breaker of sixteen."""
    policy = make(intensity=3, period=60.0, backoff_max=20.0)
    policy.set_shards(range(16))
    decisions = crash_loop(policy, 5, start=0.0, ran=0.5, times=200)
    assert not any(isinstance(d, Escalate) for d in decisions)
    last = decisions[-1]
    assert isinstance(last, Park)
    assert policy.failing(last.until) == {5}


def test_nine_of_sixteen_failing_escalates() -> None:
    """The ninth of sixteen shards to fail is more than half: Escalate."""
    policy = make()
    policy.set_shards(range(16))
    for remainder in range(8):
        assert isinstance(fail_twice(policy, remainder), Restart)
    decision = fail_twice(policy, 8)
    assert isinstance(decision, Escalate)
    assert "9 of 16" in decision.reason


def test_eight_of_sixteen_failing_does_not_escalate() -> None:
    """Exactly half failing is not most: every decision is still a per-shard one."""
    policy = make()
    policy.set_shards(range(16))
    for remainder in range(8):
        assert isinstance(fail_twice(policy, remainder), Restart)
    assert len(policy.failing(10.0)) == 8


def test_single_shard_never_escalates() -> None:
    """A one-shard deployment crash-looping parks and re-parks but never trips the breaker."""
    policy = make(intensity=2, period=30.0, backoff_max=5.0)
    policy.set_shards([0])
    decisions = crash_loop(policy, 0, start=0.0, ran=0.1, times=200)
    assert not any(isinstance(d, Escalate) for d in decisions)
    assert isinstance(decisions[-1], Park)


@pytest.mark.parametrize(("shards", "escalates"), [(2, True), (3, True), (4, False)])
def test_two_failing_escalate_only_when_most(shards: int, escalates: bool) -> None:
    """Two failing shards are most of two or three, but only half of four."""
    policy = make()
    policy.set_shards(range(shards))
    assert isinstance(fail_twice(policy, 0), Restart)
    assert isinstance(fail_twice(policy, 1), Escalate) is escalates


def test_single_failure_per_shard_is_not_failing() -> None:
    """Every shard crashing once (e.g. one network blip) is restarted, not escalated."""
    policy = make()
    policy.set_shards(range(16))
    for remainder in range(16):
        assert crash(policy, remainder, 0.0, 1.0) == Restart(at=1.0, delay=0.0, attempt=1)
    assert policy.failing(1.0) == set()


def test_failures_age_out_of_the_breaker_but_parks_do_not() -> None:
    """Two failures stop counting after `period`; a parked shard counts until it is retried."""
    policy = make(intensity=1, period=10.0, backoff_max=100.0)
    policy.set_shards(range(16))
    assert isinstance(fail_twice(policy, 1), Park)
    policy.on_start(2, 0.0)
    assert isinstance(policy.on_exit(2, 1.0, expected=False), Restart)
    policy.on_start(2, 1.0)
    assert isinstance(policy.on_exit(2, 12.0, expected=False), Restart)
    assert policy.failing(2.0) == {1}
    assert policy.failing(50.0) == {1}
    assert policy.parked() == {1}


def test_forget_removes_a_shard_from_the_breaker() -> None:
    """A forgotten shard leaves both the failing count and the denominator."""
    policy = make()
    policy.set_shards(range(16))
    for remainder in range(8):
        fail_twice(policy, remainder)
    policy.forget(0)
    policy.forget(15)
    assert policy.failing(5.0) == set(range(1, 8))
    decision = fail_twice(policy, 8)
    assert isinstance(decision, Escalate)
    assert "8 of 14" in decision.reason


def test_set_shards_limits_the_breaker_to_configured_shards() -> None:
    """Shards outside the configured set are not counted as failing."""
    policy = make()
    policy.set_shards(range(4))
    fail_twice(policy, 0)
    policy.set_shards(range(1, 4))
    assert policy.failing(5.0) == set()


# -- rule 5: determinism ---------------------------------------------------------------


def scripted_run(seed: int) -> list[Decision]:
    policy = make(seed=seed, intensity=4, period=50.0, backoff_max=10.0)
    policy.set_shards(range(4))
    out: list[Decision] = []
    for remainder in range(3):
        out += crash_loop(policy, remainder, start=remainder * 100.0, ran=0.3, times=12)
    return out


def test_same_seed_same_decisions() -> None:
    """Identical times and seed give identical decisions; another seed gives other jitter."""
    assert scripted_run(7) == scripted_run(7)
    assert scripted_run(7) != scripted_run(8)


def test_from_settings_reads_the_supervisor_section() -> None:
    """from_settings takes backoff, stable period and intensity/period from SupervisorSettings."""
    s = SupervisorSettings(backoff_initial=2.0, backoff_max=4.0, stable_after=9.0, intensity=1, period=7.0)
    policy = RestartPolicy.from_settings(s, random.Random(0))
    assert (policy.backoff_max, policy.stable_after, policy.intensity, policy.period) == (4.0, 9.0, 1, 7.0)
    assert isinstance(crash(policy, 0, 0.0, 1.0), Restart)
    assert isinstance(crash(policy, 0, 1.0, 1.0), Park)


@pytest.mark.parametrize(
    "overrides",
    [{"intensity": 0}, {"period": 0.0}, {"stable_after": -1.0}, {"backoff_initial": 5.0, "backoff_max": 1.0}],
)
def test_rejects_invalid_parameters(overrides: dict[str, Any]) -> None:
    """Nonsensical limits fail at construction, not as a restart storm later."""
    with pytest.raises(ValueError, match="invalid"):
        make(**overrides)


# -- property ----------------------------------------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, Any], list[list[tuple[float, bool]]]]:
    initial = draw(st.floats(0.01, 5.0))
    params: dict[str, Any] = {
        "backoff_initial": initial,
        "backoff_max": initial * draw(st.floats(1.0, 100.0)),
        "stable_after": draw(st.floats(0.1, 200.0)),
        "intensity": draw(st.integers(1, 6)),
        "period": draw(st.floats(0.1, 500.0)),
    }
    runs = st.tuples(st.floats(0.0, 300.0), st.booleans())
    shards = draw(st.lists(st.lists(runs, max_size=40), min_size=1, max_size=4))
    return params, shards


def max_in_window(times: list[float], period: float) -> int:
    """Most of ``times`` (sorted) inside any half-open window of length ``period``."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= period:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.integers(0, 2**32))
def test_property_delays_capped_and_restarts_bounded_between_parks(
    scenario: tuple[dict[str, Any], list[list[tuple[float, bool]]]], seed: int
) -> None:
    """Any run/exit history: delays stay in [0, backoff_max], and between Parks no window of `period` holds
    more than intensity+1 restarts (and more than intensity restart decisions)."""
    params, shards = scenario
    policy = RestartPolicy(rng=random.Random(seed), **params)
    policy.set_shards(range(len(shards)))
    # Events: (time, seq, kind, shard); the loop's clock only moves forward.
    events: list[tuple[float, int, str, int]] = [(0.0, r, "start", r) for r in range(len(shards))]
    heapq.heapify(events)
    seq = len(shards)
    runs_left = [list(r) for r in shards]
    started = [0.0] * len(shards)
    # Per shard, segments between Parks of (decision time, restart time).
    segments: list[list[list[tuple[float, float]]]] = [[[]] for _ in shards]
    while events:
        now, _, kind, r = heapq.heappop(events)
        if kind == "start":
            policy.on_start(r, now)
            started[r] = now
            if runs_left[r]:
                ran, expected = runs_left[r].pop(0)
                seq += 1
                heapq.heappush(events, (now + ran, seq, "expected" if expected else "exit", r))
            continue
        decision = policy.on_exit(r, now, expected=kind == "expected")
        if decision is None:
            assert kind == "expected"
            nxt = now
        elif isinstance(decision, Escalate):
            break
        elif isinstance(decision, Park):
            assert decision.until == now + params["backoff_max"]
            segments[r].append([])
            nxt = decision.until
        else:
            assert 0.0 <= decision.delay <= params["backoff_max"]
            assert decision.at == now + decision.delay
            segments[r][-1].append((now, decision.at))
            nxt = decision.at
        seq += 1
        heapq.heappush(events, (nxt, seq, "start", r))
    for per_shard in segments:
        for segment in per_shard:
            decided = [d for d, _ in segment]
            restarted = sorted(a for _, a in segment)
            assert max_in_window(decided, params["period"]) <= params["intensity"]
            assert max_in_window(restarted, params["period"]) <= params["intensity"] + 1
