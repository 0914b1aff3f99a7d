"""The parent's one login and budget, run for real: an evicted session logs in again, a poisoned token from the
login server never reaches a worker (issue 11 item 5, issue 12 item 2)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from harness import Daemon, wait_until

from integration.simclient import login
from shardsync.simulator import Simulator

SimFactory = Callable[..., Simulator]
DaemonFactory = Callable[..., Daemon]


@pytest.fixture(autouse=True)
def _no_outside_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def alive(daemon: Daemon) -> bool:
    assert daemon.proc is not None
    if daemon.proc.poll() is not None:
        raise AssertionError(f"daemon exited with {daemon.proc.returncode}:\n{daemon.output()[-3000:]!r}")
    return True


@pytest.mark.parametrize("eviction", ["http408", "http502"])
def test_a_session_evicted_by_a_login_elsewhere_logs_in_again_and_every_shard_regains_live(
    sim_factory: SimFactory, daemon_factory: DaemonFactory, eviction: str
) -> None:
    """A second login elsewhere evicts the daemon's session (session cap 1): its renewals answer 408/502; after
    the third in a row the daemon logs in again (once), long before the 10-minute token would have expired,
    and every shard is live again on the new session."""
    sim = sim_factory(session_cap=1, eviction=eviction, token_lifetime=600)
    daemon = daemon_factory(sim, divisor=2, sections={"tradovate": {"lockout_backoff": 2.0, "quota_backoff": 2.0}})
    daemon.wait_live(30)
    first_pids = daemon.pids()
    login(sim)  # somebody else logs in with the same user: the daemon's session is evicted
    evicted = wait_until(lambda: [line for line in daemon.events("token_backoff") if line.get("kind") == "evicted"],
                         100, "the renewal answered 408/502 three times in a row")
    assert f"HTTP {eviction[4:]}" in evicted[0]["why"]
    wait_until(lambda: alive(daemon) and sum(1 for line in daemon.events("token_updated")
                                             if line.get("action") == "DoLogin") == 2, 20, "a second login")

    def live_on_a_fresh_session() -> bool:
        shards = daemon.shards()
        return alive(daemon) and all(s["state"] == "live" for s in shards.values())

    # The evicted sockets got ConnectionQuotaReached; each worker comes back after its own quota backoff,
    # is refused (401: the renewal is what finds out the session is gone), then gets the new token.
    wait_until(live_on_a_fresh_session, 90, "every shard live again")
    assert sim.stats()["logins"] == 3  # the daemon's, the other one, the daemon's again: no login storm
    assert daemon.pids() == first_pids  # no worker crashed or was restarted for it
    assert all(s["restarts"] == 0 for s in daemon.shards().values())


class PoisonedLogin(http.server.BaseHTTPRequestHandler):
    """A login server whose token carries a newline (and whose every other answer is a 404)."""

    token = "abc\ndef"  # noqa: S105 - the hostile value under test
    logins = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).logins += 1
        expiry = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
        body = orjson.dumps({"accessToken": self.token, "mdAccessToken": "md", "expirationTime": expiry,
                             "userId": 1, "name": "demo"})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def poisoned_login() -> Iterator[http.server.ThreadingHTTPServer]:
    PoisonedLogin.logins = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PoisonedLogin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_token_with_a_newline_never_reaches_a_worker(
    sim_factory: SimFactory, daemon_factory: DaemonFactory, poisoned_login: http.server.ThreadingHTTPServer
) -> None:
    """The login server answers a token containing "\\n": a failed login (logged without the value), no worker
    ever gets it, none crashes, the daemon never trips its breaker, and after two such logins the failed-login
    cap holds the next one back for an hour, saying so in /status."""
    sim = sim_factory()
    rest = f"http://127.0.0.1:{poisoned_login.server_address[1]}/v1"
    daemon = daemon_factory(sim, divisor=2, sections={"tradovate": {"rest_url": rest}})
    wait_until(lambda: alive(daemon) and PoisonedLogin.logins >= 2, 30, "two login attempts")

    def capped() -> dict[str, Any] | None:
        doc = daemon.status()
        return doc if alive(daemon) and doc["login"]["state"] == "capped" else None

    doc = wait_until(capped, 15, "the failed-login cap")
    assert doc["login"]["failed_logins_last_hour"] == 2
    assert doc["login"]["next_attempt_in"] > 3000
    shards = {s["remainder"]: s for s in doc["shards"]}
    assert all(s["state"] == "waiting_token" and s["restarts"] == 0 for s in shards.values())
    backoffs = daemon.events("token_backoff")
    assert backoffs and all("abc" not in line["why"] for line in backoffs)
    assert "unusable answer" in backoffs[0]["why"]
    assert b"abc\\ndef" not in daemon.output() and b"abc\ndef" not in daemon.output()
    assert not daemon.events("shard_exited") and not daemon.events("global_breaker_tripped")
    stats = sim.stats()
    assert stats["ws_connections_total"] == 0 and stats["authorize_attempts"] == 0  # no token, no connect
    assert PoisonedLogin.logins == 2
