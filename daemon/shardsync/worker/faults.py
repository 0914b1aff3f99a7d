"""What can end a WebSocket connection: :class:`ConnectionLost` and the kinds a session may log apart."""

from __future__ import annotations

__all__ = ["ConnectionLost", "HandshakeFailed", "MessageTooLarge", "ProtocolViolation"]

class ConnectionLost(Exception):
    """The socket failed or the server closed it; the session ends and reconnects."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        self.code = code
        super().__init__(reason)


class HandshakeFailed(ConnectionLost):
    """TCP, TLS or the HTTP upgrade failed or took longer than ``handshake_timeout``.

    ``status`` is the HTTP status when the server answered one (a redirect
    among them: never followed), ``location_host`` the host a redirect
    pointed to (only the host: a Location may carry anything).
    """

    def __init__(self, reason: str, *, status: int | None = None, location_host: str | None = None) -> None:
        self.status = status
        self.location_host = location_host
        super().__init__(reason)


class MessageTooLarge(ConnectionLost):
    """A frame header announced, or fragments added up to, more than ``max_message_bytes``; nothing more was read."""

    def __init__(self, reason: str, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(reason, 1009)


class ProtocolViolation(ConnectionLost):
    """A frame no server may send (masked, reserved bits or opcode, a bad control frame or fragment order)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, 1002)
