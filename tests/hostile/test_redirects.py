"""Issue 12, item 1: redirects are never followed, on the WebSocket handshake or the REST login and renewal."""

from __future__ import annotations

import ssl
import types
from collections.abc import Callable
from pathlib import Path

import pytest
from hostile_server import HostileServer, Peer, http_response

from integration.worker_harness import WorkerRun
from polling import wait_until
from shardsync.auth import Failed, renew_token, request_token
from shardsync.credentials import Credentials
from shardsync.worker.connection import Connection, HandshakeFailed

Hostile = Callable[..., HostileServer]
CREDENTIALS = Credentials("alice", "the-password", "the-api-secret")
APP = {"app_id": "test", "app_version": "1", "cid": 1, "device_id": "dev"}
TOKEN = "the-bearer-token-xyz"  # noqa: S105 - a test value


def record_everything(peer: Peer) -> None:
    """A server that only listens: every byte a client sends it is recorded."""
    peer.record()
    peer.wait_gone(10)


def redirect_to(location: str, status: int = 302) -> Callable[[Peer], None]:
    def script(peer: Peer) -> None:
        peer.read_request()
        peer.send(http_response(status, {"Location": location}, b"moved"))

    return script


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_wss_handshake_redirected_to_plain_ws_elsewhere_fails_and_nothing_reaches_the_target(
    hostile: Hostile, tls: ssl.SSLContext, ca_file: str, status: int
) -> None:
    """wss -> 3xx to ws:// on another port: HandshakeFailed naming status and host; the target gets no byte."""
    target = hostile(record_everything)
    first = hostile(redirect_to(target.url("/v1/websocket?token=leak"), status), tls=tls)
    with pytest.raises(HandshakeFailed) as caught:
        Connection.open(first.url(), handshake_timeout=5, ca_file=ca_file)
    error = caught.value
    assert error.status == status and error.location_host == "127.0.0.1"
    assert f"HTTP {status}" in str(error) and "127.0.0.1" in str(error) and "not followed" in str(error)
    assert "leak" not in str(error)  # only the Location's host is named
    assert first.peer().head.startswith(b"GET /v1/websocket HTTP/1.1")  # the configured server was asked
    assert target.peers == [] and target.received() == b""


def test_a_real_worker_redirected_never_sends_its_token_and_reports_status_and_host(
    hostile: Hostile, tmp_path: Path
) -> None:
    """The worker's handshake answered 302 to another server: its error names 302 and the host; no token anywhere."""
    target = hostile(record_everything)
    first = hostile(redirect_to(target.url()))
    stand_in = types.SimpleNamespace(ws_url=first.url())
    with WorkerRun(stand_in, tmp_path, token=TOKEN) as worker:  # type: ignore[arg-type]
        beat = wait_until(lambda: (b := worker.last_beat()) and b.last_error and b, 10, "the failed connect reported")
        wait_until(lambda: len(first.peers) >= 2, 10, "a retry (to the configured server again)")
    assert "HTTP 302, a redirect to 127.0.0.1: not followed" in beat.last_error
    assert target.peers == [] and target.received() == b""
    assert TOKEN.encode() not in first.received()


def test_a_redirect_to_a_host_name_is_named_by_host_only(hostile: Hostile) -> None:
    """A Location with a foreign host, path and query: the error names just the host; a relative one says so."""
    server = hostile(redirect_to("wss://evil.example:8443/steal?x=1"))
    with pytest.raises(HandshakeFailed, match=r"HTTP 302, a redirect to evil\.example: not followed") as caught:
        Connection.open(server.url(), handshake_timeout=5)
    assert caught.value.location_host == "evil.example" and "steal" not in str(caught.value)
    relative = hostile(redirect_to("/elsewhere", 307))
    with pytest.raises(HandshakeFailed, match=r"HTTP 307, a redirect to \(the same host\)"):
        Connection.open(relative.url(), handshake_timeout=5)


def rest_redirect(location: str) -> Callable[[Peer], None]:
    def script(peer: Peer) -> None:
        peer.read_request()
        peer.send(http_response(302, {"Location": location}))

    return script


@pytest.mark.parametrize("call", ["login", "renewal"])
def test_rest_login_and_renewal_redirected_https_to_http_send_nothing_to_the_target(
    hostile: Hostile, tls: ssl.SSLContext, ca_file: str, call: str
) -> None:
    """https REST answering 302 to http:// elsewhere: a Failed naming status and host; the target gets no request."""
    target = hostile(record_everything)
    first = hostile(rest_redirect(target.http_url("/v1/auth/steal")), tls=tls)
    if call == "login":
        outcome = request_token(first.http_url(), CREDENTIALS, timeout=5, ca_file=ca_file, **APP)
    else:
        outcome = renew_token(first.http_url(), TOKEN, timeout=5, ca_file=ca_file)
    assert isinstance(outcome, Failed)
    assert "HTTP 302 redirect to 127.0.0.1 refused" in outcome.reason
    for secret in (TOKEN, "the-password", "the-api-secret", "steal"):
        assert secret not in outcome.reason
    asked = first.received()
    if call == "renewal":
        assert f"Authorization: Bearer {TOKEN}".encode() in asked  # to the configured host only
    assert target.peers == [] and target.received() == b""


def test_a_plain_http_rest_redirect_is_refused_too(hostile: Hostile) -> None:
    """http://127.0.0.1 (the simulator's form) answering 302 to another loopback port: refused, target untouched."""
    target = hostile(record_everything)
    first = hostile(rest_redirect(target.http_url("/v1/auth/renewaccesstoken")))
    outcome = renew_token(first.http_url(), TOKEN, timeout=5)
    assert isinstance(outcome, Failed) and "HTTP 302 redirect to 127.0.0.1" in outcome.reason
    assert target.received() == b""
