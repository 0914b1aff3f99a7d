"""Login, renewal, penalties and credential sources of the real `shardsync run` against the simulator (issue 5)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from harness import PASSWORD, SECRET, USERNAME, Daemon, wait_until, write_credentials

from shardsync.simulator import Simulator

EX_NOPERM = 77


SimFactory = Callable[..., Simulator]
DaemonFactory = Callable[..., Daemon]


@pytest.fixture(autouse=True)
def _no_outside_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemons see only the credential sources a test sets up."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def at(line: dict[str, Any]) -> float:
    """A log line's timestamp as epoch seconds."""
    return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()


def hold(condition: Callable[[], Any], seconds: float, message: str) -> None:
    """Assert ``condition`` stays true, polled every 50 ms, until ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert condition(), f"{message} stopped holding"
        time.sleep(0.05)
    assert condition(), f"{message} stopped holding"


def running(daemon: Daemon) -> bool:
    assert daemon.proc is not None
    if daemon.proc.poll() is not None:
        raise AssertionError(f"daemon exited with {daemon.proc.returncode}:\n{daemon.output()[-3000:]!r}")
    return True


# --- renewal ------------------------------------------------------------------------------------


def test_one_login_renewals_before_expiry_no_socket_reopened(sim_factory: SimFactory,
                                                             daemon_factory: DaemonFactory) -> None:
    """With 16 shards and 10 s tokens, 30 s of running takes one login and >= 4 renewals, each before the
    previous token expired, and not one socket is reopened."""
    sim = sim_factory(token_lifetime=10, event_rate=5, accounts=32, users=8)
    daemon = daemon_factory(sim, divisor=16)
    daemon.wait_live(40)
    first = wait_until(lambda: daemon.events("token_updated"), 5, "first token_updated")[0]
    assert sim.stats()["ws_connections_total"] == 16
    pids = daemon.pids()
    end = at(first) + 30.0
    hold(lambda: running(daemon) and sim.stats()["ws_connections_total"] == 16,
         max(0.0, end - time.time()), "16 sockets, none reopened")

    def settled() -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        # The simulator counts a renewal before the daemon has its answer and logs it: compare only when
        # both sides agree and the simulator's count did not move while the log was read.
        before = sim.stats()
        logged = daemon.events("token_updated")
        after = sim.stats()
        if before["renewals"] == after["renewals"] == len(logged) - 1:
            return after, logged
        return None

    stats, updates = wait_until(settled, 10, "every renewal the simulator counted logged by the daemon")
    shards = daemon.shards()
    assert stats["logins"] == 1, stats["logins"]
    assert stats["renewals"] >= 4, stats["renewals"]
    assert stats["ws_connections_total"] == 16
    assert {int(r): n for r, n in stats["connections"].items()} == dict.fromkeys(range(16), 1)
    assert all(s["state"] == "live" and s["restarts"] == 0 for s in shards.values()), shards
    assert {r: s["pid"] for r, s in shards.items()} == pids
    assert [u["action"] for u in updates] == ["DoLogin"] + ["DoRenew"] * (len(updates) - 1)
    for previous, renewal in itertools.pairwise(updates):
        expiry = at(previous) + previous["expires_in"]
        assert at(renewal) < expiry - 1.0, (previous, renewal)


def test_revoked_token_one_new_token_and_every_shard_resyncs(sim_factory: SimFactory,
                                                             daemon_factory: DaemonFactory) -> None:
    """A revoked token plus dropped sockets gives 401s on authorize, one token acquisition by the parent
    (at most one login, never one per worker) and every shard back live and converged."""
    sim = sim_factory()
    daemon = daemon_factory(sim, divisor=4)
    daemon.wait_live()
    before = sim.stats()
    assert before["logins"] == 1 and len(daemon.events("token_updated")) == 1
    sim.revoke()
    sim.drop()
    sim.mutate(count=8, deletions=2)

    def back() -> bool:
        stats = sim.stats()
        return (running(daemon) and stats["ws_connections_total"] >= before["ws_connections_total"] + 4
                and {int(r): n for r, n in stats["connections"].items()} == dict.fromkeys(range(4), 1)
                and all(s["state"] == "live" for s in daemon.shards().values()))

    wait_until(back, 20, "all shards reconnected and live")
    for remainder in range(4):
        daemon.wait_converged(remainder)
    after = sim.stats()
    updates = daemon.events("token_updated")
    assert after["logins"] - before["logins"] <= 1
    assert after["renewals"] - before["renewals"] <= 1  # the renewal of the revoked token (401), then the login
    assert len(updates) == 2, updates  # the first login, then exactly one successful acquisition
    assert daemon.events("token_rejected_by_server"), "no worker reported a 401"
    assert after["authorize_attempts"] - before["authorize_attempts"] >= 5  # >= 1 refused with 401, 4 accepted


# --- penalties ------------------------------------------------------------------------------------


def test_p_ticket_waits_p_time_and_resends_the_ticket(sim_factory: SimFactory, daemon_factory: DaemonFactory) -> None:
    """A p-ticket with p-time 2 s: the second login attempt comes >= 2 s after the first, carries the ticket
    (the simulator grants only then) and the shards go live."""
    sim = sim_factory()
    sim.penalty("ticket", count=1, p_time=2.0)
    daemon = daemon_factory(sim, divisor=2)
    daemon.wait_live()
    requests = daemon.events("token_request")
    assert sim.stats()["logins"] == 2  # a missing ticket or an early retry would have drawn another penalty
    assert sim.call(lambda s: s.auth.open_penalty) is None
    assert [r["action"] for r in requests] == ["DoLogin", "DoLogin"]
    assert at(requests[1]) - at(requests[0]) >= 2.0


@pytest.mark.parametrize(("knob", "setting"), [("captcha", "captcha_backoff"), ("lockout", "lockout_backoff")])
def test_captcha_and_429_stop_login_attempts_for_the_backoff(sim_factory: SimFactory, daemon_factory: DaemonFactory,
                                                            knob: str, setting: str) -> None:
    """p-captcha (captcha_backoff) and HTTP 429 (lockout_backoff) each stop every login attempt for the
    configured time; then the daemon logs in and the shards go live."""
    backoff = 4.0
    sim = sim_factory()
    if knob == "captcha":
        sim.penalty("captcha", count=1)
    else:
        sim.lockout(429, count=1)
    daemon = daemon_factory(sim, divisor=2, sections={"tradovate": {setting: backoff}})
    wait_until(lambda: running(daemon) and sim.stats()["logins"] == 1, 10, "first login attempt")
    first = wait_until(lambda: daemon.events("token_backoff"), 5, "token_backoff log line")[0]
    window = at(first) + backoff - 0.3 - time.time()
    hold(lambda: running(daemon) and sim.stats()["logins"] == 1, window, "no further login attempt")
    daemon.wait_live(backoff + 15)
    requests = daemon.events("token_request")
    assert sim.stats()["logins"] == 2
    assert len(requests) == 2
    assert at(requests[1]) - at(requests[0]) >= backoff
    assert first["retry_in"] == pytest.approx(backoff, abs=0.5)
    assert first["level"] == ("error" if knob == "captcha" else "warning")


def test_wrong_password_exits_77_after_one_attempt(tmp_path: Path, sim_factory: SimFactory,
                                                   daemon_factory: DaemonFactory) -> None:
    """A refused password ends the daemon with exit 77 and a login_refused log line after one attempt."""
    sim = sim_factory()
    wrong = "not-the-password"
    creds = write_credentials(tmp_path / "credentials.toml", password=wrong)
    daemon = daemon_factory(sim, divisor=2, credentials=creds)
    assert daemon.wait_exit(15) == EX_NOPERM
    refused = daemon.events("login_refused")
    assert refused and "Incorrect username or password" in refused[0]["reason"]
    assert sim.stats()["logins"] == 1
    assert wrong.encode() not in daemon.output()


# --- credential sources ------------------------------------------------------------------------------


def credentials_dir(path: Path, **values: str) -> Path:
    """A systemd-style credentials directory: one owner-only file per value."""
    path.mkdir(mode=0o700)
    for name, value in values.items():
        (path / name).write_text(value)
        (path / name).chmod(0o400)
    return path


@pytest.mark.parametrize("winner", ["directory", "environment", "file"])
def test_credentials_source_and_precedence(tmp_path: Path, sim_factory: SimFactory, daemon_factory: DaemonFactory,
                                           winner: str) -> None:
    """Each source logs in on its own, and the directory beats the environment which beats the file: every
    lower source holds a username the simulator refuses, so only the winner can log in."""
    sim = sim_factory()
    good = {"username": USERNAME, "password": PASSWORD, "secret": SECRET}
    order = ["directory", "environment", "file"]
    values = {source: good if source == winner else {**good, "username": f"loser-{source}"}
              for source in order[order.index(winner):]}
    env: dict[str, str] = {}
    creds: Path | None = None
    if "directory" in values:
        env["CREDENTIALS_DIRECTORY"] = str(credentials_dir(tmp_path / "creds", **values["directory"]))
    if "environment" in values:
        env.update({f"SHARDSYNC_{k.upper()}": v for k, v in values["environment"].items()})
    if "file" in values:
        creds = write_credentials(tmp_path / "credentials.toml", **values["file"])
    daemon = daemon_factory(sim, divisor=1, env=env, credentials=creds)
    daemon.wait_live()
    assert len(daemon.events("token_updated")) == 1
    assert sim.stats()["logins"] == 1  # the losers were never tried


def test_group_readable_credentials_file_refused(tmp_path: Path, sim_factory: SimFactory,
                                                 daemon_factory: DaemonFactory) -> None:
    """A 0644 credentials file is refused with exit 77 and a message telling to chmod 600, before any login."""
    sim = sim_factory()
    creds = write_credentials(tmp_path / "credentials.toml", mode=0o644)
    daemon = daemon_factory(sim, divisor=1, credentials=creds)
    assert daemon.wait_exit(15) == EX_NOPERM
    output = daemon.output().decode()
    assert "chmod 600" in output and str(creds) in output
    assert sim.stats()["logins"] == 0


def test_missing_credentials_exit_77_naming_every_source(sim_factory: SimFactory,
                                                         daemon_factory: DaemonFactory) -> None:
    """No credentials anywhere: exit 77 with a message naming $CREDENTIALS_DIRECTORY, SHARDSYNC_USERNAME and the
    [credentials] file key."""
    sim = sim_factory()
    daemon = daemon_factory(sim, divisor=1, credentials=False)
    assert daemon.wait_exit(15) == EX_NOPERM
    output = daemon.output().decode()
    assert "CREDENTIALS_DIRECTORY" in output and "SHARDSYNC_USERNAME" in output
    assert "[credentials] file" in output or "credentials.file" in output
    assert sim.stats()["logins"] == 0
