"""A real worker and the API budget: penalties waited out on the socket, refusals and throttles told to the parent."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from worker_harness import WorkerRun

from polling import wait_until
from shardsync import ipc
from shardsync.simulator import Simulator

SimFactory = Callable[..., Simulator]


def test_an_authorize_penalty_is_waited_out_on_the_same_socket(sim_factory: SimFactory, tmp_path: Path) -> None:
    """p-ticket on authorize: the worker waits p-time on the socket (sending [] and heartbeats meanwhile), then
    authorizes again with the ticket (query p-ticket=...) and goes live: one connection, the ticket redeemed."""
    sim = sim_factory()
    sim.socket_penalty("authorize", "ticket", count=1, p_time=3.0)
    with WorkerRun(sim, tmp_path) as worker:
        started = time.monotonic()
        worker.wait_live(timeout=15)
        assert time.monotonic() - started >= 2.5
        stats = sim.stats()
        assert stats["ws_connections_total"] == 1 and stats["authorize_attempts"] == 2
        assert stats["socket_penalties"]["authorize"]["issued"] == 1
        assert stats["socket_penalties"]["authorize"]["redeemed"] == 1
        assert any(beats for beats in stats["heartbeats"].values())  # the client [] during the wait
        waiting = [b for b in worker.beats() if b.state == "authorizing"]
        assert len(waiting) >= 5  # heartbeats to the parent every 0.2 s while it waited
        assert not worker.sent(ipc.Rejected) and not worker.sent(ipc.Throttled)
        worker.wait_converged()


def test_a_syncrequest_penalty_resends_it_with_the_ticket(sim_factory: SimFactory, tmp_path: Path) -> None:
    """p-ticket on the syncrequest: the same body again after p-time with "p-ticket" added, on the same socket."""
    sim = sim_factory()
    sim.socket_penalty("syncrequest", "ticket", count=1, p_time=1.0)
    with WorkerRun(sim, tmp_path) as worker:
        worker.wait_live(timeout=15)
        stats = sim.stats()
        first, second = (s["body"] for s in stats["syncrequests"])
        assert "p-ticket" not in first and isinstance(second.pop("p-ticket"), str) and second == first
        assert stats["ws_connections_total"] == 1
        assert stats["socket_penalties"]["syncrequest"]["redeemed"] == 1
        worker.wait_converged()


@pytest.mark.parametrize("endpoint", ["authorize", "syncrequest"])
def test_a_captcha_is_throttled_to_the_parent_and_the_retry_waits_for_a_permit(
    sim_factory: SimFactory, tmp_path: Path, endpoint: str
) -> None:
    """p-captcha: Throttled(captcha) to the parent, the session ends with a clear last_error, and the next
    connection waits for the parent's permit (no long local backoff), then goes live."""
    sim = sim_factory()
    sim.socket_penalty(endpoint, "captcha", count=1)
    with WorkerRun(sim, tmp_path, permits=True) as worker:
        worker.give(ipc.Permit())
        throttled = wait_until(lambda: worker.sent(ipc.Throttled), 10, "Throttled")
        assert throttled[0].reason == "captcha"
        assert throttled[0].endpoint == ("authorize" if endpoint == "authorize" else "user/syncrequest")
        beat = wait_until(lambda: (b := worker.last_beat()) and b.state == "waiting_permit" and b, 10, "asks a permit")
        assert "captcha" in (beat.last_error or "")
        assert sim.stats()["ws_connections_total"] == 1
        worker.give(ipc.Permit())
        worker.wait_live(after_reconnects=1)
        assert sim.stats()["ws_connections_total"] == 2


def test_a_ws_429_is_throttled_to_the_parent(sim_factory: SimFactory, tmp_path: Path) -> None:
    """A 429 answer to the syncrequest: Throttled(ws429, user/syncrequest) to the parent, never a Rejected."""
    sim = sim_factory()
    sim.ws429(1)
    with WorkerRun(sim, tmp_path, quota_backoff=0.2) as worker:
        worker.wait_live(after_reconnects=1)
        assert [(t.reason, t.endpoint) for t in worker.sent(ipc.Throttled)] == [("ws429", "user/syncrequest")]
        assert not worker.sent(ipc.Rejected)


def test_a_quota_shutdown_is_throttled_to_the_parent(sim_factory: SimFactory, tmp_path: Path) -> None:
    """ConnectionQuotaReached: Throttled(quota) with the reason in its text; a Maintenance shutdown is not."""
    sim = sim_factory()
    with WorkerRun(sim, tmp_path, quota_backoff=0.2) as worker:
        worker.wait_live()
        sim.shutdown(reason_code="Maintenance", remainder=0)
        worker.wait_live(after_reconnects=1)
        assert not worker.sent(ipc.Throttled)
        sim.shutdown(reason_code="ConnectionQuotaReached", remainder=0)
        worker.wait_live(after_reconnects=2)
        throttled = worker.sent(ipc.Throttled)
        assert [(t.reason, t.endpoint) for t in throttled] == [("quota", "websocket")]
        assert "ConnectionQuotaReached" in throttled[0].text
