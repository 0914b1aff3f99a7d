"""A scriptable hostile server on raw sockets: it records every byte a client sends and does whatever its script says.

A script is a function of one :class:`Peer` (one accepted connection), run
on its own thread.  It can speak HTTP and WebSocket correctly
(:meth:`Peer.accept_websocket`, :meth:`Peer.frame`, :func:`http_response`)
or not at all (:meth:`Peer.send` any bytes, trickle them, stall, reset).
Every byte the client sends is recorded (:attr:`Peer.received`, and the
frames it makes, with their arrival times, in :meth:`Peer.client_frames`),
so a test can prove what did, and what did not, reach a server.

TLS: give a server-side ``ssl.SSLContext`` (``tls_server_context`` makes one
from a ``trustme`` CA); the handshake runs on the connection's thread.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from polling import wait_until
from wsframes import ClientFrame, frame, parse_frames

Script = Callable[["Peer"], None]
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass(frozen=True)
class Arrival:
    """One frame from the client and when (monotonic) the server had all of it."""

    at: float
    frame: ClientFrame


class Peer:
    """One accepted client connection, as the script sees it."""

    def __init__(self, sock: socket.socket, server: HostileServer) -> None:
        self.sock = sock
        self.server = server
        self.received = bytearray()
        self.head = b""  # the client's HTTP request head, once read
        self.arrivals: list[Arrival] = []
        self.client_gone = threading.Event()
        self.sent = 0  # bytes the kernel took from the script
        self.tls_error: str | None = None
        self._lock = threading.Lock()
        self._recording = False
        self._unparsed = b""

    @property
    def stopping(self) -> bool:
        return self.server.stopped.is_set()

    # --- reading the client ------------------------------------------------------------

    def read_request(self, timeout: float = 5.0, limit: int = 1 << 16) -> bytes:
        """The client's HTTP request head (up to the blank line), its body (Content-Length) read and recorded.

        Bytes after that are kept for :meth:`client_frames` (a WebSocket client's first frames).
        """
        self.sock.settimeout(timeout)
        data = b""
        while b"\r\n\r\n" not in data and len(data) < limit:
            if not self._read_into_record(4096):
                break
            data = bytes(self.received)
        head, _, rest = data.partition(b"\r\n\r\n")
        self.head = head
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(rest) < length and self._read_into_record(length - len(rest)):
            rest = bytes(self.received).partition(b"\r\n\r\n")[2]
        self._feed(rest[length:])
        return head

    def _read_into_record(self, size: int) -> bool:
        chunk = self.sock.recv(size)
        if not chunk:
            self.client_gone.set()
            return False
        with self._lock:
            self.received += chunk
        return True

    def record(self) -> None:
        """From now on a thread reads (and records) everything the client sends, until it goes."""
        if self._recording:
            return
        self._recording = True
        threading.Thread(target=self._record, daemon=True, name="hostile-recorder").start()

    def _record(self) -> None:
        try:
            self.sock.settimeout(0.2)
        except OSError:  # already closed
            self.client_gone.set()
            return
        while not self.stopping:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except (OSError, ValueError):
                break
            if not chunk:
                break
            with self._lock:
                self.received += chunk
            self._feed(chunk)
        self.client_gone.set()

    def _feed(self, chunk: bytes) -> None:
        now = time.monotonic()
        frames, self._unparsed = parse_frames(self._unparsed + chunk)
        with self._lock:
            self.arrivals += [Arrival(now, f) for f in frames]

    def wait_text(self, starts: bytes, timeout: float = 10.0) -> Arrival | None:
        """The first text frame from the client whose payload starts with ``starts`` (None: not within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            gone = self.client_gone.is_set()
            for arrival in self.texts():
                if arrival.frame.payload.startswith(starts):
                    return arrival
            if gone or self.stopping or time.monotonic() > deadline:
                return None
            self.client_gone.wait(0.01)

    def open_tradovate(self) -> bool:
        """Upgrade, send 'o', and answer the client's ``authorize`` (any token) with status 200."""
        if not self.accept_websocket(then=frame(0x81, b"o")):
            return False
        authorize = self.wait_text(b"authorize\n")
        if authorize is None:
            return False
        request_id = authorize.frame.payload.split(b"\n")[1].decode()
        return self.text(b'a[{"s":200,"i":' + request_id.encode() + b"}]")

    def client_frames(self) -> list[Arrival]:
        with self._lock:
            return list(self.arrivals)

    def texts(self) -> list[Arrival]:
        """The client's text frames (their payloads in ``.frame.payload``) with arrival times."""
        return [a for a in self.client_frames() if a.frame.opcode == 0x1]

    # --- writing to the client ---------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """Send ``data``; False once the client is gone or the server stops."""
        view = memoryview(data)
        self.sock.settimeout(0.2)
        while view and not self.stopping:
            try:
                count = self.sock.send(view)
            except TimeoutError:
                continue
            except (OSError, ValueError):
                self.client_gone.set()
                return False
            self.sent += count
            view = view[count:]
        return not view

    def frame(self, first: int, payload: bytes) -> bool:
        return self.send(frame(first, payload))

    def text(self, payload: bytes) -> bool:
        return self.frame(0x81, payload)

    def trickle(self, data: bytes, every: float) -> bool:
        """Send ``data`` a byte at a time, one every ``every`` seconds (until the client goes)."""
        for byte in data:
            if self.server.stopped.wait(every):
                return False
            if not self.send(bytes([byte])):
                return False
        return True

    def accept_websocket(self, timeout: float = 5.0, *, then: bytes = b"") -> bool:
        """Read the upgrade request, answer 101 correctly (``then``, e.g. first frames, in the same send); record."""
        head = self.read_request(timeout)
        key = next((line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                    if line.lower().startswith(b"sec-websocket-key:")), b"")
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()  # noqa: S324 - RFC 6455
        self.record()
        return self.send(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode() + then
        )

    def wait_gone(self, timeout: float) -> bool:
        """Keep the connection open (recording) until the client goes, the server stops or ``timeout`` passes."""
        self.record()
        deadline = time.monotonic() + timeout
        while not self.client_gone.wait(0.05):
            if self.stopping or time.monotonic() > deadline:
                return False
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class HostileServer:
    """Listens on 127.0.0.1 (a random free port) and runs ``script`` for each connection."""

    def __init__(self, script: Script, *, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.peers: list[Peer] = []
        self.stopped = threading.Event()
        self.errors: list[BaseException] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []

    def url(self, path: str = "/v1/websocket", *, host: str = "127.0.0.1") -> str:
        scheme = "wss" if self.tls else "ws"
        return f"{scheme}://{host}:{self.port}{path}"

    def http_url(self, path: str = "/v1", *, host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def start(self) -> HostileServer:
        thread = threading.Thread(target=self._accept, daemon=True, name="hostile-accept")
        thread.start()
        self._threads.append(thread)
        return self

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True, name="hostile-peer")
            thread.start()
            self._threads.append(thread)

    def _serve(self, sock: socket.socket) -> None:
        if self.tls is not None:
            try:
                sock.settimeout(5)
                sock = self.tls.wrap_socket(sock, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                peer = Peer(sock, self)
                peer.tls_error = f"{type(exc).__name__}: {exc}"
                self.peers.append(peer)
                sock.close()
                return
        peer = Peer(sock, self)
        self.peers.append(peer)
        try:
            self.script(peer)
        except (OSError, ValueError):
            pass  # the client went away mid-script: what the tests look at is recorded
        except BaseException as exc:
            self.errors.append(exc)
            raise
        finally:
            # A script that wants the connection kept open waits (peer.wait_gone) before returning.
            # A recorder is given a moment to read what the client sent last (closing would drop it).
            if peer._recording:
                peer.client_gone.wait(1.0)
            peer.close()

    def received(self) -> bytes:
        """Every byte any client sent to this server (TLS: after decryption)."""
        return b"".join(bytes(peer.received) for peer in list(self.peers))

    def peer(self, index: int = 0, timeout: float = 5.0) -> Peer:
        """The ``index``-th connection, waiting up to ``timeout`` for it."""
        wait_until(lambda: len(self.peers) > index, timeout, f"connection #{index}")
        return self.peers[index]

    def stop(self) -> None:
        self.stopped.set()
        self._listener.close()
        for peer in list(self.peers):
            with contextlib.suppress(OSError):
                peer.sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)
        for peer in list(self.peers):
            peer.close()
        assert not self.errors, self.errors


def http_response(status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status} Whatever"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def tls_server_context(ca: object, *hosts: str) -> ssl.SSLContext:
    """A server context with a certificate for ``hosts`` issued by the ``trustme`` CA ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*hosts).configure_cert(context)  # type: ignore[attr-defined]
    return context


@contextlib.contextmanager
def serving(script: Script, *, tls: ssl.SSLContext | None = None) -> Iterator[HostileServer]:
    server = HostileServer(script, tls=tls).start()
    try:
        yield server
    finally:
        server.stop()
