"""One-shot REST auth calls and the token keeper against the in-process simulator on loopback."""

from __future__ import annotations

import http.server
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from logins import AuthError, login
from shardsync.auth import (
    Captcha,
    Failed,
    Grant,
    Locked,
    Outcome,
    Refused,
    Ticket,
    Unauthorized,
    renew_token,
    request_token,
)
from shardsync.credentials import Credentials
from shardsync.simulator import Simulator
from shardsync.supervisor.authcall import outcome_from_json, outcome_to_json
from shardsync.supervisor.tokens import DoLogin, DoRenew, Fatal, TokenChanged, TokenKeeper

CREDENTIALS = Credentials("demo", "demo-password", "demo-secret")
APP: dict[str, Any] = {"app_id": "test", "app_version": "1", "cid": 1, "device_id": "test-device"}
SimFactory = Callable[..., Simulator]


def request(sim: Simulator, credentials: Credentials = CREDENTIALS, ticket: str | None = None) -> Outcome:
    return request_token(sim.rest_url, credentials, ticket=ticket, timeout=5.0, **APP)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_request_token_grants_a_token(sim_server: Simulator) -> None:
    """Valid credentials give a Grant with a future expiry and the user id."""
    outcome = request(sim_server)
    assert isinstance(outcome, Grant)
    assert outcome.token
    assert outcome.expires_at > time.time()
    assert isinstance(outcome.user_id, int)


def test_bad_password_is_refused_without_echoing_it(sim_server: Simulator) -> None:
    """A wrong password gives Refused with the server's errorText, which does not contain the password."""
    outcome = request(sim_server, Credentials("demo", "wrong-password-xyz", "demo-secret"))
    assert isinstance(outcome, Refused)
    assert "Incorrect" in outcome.text
    assert "wrong-password-xyz" not in repr(outcome)


def test_p_ticket_penalty_then_ticketed_retry_after_wait_succeeds(sim_server: Simulator) -> None:
    """A p-ticket gives Ticket; an early retry is penalised again; a retry with the ticket after p-time is granted."""
    sim_server.penalty("ticket", count=1, p_time=0.3)
    first = request(sim_server)
    assert isinstance(first, Ticket)
    assert first.wait == pytest.approx(0.3)
    early = request(sim_server, ticket=first.ticket)
    assert isinstance(early, Ticket)
    ready_at = time.time() + early.wait
    wait_until(lambda: time.time() >= ready_at)
    assert isinstance(request(sim_server, ticket=early.ticket), Grant)


def test_p_captcha_gives_captcha(sim_server: Simulator) -> None:
    """A penalty carrying p-captcha is reported as Captcha (no ticket retry)."""
    sim_server.penalty("captcha", count=1)
    assert request(sim_server) == Captcha()


@pytest.mark.parametrize("status", [423, 429])
def test_lockout_statuses_give_locked(sim_server: Simulator, status: int) -> None:
    """HTTP 423 and 429 with an empty body are reported as Locked(status)."""
    sim_server.lockout(status, count=1)
    assert request(sim_server) == Locked(status)


def test_renew_gives_a_new_token_with_later_expiry(sim_factory: SimFactory) -> None:
    """Renewal returns a different token expiring later than the original."""
    sim = sim_factory(token_lifetime=60)
    first = request(sim)
    assert isinstance(first, Grant)
    wait_until(lambda: time.time() >= first.expires_at - 60 + 0.01)
    renewed = renew_token(sim.rest_url, first.token, timeout=5.0)
    assert isinstance(renewed, Grant)
    assert renewed.token != first.token
    assert renewed.expires_at > first.expires_at
    assert sim.stats()["renewals"] == 1


def test_renew_after_revoke_is_unauthorized(sim_server: Simulator) -> None:
    """A revoked token's renewal is answered 401: Unauthorized."""
    grant = request(sim_server)
    assert isinstance(grant, Grant)
    sim_server.revoke(grant.token)
    assert renew_token(sim_server.rest_url, grant.token, timeout=5.0) == Unauthorized()


def test_renew_after_expiry_is_unauthorized(sim_factory: SimFactory) -> None:
    """An expired token's renewal is answered 401: Unauthorized."""
    sim = sim_factory(token_lifetime=0.3)
    grant = request(sim)
    assert isinstance(grant, Grant)
    wait_until(lambda: time.time() > grant.expires_at + 0.05)
    assert renew_token(sim.rest_url, grant.token, timeout=5.0) == Unauthorized()


def test_unreachable_server_is_a_transient_failure() -> None:
    """Nothing listening on the port gives Failed, with no credential in the reason."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outcome = request_token(f"http://127.0.0.1:{port}/v1", CREDENTIALS, timeout=2.0, **APP)
    assert isinstance(outcome, Failed)
    assert "demo-password" not in outcome.reason
    assert isinstance(renew_token(f"http://127.0.0.1:{port}/v1", "some-token", timeout=2.0), Failed)


class _Stub(http.server.BaseHTTPRequestHandler):
    replies: ClassVar[list[tuple[int, bytes]]] = []

    def _answer(self) -> None:
        status, body = self.replies.pop(0)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[tuple[str, list[tuple[int, bytes]]]]:
    """A loopback HTTP server answering queued (status, body) pairs."""
    replies: list[tuple[int, bytes]] = []
    handler = type("Handler", (_Stub,), {"replies": replies})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", replies
    server.shutdown()
    server.server_close()


def test_server_errors_and_garbage_are_transient(stub: tuple[str, list[tuple[int, bytes]]]) -> None:
    """5xx, non-JSON, non-object and token-less bodies are Failed; renewal 400 and errorText are Unauthorized."""
    url, replies = stub
    replies += [(503, b""), (200, b"<html>"), (200, b"[1]"), (200, b'{"userStatus":"Active"}'),
                (200, b'{"accessToken":"abcd","expirationTime":"soon"}')]
    reasons = [request_token(url, CREDENTIALS, timeout=5.0, **APP) for _ in range(5)]
    assert all(isinstance(r, Failed) for r in reasons), reasons
    replies += [(400, b""), (200, b'{"errorText":"Expired"}'), (500, b"")]
    assert renew_token(url, "tok-abcd", timeout=5.0) == Unauthorized()
    assert renew_token(url, "tok-abcd", timeout=5.0) == Unauthorized()
    assert isinstance(renew_token(url, "tok-abcd", timeout=5.0), Failed)


def test_plain_http_refused_off_loopback() -> None:
    """http:// to a non-loopback host is refused before any request (TLS is mandatory there)."""
    with pytest.raises(ValueError, match="https"):
        request_token("http://example.com/v1", CREDENTIALS, **APP)


@pytest.mark.parametrize("outcome", [
    Grant("tok-abcdef", 1_700_000_123.5, 42), Grant("tok-abcdef", 1.0, None), Ticket("tkt", 1.5), Captcha(),
    Locked(429), Refused("Incorrect username or password."), Unauthorized(), Failed("HTTP 503"),
])
def test_outcome_json_round_trip(outcome: Outcome) -> None:
    """Every outcome survives the pipe encoding unchanged."""
    assert outcome_from_json(outcome_to_json(outcome)) == outcome


@pytest.mark.parametrize("data", [b"nope", b"[]", b'{"kind":"grant"}', b'{"kind":"mystery"}',
                                  b'{"kind":"locked","status":true}'])
def test_outcome_json_rejects_garbage(data: bytes) -> None:
    """Malformed pipe payloads raise ValueError rather than producing a half-built outcome."""
    with pytest.raises(ValueError):
        outcome_from_json(data)


def test_blocking_login_waits_out_a_penalty(sim_server: Simulator) -> None:
    """The blocking login() resends with the ticket after sleeping p-time and returns a Grant."""
    sim_server.penalty("ticket", count=1, p_time=0.2)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    grant = login(sim_server.rest_url, CREDENTIALS, sleep=sleep, **APP)
    assert grant.token
    assert slept == [pytest.approx(0.2)]


def test_blocking_login_raises_on_bad_password(sim_server: Simulator) -> None:
    """The blocking login() raises AuthError with the server's text and without the password."""
    with pytest.raises(AuthError) as err:
        login(sim_server.rest_url, Credentials("demo", "nope-password-123", "demo-secret"), **APP)
    assert "refused" in str(err.value)
    assert "nope-password-123" not in str(err.value)


def drive(keeper: TokenKeeper, sim: Simulator, until: Callable[[list[Any]], bool], timeout: float) -> list[Any]:
    """Carry out the keeper's calls against the simulator until ``until(events)`` holds; returns the events."""
    events: list[Any] = []
    deadline = time.monotonic() + timeout
    while not until(events):
        assert time.monotonic() < deadline, f"timed out; events so far: {events}"
        now = time.time()
        action = keeper.due(now)
        if action is None:
            next_at = keeper.next_at()
            assert next_at is not None, "keeper has nothing scheduled"
            time.sleep(min(0.05, max(0.0, next_at - now)))
            continue
        keeper.started(action, now)
        if isinstance(action, DoLogin):
            outcome = request(sim, ticket=action.ticket)
        else:
            assert isinstance(action, DoRenew)
            outcome = renew_token(sim.rest_url, action.token, timeout=5.0)
            events.append(("renewed_before_expiry", keeper.expires_at is not None and now < keeper.expires_at))
        events.append(keeper.finished(action, outcome, time.time()))
    return events


def test_keeper_renews_short_tokens_before_expiry_with_one_login(sim_factory: SimFactory) -> None:
    """Driven by real calls, the keeper keeps a 4 s token alive through 3 renewals, each before expiry, 1 login."""
    sim = sim_factory(token_lifetime=4)
    keeper = TokenKeeper(renew_before=900.0, captcha_backoff=3600.0, lockout_backoff=3600.0, rng=random.Random(1))

    def changes(events: list[Any]) -> int:
        return sum(isinstance(e, TokenChanged) for e in events)

    events = drive(keeper, sim, lambda ev: changes(ev) >= 4, timeout=30.0)
    assert all(ok for tag, ok in (e for e in events if isinstance(e, tuple)))
    tokens = [e.token for e in events if isinstance(e, TokenChanged)]
    assert len(set(tokens)) == 4
    stats = sim.stats()
    assert stats["logins"] == 1
    assert stats["renewals"] == 3


def test_keeper_recovers_from_revoked_token_via_need_token(sim_factory: SimFactory) -> None:
    """A worker's 401 on a revoked token makes the keeper renew (401) and then log in once."""
    sim = sim_factory(token_lifetime=600)
    keeper = TokenKeeper(renew_before=900.0, captcha_backoff=3600.0, lockout_backoff=3600.0, rng=random.Random(1))
    drive(keeper, sim, lambda ev: any(isinstance(e, TokenChanged) for e in ev), timeout=10.0)
    old = keeper.token
    assert old is not None and keeper.fingerprint is not None
    sim.revoke(old)
    for _ in range(16):
        keeper.need_token(keeper.fingerprint, time.time())
    events = drive(keeper, sim, lambda ev: any(isinstance(e, TokenChanged) for e in ev), timeout=10.0)
    assert keeper.token not in (None, old)
    stats = sim.stats()
    assert stats["logins"] == 2
    assert stats["renewals"] == 1
    assert not any(isinstance(e, Fatal) for e in events)


def test_keeper_first_login_with_wrong_password_is_fatal(sim_server: Simulator) -> None:
    """Against the real server, a wrong password at the first login ends in Fatal after exactly one attempt."""
    keeper = TokenKeeper(renew_before=900.0, captcha_backoff=3600.0, lockout_backoff=3600.0, rng=random.Random(1))
    now = time.time()
    action = keeper.due(now)
    assert action == DoLogin(None)
    keeper.started(action, now)
    event = keeper.finished(action, request(sim_server, Credentials("demo", "bad-pass", "demo-secret")), time.time())
    assert isinstance(event, Fatal)
    assert keeper.due(time.time() + 1e6) is None
    assert sim_server.stats()["logins"] == 1
