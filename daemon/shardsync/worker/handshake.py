"""The opening of a client WebSocket: TCP, TLS and the HTTP upgrade under one deadline, bounded, never redirected.

websocket-client's ``connect()`` is not used for this: it follows redirects
(to any host and scheme), applies its timeout to each socket operation (a
server trickling a header byte a second never times out), reads response
header lines without a length limit, reads whatever body a refusal
announces, and takes proxies from the environment.  Here every step waits at
most until one deadline, the response head is capped at ``max_header_bytes``,
a 3xx is a failed handshake naming the status and the Location's host, and
the connection goes only where the configured URL says.
"""

from __future__ import annotations

import base64
import hashlib
import os
import select
import socket
import ssl
import time
from typing import Final
from urllib.parse import urlsplit

from shardsync.clip import clip
from shardsync.tls import client_context
from shardsync.worker.faults import HandshakeFailed

__all__ = ["MAX_HEADER_BYTES", "open_socket"]

#: The response head (status line and headers) at most; a real server's is well under 2 KiB.
MAX_HEADER_BYTES: Final = 16 << 10
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class _Deadline:
    """Seconds left until the handshake must be done; raises once none are."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._at = time.monotonic() + timeout

    def left(self, stage: str) -> float:
        left = self._at - time.monotonic()
        if left <= 0:
            raise self.missed(stage)
        return left

    def missed(self, stage: str) -> HandshakeFailed:
        return HandshakeFailed(f"{stage} not done within handshake_timeout ({self.timeout:g} s)")


def open_socket(
    url: str, *, timeout: float, ca_file: str = "", max_header_bytes: int = MAX_HEADER_BYTES
) -> tuple[socket.socket, bytes]:
    """A connected, upgraded socket for ``url`` (ws:// or wss://) and the bytes the server sent after its head."""
    deadline = _Deadline(timeout)
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise HandshakeFailed("the WebSocket URL must be ws:// or wss:// with a host")
    host = parts.hostname
    port = parts.port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(ch <= " " or ch == "\x7f" for ch in resource + host):
        raise HandshakeFailed("the WebSocket URL contains spaces or control characters")
    sock = _tcp(host, port, deadline)
    try:
        if secure:
            sock = _tls(sock, host, ca_file, deadline)
        key = base64.b64encode(os.urandom(16)).decode()
        authority = f"[{host}]" if ":" in host else host
        if parts.port and parts.port != (443 if secure else 80):
            authority += f":{port}"
        request = (
            f"GET {resource} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        try:
            sock.settimeout(deadline.left("sending the upgrade request"))
            sock.sendall(request.encode("ascii"))
        except TimeoutError:
            raise deadline.missed("sending the upgrade request") from None
        except OSError as exc:
            raise HandshakeFailed(f"sending the upgrade request failed: {type(exc).__name__}: {exc}") from None
        head, rest = _read_head(sock, deadline, max_header_bytes)
        _check_response(head, key)
    except BaseException:
        sock.close()
        raise
    return sock, rest


def _tcp(host: str, port: int, deadline: _Deadline) -> socket.socket:
    try:
        # Name resolution has no timeout of its own (the system resolver's applies).
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise HandshakeFailed(f"cannot resolve {clip(host)}: {exc}") from None
    error: OSError | None = None
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(deadline.left("TCP connect"))
            sock.connect(address)
        except TimeoutError:
            sock.close()
            raise deadline.missed("TCP connect") from None
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return sock
    raise HandshakeFailed(f"TCP connect failed: {type(error).__name__}: {error}")


def _tls(sock: socket.socket, host: str, ca_file: str, deadline: _Deadline) -> ssl.SSLSocket:
    try:
        context = client_context(ca_file)
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise HandshakeFailed(f"ca_file {ca_file!r} is not a usable PEM CA bundle: {exc}") from None
    tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    # Non-blocking, so a server that trickles its handshake is cut off at the deadline.
    tls.setblocking(False)
    poller = select.poll()
    poller.register(tls.fileno(), select.POLLIN)
    try:
        while True:
            try:
                tls.do_handshake()
                return tls
            except ssl.SSLWantReadError:
                poller.modify(tls.fileno(), select.POLLIN)
            except ssl.SSLWantWriteError:
                poller.modify(tls.fileno(), select.POLLOUT)
            poller.poll(deadline.left("TLS handshake") * 1000)
    except ssl.SSLCertVerificationError as exc:
        tls.close()
        raise HandshakeFailed(f"TLS certificate refused: {exc.verify_message}") from None
    except (OSError, ValueError) as exc:
        tls.close()
        raise HandshakeFailed(f"TLS handshake failed: {type(exc).__name__}: {clip(str(exc))}") from None
    except BaseException:
        tls.close()
        raise


def _read_head(sock: socket.socket, deadline: _Deadline, limit: int) -> tuple[bytes, bytes]:
    """The response head (up to its blank line) and whatever followed it in the same reads."""
    received = bytearray()
    while True:
        try:
            sock.settimeout(deadline.left("the upgrade response"))
            data = sock.recv(4096)
        except TimeoutError:
            raise deadline.missed("the upgrade response") from None
        except OSError as exc:
            raise HandshakeFailed(f"reading the upgrade response failed: {type(exc).__name__}: {exc}") from None
        if not data:
            raise HandshakeFailed("the server closed the connection during the handshake")
        searched = max(0, len(received) - 3)
        received += data
        ends = [(at, len(mark)) for mark in (b"\r\n\r\n", b"\n\n") if (at := received.find(mark, searched)) >= 0]
        if ends:
            at, size = min(ends)
            if at > limit:
                break
            return bytes(received[:at]), bytes(received[at + size :])
        if len(received) > limit:
            break
    raise HandshakeFailed(f"upgrade response head longer than {limit} bytes")


def _check_response(head: bytes, key: str) -> None:
    lines = head.decode("latin-1").split("\n")
    status_line = lines[0].rstrip("\r")
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not (fields[1].isdigit() and len(fields[1]) == 3):
        raise HandshakeFailed(f"not an HTTP response: {clip(status_line)!r}")
    status = int(fields[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.rstrip("\r").partition(":")
        if not colon:
            raise HandshakeFailed(f"malformed response header line: {clip(line)!r}")
        name = name.strip().lower()
        headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
    if 300 <= status < 400:
        target = _host_of(headers.get("location", ""))
        raise HandshakeFailed(
            f"handshake answered HTTP {status}, a redirect to {target}: not followed", status=status,
            location_host=target,
        )
    if status != 101:
        reason = fields[2] if len(fields) > 2 else ""
        raise HandshakeFailed(f"handshake refused: HTTP {status} {clip(reason)}".rstrip(), status=status)
    if "websocket" not in _tokens(headers.get("upgrade", "")) or "upgrade" not in _tokens(
        headers.get("connection", "")
    ):
        raise HandshakeFailed("HTTP 101 without Upgrade: websocket and Connection: Upgrade")
    expected = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()  # noqa: S324 - RFC 6455
    if headers.get("sec-websocket-accept") != expected:
        raise HandshakeFailed("wrong Sec-WebSocket-Accept in the upgrade response")
    for name in ("sec-websocket-extensions", "sec-websocket-protocol"):
        if headers.get(name):
            raise HandshakeFailed(f"the server chose a {name} nobody asked for")


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",")}


def _host_of(location: str) -> str:
    """The host a Location names, clipped; only the host, since a Location may carry anything else."""
    try:
        host = urlsplit(location.strip()).hostname
    except ValueError:
        return "(an unparsable Location)"
    if host:
        return clip(host, 100)
    return "(the same host)" if location.strip() else "(no Location)"
