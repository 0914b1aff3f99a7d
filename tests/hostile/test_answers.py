"""Issue 12 item 5 and issue 11 item 3: every answer on a deadline, every refusal told to the parent (a real worker)."""

from __future__ import annotations

import time
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog
from hostile_server import HostileServer, Peer

from integration.worker_harness import WorkerRun
from polling import wait_until
from shardsync import ipc
from wsframes import frame

Hostile = Callable[..., HostileServer]
TOKEN = "hostile-token"  # noqa: S105 - what the hostile server is handed, not a secret


def run_worker(server: HostileServer, tmp_path: Path, **options: object) -> WorkerRun:
    stand_in = types.SimpleNamespace(ws_url=server.url())
    return WorkerRun(stand_in, tmp_path, token=TOKEN, **options)  # type: ignore[arg-type]


def request_id(peer: Peer, endpoint: bytes) -> bytes | None:
    arrival = peer.wait_text(endpoint + b"\n")
    return None if arrival is None else arrival.frame.payload.split(b"\n")[1]


def refuse_authorize(peer: Peer) -> None:
    if peer.accept_websocket(then=frame(0x81, b"o")) and (rid := request_id(peer, b"authorize")) is not None:
        peer.text(b'a[{"s":403,"i":' + rid + b',"d":"Forbidden: this app is not allowed"}]')
    peer.wait_gone(10)


def refuse_sync(peer: Peer) -> None:
    if peer.open_tradovate() and (rid := request_id(peer, b"user/syncrequest")) is not None:
        peer.text(b'a[{"s":400,"i":' + rid + b',"d":"Invalid entity type: bogus"}]')
    peer.wait_gone(10)


REFUSALS = {
    "authorize-403": (refuse_authorize, ("authorize", 403, "Forbidden: this app is not allowed")),
    "syncrequest-400": (refuse_sync, ("user/syncrequest", 400, "Invalid entity type: bogus")),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_refusal_is_rejected_to_the_parent_and_retried_on_the_usual_backoff(
    hostile: Hostile, tmp_path: Path, case: str
) -> None:
    """authorize refused (not 401) or the syncrequest refused (not 429): Rejected(endpoint, status, text) goes
    to the parent each time, and the worker reconnects with its own short backoff (never a NeedToken)."""
    script, (endpoint, status, text) = REFUSALS[case]
    server = hostile(script)
    with run_worker(server, tmp_path) as worker:
        rejected = wait_until(lambda: len(worker.sent(ipc.Rejected)) >= 2 and worker.sent(ipc.Rejected), 15,
                              "two refusals")
        assert {(r.endpoint, r.status, r.text) for r in rejected} == {(endpoint, status, text)}
        assert len(server.peers) >= 2 and not worker.sent(ipc.NeedToken) and not worker.sent(ipc.Throttled)
        assert text in (worker.last_beat().last_error or "")  # type: ignore[union-attr]


def no_open(peer: Peer) -> None:
    peer.accept_websocket()
    peer.wait_gone(10)


def no_authorize_answer(peer: Peer) -> None:
    peer.accept_websocket(then=frame(0x81, b"o"))
    while not peer.stopping and not peer.client_gone.is_set():
        if not peer.text(b"h"):  # alive in every other way: only the answer never comes
            return
        peer.client_gone.wait(0.3)


def no_sync_answer(peer: Peer) -> None:
    if peer.open_tradovate():
        while not peer.stopping and not peer.client_gone.is_set():
            if not peer.text(b"h"):
                return
            peer.client_gone.wait(0.3)


@pytest.mark.parametrize(
    ("script", "awaited"),
    [(no_open, "o"), (no_authorize_answer, "authorize"), (no_sync_answer, "user/syncrequest")],
)
def test_a_missing_answer_ends_the_session_at_response_timeout(
    hostile: Hostile, tmp_path: Path, script: Callable[[Peer], None], awaited: str
) -> None:
    """No 'o', no answer to authorize, or none to the syncrequest (the server sends h meanwhile): after
    response_timeout the worker logs response_timeout with what it awaited and connects again."""
    server = hostile(script)
    started = time.monotonic()
    with structlog.testing.capture_logs() as logs, run_worker(server, tmp_path, response_timeout=1.0,
                                                             idle_timeout=30.0) as worker:
        first = server.peer(0)
        wait_until(lambda: len(server.peers) >= 2, 10, "a second connection")
        # Given up about response_timeout after it was asked (plus the short backoff), far from idle_timeout.
        assert time.monotonic() - started < 6.0
        assert first.wait_gone(2)
        timeouts = [e for e in logs if e["event"] == "response_timeout"]
        assert timeouts and timeouts[0]["awaited"] == awaited and timeouts[0]["seconds"] == 1.0
        assert f"no answer to {awaited} within 1 s" in (worker.last_beat().last_error or "")  # type: ignore[union-attr]
