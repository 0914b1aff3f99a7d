"""sd_notify from the real daemon, received on our own NOTIFY_SOCKET with the sender's kernel credentials."""

from __future__ import annotations

import itertools
import re
import shutil
import signal
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import Daemon, wait_until

from shardsync.simulator import Simulator

_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid
STATUS_LINE = re.compile(r"^\d+/4 live, \d+ backoff, \d+ parked(, .+)?$")


@dataclass(frozen=True)
class Message:
    """One datagram: its fields, the sender pid the kernel vouches for, and when it arrived."""

    fields: dict[str, str]
    pid: int
    at: float


class NotifySocket:
    """An AF_UNIX datagram socket with SO_PASSCRED, read without blocking."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[Message] = []

    def drain(self) -> list[Message]:
        """Every message received so far (new ones are read first)."""
        while True:
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(65536, socket.CMSG_SPACE(_CREDS.size))
            except BlockingIOError:
                return self.messages
            pid = -1
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _CREDS.unpack(payload[: _CREDS.size])[0]
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(Message(fields, pid, time.monotonic()))

    def having(self, key: str, value: str | None = None) -> list[Message]:
        return [m for m in self.drain() if key in m.fields and (value is None or m.fields[key] == value)]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    """A notify socket in a short private directory (sun_path holds only 108 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="ssn-"))
    sock = NotifySocket(directory / "notify")
    yield sock
    sock.close()
    shutil.rmtree(directory, ignore_errors=True)


def test_sd_notify_messages_come_only_from_the_parent(sim_factory: Callable[..., Simulator],
                                                      daemon_factory: Callable[..., Daemon],
                                                      notify_socket: NotifySocket) -> None:
    """READY, STATUS, WATCHDOG, RELOADING/READY and STOPPING are sent by the daemon's pid alone, workers stay silent."""
    sim = sim_factory()
    daemon = daemon_factory(sim, env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "1000000"})

    ready = wait_until(lambda: notify_socket.having("READY", "1"), 30, "READY=1")[0]
    shards = daemon.shards()
    assert all(s["state"] == "live" for s in shards.values())
    assert ready.fields.get("STATUS") == "4/4 live, 0 backoff, 0 parked"
    assert daemon.events("ready")[0]["all_live"] is True

    statuses = [m.fields["STATUS"] for m in notify_socket.having("STATUS")]
    assert all(STATUS_LINE.match(s) for s in statuses), statuses
    assert "4/4 live, 0 backoff, 0 parked" in statuses

    # WATCHDOG=1 at half of WATCHDOG_USEC, all along.
    seen = len(notify_socket.having("WATCHDOG"))
    wait_until(lambda: len(notify_socket.having("WATCHDOG")) >= seen + 5, 10, "five more WATCHDOG=1")
    pings = [m.at for m in notify_socket.having("WATCHDOG", "1")]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert min(gaps) >= 0.4 and max(gaps) < 1.0, gaps

    # Workers do not carry the notify variables, even in their original environment block.
    for remainder, pid in daemon.pids().items():
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        for name in (b"NOTIFY_SOCKET", b"WATCHDOG_USEC", b"WATCHDOG_PID"):
            assert name not in environ, f"worker {remainder} (pid {pid}) has {name.decode()} in /proc/PID/environ"

    # SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
    readies = len(notify_socket.having("READY"))
    before_hup = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    daemon.signal(signal.SIGHUP)
    reloading = wait_until(lambda: notify_socket.having("RELOADING", "1"), 10, "RELOADING=1")[0]
    assert before_hup <= int(reloading.fields["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    wait_until(lambda: len(notify_socket.having("READY", "1")) > readies, 10, "READY=1 after the reload")
    messages = notify_socket.drain()
    assert messages.index(reloading) < messages.index(notify_socket.having("READY", "1")[-1])

    # SIGTERM: STOPPING=1, then a clean exit.
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(15) == 0
    stopping = notify_socket.having("STOPPING", "1")
    assert len(stopping) == 1
    assert not [m for m in notify_socket.drain() if m.at > stopping[0].at and "READY" in m.fields]

    senders = {m.pid for m in notify_socket.drain()}
    assert senders == {daemon.pid}, f"messages from {senders - {daemon.pid}} (daemon is {daemon.pid})"
