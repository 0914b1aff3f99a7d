"""Runs one real Worker on a thread against the in-process simulator, and reads its sink."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from logins import login
from polling import wait_until
from shardfile import read_sqlite
from shardsync import ipc
from shardsync.credentials import Credentials
from shardsync.simulator import Simulator
from shardsync.sinks import Freshness, shard_file_name
from shardsync.sinks.base import STATUS_SELECT
from shardsync.worker.options import WorkerOptions
from shardsync.worker.session import run_in_process

ENTITY_TYPES = ("user", "account", "accountRiskStatus", "cashBalance", "position", "order", "fill")
CREDENTIALS = Credentials("demo", "demo-password", "demo-secret")


def get_token(sim: Simulator) -> str:
    return login(sim.rest_url, CREDENTIALS, app_id="test", app_version="1", cid=1, device_id="test").token


class WorkerRun:
    """A worker thread with its inbox pipe and every message it sent."""

    def __init__(self, sim: Simulator, state_dir: Path, *, remainder: int = 0, divisor: int = 1,
                 token: str | None = None, **overrides: Any) -> None:
        values: dict[str, Any] = {
            "ws_url": sim.ws_url,
            "divisor": divisor,
            "expression": "modAccountId",
            "entity_types": ENTITY_TYPES,
            "sink_path": str(state_dir),
            "permits": False,
            "backoff_initial": 0.05,
            "backoff_max": 0.2,
            "snapshot_quiet": 0.3,
            # Short like the quiet period: a split request answered in one part without an end
            # marker (the simulator's default) completes by the quiet rule, so its deletions wait this.
            "deletion_grace": 1.0,
            "heartbeat_interval": 0.2,
        }
        values.update(overrides)
        self.options = WorkerOptions(**values)
        self.sim = sim
        self.remainder = remainder
        self.messages: list[ipc.Message] = []
        self._lock = threading.Lock()
        self.inbox_r, self.inbox_w = os.pipe()
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"worker-{remainder}")
        self.token = token if token is not None else get_token(sim)

    def _run(self) -> None:
        try:
            self.exit_code = run_in_process(self.options, self.remainder, self.inbox_r, self._on_message)
        except BaseException as exc:
            self.error = exc
            raise

    def _on_message(self, message: ipc.Message) -> None:
        with self._lock:
            self.messages.append(message)

    def start(self) -> WorkerRun:
        self.give(ipc.Token(self.token, time.time() + 3600))
        self.thread.start()
        return self

    def give(self, message: ipc.Message) -> None:
        ipc.send(self.inbox_w, message)

    def stop(self, timeout: float = 10.0) -> None:
        if self.thread.is_alive():
            self.give(ipc.Stop())
            self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop"
        os.close(self.inbox_w)
        os.close(self.inbox_r)

    def __enter__(self) -> WorkerRun:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def beats(self) -> list[ipc.Heartbeat]:
        with self._lock:
            return [m for m in self.messages if isinstance(m, ipc.Heartbeat)]

    def last_beat(self) -> ipc.Heartbeat | None:
        beats = self.beats()
        return beats[-1] if beats else None

    def state(self) -> str | None:
        beat = self.last_beat()
        return beat.state if beat else None

    def wait_live(self, timeout: float = 10.0, *, after_reconnects: int = 0) -> ipc.Heartbeat:
        def live() -> ipc.Heartbeat | None:
            if self.error is not None:
                raise AssertionError(f"worker crashed: {self.error!r}")
            beat = self.last_beat()
            if beat and beat.state == "live" and beat.reconnects >= after_reconnects:
                return beat
            return None

        result: ipc.Heartbeat = wait_until(live, timeout, f"shard {self.remainder} live")
        return result

    def db_path(self) -> Path:
        return Path(self.options.sink_path) / shard_file_name(self.remainder, self.options.divisor, "sqlite3")

    def sink_entities(self) -> dict[tuple[str, int], dict[str, Any]]:
        return read_sqlite(self.db_path())

    def log_rows(self) -> list[tuple[str, str, str, int | None, str]]:
        """The change log as (origin, entity_type, event_type, id, received_at), in commit order."""
        if not self.db_path().exists():
            return []
        conn = sqlite3.connect(f"file:{self.db_path()}?mode=ro", uri=True, timeout=5)
        try:
            query = "SELECT origin, entity_type, event_type, id, received_at FROM events ORDER BY seq"
            return [tuple(row) for row in conn.execute(query).fetchall()]  # type: ignore[misc]
        finally:
            conn.close()

    def status_row(self) -> Freshness | None:
        """The shard file's freshness row (shard_status), if one was written."""
        if not self.db_path().exists():
            return None
        conn = sqlite3.connect(f"file:{self.db_path()}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute(STATUS_SELECT).fetchone()
        except sqlite3.OperationalError:  # the table is not created yet
            return None
        finally:
            conn.close()
        return None if row is None else Freshness.from_row(row)

    def sent(self, kind: type[Any]) -> list[Any]:
        """Every message of ``kind`` the worker sent its parent so far."""
        with self._lock:
            return [m for m in self.messages if isinstance(m, kind)]

    def truth(self) -> dict[tuple[str, int], dict[str, Any]]:
        return self.sim.truth(self.options.divisor, self.remainder, self.options.expression,
                              list(self.options.entity_types))

    def converged(self) -> bool:
        return self.sink_entities() == self.truth()

    def wait_converged(self, timeout: float = 10.0) -> None:
        def check() -> bool:
            if self.error is not None:
                raise AssertionError(f"worker crashed: {self.error!r}")
            return self.converged()

        try:
            wait_until(check, timeout, f"shard {self.remainder} sink == simulator truth")
        except AssertionError:
            sink, truth = self.sink_entities(), self.truth()
            missing = sorted(set(truth) - set(sink))[:5]
            extra = sorted(set(sink) - set(truth))[:5]
            differ = sorted(k for k in set(sink) & set(truth) if sink[k] != truth[k])[:5]
            raise AssertionError(
                f"sink != truth: {len(sink)} vs {len(truth)} entities; missing {missing}, extra {extra}, "
                f"differ {differ}"
            ) from None
