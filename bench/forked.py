"""The moving parts the benches share: a simulator process, its admin API, and a real worker forked as under
the supervisor (``run_in_process`` in a child, heartbeats read from its pipe), with its process figures.

The bench process itself starts no thread before it forks (a simulator runs in
a process of its own, as ``shardsync demo`` starts it), so the forked worker is
exactly what the supervisor forks.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from logins import login
from shardsync import ipc
from shardsync.demo import DEMO_CREDENTIALS, start_simulator
from shardsync.logs import configure_logging
from shardsync.worker.allocator import keep_freed_memory
from shardsync.worker.options import WorkerOptions
from shardsync.worker.session import run_in_process

#: The daemon's default entityTypes (config/shardsync.toml).
DEFAULT_TYPES = ("user", "account", "accountRiskStatus", "cashBalance", "position", "order", "fill")


class SimProcess:
    """``shardsync simulate`` on a random port, with its admin API; stopped by :meth:`close`."""

    def __init__(self, *flags: str, event_rate: float = 0.0) -> None:
        self.proc, self.port = start_simulator(event_rate, ["--session-cap", "0", "--client-idle-timeout", "0",
                                                            *flags])
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/websocket"

    def admin(self, knob: str, body: dict[str, Any] | None = None, timeout: float = 600) -> Any:
        """POST a knob (or GET ``stats`` when ``body`` is None and the knob is ``stats``); the decoded reply."""
        url = f"http://127.0.0.1:{self.port}/admin/{knob}"
        if knob == "stats":
            request = urllib.request.Request(url)
        else:
            request = urllib.request.Request(url, data=orjson.dumps(body or {}), method="POST",
                                             headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback simulator
            return orjson.loads(response.read())

    def token(self) -> str:
        return login(f"http://127.0.0.1:{self.port}/v1", DEMO_CREDENTIALS, app_id="bench", app_version="1",
                     cid=1, device_id="bench").token

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def quiet_logs() -> None:
    """Warnings and errors only, as JSON on stderr: a bench's output is its table.  Also makes SIGTERM
    unwind (``finally`` blocks stop the simulator, the workers, a PostgreSQL server)."""
    configure_logging(fmt="json", level="warning", stream=sys.stderr)
    signal.signal(signal.SIGTERM, _exit)


def _exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


class ForkedWorker:
    """One real worker process of shard 0/1 against ``sim``; its heartbeats, RSS peak and CPU time."""

    def __init__(self, sim: SimProcess, *, kind: str, path: str = "", dsn: str = "",
                 entity_types: tuple[str, ...] = DEFAULT_TYPES, **overrides: Any) -> None:
        options = WorkerOptions(
            ws_url=sim.ws_url, divisor=1, expression="modAccountId", entity_types=entity_types, sink_kind=kind,
            sink_path=path, sink_dsn=dsn, permits=False, **{"heartbeat_interval": 0.02, **overrides},
        )
        self._inbox_r, self._inbox_w = os.pipe()
        self._out_r, out_w = os.pipe()
        ipc.send(self._inbox_w, ipc.Token(sim.token(), time.time() + 3600))
        self.started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(self._out_r)
                os.set_blocking(out_w, False)
                keep_freed_memory()  # as worker/boot.py does for every worker
                code = run_in_process(options, 0, self._inbox_r, lambda m: ipc.send(out_w, m, block=False) and None)
            finally:
                os._exit(code)
        os.close(out_w)
        self.pid = pid
        self._reader = ipc.Reader(self._out_r)
        os.set_blocking(self._out_r, False)
        self.last: ipc.Heartbeat | None = None
        self._reaped = False

    def poll(self, timeout: float = 0.002) -> ipc.Heartbeat | None:
        """Read what heartbeats arrived (waiting at most ``timeout``); the latest one."""
        select.select([self._out_r], [], [], timeout)
        for message in self._reader.read():
            if isinstance(message, ipc.Heartbeat):
                self.last = message
        return self.last

    def wait(self, predicate: Callable[[ipc.Heartbeat], bool], timeout: float, what: str) -> ipc.Heartbeat:
        """Poll heartbeats until one satisfies ``predicate``; RuntimeError naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            beat = self.poll(0.01)
            if beat is not None and predicate(beat):
                return beat
            if self._reader.eof or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not reach {what} (last heartbeat: {beat})")

    def status(self, field: str) -> int:
        """A ``/proc/PID/status`` figure in KiB (``VmHWM``: peak RSS, ``VmRSS``: RSS now)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"no {field} in /proc/{self.pid}/status")

    def reset_peak(self) -> None:
        """Start VmHWM again from the current RSS (``clear_refs`` 5, Linux >= 4.0)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def cpu_seconds(self) -> float:
        """CPU time of every thread of the worker so far (the scheduler's figure, nanosecond resolution)."""
        return process_cpu(self.pid)

    def stop(self) -> None:
        """Ask the worker to stop (as the parent does) and reap it."""
        if not self._reaped:
            ipc.send(self._inbox_w, ipc.Stop())
            os.waitpid(self.pid, 0)
            self._reaped = True
        self._close()

    def kill(self) -> None:
        """SIGKILL the worker and reap it."""
        if not self._reaped:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self._reaped = True
        self._close()

    def _close(self) -> None:
        for name in ("_inbox_r", "_inbox_w", "_out_r"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


def task_cpu(pid: int, tid: int) -> float:
    """CPU seconds of one thread from ``/proc/PID/task/TID/sched`` (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/sched") as sched:
            for line in sched:
                if line.startswith("se.sum_exec_runtime"):
                    return float(line.split(":")[1]) / 1000
    except FileNotFoundError:
        return 0.0
    raise RuntimeError(f"no se.sum_exec_runtime in /proc/{pid}/task/{tid}/sched")


def process_cpu(pid: int) -> float:
    """CPU seconds of every thread of ``pid``."""
    return sum(task_cpu(pid, int(tid)) for tid in os.listdir(f"/proc/{pid}/task"))
