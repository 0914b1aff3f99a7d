"""Fixtures for the hostile-server tests: servers stopped at teardown, a throwaway CA (trustme) and its PEM."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from hostile_server import HostileServer, Script, tls_server_context


@pytest.fixture
def hostile() -> Iterator[Callable[..., HostileServer]]:
    """Start hostile servers (``hostile(script, tls=context)``); every one stops at teardown."""
    started: list[HostileServer] = []

    def make(script: Script, *, tls: ssl.SSLContext | None = None) -> HostileServer:
        server = HostileServer(script, tls=tls).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A throwaway certificate authority, trusted by nothing on this machine."""
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The CA's certificate as a PEM file: what an operator puts in ``[tradovate] ca_file``."""
    path: Path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="session")
def tls(ca: trustme.CA) -> ssl.SSLContext:
    """A server context whose certificate (from ``ca``) is for 127.0.0.1 and localhost."""
    return tls_server_context(ca, "127.0.0.1", "localhost")


@pytest.fixture(scope="session")
def tls_other_host(ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate from ``ca`` for another host (other.example) only."""
    return tls_server_context(ca, "other.example")
