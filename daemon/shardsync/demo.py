"""``shardsync demo``: the simulator plus a real 4-shard daemon, with a live status table.

Everything runs from ``--state-dir`` (default ``./demo-state``): the generated
config, a chmod-600 credentials file, the daemon's JSON log, and one SQLite
file per shard.  The simulator and the daemon run in their own sessions, so
Ctrl-C reaches only this process, which then stops the daemon cleanly (SIGTERM)
and the simulator after it.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from shardsync.credentials import Credentials
from shardsync.prctl import set_pdeathsig
from shardsync.statusclient import StatusUnavailable, fetch_status, render_table

DEMO_CREDENTIALS = Credentials("demo", "demo-password", "demo-secret")
SHUTDOWN_TIMEOUT = 10.0


def _own_session_dying_with_us() -> None:
    os.setsid()
    set_pdeathsig(signal.SIGTERM)


def start_simulator(event_rate: float, extra: list[str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``shardsync simulate`` on a random port; return the process and its port."""
    argv = [sys.executable, "-m", "shardsync.simulator", "--port", "0", "--event-rate", str(event_rate)]
    # The simulator must not outlive us, even when we are SIGKILLed.
    proc = subprocess.Popen(
        argv + (extra or []), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
        preexec_fn=_own_session_dying_with_us,  # noqa: PLW1509 - no threads at this point
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        info = orjson.loads(line)
        return proc, int(info["port"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        proc.kill()
        raise RuntimeError(f"simulator did not report its port: {line[:200]!r}") from None


def write_demo_files(state: Path, port: int, shards: int) -> Path:
    """The daemon's config and credentials file for a simulator on ``port``; returns the config path."""
    credentials = state / "credentials.toml"
    credentials.write_text(
        f'username = "{DEMO_CREDENTIALS.username}"\n'
        f'password = "{DEMO_CREDENTIALS.password}"\n'
        f'secret = "{DEMO_CREDENTIALS.secret}"\n'
    )
    credentials.chmod(0o600)
    config = state / "shardsync.toml"
    config.write_text(f"""# Written by `shardsync demo`: a {shards}-shard daemon against the local simulator.
[tradovate]
rest_url = "http://127.0.0.1:{port}/v1"
ws_url = "ws://127.0.0.1:{port}/v1/websocket"
app_id = "shardsync-demo"
cid = 1

[credentials]
file = "{credentials.resolve()}"

[sync]
divisor = {shards}

[supervisor]
connect_spacing = 0.1
shutdown_timeout = {SHUTDOWN_TIMEOUT}

[sink]
kind = "sqlite"
path = "{state.resolve()}"

[status]
listen = "127.0.0.1:0"

[log]
format = "json"
""")
    return config


def _status_port(log: Path, start: int, daemon: subprocess.Popen[bytes], deadline: float) -> int:
    """The status port this run's daemon logged: only lines past ``start``, since the log is appended to and an
    earlier run's port would be dead (or, worse, another daemon's)."""
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited with {daemon.returncode}; see {log}")
        with open(log, "rb") as f:
            f.seek(start)
            lines = f.read().splitlines()
        for raw in lines:
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if line.get("event") == "status_listening":
                return int(line["port"])
        time.sleep(0.1)
    raise RuntimeError(f"the daemon did not open its status port; see {log}")


def run_demo(*, state_dir: str, shards: int, duration: float, event_rate: float) -> int:
    """Run until Ctrl-C (or ``duration`` seconds); returns the daemon's exit code."""
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    stop = False

    def request_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    sim, port = start_simulator(event_rate)
    log_path = state / "daemon.log"
    daemon: subprocess.Popen[bytes] | None = None
    try:
        config = write_demo_files(state, port, shards)
        with open(log_path, "ab") as log:
            start = log.tell()
            daemon = subprocess.Popen(
                [sys.executable, "-m", "shardsync", "run", "-c", str(config)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=_own_session_dying_with_us,  # noqa: PLW1509
            )
        url = f"http://127.0.0.1:{_status_port(log_path, start, daemon, time.monotonic() + 30)}/status"
        started = time.monotonic()
        tty = sys.stdout.isatty()
        try_next = next_step(Path(state_dir), shards)
        while not stop and daemon.poll() is None:
            try:
                text = render_table(fetch_status(url))
            except StatusUnavailable as exc:
                text = f"status unavailable: {exc}"
            header = (f"shardsync demo: simulator on port {port}, logs in {log_path} (Ctrl-C stops)\n"
                      f"status: {url} (also /metrics, /healthz)\ntry: {try_next}")
            sys.stdout.write(("\x1b[H\x1b[J" if tty else "") + header + "\n" + text + "\n\n")
            sys.stdout.flush()
            if duration and time.monotonic() - started >= duration:
                break
            time.sleep(1.0)
        print(f"stopping; shard files are in {state.resolve()}\nnext: {try_next}")
        return _stop(daemon)
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
        sim.terminate()
        try:
            sim.wait(timeout=5)
        except subprocess.TimeoutExpired:
            sim.kill()


def next_step(state: Path, shards: int) -> str:
    """A command line that shows what the demo wrote: the entities in shard 0's SQLite file."""
    return shlex.join(["sqlite3", str(state / f"shard-000-of-{shards:03d}.sqlite3"),
                       "select entity_type, count(*) from entities group by entity_type"])


def _stop(daemon: subprocess.Popen[bytes]) -> int:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
    try:
        return daemon.wait(SHUTDOWN_TIMEOUT + 5)
    except subprocess.TimeoutExpired:
        daemon.kill()
        return daemon.wait()
