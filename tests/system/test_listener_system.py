"""The real daemon's status listener and sink directory: idle clients cannot block a scrape, an unbindable port
stops the start, `status -c` finds a port-0 daemon, a remainder removed by SIGHUP is retired (issues 12, 13, 14)."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from harness import Daemon, wait_until

from shardsync.simulator import Simulator

SimFactory = Callable[..., Simulator]
DaemonFactory = Callable[..., Daemon]


@pytest.fixture(autouse=True)
def _no_outside_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


@pytest.fixture
def busy_port() -> Iterator[int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    yield holder.getsockname()[1]
    holder.close()


def test_two_hundred_idle_connections_do_not_block_a_scrape(sim_server: Simulator,
                                                            daemon_factory: DaemonFactory) -> None:
    """200 clients connect and send nothing, then waves of 100 fresh idle ones (so none has reached its read
    deadline yet): each time a scrape of /metrics, /status and /healthz still answers within a second."""
    daemon = daemon_factory(sim_server, divisor=2)
    daemon.wait_live(30)
    idle: list[socket.socket] = []
    try:
        for wave in (200, 100, 100, 100):
            for _ in range(wave):
                idle.append(socket.create_connection(("127.0.0.1", daemon.status_port), timeout=5))
            for path in ("/metrics", "/status", "/healthz"):
                started = time.monotonic()
                code, body = daemon.http(path, timeout=1.0)
                took = time.monotonic() - started
                assert code == 200 and body, path
                assert took < 1.0, f"{path} took {took:.2f} s"
    finally:
        for client in idle:
            client.close()
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_an_unbindable_status_port_is_an_error_at_start(sim_server: Simulator, daemon_factory: DaemonFactory,
                                                        busy_port: int) -> None:
    """[status] listen on a taken port: exit 1 at once, the address in the message, no worker ever forked."""
    daemon = daemon_factory(sim_server, divisor=2, sections={"status": {"listen": f"127.0.0.1:{busy_port}"}})
    assert daemon.wait_exit(20) == 1
    failed = daemon.events("status_listen_failed")
    assert failed and f"127.0.0.1:{busy_port}" in failed[0]["message"]
    assert not daemon.events("shard_started")
    assert sim_server.stats()["logins"] == 0


def test_status_c_finds_a_daemon_listening_on_port_0(sim_server: Simulator, daemon_factory: DaemonFactory) -> None:
    """`shardsync status -c FILE` with listen = 127.0.0.1:0 reads the runtime file and shows every shard; after
    the daemon stops the file is gone and status says where it looked."""
    daemon = daemon_factory(sim_server, divisor=2)
    daemon.wait_live(30)
    runtime = daemon.state / "daemon-status.json"
    assert orjson.loads(runtime.read_bytes())["port"] == daemon.status_port
    command = [sys.executable, "-m", "shardsync", "status", "-c", str(daemon.config), "--json"]
    shown = subprocess.run(command, capture_output=True, timeout=30, env=daemon.env, cwd=daemon.tmp, check=False)
    assert shown.returncode == 0, shown.stderr
    assert orjson.loads(shown.stdout)["pid"] == daemon.pid
    assert daemon.stop() == 0
    assert not runtime.exists()
    gone = subprocess.run(command, capture_output=True, timeout=30, env=daemon.env, cwd=daemon.tmp, check=False)
    assert gone.returncode == 1 and b"daemon-status.json" in gone.stderr


def shard_status(path: Path) -> str:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        (state,) = db.execute("SELECT state FROM shard_status").fetchone()
    return str(state)


def test_a_remainder_removed_by_sighup_is_retired_once_the_others_are_live(
    sim_server: Simulator, daemon_factory: DaemonFactory
) -> None:
    """SIGHUP drops remainder 3: its file moves to retired/ and its shard_status says retired, once 0-2 are
    live; the other shards' files stay where they are."""
    daemon = daemon_factory(sim_server, divisor=4)
    daemon.wait_live(30)
    leaving = daemon.db_path(3)
    assert leaving.exists()
    daemon.write_config(credentials=daemon.tmp / "credentials.toml", divisor=4, remainders=[0, 1, 2])
    daemon.signal(signal.SIGHUP)
    retired = daemon.state / "retired" / leaving.name
    wait_until(lambda: retired.exists() and not leaving.exists(), 30, "shard 3's file in retired/")
    assert shard_status(retired) == "retired"
    logged = wait_until(lambda: daemon.events("shard_retired"), 10, "shard_retired")  # after the move
    assert [line["shard"] for line in logged] == [3]
    assert all(daemon.db_path(r).exists() for r in (0, 1, 2))
    assert sorted(daemon.shards()) == [0, 1, 2]
