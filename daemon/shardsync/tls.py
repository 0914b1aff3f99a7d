"""The one TLS client context for wss:// and https://: verified, system CAs plus ``ca_file``."""

from __future__ import annotations

import ssl

__all__ = ["client_context"]


def client_context(ca_file: str = "") -> ssl.SSLContext:
    """Certificate and host name verified against the system CAs and, when given, the PEM bundle ``ca_file``.

    ``ca_file`` adds trust (a private CA or TLS proxy, the test CA) and never
    removes any check: a certificate for another host, or from a CA in
    neither set, is refused; there is no fallback to plaintext or to an
    unverified connection.
    """
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context
