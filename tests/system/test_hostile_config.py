"""A running daemon meets a hostile config or credentials: it keeps serving, or exits 77/78 with the reason."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from harness import USERNAME, Daemon, wait_until

from shardsync.simulator import Simulator

SimFactory = Callable[..., Simulator]
DaemonFactory = Callable[..., Daemon]


def test_sighup_with_a_fifo_or_deeply_nested_config_keeps_the_old_one(sim_factory: SimFactory,
                                                                      daemon_factory: DaemonFactory) -> None:
    """SIGHUP while the config is a FIFO, then while it nests 5000 deep: both rejected, loop and shards untouched."""
    sim = sim_factory()
    daemon = daemon_factory(sim, divisor=2)
    daemon.wait_live()
    before = daemon.pids()
    good = daemon.config.read_text()

    daemon.config.unlink()
    os.mkfifo(daemon.config)
    daemon.signal(signal.SIGHUP)
    first = wait_until(lambda: daemon.events("reload_rejected"), 10, "reload_rejected for the FIFO")
    assert "not a regular file" in first[0]["error"]
    assert daemon.http("/healthz")[0] == 200  # the loop did not freeze on open()

    daemon.config.unlink()
    daemon.config.write_text(good + "deep = " + "[" * 5000 + "]" * 5000 + "\n")
    daemon.signal(signal.SIGHUP)
    rejected = wait_until(lambda: len(daemon.events("reload_rejected")) >= 2 and daemon.events("reload_rejected"),
                          10, "reload_rejected for the nested file")
    assert "nest" in rejected[1]["error"]
    assert daemon.pids() == before
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert all(s["state"] == "live" for s in daemon.shards().values())


def test_largest_accepted_credentials_survive_the_reexec(sim_factory: SimFactory,
                                                         daemon_factory: DaemonFactory) -> None:
    """16 KiB password and secret in SHARDSYNC_* are handed over the re-exec whole (once a 64 KiB pipe deadlock)."""
    password, secret = "p" * 16384, "s" * 16384
    sim = sim_factory(password=password, secret=secret)
    env = {"SHARDSYNC_USERNAME": USERNAME, "SHARDSYNC_PASSWORD": password, "SHARDSYNC_SECRET": secret}
    daemon = daemon_factory(sim, divisor=1, credentials=False, env=env)
    daemon.wait_live(timeout=30)
    assert sim.stats()["logins"] == 1


def test_oversized_environment_password_exits_77_without_showing_it(sim_factory: SimFactory,
                                                                   daemon_factory: DaemonFactory) -> None:
    """A 70 KB password in the environment is refused with exit 77 naming the variable, never echoed."""
    password = "q" * 70_000
    env = {"SHARDSYNC_USERNAME": USERNAME, "SHARDSYNC_PASSWORD": password, "SHARDSYNC_SECRET": "sec-1234"}
    daemon = daemon_factory(sim_factory(), divisor=1, credentials=False, env=env)
    assert daemon.wait_exit(20) == 77
    output = daemon.output()
    assert b"password longer than 16384 bytes" in output
    assert password.encode() not in output


def test_run_with_a_fifo_config_exits_78_at_once(tmp_path: Path, sim_factory: SimFactory) -> None:
    """`shardsync run -c FIFO` refuses the file (78) without blocking on it, also while picking its log format."""
    daemon = Daemon(tmp_path, sim_factory(), divisor=1)
    daemon.config.unlink()
    os.mkfifo(daemon.config)
    daemon.start()
    try:
        assert daemon.wait_exit(15) == 78
    finally:
        daemon.stop()
    assert b"not a regular file" in daemon.output()
