"""Unit tests for the pure API budget: pauses, parked refusals, the spread rule, releases, eviction verdicts."""

from __future__ import annotations

import pytest

from shardsync.supervisor.budget import EVICTION_WINDOW, PARK_AFTER, Budget, Park, Relogin

LOCKOUT, CAPTCHA = 3600.0, 7200.0
SYNC = "user/syncrequest"


def make() -> Budget:
    return Budget(lockout_backoff=LOCKOUT, captcha_backoff=CAPTCHA)


def refuse(budget: Budget, remainder: int, now: float, *, endpoint: str = SYNC, status: int = 400,
           text: str = "entityTypes: unknown type 'fills'") -> list[object]:
    return list(budget.rejected(remainder, endpoint, status, text, now))


# --- pauses ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("reason", "backoff"), [("ws429", LOCKOUT), ("quota", LOCKOUT), ("rest429", LOCKOUT),
                                                 ("captcha", CAPTCHA)])
def test_a_throttle_holds_every_shard_for_its_backoff(reason: str, backoff: float) -> None:
    """ws429/quota/rest429 hold every shard's permit for lockout_backoff, captcha for captcha_backoff."""
    budget = make()
    assert budget.throttled(reason, "authorize", "Too many requests", 100.0) == 100.0 + backoff
    for remainder in (0, 7, 15):
        assert budget.hold_until(remainder, 100.0) == 100.0 + backoff
        assert budget.hold_until(remainder, 100.0 + backoff - 0.01) == 100.0 + backoff
        assert budget.hold_until(remainder, 100.0 + backoff) is None
    status = budget.status(101.0)
    assert status["state"] == "paused" and status["reason"] == reason
    assert status["until_in"] == pytest.approx(backoff - 1.0)
    assert status["text"] == "authorize: Too many requests"
    assert budget.status(100.0 + backoff)["state"] == "ok"


def test_a_second_throttle_during_a_pause_extends_it_and_never_shortens_it() -> None:
    """A 429 during a pause moves its end to now + lockout_backoff; a shorter one never pulls it earlier."""
    budget = Budget(lockout_backoff=100.0, captcha_backoff=1000.0)
    budget.throttled("ws429", "authorize", "", 0.0)
    assert budget.throttled("ws429", "authorize", "", 60.0) == 160.0
    assert budget.hold_until(3, 150.0) == 160.0
    budget.throttled("captcha", "authorize", "", 70.0)
    assert budget.paused_until(70.0) == 1070.0
    assert budget.throttled("ws429", "authorize", "", 80.0) == 1070.0
    assert budget.status(80.0)["reason"] == "captcha"
    assert budget.throttles == {"ws429": 3, "captcha": 1}


# --- parking ----------------------------------------------------------------------------------------


def test_three_refusals_in_a_row_park_the_shard_with_the_servers_text() -> None:
    """The third refusal with the same endpoint and status parks the shard for lockout_backoff; the reason
    names the endpoint, status and the server's text."""
    budget = make()
    assert refuse(budget, 5, 1.0) == [] and refuse(budget, 5, 2.0) == []
    assert budget.hold_until(5, 2.0) is None
    [park] = refuse(budget, 5, 3.0)
    assert isinstance(park, Park) and park.key == 5 and park.until == 3.0 + LOCKOUT
    assert "user/syncrequest refused with 400" in park.reason and "unknown type 'fills'" in park.reason
    assert budget.hold_until(5, 3.0) == 3.0 + LOCKOUT
    assert budget.hold_until(4, 3.0) is None  # other shards are not held
    shard = budget.shard(5)
    assert shard.parked and shard.parked_reason == park.reason and shard.rejections == 3
    assert budget.status(3.0)["parked"] == [5]


def test_refusals_of_another_kind_start_the_count_over() -> None:
    """A different status or endpoint in between breaks the run: PARK_AFTER in a row of one kind parks."""
    budget = make()
    refuse(budget, 1, 1.0)
    refuse(budget, 1, 2.0)
    assert refuse(budget, 1, 3.0, status=404) == []
    assert refuse(budget, 1, 4.0, endpoint="authorize", status=500) == []
    assert refuse(budget, 1, 5.0) == []
    assert budget.shard(1).rejections == 5 and not budget.shard(1).parked


def test_once_two_shards_are_parked_for_a_refusal_the_others_park_at_their_first() -> None:
    """Sixteen shards refused alike: the first two spend PARK_AFTER attempts each, every other one only one."""
    budget = make()
    attempts = dict.fromkeys(range(16), 0)
    now = 0.0
    for remainder in range(16):
        while not budget.parked(remainder):
            now += 1.0
            attempts[remainder] += 1
            refuse(budget, remainder, now)
    assert attempts[0] == attempts[1] == PARK_AFTER
    assert all(attempts[r] == 1 for r in range(2, 16))
    assert "as 2 other shards are" in (budget.shard(2).parked_reason or "")
    assert "3 in a row" in (budget.shard(0).parked_reason or "")
    # another refusal is not a reason to park the rest at once
    assert refuse(budget, 20, now, status=403) == []


def test_a_parked_shard_is_retried_once_per_lockout_backoff() -> None:
    """At parked_until the shard may have one permit; granting it pushes the next retry lockout_backoff away."""
    budget = make()
    for t in (1.0, 2.0, 3.0):
        refuse(budget, 2, t)
    assert budget.hold_until(2, 3.0 + LOCKOUT) is None
    budget.granted(2, 3.0 + LOCKOUT)
    assert budget.hold_until(2, 3.0 + LOCKOUT + 1) == 3.0 + 2 * LOCKOUT
    [park] = refuse(budget, 2, 3.0 + LOCKOUT + 1)  # refused again: parked again at once
    assert isinstance(park, Park) and park.until == 4.0 + 2 * LOCKOUT
    assert budget.next_change(5.0 + LOCKOUT) == park.until


def test_going_live_clears_the_count_and_releases_shards_parked_for_the_same_refusal() -> None:
    """A parked shard that gets live (the cause is gone) lifts the parks of the others refused the same way,
    but not of shards parked for something else."""
    budget = make()
    for remainder in (0, 1, 2):
        for t in (1.0, 2.0, 3.0):
            refuse(budget, remainder, t)
    for t in (1.0, 2.0, 3.0):
        refuse(budget, 9, t, endpoint="authorize", status=403)
    budget.granted(0, 3.0 + LOCKOUT)
    budget.progressed(0, live=False)
    assert budget.parked(0)
    budget.progressed(0, live=True)
    assert not budget.parked(0) and not budget.parked(1) and not budget.parked(2)
    assert budget.parked(9)
    assert budget.shard(0).rejections == 3  # the count of refusals since start stays
    assert refuse(budget, 0, 10.0) == []  # and the run starts over


def test_a_reload_lifts_every_park_but_not_a_pause() -> None:
    """operator_acted() releases parked shards and their counts; the server's pause stays."""
    budget = make()
    for t in (1.0, 2.0, 3.0):
        refuse(budget, 4, t)
    budget.throttled("ws429", "authorize", "", 3.0)
    budget.operator_acted()
    assert not budget.parked(4) and budget.shard(4).parked_reason is None
    assert budget.hold_until(4, 4.0) == 3.0 + LOCKOUT
    assert refuse(budget, 4, 5.0) == []


# --- eviction -------------------------------------------------------------------------------------


def test_authorize_refused_by_two_shards_with_a_token_that_worked_means_relogin_once() -> None:
    """Two shards refused authorize (not 401) within the window, the token having worked: one Relogin and no
    park; more refusals with the same token do not ask again."""
    budget = make()
    budget.token_changed()
    budget.authorized()
    assert refuse(budget, 0, 10.0, endpoint="authorize", status=500) == []
    [relogin] = refuse(budget, 1, 10.0 + EVICTION_WINDOW - 1, endpoint="authorize", status=500)
    assert isinstance(relogin, Relogin) and "2 shards" in relogin.why
    assert refuse(budget, 2, 70.0, endpoint="authorize", status=500) == []
    assert not any(budget.parked(r) for r in (0, 1, 2))


def test_authorize_refusals_far_apart_are_no_eviction() -> None:
    """Two shards refused more than EVICTION_WINDOW apart: nothing."""
    budget = make()
    budget.token_changed()
    budget.authorized()
    refuse(budget, 0, 10.0, endpoint="authorize", status=500)
    assert refuse(budget, 1, 10.0 + EVICTION_WINDOW, endpoint="authorize", status=500) == []


def test_three_authorize_refusals_in_a_row_of_one_shard_mean_relogin_not_park() -> None:
    """A single shard refused authorize three times in a row, with a token that worked: Relogin, and its count
    starts over so the new token gets its fair attempts."""
    budget = make()
    budget.token_changed()
    budget.authorized()
    for t in (0.0, 100.0):
        assert refuse(budget, 0, t, endpoint="authorize", status=503) == []
    [relogin] = refuse(budget, 0, 200.0, endpoint="authorize", status=503)
    assert isinstance(relogin, Relogin) and "3 times in a row" in relogin.why
    assert not budget.parked(0)
    budget.token_changed()  # the new token never worked: refusals now park
    for t in (300.0, 400.0):
        assert refuse(budget, 0, t, endpoint="authorize", status=503) == []
    [park] = refuse(budget, 0, 500.0, endpoint="authorize", status=503)
    assert isinstance(park, Park)


def test_a_token_that_never_worked_is_refused_not_evicted() -> None:
    """authorize refused by every shard from the first try: no Relogin (logging in again would not help), the
    shards park."""
    budget = make()
    budget.token_changed()
    decisions = [d for r in range(4) for t in (1.0, 2.0, 3.0) for d in refuse(budget, r, t, endpoint="authorize",
                                                                                 status=403)]
    assert not any(isinstance(d, Relogin) for d in decisions)
    assert all(budget.parked(r) for r in range(4))


# --- leaders and followers of one refusal ------------------------------------------------------------------


def test_followers_are_held_while_the_first_two_refused_find_out_then_park_with_them() -> None:
    """The first SPREAD shards refused alike lead and may retry; later ones are held (no permit, not parked)
    until the leaders park, which parks them in the same breath."""
    budget = make()
    for remainder in range(6):
        refuse(budget, remainder, 1.0 + remainder)
    assert budget.hold_until(0, 10.0) is None and budget.hold_until(1, 10.0) is None
    assert all(budget.hold_until(r, 10.0) == float("inf") and not budget.parked(r) for r in range(2, 6))
    assert budget.hold_until(9, 10.0) is None  # a shard never refused is never held
    refuse(budget, 0, 11.0)
    assert refuse(budget, 0, 12.0) == [Park(0, 12.0 + LOCKOUT, budget.shard(0).parked_reason or "")]
    assert budget.hold_until(2, 12.0) == float("inf")  # one leader still finding out
    refuse(budget, 1, 13.0)
    decisions = refuse(budget, 1, 14.0)
    assert sorted(d.key for d in decisions if isinstance(d, Park)) == [1, 2, 3, 4, 5]
    assert all(budget.parked(r) for r in range(6))


def test_a_leader_getting_live_frees_its_followers() -> None:
    """The refusal went away: the held shards start over and may connect at once."""
    budget = make()
    for remainder in range(4):
        refuse(budget, remainder, 1.0)
    budget.progressed(1, live=True)
    assert all(budget.hold_until(r, 2.0) is None for r in range(4))
    assert budget.shard(3).rejections == 1


def test_parked_shards_of_one_refusal_retry_one_at_a_time() -> None:
    """When the retry time comes, the first parked shard granted a permit moves every other shard parked for
    the same refusal a lockout_backoff away: one request per refusal per lockout_backoff."""
    budget = make()
    for t in (1.0, 2.0, 3.0):
        for remainder in range(4):
            refuse(budget, remainder, t)
    assert all(budget.parked(r) for r in range(4))
    due = 3.0 + LOCKOUT
    assert all(budget.hold_until(r, due) is None for r in range(4))
    budget.granted(2, due)
    assert [budget.hold_until(r, due) for r in (0, 1, 3)] == [due + LOCKOUT] * 3
    [park] = refuse(budget, 2, due + 1)
    assert isinstance(park, Park) and park.until == due + 1 + LOCKOUT


def test_an_eviction_lifts_a_quota_pause_but_not_a_rate_limit() -> None:
    """A quota shutdown pause is explained by our own evicted session: evicted() ends it; a 429 pause stays."""
    budget = make()
    budget.throttled("quota", SYNC, "ConnectionQuotaReached", 1.0)
    assert budget.evicted() and budget.paused_until(2.0) is None
    budget.throttled("ws429", "authorize", "", 3.0)
    assert not budget.evicted() and budget.paused_until(4.0) == 3.0 + LOCKOUT
