"""Runs the real daemon (`shardsync run`) as a subprocess against an in-process simulator."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

import polling
from shardfile import read_sqlite
from shardsync.simulator import Simulator

USERNAME, PASSWORD, SECRET = "demo", "demo-password", "demo-secret"

#: System-test predicates hit HTTP and SQLite: poll every 20 ms.
wait_until = functools.partial(polling.wait_until, interval=0.02)


def write_credentials(path: Path, mode: int = 0o600, **overrides: str) -> Path:
    values = {"username": USERNAME, "password": PASSWORD, "secret": SECRET, **overrides}
    path.write_text("".join(f'{k} = "{v}"\n' for k, v in values.items()))
    path.chmod(mode)
    return path


def config_text(sim: Simulator, state: Path, *, credentials: Path | None, divisor: int = 4,
                remainders: str | list[int] = "all", sections: dict[str, dict[str, Any]] | None = None) -> str:
    """A complete TOML config for the simulator; ``sections`` overrides or adds keys per section."""
    base: dict[str, dict[str, Any]] = {
        "tradovate": {"rest_url": sim.rest_url, "ws_url": sim.ws_url, "app_id": "system-test", "cid": 1,
                      "idle_timeout": 10.0, "handshake_timeout": 5.0},
        "credentials": {"file": str(credentials) if credentials else ""},
        "sync": {"divisor": divisor, "remainders": remainders},
        "supervisor": {"heartbeat_interval": 0.25, "heartbeat_timeout": 2.0, "backoff_initial": 0.1,
                       "backoff_max": 2.0, "stable_after": 5.0, "shutdown_timeout": 5.0,
                       "connect_spacing": 0.05, "max_concurrent_connects": 4, "start_timeout": 30.0},
        "sink": {"kind": "sqlite", "path": str(state)},
        "status": {"listen": "127.0.0.1:0"},
        "log": {"format": "json", "level": "info"},
    }
    for section, values in (sections or {}).items():
        base.setdefault(section, {}).update(values)
    lines: list[str] = []
    for section, values in base.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


class Daemon:
    """One `shardsync run` process, its log lines, status endpoint and shard files."""

    def __init__(self, tmp: Path, sim: Simulator, *, divisor: int = 4, remainders: str | list[int] = "all",
                 sections: dict[str, dict[str, Any]] | None = None, env: dict[str, str] | None = None,
                 credentials: Path | bool | None = True, launcher: list[str] | None = None,
                 args: list[str] | None = None) -> None:
        self.tmp = tmp
        #: Further `shardsync run` arguments after ``-c FILE``.
        self.args = args or []
        #: The command that runs Python (e.g. with setpriv in front, to drop privileges).
        self.launcher = launcher or [sys.executable]
        self.sim = sim
        self.state = tmp / "state"
        self.config = tmp / "shardsync.toml"
        self.log_path = tmp / "daemon.log"
        self.out_path = tmp / "daemon.out"
        creds: Path | None
        if credentials is True:
            creds = write_credentials(tmp / "credentials.toml")
        elif credentials is False or credentials is None:
            creds = None
        else:
            creds = credentials
        self.divisor = divisor
        self.write_config(divisor=divisor, remainders=remainders, sections=sections, credentials=creds)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SHARDSYNC_", "NOTIFY_", "WATCHDOG_"))}
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._status_port: int | None = None

    def write_config(self, *, credentials: Path | None, divisor: int = 4, remainders: str | list[int] = "all",
                     sections: dict[str, dict[str, Any]] | None = None) -> None:
        self.divisor = divisor
        self.config.write_text(config_text(self.sim, self.state, credentials=credentials, divisor=divisor,
                                           remainders=remainders, sections=sections))

    def start(self) -> Daemon:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._out = open(self.out_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*self.launcher, "-m", "shardsync", "run", "-c", str(self.config), *self.args],
            stdout=self._out, stderr=self._log, stdin=subprocess.DEVNULL, env=self.env, cwd=self.tmp,
        )
        return self

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; SIGKILL (and fail) if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError("daemon did not stop on SIGTERM") from None
        self._log.close()
        self._out.close()
        return self.proc.returncode

    def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    # --- logs ---------------------------------------------------------------------

    def logs(self) -> list[dict[str, Any]]:
        """Every JSON log line so far (non-JSON lines are kept as {"raw": ...})."""
        lines = []
        for raw in self.log_path.read_bytes().splitlines():
            try:
                lines.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                lines.append({"raw": raw.decode(errors="replace")})
        return lines

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.logs() if line.get("event") == name]

    def output(self) -> bytes:
        return self.log_path.read_bytes() + self.out_path.read_bytes()

    # --- status ---------------------------------------------------------------------

    @property
    def status_port(self) -> int:
        if self._status_port is None:
            line = wait_until(lambda: self.events("status_listening"), 15, "status_listening log line")
            self._status_port = int(line[0]["port"])
        return self._status_port

    def http(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.status_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def status(self) -> dict[str, Any]:
        code, body = self.http("/status")
        assert code == 200, body
        result: dict[str, Any] = orjson.loads(body)
        return result

    def shards(self) -> dict[int, dict[str, Any]]:
        return {s["remainder"]: s for s in self.status()["shards"]}

    def pids(self) -> dict[int, int | None]:
        return {r: s["pid"] for r, s in self.shards().items()}

    def wait_live(self, timeout: float = 30.0, remainders: list[int] | None = None) -> dict[int, dict[str, Any]]:
        def all_live() -> dict[int, dict[str, Any]] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.output()[-3000:]!r}")
            shards = self.shards()
            wanted = remainders if remainders is not None else list(shards)
            if wanted and all(r in shards and shards[r]["state"] == "live" for r in wanted):
                return shards
            return None

        result: dict[int, dict[str, Any]] = wait_until(all_live, timeout, "all shards live")
        return result

    # --- sinks ----------------------------------------------------------------------------

    def db_path(self, remainder: int) -> Path:
        return self.state / f"shard-{remainder:03d}-of-{self.divisor:03d}.sqlite3"

    def sink_entities(self, remainder: int) -> dict[tuple[str, int], dict[str, Any]]:
        return read_sqlite(self.db_path(remainder))

    def truth(self, remainder: int, entity_types: list[str] | None = None) -> dict[tuple[str, int], Any]:
        types = entity_types or ["user", "account", "accountRiskStatus", "cashBalance", "position", "order", "fill"]
        return self.sim.truth(self.divisor, remainder, "modAccountId", types)

    def wait_converged(self, remainder: int, timeout: float = 15.0) -> None:
        wait_until(lambda: self.sink_entities(remainder) == self.truth(remainder), timeout,
                   f"shard {remainder} sink == truth")


def children(pid: int) -> list[int]:
    """Live child pids of ``pid`` (from /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def proc_state(pid: int) -> str | None:
    """The one-letter state of a process (R, S, T, Z...) or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    state = proc_state(pid)
    return state is not None and state != "Z"
