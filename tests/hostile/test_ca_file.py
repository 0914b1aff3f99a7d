"""Issue 12, item 8: ``ca_file`` works for wss:// and https://; without it or for another host: refused, no fallback."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import orjson
import pytest
from hostile_server import HostileServer, Peer, http_response

from shardsync.auth import Failed, Grant, renew_token, request_token
from shardsync.credentials import Credentials
from shardsync.worker.connection import Connection, HandshakeFailed
from wsframes import frame, next_item

Hostile = Callable[..., HostileServer]
CREDENTIALS = Credentials("alice", "the-password", "the-api-secret")
APP = {"app_id": "test", "app_version": "1", "cid": 1, "device_id": "dev"}
GRANT = {"accessToken": "tok-123", "expirationTime": "2099-01-01T00:00:00Z", "userId": 7}


def websocket_open(peer: Peer) -> None:
    """A correct WebSocket server that sends Tradovate's 'o' and waits."""
    peer.accept_websocket(then=frame(0x81, b"o"))
    peer.wait_gone(10)


def token_server(peer: Peer) -> None:
    """A REST server answering any request with a token grant."""
    peer.read_request()
    peer.send(http_response(200, {"Content-Type": "application/json"}, orjson.dumps(GRANT)))


def test_wss_with_the_ca_file_connects(hostile: Hostile, tls: ssl.SSLContext, ca_file: str) -> None:
    """With ca_file naming the private CA, the wss handshake succeeds and the first frame arrives."""
    server = hostile(websocket_open, tls=tls)
    conn = Connection.open(server.url(), handshake_timeout=5, ca_file=ca_file)
    try:
        assert next_item(conn) == b"o"
    finally:
        conn.close(timeout=0.2)


def test_wss_by_host_name_with_the_ca_file_connects(hostile: Hostile, tls: ssl.SSLContext, ca_file: str) -> None:
    """The certificate's DNS name (localhost) is checked as well as its IP address."""
    server = hostile(websocket_open, tls=tls)
    conn = Connection.open(server.url(host="localhost"), handshake_timeout=5, ca_file=ca_file)
    conn.abort()


def test_wss_without_the_ca_file_is_refused(hostile: Hostile, tls: ssl.SSLContext) -> None:
    """Without ca_file (system CAs only) the private CA's certificate is refused, with a clear reason."""
    server = hostile(websocket_open, tls=tls)
    with pytest.raises(HandshakeFailed, match="TLS certificate refused: unable to get local issuer certificate"):
        Connection.open(server.url(), handshake_timeout=5)
    assert server.received() == b""  # no upgrade request (nothing at all) went over the refused channel


def test_wss_with_a_certificate_for_another_host_is_refused(
    hostile: Hostile, tls_other_host: ssl.SSLContext, ca_file: str
) -> None:
    """A certificate from the trusted CA but for other.example: refused as a host name mismatch."""
    server = hostile(websocket_open, tls=tls_other_host)
    with pytest.raises(HandshakeFailed, match="TLS certificate refused: IP address mismatch"):
        Connection.open(server.url(), handshake_timeout=5, ca_file=ca_file)
    assert server.received() == b""


def test_wss_to_a_plaintext_server_is_never_downgraded(hostile: Hostile, ca_file: str) -> None:
    """wss:// to a server speaking plain HTTP: the TLS handshake fails and no plaintext request is ever sent."""

    def plaintext(peer: Peer) -> None:
        peer.record()
        peer.send(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        peer.wait_gone(5)

    server = hostile(plaintext)
    with pytest.raises(HandshakeFailed, match="TLS handshake failed"):
        Connection.open(server.url().replace("ws://", "wss://"), handshake_timeout=5, ca_file=ca_file)
    assert server.peer().wait_gone(5)  # everything the client ever sent is recorded
    received = server.received()
    assert received[:1] == b"\x16"  # a TLS ClientHello record
    assert b"GET " not in received and b"Upgrade" not in received


def test_an_unusable_ca_file_is_a_clear_error(hostile: Hostile, tls: ssl.SSLContext, tmp_path: object) -> None:
    """A ca_file that is not PEM: HandshakeFailed naming it (and renewal a Failed naming it), no traceback."""
    bad = f"{tmp_path}/bad.pem"
    with open(bad, "w") as file:
        file.write("not a certificate\n")
    server = hostile(websocket_open, tls=tls)
    with pytest.raises(HandshakeFailed, match="is not a usable PEM CA bundle"):
        Connection.open(server.url(), handshake_timeout=5, ca_file=bad)
    outcome = renew_token(server.http_url(), "tok", timeout=5, ca_file=bad)
    assert isinstance(outcome, Failed) and "is not a usable PEM CA bundle" in outcome.reason


def test_https_login_and_renewal_with_the_ca_file_work(hostile: Hostile, tls: ssl.SSLContext, ca_file: str) -> None:
    """With ca_file the REST login and renewal reach the private-CA server and get their grant."""
    server = hostile(token_server, tls=tls)
    assert request_token(server.http_url(), CREDENTIALS, timeout=5, ca_file=ca_file, **APP) == Grant(
        "tok-123", 4070908800.0, 7
    )
    assert isinstance(renew_token(server.http_url(), "tok-old", timeout=5, ca_file=ca_file), Grant)


@pytest.mark.parametrize("call", ["login", "renewal"])
def test_https_without_the_ca_file_or_for_another_host_is_refused(
    hostile: Hostile, tls: ssl.SSLContext, tls_other_host: ssl.SSLContext, ca_file: str, call: str
) -> None:
    """No ca_file, or a certificate for another host: a Failed naming the certificate problem; no request sent."""
    for context, use_ca, reason in ((tls, "", "unable to get local issuer certificate"),
                                    (tls_other_host, ca_file, "IP address mismatch")):
        server = hostile(token_server, tls=context)
        if call == "login":
            outcome = request_token(server.http_url(), CREDENTIALS, timeout=5, ca_file=use_ca, **APP)
        else:
            outcome = renew_token(server.http_url(), "tok-old", timeout=5, ca_file=use_ca)
        assert isinstance(outcome, Failed) and reason in outcome.reason
        assert server.received() == b""
