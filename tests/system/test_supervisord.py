"""deploy/supervisor/shardsync.conf, a conf.d snippet, for real: a main config includes it, and supervisord starts,
restarts and stops `shardsync run` against the simulator."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
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
SNIPPET = ROOT / "deploy" / "supervisor" / "shardsync.conf"
BIN = Path(sys.executable).parent
DIVISOR = 4
#: The snippet's installation-specific strings, each documented in its header; a test copy replaces exactly these.
BINARY, CONFIG, WORKDIR, LOGDIR, USER = ("/opt/shardsync/venv/bin/shardsync", "/etc/shardsync/shardsync.toml",
                                         "/var/lib/shardsync", "/var/log/shardsync", "user=shardsync")
STOP_MARGIN = 5.0  # seconds supervisord must wait beyond the daemon's own shutdown_timeout


def install_snippet(conf_d: Path, *, config: Path, workdir: Path, logdir: Path) -> Path:
    """A copy of the snippet in ``conf_d`` with its documented paths and user replaced by the test's, and nothing
    else changed (each string must occur, so a renamed path cannot slip past the substitution)."""
    text = SNIPPET.read_text()
    replacements = {BINARY: str(BIN / "shardsync"), CONFIG: str(config), WORKDIR: str(workdir),
                    LOGDIR: str(logdir), USER: f"user={pwd.getpwuid(os.getuid()).pw_name}"}
    settings = re.sub(r"(?m)^;.*$", "", text)
    for old, new in replacements.items():
        assert old in settings, f"{SNIPPET} no longer uses {old!r}; update its header and this test"
        text = text.replace(old, new)
    conf_d.mkdir(parents=True, exist_ok=True)
    path = conf_d / SNIPPET.name
    path.write_text(text)
    return path


def main_config(rundir: Path, conf_d: Path) -> Path:
    """A supervisord main config as a distribution ships it: socket, log, pid file and an [include] of conf.d."""
    path = rundir / "supervisord.conf"
    path.write_text(f"""[unix_http_server]
file={rundir}/supervisor.sock
chmod=0700

[supervisord]
logfile={rundir}/supervisord.log
pidfile={rundir}/supervisord.pid
childlogdir={rundir}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{rundir}/supervisor.sock

[include]
files = {conf_d}/*.conf
""")
    return path


@dataclass
class Supervisord:
    """A running ``supervisord -n`` with its run directory, environment and daemon config."""

    proc: subprocess.Popen[bytes]
    rundir: Path
    main: Path
    workdir: Path
    logdir: Path
    env: dict[str, str]

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "supervisorctl"), "-c", str(self.main), *args], env=self.env,
                              capture_output=True, text=True, timeout=30, check=False)

    def daemon_pid(self) -> int:
        """The shardsync parent's pid as supervisord reports it (0 when not running)."""
        out = self.ctl("pid", "shardsync").stdout.strip()
        return int(out) if out.isdigit() else 0

    def logs(self) -> list[dict[str, Any]]:
        """The daemon's JSON log lines (its stderr, collected by supervisord)."""
        path = self.logdir / "shardsync.log"
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


def ours(workdir: Path) -> list[int]:
    """Pids of every live process working in ``workdir``: the daemons supervisord started and their workers."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "cwd") == str(workdir) and alive(int(entry.name)):
                    found.append(int(entry.name))
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def supervisord(tmp_path: Path, sim_factory: Callable[..., Simulator],
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Supervisord]:
    """supervisord -n with a main config including the snippet (its copy pointed at a simulator's daemon config);
    at teardown supervisord is shut down and anything of ours still alive is SIGKILLed."""
    sim = sim_factory()
    rundir = Path(tempfile.mkdtemp(prefix="ss", dir="/tmp"))  # the control socket path must stay short
    workdir, logdir = rundir / "lib", rundir / "log"
    workdir.mkdir()
    logdir.mkdir()
    config = tmp_path / "shardsync.toml"
    creds = write_credentials(tmp_path / "credentials.toml")
    config.write_text(config_text(sim, tmp_path / "state", credentials=creds, divisor=DIVISOR))
    install_snippet(rundir / "conf.d", config=config, workdir=workdir, logdir=logdir)
    main = main_config(rundir, rundir / "conf.d")
    # No variable of ours: the snippet must not need any.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SHARDSYNC_", "NOTIFY_", "WATCHDOG_")) and k != "CREDENTIALS_DIRECTORY"}
    out = open(tmp_path / "supervisord.out", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen([str(BIN / "supervisord"), "-n", "-c", str(main)], env=env, stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    handle = Supervisord(proc, rundir, main, workdir, logdir, env)
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
            kill_all(ours(workdir))
            out.close()
            shutil.rmtree(rundir, ignore_errors=True)


def test_supervisord_runs_restarts_and_stops_the_daemon(supervisord: Supervisord) -> None:
    """Under the included snippet every shard goes live and the program is RUNNING; a SIGKILLed parent is
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
    assert ours(supervisord.workdir) == []
    log = (supervisord.rundir / "supervisord.log").read_text()
    assert "exited: shardsync (terminated by SIGKILL; not expected)" in log, log
    assert "stopped: shardsync (exit status 0)" in log, log
    assert "STOPPED" in supervisord.ctl("status", "shardsync").stdout


def test_the_snippet_is_a_conf_d_program_without_expansion() -> None:
    """The shipped file holds one [program:shardsync] section and no %(...)s expansion (so it can be included
    from any main config, whatever the environment), and names no secret."""
    text = SNIPPET.read_text()
    sections = re.findall(r"(?m)^\[([^\]]+)\]", text)
    assert sections == ["program:shardsync"]
    settings = re.sub(r"(?m)^;.*$", "", text)  # supervisord expands values only, never comments
    assert "%" not in settings
    assert not re.search(r"(?im)^environment\s*=", text)


def test_the_included_program_stops_gracefully_and_restarts_on_failure(tmp_path: Path) -> None:
    """supervisord's own parser reads the included snippet: TERM to the parent, group SIGKILL only after more than
    shutdown_timeout, restart unless exit 0, the log in the log directory, the user applied; supervisorctl finds
    the main config's socket."""
    from supervisor.datatypes import RestartWhenExitUnexpected
    from supervisor.options import ClientOptions, ServerOptions

    from shardsync.config import SupervisorSettings

    workdir, logdir = tmp_path / "lib", tmp_path / "log"
    workdir.mkdir()
    logdir.mkdir()
    config = tmp_path / "shardsync.toml"
    install_snippet(tmp_path / "conf.d", config=config, workdir=workdir, logdir=logdir)
    main = main_config(tmp_path, tmp_path / "conf.d")
    options = ServerOptions()
    options.realize(args=["-c", str(main)])
    (group,) = options.process_group_configs
    (program,) = group.process_configs
    assert program.name == "shardsync"
    assert program.command == f"{BIN / 'shardsync'} run -c {config}"
    assert program.directory == str(workdir)
    assert program.uid == os.getuid()
    assert program.umask == 0o077
    assert program.stopsignal.name == "SIGTERM"
    assert program.stopwaitsecs > SupervisorSettings().shutdown_timeout + STOP_MARGIN
    assert program.stopasgroup is False  # like KillMode=mixed: the parent stops its own workers
    assert program.killasgroup is True
    assert program.autorestart is RestartWhenExitUnexpected
    assert program.exitcodes == [0]
    assert program.startsecs >= 1
    assert program.redirect_stderr is True
    assert program.stdout_logfile == str(logdir / "shardsync.log")
    assert not any(re.search(r"PASSWORD|SECRET", key, re.IGNORECASE) for key in program.environment or {})
    client = ClientOptions()
    client.realize(args=["-c", str(main)])
    assert client.serverurl == f"unix://{tmp_path / 'supervisor.sock'}"
