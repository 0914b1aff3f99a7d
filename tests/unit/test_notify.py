"""Tests for shardsync.supervisor.notify: exact sd_notify datagrams over a real AF_UNIX socket."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardsync.environ import NOTIFY_VARIABLES, child_environ, scrub_environ
from shardsync.supervisor.notify import Notifier

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound to a path, standing in for systemd's notify socket."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_sends_ready_and_status(receiver: tuple[socket.socket, str]) -> None:
    """ready() sends READY=1 and the status line in one datagram to $NOTIFY_SOCKET."""
    sock, path = receiver
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("4/4 live")
    assert _recv(sock) == "READY=1\nSTATUS=4/4 live"
    assert notifier.ready()
    assert _recv(sock) == "READY=1"


def test_abstract_namespace_socket() -> None:
    """A leading @ in NOTIFY_SOCKET addresses the abstract namespace."""
    name = f"shardsync-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier.from_env({"NOTIFY_SOCKET": "@" + name}).status("hello")
        assert _recv(sock) == "STATUS=hello"


def test_status_stopping_watchdog_datagrams(receiver: tuple[socket.socket, str]) -> None:
    """status(), stopping() and watchdog() send exactly STATUS=, STOPPING=1 and WATCHDOG=1."""
    sock, path = receiver
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    notifier.status("3/4 live, 1 backoff")
    assert _recv(sock) == "STATUS=3/4 live, 1 backoff"
    notifier.stopping()
    assert _recv(sock) == "STOPPING=1"
    notifier.stopping("stopping 4 shards")
    assert _recv(sock) == "STOPPING=1\nSTATUS=stopping 4 shards"
    notifier.watchdog()
    assert _recv(sock) == "WATCHDOG=1"
    notifier.send("WATCHDOG=trigger")
    assert _recv(sock) == "WATCHDOG=trigger"


def test_reloading_carries_monotonic_usec(receiver: tuple[socket.socket, str]) -> None:
    """reloading() sends RELOADING=1 with MONOTONIC_USEC read from CLOCK_MONOTONIC now."""
    sock, path = receiver
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    before = time.monotonic_ns() // 1000
    assert notifier.reloading()
    after = time.monotonic_ns() // 1000
    lines = _recv(sock).split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert value.isdigit()
    assert before <= int(value) <= after
    assert len(lines) == 2


def test_newline_in_a_value_cannot_forge_a_field(receiver: tuple[socket.socket, str]) -> None:
    """A newline inside a status text is flattened, so it cannot inject READY=1."""
    sock, path = receiver
    Notifier.from_env({"NOTIFY_SOCKET": path}).status("bad\nREADY=1")
    assert _recv(sock) == "STATUS=bad READY=1"


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    """WATCHDOG_USEC=30 s gives a 15 s ping interval, with or without a matching WATCHDOG_PID."""
    assert Notifier.from_env({"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(env).watchdog_interval == 1.0
    assert Notifier.from_env({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "42"}, pid=42).watchdog_interval == 1.0


def test_watchdog_for_another_pid_is_disabled() -> None:
    """An inherited WATCHDOG_PID naming another process disables the watchdog (systemd #25961)."""
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_env(env).watchdog_interval is None


@pytest.mark.parametrize("usec", ["", "0", "-5", "abc"])
def test_invalid_watchdog_usec_means_no_watchdog(usec: str) -> None:
    """An empty, zero, negative or non-numeric WATCHDOG_USEC leaves the watchdog off."""
    assert Notifier.from_env({"WATCHDOG_USEC": usec}).watchdog_interval is None


def test_unset_socket_is_a_noop() -> None:
    """Without NOTIFY_SOCKET every helper returns False and sends nothing."""
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not any((notifier.ready("x"), notifier.status("x"), notifier.reloading(), notifier.stopping()))
    assert not notifier.watchdog()
    assert not Notifier.from_env({"NOTIFY_SOCKET": ""}).enabled


def test_socket_that_went_away_does_not_raise(tmp_path: Path) -> None:
    """A notify socket whose owner closed it, or whose file is gone, gives False, not an exception."""
    path = str(tmp_path / "gone.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.close()  # the file stays, nobody listens: ECONNREFUSED
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.ready("x") is False
    os.unlink(path)  # now ENOENT
    assert notifier.watchdog() is False
    assert Notifier.from_env({"NOTIFY_SOCKET": "@" + uuid.uuid4().hex}).stopping() is False


def test_child_environ_drops_notify_variables() -> None:
    """child_environ() returns a copy without NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID."""
    env = {"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1", "PATH": "/bin", "LANG": "C"}
    assert child_environ(env) == {"PATH": "/bin", "LANG": "C"}
    assert "NOTIFY_SOCKET" in env


def test_scrub_environ_removes_them_from_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """scrub_environ() removes the three variables from os.environ and keeps the rest."""
    for key in NOTIFY_VARIABLES:
        monkeypatch.setenv(key, "1")
    monkeypatch.setenv("SHARDSYNC_KEEP", "yes")
    scrub_environ()
    assert not set(NOTIFY_VARIABLES) & set(os.environ)
    assert os.environ["SHARDSYNC_KEEP"] == "yes"
    scrub_environ()  # idempotent


def _sender_pid(sock: socket.socket) -> tuple[str, int]:
    """One datagram and the pid the kernel attached to it (SCM_CREDENTIALS)."""
    creds = struct.Struct("3i")  # struct ucred: pid, uid, gid
    data, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(creds.size))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, _uid, _gid = creds.unpack(payload[: creds.size])
            return data.decode(), pid
    raise AssertionError("no SCM_CREDENTIALS on the datagram")


def test_kernel_sees_this_process_as_sender(receiver: tuple[socket.socket, str]) -> None:
    """The datagram's kernel-stamped sender pid is this process, which NotifyAccess=main requires."""
    sock, path = receiver
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    assert Notifier.from_env({"NOTIFY_SOCKET": path}).ready("up")
    data, pid = _sender_pid(sock)
    assert data == "READY=1\nSTATUS=up"
    assert pid == os.getpid()


def test_sender_pid_is_the_sending_process_not_an_ancestor(receiver: tuple[socket.socket, str]) -> None:
    """A notifier in another process is stamped with that process's pid, so only the parent's messages count."""
    sock, path = receiver
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    code = (
        "import os, sys\n"
        "from shardsync.supervisor.notify import Notifier\n"
        "assert Notifier.from_env().watchdog()\n"
        "print(os.getpid())\n"
    )
    env = {**os.environ, "NOTIFY_SOCKET": path, "PYTHONPATH": str(ROOT / "daemon")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=30)
    data, pid = _sender_pid(sock)
    assert data == "WATCHDOG=1"
    assert pid == int(out.stdout) != os.getpid()
