"""deploy/supervisord.conf for real: supervisord starts, restarts and stops `shardsync run` against the simulator."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness import alive, config_text, wait_until, write_credentials

from shardsync.simulator import Simulator

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "deploy" / "supervisord.conf"
BIN = Path(sys.executable).parent
DIVISOR = 4


@dataclass
class Supervisord:
    """A running ``supervisord -n`` with its run directory, environment and daemon config."""

    proc: subprocess.Popen[bytes]
    rundir: Path
    config: Path
    env: dict[str, str]

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "supervisorctl"), "-c", str(CONF), *args], env=self.env,
                              capture_output=True, text=True, timeout=30, check=False)

    def daemon_pid(self) -> int:
        """The shardsync parent's pid as supervisord reports it (0 when not running)."""
        out = self.ctl("pid", "shardsync").stdout.strip()
        return int(out) if out.isdigit() else 0

    def logs(self) -> list[dict[str, Any]]:
        """The daemon's JSON log lines (its stderr, collected by supervisord)."""
        path = self.rundir / "shardsync.log"
        lines = []
        for raw in path.read_bytes().splitlines() if path.exists() else []:
            with contextlib.suppress(orjson.JSONDecodeError):
                lines.append(orjson.loads(raw))
        return lines

    def status(self, pid: int) -> dict[str, Any] | None:
        """/status of the daemon whose parent is ``pid`` (None until it listens)."""
        ports = [line["port"] for line in self.logs() if line.get("event") == "status_listening"
                 and line.get("pid") == pid]
        if not ports:
            return None
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[-1]}/status", timeout=5) as response:
            result: dict[str, Any] = orjson.loads(response.read())
            return result

    def live(self, pid: int) -> dict[int, int] | None:
        """Worker pid per remainder once every shard of the daemon ``pid`` is live."""
        status = self.status(pid)
        if status is None or len(status["shards"]) != DIVISOR:
            return None
        if not all(s["state"] == "live" for s in status["shards"]):
            return None
        return {s["remainder"]: s["pid"] for s in status["shards"]}


def ours(rundir: Path) -> list[int]:
    """Pids of every live process working in ``rundir``: the daemons supervisord started and their workers."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "cwd") == str(rundir) and alive(int(entry.name)):
                    found.append(int(entry.name))
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def supervisord(tmp_path: Path, sim_factory: Callable[..., Simulator],
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Supervisord]:
    """supervisord -n -c deploy/supervisord.conf with the daemon pointed at a simulator; at teardown supervisord
    is shut down and anything of ours still alive is SIGKILLed."""
    sim = sim_factory()
    rundir = Path(tempfile.mkdtemp(prefix="ss", dir="/tmp"))  # the control socket path must stay short
    config = tmp_path / "shardsync.toml"
    creds = write_credentials(tmp_path / "credentials.toml")
    config.write_text(config_text(sim, tmp_path / "state", credentials=creds, divisor=DIVISOR))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SHARDSYNC_", "NOTIFY_", "WATCHDOG_")) and k != "CREDENTIALS_DIRECTORY"}
    env.update(SHARDSYNC_BIN=str(BIN / "shardsync"), SHARDSYNC_CONFIG=str(config), SHARDSYNC_RUNDIR=str(rundir))
    out = open(tmp_path / "supervisord.out", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen([str(BIN / "supervisord"), "-n", "-c", str(CONF)], env=env, stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    handle = Supervisord(proc, rundir, config, env)
    try:
        yield handle
    finally:
        try:
            if proc.poll() is None:
                handle.ctl("shutdown")
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        finally:
            kill_all(ours(rundir))
            out.close()
            shutil.rmtree(rundir, ignore_errors=True)


def test_supervisord_runs_restarts_and_stops_the_daemon(supervisord: Supervisord) -> None:
    """Under deploy/supervisord.conf every shard goes live and the program is RUNNING; a SIGKILLed parent is
    restarted by supervisord (new pid, shards live again, old workers gone); `supervisorctl stop` ends the
    daemon with exit 0 and leaves no worker."""
    first = wait_until(supervisord.daemon_pid, 15, "supervisord to start shardsync")
    workers = wait_until(lambda: supervisord.live(first), 30, "all shards live")
    state = wait_until(lambda: "RUNNING" in (r := supervisord.ctl("status")).stdout and r, 15, "RUNNING")
    assert state.returncode == 0 and f"pid {first}" in state.stdout, state.stdout

    os.kill(first, signal.SIGKILL)
    second = wait_until(lambda: (pid := supervisord.daemon_pid()) not in (0, first) and pid, 15, "a new parent")
    wait_until(lambda: not any(alive(pid) for pid in workers.values()), 5, "the old workers gone")
    new_workers = wait_until(lambda: supervisord.live(second), 30, "all shards live again")
    assert set(new_workers.values()).isdisjoint(workers.values())

    stopped = supervisord.ctl("stop", "shardsync")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped
    assert not alive(second)
    wait_until(lambda: not any(alive(pid) for pid in new_workers.values()), 5, "no worker left")
    assert ours(supervisord.rundir) == []
    log = (supervisord.rundir / "supervisord.log").read_text()
    assert "exited: shardsync (terminated by SIGKILL; not expected)" in log, log
    assert "stopped: shardsync (exit status 0)" in log, log
    assert "STOPPED" in supervisord.ctl("status", "shardsync").stdout
