"""Unit tests for the pure token keeper: login, renewal schedule, failures, penalties, lock-outs, 401 coalescing."""

from __future__ import annotations

import random
from typing import Any

import pytest

from shardsync.auth import Captcha, Failed, Grant, Locked, Outcome, Refused, Ticket, Unauthorized
from shardsync.secrets import fingerprint
from shardsync.supervisor.logincap import LOGIN_WINDOW
from shardsync.supervisor.tokencheck import MAX_TOKEN, token_problem
from shardsync.supervisor.tokens import (
    Action,
    DoLogin,
    DoRenew,
    Fatal,
    Nothing,
    Rejected,
    Resend,
    TokenChanged,
    TokenKeeper,
    Wait,
)

T0 = 1_700_000_000.0


def make(**overrides: Any) -> TokenKeeper:
    kw: dict[str, Any] = {
        "renew_before": 900.0,
        "captcha_backoff": 3600.0,
        "lockout_backoff": 1800.0,
        "rng": random.Random(7),
        "retry_initial": 1.0,
        "retry_max": 60.0,
    }
    kw.update(overrides)
    return TokenKeeper(**kw)


def run(keeper: TokenKeeper, now: float, outcome: Outcome) -> tuple[Action, Any]:
    """Start the due action at ``now`` and finish it at once with ``outcome``."""
    action = keeper.due(now)
    assert action is not None, "expected an action to be due"
    keeper.started(action, now)
    return action, keeper.finished(action, outcome, now)


def logged_in(lifetime: float = 4800.0, **overrides: Any) -> TokenKeeper:
    keeper = make(**overrides)
    run(keeper, T0, Grant("tok-1", T0 + lifetime, 7))
    return keeper


def test_first_action_is_login() -> None:
    """A fresh keeper wants a login (no ticket) immediately."""
    keeper = make()
    assert keeper.due(T0) == DoLogin(None)
    assert keeper.next_at() is not None and keeper.next_at() <= T0  # type: ignore[operator]


def test_grant_changes_token_and_schedules_renewal_renew_before_ahead() -> None:
    """A 80-minute token is renewed renew_before (900 s) before its expiry, and not earlier."""
    keeper = make()
    _, event = run(keeper, T0, Grant("tok-1", T0 + 4800, 7))
    assert event == TokenChanged("tok-1", T0 + 4800)
    assert (keeper.token, keeper.expires_at) == ("tok-1", T0 + 4800)
    assert keeper.next_at() == T0 + 4800 - 900
    assert keeper.due(T0 + 3899.9) is None
    assert keeper.due(T0 + 3900) == DoRenew("tok-1")


def test_short_token_renews_at_half_life() -> None:
    """A 20-second token renews after 10 s: min(renew_before, lifetime/2)."""
    keeper = logged_in(lifetime=20)
    assert keeper.next_at() == T0 + 10
    assert keeper.due(T0 + 9.99) is None
    assert keeper.due(T0 + 10) == DoRenew("tok-1")


def test_renewal_success_replaces_token_and_reschedules() -> None:
    """A successful renewal hands out the new token and schedules the next renewal from its expiry."""
    keeper = logged_in()
    now = T0 + 3900
    action, event = run(keeper, now, Grant("tok-2", now + 4800, 7))
    assert action == DoRenew("tok-1")
    assert event == TokenChanged("tok-2", now + 4800)
    assert (keeper.token, keeper.expires_at) == ("tok-2", now + 4800)
    assert keeper.next_at() == now + 4800 - 900


def test_nothing_due_while_a_call_is_in_flight() -> None:
    """Between started() and finished() no second call is ever due."""
    keeper = make()
    action = keeper.due(T0)
    assert action is not None
    keeper.started(action, T0)
    assert keeper.due(T0 + 10_000) is None
    assert keeper.next_at() is None
    assert keeper.status(T0)["state"] == "logging_in"


def test_transient_renewal_failure_backs_off_then_succeeds() -> None:
    """Failed renewals are retried on a growing jittered backoff while the token is valid, then succeed."""
    keeper = logged_in()
    now = T0 + 3900
    delays = []
    for _ in range(4):
        action, event = run(keeper, now, Failed("HTTP 503"))
        assert action == DoRenew("tok-1")
        assert isinstance(event, Wait)
        assert "503" in event.why
        next_at = keeper.next_at()
        assert next_at is not None and next_at > now
        assert keeper.due(next_at - 0.001) is None
        delays.append(next_at - now)
        now = next_at
    assert 0.5 <= delays[0] <= 1.0
    assert delays[-1] > delays[0]
    assert all(d <= 60.0 for d in delays)
    _, event = run(keeper, now, Grant("tok-2", now + 4800, 7))
    assert event == TokenChanged("tok-2", now + 4800)
    # a success resets the backoff: the next failure waits at most retry_initial again
    now = keeper.next_at() or 0.0
    run(keeper, now, Failed("timeout"))
    assert (keeper.next_at() or 0.0) - now <= 1.0


def test_backoff_is_capped() -> None:
    """However many renewals fail, no retry waits longer than retry_max."""
    keeper = logged_in(lifetime=100_000, renew_before=50_000, retry_max=30.0)
    now = T0 + 50_000
    for _ in range(20):
        run(keeper, now, Failed("connection refused"))
        wait = (keeper.next_at() or 0.0) - now
        assert 0 < wait <= 30.0
        now += wait


def test_expired_token_means_login() -> None:
    """If renewal keeps failing until the token expires, the next call is a login, due at expiry."""
    keeper = logged_in(lifetime=20, retry_initial=50.0, retry_max=60.0)
    run(keeper, T0 + 10, Failed("timeout"))
    assert keeper.next_at() == T0 + 20  # the retry would come after expiry: login at expiry instead
    assert keeper.due(T0 + 19.9) is None
    assert keeper.due(T0 + 20) == DoLogin(None)


def test_loop_late_after_expiry_logs_in_instead_of_renewing() -> None:
    """A loop that wakes after the token expired (suspend) gets DoLogin, not a doomed renewal."""
    keeper = logged_in(lifetime=20)
    assert keeper.due(T0 + 25) == DoLogin(None)


def test_unauthorized_renewal_means_login_now() -> None:
    """A 401 on renewal drops the token and makes a login due at once."""
    keeper = logged_in()
    now = T0 + 3900
    _, event = run(keeper, now, Unauthorized())
    assert event == Nothing()
    assert keeper.token is None
    assert keeper.due(now) == DoLogin(None)
    _, event = run(keeper, now, Grant("tok-2", now + 4800, 7))
    assert event == TokenChanged("tok-2", now + 4800)


def test_penalty_is_honoured_with_ticket_after_wait() -> None:
    """A p-ticket penalty makes the next login carry the ticket, and only once p-time has passed."""
    keeper = make()
    _, event = run(keeper, T0, Ticket("tkt-1", 15.0))
    assert event == Wait(T0 + 15, event.why, "penalty") and isinstance(event, Wait)
    assert "p-ticket" in event.why
    assert keeper.status(T0)["state"] == "penalty"
    assert keeper.due(T0 + 14.9) is None
    assert keeper.next_at() == T0 + 15
    assert keeper.due(T0 + 15) == DoLogin("tkt-1")
    # a second penalty on the retry replaces the ticket
    run(keeper, T0 + 15, Ticket("tkt-2", 5.0))
    assert keeper.due(T0 + 20) == DoLogin("tkt-2")


def test_transient_failure_of_ticketed_login_keeps_the_ticket() -> None:
    """A network failure on the login carrying a ticket retries with the same ticket."""
    keeper = make()
    run(keeper, T0, Ticket("tkt-1", 1.0))
    run(keeper, T0 + 1, Failed("timeout"))
    assert keeper.due(T0 + 100) == DoLogin("tkt-1")


def test_captcha_window_blocks_every_attempt() -> None:
    """p-captcha: nothing is due for captcha_backoff, then a plain login; the event says why."""
    keeper = make(captcha_backoff=3600.0)
    _, event = run(keeper, T0, Captcha())
    assert isinstance(event, Wait)
    assert event.until == T0 + 3600
    assert "captcha" in event.why
    assert keeper.status(T0)["state"] == "captcha"
    for t in (T0 + 1, T0 + 1800, T0 + 3599.9):
        assert keeper.due(t) is None
    assert keeper.due(T0 + 3600) == DoLogin(None)


@pytest.mark.parametrize("status", [423, 429])
def test_lockout_window_blocks_every_attempt(status: int) -> None:
    """HTTP 423/429 on login: nothing is due for lockout_backoff; the event names the status."""
    keeper = make(lockout_backoff=1800.0)
    _, event = run(keeper, T0, Locked(status))
    assert isinstance(event, Wait)
    assert event.until == T0 + 1800
    assert str(status) in event.why
    assert keeper.status(T0)["state"] == "locked"
    assert keeper.due(T0 + 1799.9) is None
    assert keeper.due(T0 + 1800) == DoLogin(None)


def test_lockout_on_renewal_renews_after_window_if_still_valid() -> None:
    """A 429 on renewal waits lockout_backoff, then renews if the token is still valid (else logs in)."""
    keeper = logged_in(lifetime=100_000, renew_before=10_000, lockout_backoff=1800.0)
    now = T0 + 90_000
    run(keeper, now, Locked(429))
    assert keeper.due(now + 1799) is None
    assert keeper.due(now + 1800) == DoRenew("tok-1")

    short = logged_in(lifetime=4800, lockout_backoff=3600.0)
    run(short, T0 + 3900, Locked(429))
    assert short.due(T0 + 3900 + 3599) is None
    assert short.due(T0 + 3900 + 3600) == DoLogin(None)


def test_refused_at_first_login_is_fatal() -> None:
    """errorText before any login ever succeeded is Fatal carrying the text; nothing is ever due again."""
    keeper = make()
    _, event = run(keeper, T0, Refused("Incorrect username or password."))
    assert isinstance(event, Fatal)
    assert "Incorrect username or password." in event.message
    assert keeper.due(T0 + 1e9) is None
    assert keeper.next_at() is None
    assert keeper.status(T0)["state"] == "failed"


def test_refused_after_earlier_success_backs_off() -> None:
    """errorText after a successful login (credentials changed) waits lockout_backoff instead of hammering."""
    keeper = logged_in(lockout_backoff=1800.0)
    now = T0 + 3900
    run(keeper, now, Unauthorized())
    _, event = run(keeper, now, Refused("Incorrect username or password."))
    assert isinstance(event, Wait)
    assert event.until == now + 1800
    assert keeper.due(now + 1799) is None
    assert keeper.due(now + 1800) == DoLogin(None)


def test_first_login_network_failure_retries_not_fatal() -> None:
    """A login that cannot reach the server is retried on backoff, never fatal."""
    keeper = make()
    _, event = run(keeper, T0, Failed("connection refused"))
    assert isinstance(event, Wait)
    assert keeper.due(event.until) == DoLogin(None)


def test_need_token_coalesces_sixteen_workers_into_one_renewal() -> None:
    """Sixteen workers reporting a 401 on the current token cause exactly one renewal, due now."""
    keeper = logged_in()
    now = T0 + 100
    fp = fingerprint("tok-1")
    for _ in range(16):
        keeper.need_token(fp, now)
    action = keeper.due(now)
    assert action == DoRenew("tok-1")
    keeper.started(action, now)
    for _ in range(16):
        keeper.need_token(fp, now)
    assert keeper.due(now) is None
    keeper.finished(action, Grant("tok-2", now + 4800, 7), now)
    for _ in range(16):  # late reports about the old token change nothing
        keeper.need_token(fp, now + 1)
    assert keeper.due(now + 1) is None
    assert keeper.next_at() == now + 4800 - 900


def test_on_rejected_older_token_is_answered_with_the_current_one() -> None:
    """A worker refused an older token gets the current token and expiry back, and no renewal is scheduled."""
    keeper = logged_in()
    answer = keeper.on_rejected(fingerprint("some-old-token"), T0 + 5)
    assert answer == Resend("tok-1", T0 + 4800)
    assert "tok-1" not in repr(answer)
    assert keeper.due(T0 + 5) is None


def test_on_rejected_current_token_schedules_one_renewal() -> None:
    """A worker refused the current token is told Rejected and the keeper renews now, once."""
    keeper = logged_in()
    assert keeper.on_rejected(fingerprint("tok-1"), T0 + 5) == Rejected()
    assert keeper.on_rejected(fingerprint("tok-1"), T0 + 5) == Rejected()
    assert keeper.due(T0 + 5) == DoRenew("tok-1")


def test_on_rejected_without_any_token_is_rejected() -> None:
    """Before the first grant there is nothing to resend: the answer is Rejected and the login stays due."""
    keeper = make()
    assert keeper.on_rejected("", T0) == Rejected()
    assert keeper.due(T0) == DoLogin(None)


def test_need_token_with_old_fingerprint_does_nothing() -> None:
    """A 401 about a token that is no longer current schedules nothing."""
    keeper = logged_in()
    keeper.need_token(fingerprint("some-old-token"), T0 + 5)
    assert keeper.due(T0 + 5) is None


def test_need_token_revoked_token_renewal_401_then_login() -> None:
    """A worker's 401 leads to a renewal; if that is refused too (revoked), a login follows at once."""
    keeper = logged_in()
    keeper.need_token(fingerprint("tok-1"), T0 + 5)
    run(keeper, T0 + 5, Unauthorized())
    assert keeper.due(T0 + 5) == DoLogin(None)


def test_need_token_does_not_break_a_lockout_window() -> None:
    """During a lock-out the server's instruction to wait wins over a worker's 401."""
    keeper = logged_in(lifetime=100_000, renew_before=10_000, lockout_backoff=1800.0)
    now = T0 + 90_000
    run(keeper, now, Locked(429))
    keeper.need_token(fingerprint("tok-1"), now + 1)
    assert keeper.due(now + 1) is None


def test_status_never_contains_the_token() -> None:
    """status() reports state, expiry and next attempt, and no token anywhere."""
    keeper = logged_in()
    status = keeper.status(T0 + 100)
    assert status["state"] == "ok"
    assert status["expires_in"] == pytest.approx(4700)
    assert status["next_attempt_in"] == pytest.approx(3800)
    assert "tok-1" not in repr(status)
    assert "tok-1" not in repr(keeper.due(T0 + 3900))
    assert "tok-1" not in repr(TokenChanged("tok-1", 1.0))
    assert "tok-1" not in repr(Grant("tok-1", 1.0))


def test_grant_already_expired_is_a_failed_login_and_never_handed_out() -> None:
    """A token whose expirationTime is already past (clock skew) is a failed login: no TokenChanged, no token
    kept, and the next login waits on the backoff."""
    keeper = make()
    _, event = run(keeper, T0, Grant("tok-1", T0 - 5, 7))
    assert isinstance(event, Wait) and "already past" in event.why
    assert keeper.token is None
    assert keeper.due(T0) is None
    next_at = keeper.next_at()
    assert next_at is not None and next_at > T0
    assert keeper.status(T0)["state"] == "failed"
    assert keeper.status(T0)["failed_logins_last_hour"] == 1


# --- tokens checked before anyone sees them -----------------------------------------------------

BAD_TOKENS = {
    "empty": "",
    "newline": "abc\ndef",
    "carriage return": "abc\rdef",
    "NUL": "abc\x00",
    "space": "abc def",
    "non-ASCII": "t\u00f6ken",
    "over 8 KiB": "a" * (MAX_TOKEN + 1),
}


@pytest.mark.parametrize("token", list(BAD_TOKENS.values()), ids=list(BAD_TOKENS))
def test_an_unusable_token_from_a_login_is_a_failed_login(token: str) -> None:
    """Empty, control characters, spaces, non-ASCII or over 8 KiB: a failed login whose reason never quotes the
    token, nothing handed out, the login retried on the backoff."""
    keeper = make()
    _, event = run(keeper, T0, Grant(token, T0 + 4800, 7))
    assert isinstance(event, Wait) and event.kind == "failed"
    assert "unusable answer" in event.why
    if token:
        assert token not in event.why and token not in str(keeper.status(T0))
    assert keeper.token is None and keeper.due(event.until) == DoLogin()


@pytest.mark.parametrize("token", ["abc\ndef", "a" * (MAX_TOKEN + 1)], ids=["newline", "over 8 KiB"])
def test_an_unusable_token_from_a_renewal_keeps_the_current_one(token: str) -> None:
    """A renewal answered with an unusable token is a failed renewal: the current token stays and is renewed
    again on the backoff."""
    keeper = logged_in()
    now = T0 + 3900
    action, event = run(keeper, now, Grant(token, now + 4800, 7))
    assert action == DoRenew("tok-1") and isinstance(event, Wait)
    assert keeper.token == "tok-1"  # noqa: S105 - a fake token
    assert keeper.due(event.until) == DoRenew("tok-1")


def test_a_token_of_exactly_8_kib_of_visible_ascii_is_accepted() -> None:
    """The limits are inclusive: an 8 KiB token of every visible ASCII character is handed out whole."""
    token = ("".join(chr(c) for c in range(0x21, 0x7F)) * 100)[:MAX_TOKEN]
    assert token_problem(token) is None
    _, event = run(make(), T0, Grant(token, T0 + 4800, 7))
    assert event == TokenChanged(token, T0 + 4800)


# --- at most two failed logins in any rolling hour ------------------------------------------------

@pytest.mark.parametrize("failure", [Refused("Incorrect username or password."), Captcha(), Locked(429),
                                     Failed("HTTP 500", 500)], ids=["refused", "captcha", "locked", "failed"])
def test_the_third_failed_login_waits_until_the_first_is_an_hour_old(failure: Outcome) -> None:
    """After two failed logins, whatever kind the second is, no login is due before the first is an hour old;
    the status says capped."""
    keeper = logged_in(captcha_backoff=60.0, lockout_backoff=60.0)
    now = T0 + 3900
    run(keeper, now, Unauthorized())  # the renewal: revoked, log in
    run(keeper, now, Failed("HTTP 503", 503))  # failure 1, at `now`
    first = now
    at = keeper.next_at()
    assert at is not None and at < first + 100  # only the backoff
    _, event = run(keeper, at, failure)  # failure 2
    assert isinstance(event, Wait) and event.kind == "capped" and event.until == first + LOGIN_WINDOW
    assert "failed logins" in event.why
    status = keeper.status(at)
    assert status["state"] == "capped" and status["failed_logins_last_hour"] == 2
    assert "Tradovate locks" in status["last_error"]
    assert keeper.due(first + LOGIN_WINDOW - 0.01) is None
    assert keeper.due(first + LOGIN_WINDOW) == DoLogin()


def test_no_rolling_hour_ever_holds_three_failed_logins() -> None:
    """Login failing forever: the attempts' times never put three failures in one rolling hour."""
    keeper = make(captcha_backoff=1.0, lockout_backoff=1.0)
    run(keeper, T0, Grant("tok-1", T0 + 4800, 7))
    run(keeper, T0 + 3900, Unauthorized())
    now, attempts = T0 + 3900, []
    while now < T0 + 3900 + 5 * LOGIN_WINDOW:
        at = keeper.next_at(now)
        assert at is not None
        now = max(now, at)
        attempts.append(now)
        run(keeper, now, Failed("HTTP 500", 500))
    assert len(attempts) >= 8
    for i in range(len(attempts) - 2):
        assert attempts[i + 2] - attempts[i] >= LOGIN_WINDOW


def test_a_login_that_reached_no_server_is_not_counted() -> None:
    """Network failures (no HTTP answer) retry on the backoff without ever reaching the cap."""
    keeper = make()
    now = T0
    for _ in range(5):
        _, event = run(keeper, now, Failed("cannot reach the REST endpoint: connection refused"))
        assert isinstance(event, Wait) and event.kind == "failed"
        now = event.until
    assert keeper.status(now)["failed_logins_last_hour"] == 0
    assert keeper.due(now) == DoLogin()


def test_an_expired_token_renewal_turned_login_waits_for_the_cap() -> None:
    """With two failed logins counted, a renewal that is too late (token expired) waits for the cap too, and the
    keeper's next_at says exactly when (no busy loop on a due-but-refused call)."""
    keeper = logged_in(lifetime=600.0, renew_before=10.0)
    keeper._cap.record(T0 + 100)
    keeper._cap.record(T0 + 200)
    late = T0 + 700  # the loop woke after expiry
    assert keeper.next_at(late) == T0 + 100 + LOGIN_WINDOW
    assert keeper.due(late) is None
    assert keeper.due(T0 + 100 + LOGIN_WINDOW) == DoLogin()


# --- eviction ------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [408, 502, 503])
def test_three_renewals_in_a_row_answered_408_or_5xx_mean_log_in_again(status: int) -> None:
    """An evicted session's renewal answers 408/5xx: the third in a row makes a login due at once."""
    keeper = logged_in()
    now = T0 + 3900
    for _ in range(2):
        action, event = run(keeper, now, Failed(f"HTTP {status}", status))
        assert action == DoRenew("tok-1") and event.kind == "failed"
        now = event.until
    action, event = run(keeper, now, Failed(f"HTTP {status}", status))
    assert action == DoRenew("tok-1")
    assert isinstance(event, Wait) and event.kind == "evicted" and event.until == now
    assert keeper.due(now) == DoLogin()
    assert keeper.status(now)["state"] == "evicted"


def test_renewal_failures_of_other_kinds_do_not_make_an_eviction() -> None:
    """A 4xx answer between 408s breaks the run (a network failure neither counts nor breaks it): with no three
    in a row the renewal keeps being retried."""
    keeper = logged_in()
    now = T0 + 3900
    for outcome in (Failed("HTTP 408", 408), Failed("HTTP 404", 404), Failed("HTTP 408", 408),
                    Failed("unreachable"), Failed("HTTP 408", 408)):
        action, event = run(keeper, now, outcome)
        assert action == DoRenew("tok-1") and event.kind == "failed"
        now = event.until


def test_evicted_schedules_one_login_now_and_respects_penalties_and_the_cap() -> None:
    """evicted() plans a login now (once); during a lock-out or with the cap reached it changes nothing."""
    keeper = logged_in()
    assert keeper.evicted("authorize refused by 2 shards", T0 + 10)
    assert keeper.due(T0 + 10) == DoLogin()
    assert not keeper.evicted("again", T0 + 10)
    assert keeper.status(T0 + 10)["state"] == "evicted"

    locked = logged_in(lifetime=100_000, renew_before=10_000)
    run(locked, T0 + 90_000, Locked(429))
    assert not locked.evicted("authorize refused", T0 + 90_001)
    assert locked.due(T0 + 90_001) is None

    capped = logged_in()
    capped._cap.record(T0)
    capped._cap.record(T0 + 1)
    assert capped.evicted("authorize refused", T0 + 10)
    assert capped.due(T0 + 10) is None and capped.due(T0 + LOGIN_WINDOW) == DoLogin()
