"""Issue 12, item 5 (the handshake): TCP, TLS and the HTTP upgrade, headers included, within handshake_timeout."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hostile_server import HostileServer, Peer, http_response

from shardsync.worker.connection import Connection, HandshakeFailed
from wsframes import frame

Hostile = Callable[..., HostileServer]
PROBE = Path(__file__).with_name("probe.py")
#: What a handshake may take beyond handshake_timeout (scheduling on a loaded 2-core machine).
MARGIN = 0.5


def probe(url: str, *args: str) -> dict[str, object]:
    """Run probe.py against ``url`` in a fresh process; its JSON report."""
    result = subprocess.run([sys.executable, str(PROBE), url, *args], capture_output=True, text=True, timeout=60,
                            check=True)
    report: dict[str, object] = json.loads(result.stdout)
    return report


def trickled_headers(peer: Peer) -> None:
    """A valid-looking 101 response whose header bytes come one every 50 ms, forever (a long header line)."""
    peer.read_request()
    peer.trickle(b"HTTP/1.1 101 Switching Protocols\r\nX-Slow: " + b"s" * 100_000, every=0.05)


def endless_header_line(peer: Peer) -> None:
    """A status line, then one header line that never ends, as fast as the client reads it."""
    peer.read_request()
    peer.send(b"HTTP/1.1 101 Switching Protocols\r\nX-Endless: ")
    while peer.send(b"e" * 65536):
        pass


def silent_after_request(peer: Peer) -> None:
    """Reads the upgrade request and never answers."""
    peer.read_request()
    peer.wait_gone(30)


def silent(peer: Peer) -> None:
    """Accepts TCP and never says anything (for wss: the TLS handshake never completes)."""
    peer.wait_gone(30)


def big_error_page(peer: Peer) -> None:
    """A 503 announcing (and starting) a 2 MB body, as a proxy's error page would."""
    peer.read_request()
    peer.send(http_response(503, {"Server": "x" * 300}, b"<html>" + b"e" * 2_000_000))


def timed_open(url: str, timeout: float, **kwargs: object) -> tuple[HandshakeFailed, float]:
    started = time.monotonic()
    with pytest.raises(HandshakeFailed) as caught:
        Connection.open(url, handshake_timeout=timeout, **kwargs)  # type: ignore[arg-type]
    return caught.value, time.monotonic() - started


def test_headers_trickled_a_byte_at_a_time_fail_at_the_handshake_deadline(hostile: Hostile) -> None:
    """A server sending a header byte every 50 ms (each read succeeds) is cut off at handshake_timeout."""
    server = hostile(trickled_headers)
    error, took = timed_open(server.url(), 1.0)
    assert "the upgrade response not done within handshake_timeout (1 s)" in str(error)
    assert 1.0 <= took < 1.0 + MARGIN


def test_an_endless_header_line_fails_at_once_with_bounded_memory(hostile: Hostile) -> None:
    """A header line that never ends is refused after 16 KiB, long before the deadline; peak RSS grows < 4 MiB."""
    server = hostile(endless_header_line)
    report = probe(server.url(), "--handshake-timeout", "20")
    assert report["error"] == "HandshakeFailed" and "head longer than 16384 bytes" in str(report["message"])
    assert float(report["elapsed"]) < 2.0  # type: ignore[arg-type]
    grown = int(report["hwm_after_kib"]) - int(report["hwm_before_kib"])  # type: ignore[call-overload]
    assert grown < 4 * 1024, f"peak RSS grew {grown} KiB"


def test_an_unanswered_upgrade_request_fails_at_the_deadline(hostile: Hostile) -> None:
    """A server that reads the request and stays silent: HandshakeFailed at handshake_timeout, not later."""
    server = hostile(silent_after_request)
    error, took = timed_open(server.url(), 0.8)
    assert "not done within handshake_timeout" in str(error)
    assert 0.8 <= took < 0.8 + MARGIN


def test_a_tls_handshake_that_never_completes_fails_at_the_deadline(hostile: Hostile, ca_file: str) -> None:
    """wss:// to a server that accepts TCP and never answers the ClientHello: refused at handshake_timeout."""
    server = hostile(silent)
    error, took = timed_open(server.url().replace("ws://", "wss://"), 0.8, ca_file=ca_file)
    assert "TLS handshake not done within handshake_timeout" in str(error)
    assert 0.8 <= took < 0.8 + MARGIN


def test_a_tls_handshake_trickled_a_byte_at_a_time_fails_at_the_deadline(
    hostile: Hostile, tls: ssl.SSLContext, ca_file: str
) -> None:
    """A relay passing the TLS server's handshake bytes on one every 20 ms (each read succeeds): cut off in time."""
    upstream = hostile(silent_after_request, tls=tls)

    def relay(peer: Peer) -> None:
        with socket.create_connection(("127.0.0.1", upstream.port)) as server_side:
            server_side.settimeout(5)
            peer.sock.settimeout(5)
            server_side.sendall(peer.sock.recv(65536))  # the ClientHello
            peer.trickle(server_side.recv(65536), every=0.02)  # ServerHello, certificate, ...
            peer.wait_gone(10)

    server = hostile(relay)
    error, took = timed_open(server.url().replace("ws://", "wss://"), 1.0, ca_file=ca_file)
    assert "TLS handshake not done within handshake_timeout (1 s)" in str(error)
    assert 1.0 <= took < 1.0 + MARGIN


def test_the_deadline_covers_tls_and_headers_together(hostile: Hostile, tls: ssl.SSLContext, ca_file: str) -> None:
    """Over TLS, trickled headers are cut off at the one deadline too (TLS took part of it)."""
    server = hostile(trickled_headers, tls=tls)
    error, took = timed_open(server.url(), 1.0, ca_file=ca_file)
    assert "not done within handshake_timeout (1 s)" in str(error)
    assert 1.0 <= took < 1.0 + MARGIN


def test_a_refusal_with_a_huge_body_is_reported_by_status_without_reading_the_body(hostile: Hostile) -> None:
    """HTTP 503 with a 2 MB page: HandshakeFailed 'HTTP 503' at once; the reason is short, the body unread."""
    server = hostile(big_error_page)
    error, took = timed_open(server.url(), 5.0)
    assert error.status == 503 and "handshake refused: HTTP 503 Whatever" in str(error)
    assert len(str(error)) < 400 and took < 1.0


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bogus\r\n\r\n",
         "wrong Sec-WebSocket-Accept"),
        (b"HTTP/1.1 101 OK\r\nConnection: Upgrade\r\n\r\n", "without Upgrade: websocket"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP response"),
        (b"HTTP/1.1 200 OK\r\n\r\n", "HTTP 200"),
        (b"HTTP/1.1 101 OK\r\nno colon here\r\n\r\n", "malformed response header"),
    ],
)
def test_a_wrong_upgrade_answer_is_refused(hostile: Hostile, answer: bytes, match: str) -> None:
    """A 101 with a wrong accept key or no Upgrade header, a non-HTTP answer or a 200: HandshakeFailed."""

    def script(peer: Peer) -> None:
        peer.read_request()
        peer.send(answer)
        peer.wait_gone(5)

    server = hostile(script)
    with pytest.raises(HandshakeFailed, match=match):
        Connection.open(server.url(), handshake_timeout=5)


def test_frames_sent_right_after_the_101_are_not_lost(hostile: Hostile) -> None:
    """A server that sends 'o' in the same packet as its 101: the first recv returns it."""

    def script(peer: Peer) -> None:
        peer.accept_websocket(then=frame(0x81, b"o") + frame(0x81, b"a[1]"))
        peer.wait_gone(5)

    server = hostile(script)
    conn = Connection.open(server.url(), handshake_timeout=5)
    try:
        assert conn.buffered()
        assert conn.recv(1) == b"o" and conn.recv(1) == b"a[1]"
    finally:
        conn.abort()
