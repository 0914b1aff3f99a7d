"""Fakes that run the real Arbiter in-process: fork, pidfd, kill, waitpid, the selector's wait, the clocks.

Only what would create or touch another process, or let time pass, is fake.
The pipes between the parent and a worker are real, so every message the
Arbiter sends or reads is framed and parsed by ``ipc`` exactly as in
production; a fake worker holds the child's ends of them.  A fake pidfd is
the read end of a pipe whose write end closes when the fake worker exits, so
the exit wakes the loop through the selector as a real pidfd would.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from shardsync import ipc
from shardsync.auth import Grant, Outcome
from shardsync.config import Settings
from shardsync.credentials import Credentials
from shardsync.ipc import ShardState
from shardsync.supervisor.arbiter import Arbiter
from shardsync.supervisor.authcall import AuthCall, outcome_to_json
from shardsync.supervisor.notify import Notifier
from shardsync.supervisor.processes import Launch, Processes
from shardsync.supervisor.retire import RetireJob
from shardsync.supervisor.retirer import RetireCall, retire_all
from shardsync.supervisor.tokens import Action

EXIT_OK = 0  # waitpid status of exit(0)


def killed_by(sig: int) -> int:
    """The waitpid status of a process killed by ``sig``."""
    return int(sig)


def exited_with(code: int) -> int:
    """The waitpid status of a process that exited with ``code``."""
    return (code & 0xFF) << 8


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSelector(selectors.BaseSelector):
    """A real selector that never waits: select() records the timeout and returns what is ready now."""

    def __init__(self) -> None:
        self._real = selectors.DefaultSelector()
        self.timeouts: list[float | None] = []

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.timeouts.append(timeout)
        return self._real.select(0)

    def ready_now(self) -> list[tuple[selectors.SelectorKey, int]]:
        """What a select would return now, without recording anything."""
        return self._real.select(0)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


@dataclass(eq=False)
class FakeChild:
    """Any child the fake 'forked': a pid, the signals it got, its waitpid status once it exited."""

    pid: int
    signals: list[int] = field(default_factory=list)
    status: int | None = None
    reaped: bool = False

    @property
    def exited(self) -> bool:
        return self.status is not None


@dataclass(eq=False)
class FakeWorker(FakeChild):
    """A worker process as its parent sees it, driven by the test."""

    launch: Launch | None = None
    inbox: ipc.Reader | None = None
    outbox_fd: int = -1
    exit_r: int = -1
    exit_w: int = -1

    @property
    def remainder(self) -> int:
        assert self.launch is not None
        return self.launch.remainder

    def send(self, message: ipc.Message) -> None:
        assert not self.exited, "a dead worker says nothing"
        assert ipc.send(self.outbox_fd, message)

    def beat(self, state: ShardState = ShardState.LIVE, **fields: Any) -> None:
        values: dict[str, Any] = {"connected_since": None, "last_frame_age": None, "frames": 0, "events": 0,
                                  "entities": 0, "reconnects": 0, "last_error": None}
        self.send(ipc.Heartbeat(state=state, **{**values, **fields}))

    def received(self) -> list[ipc.Message]:
        """Everything the parent sent to this worker since the last call."""
        assert self.inbox is not None
        return self.inbox.read()

    def exit(self, status: int) -> None:
        """The process ends: its pipes close and its pidfd becomes readable."""
        if self.exited:
            return
        self.status = status
        for fd in (self.outbox_fd, self.exit_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        self.exit(killed_by(signal.SIGKILL))
        for fd in (self.exit_r, self.inbox.fd if self.inbox else -1):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass(eq=False)
class FakeHelper(FakeChild):
    """A login helper: the test writes its outcome, then it exits."""

    action: Action | None = None
    write_fd: int = -1

    def answer(self, outcome: Outcome) -> None:
        os.write(self.write_fd, outcome_to_json(outcome))
        os.close(self.write_fd)
        self.status = EXIT_OK


class FakeProcesses:
    """Every process call of the Arbiter, answered from memory (see :class:`Processes`)."""

    def __init__(self) -> None:
        self.children: dict[int, FakeChild] = {}
        self.workers: list[FakeWorker] = []
        self.helpers: list[FakeHelper] = []
        self._next_pid = 50_000
        self.pidfd_works = True
        #: The jobs of every retire helper started.
        self.retired: list[list[RetireJob]] = []

    def processes(self) -> Processes:
        return Processes(fork_worker=self.fork_worker, start_login=self.start_login, pidfd_open=self.pidfd_open,
                         kill=self.kill, waitpid=self.waitpid, start_retire=self.start_retire)

    def _pid(self) -> int:
        self._next_pid += 1
        return self._next_pid

    def fork_worker(self, launch: Launch) -> int:
        # The child's copies of its pipe ends; the parent closes its own right after the fork.
        inbox_fd, outbox_fd = os.dup(launch.inbox_fd), os.dup(launch.outbox_fd)
        os.set_blocking(inbox_fd, False)
        exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
        worker = FakeWorker(self._pid(), launch=launch, inbox=ipc.Reader(inbox_fd), outbox_fd=outbox_fd,
                            exit_r=exit_r, exit_w=exit_w)
        self.children[worker.pid] = worker
        self.workers.append(worker)
        return worker.pid

    def start_login(self, action: Action, settings: Settings, credentials: Credentials, now: float) -> AuthCall:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(read_fd, False)
        helper = FakeHelper(self._pid(), action=action, write_fd=write_fd)
        self.children[helper.pid] = helper
        self.helpers.append(helper)
        return AuthCall(action, helper.pid, read_fd, now + 25.0, kill=self.kill)

    def start_retire(self, jobs: list[RetireJob], now: float) -> RetireCall:
        """The retire helper's work, done here and now (real sinks); its answer waits in a real pipe."""
        self.retired.append(list(jobs))
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(read_fd, False)
        os.write(write_fd, orjson.dumps(retire_all(jobs)))
        os.close(write_fd)
        helper = FakeChild(self._pid(), status=EXIT_OK)
        self.children[helper.pid] = helper
        return RetireCall(jobs, helper.pid, read_fd, now + 60.0, kill=self.kill)

    def pidfd_open(self, pid: int) -> int:
        child = self.children[pid]
        if not self.pidfd_works or not isinstance(child, FakeWorker):
            raise OSError("pidfd_open not supported")
        return os.dup(child.exit_r)

    def kill(self, pid: int, sig: int) -> None:
        child = self.children.get(pid)
        if child is None or child.reaped:
            raise ProcessLookupError(pid)
        child.signals.append(sig)
        if sig == signal.SIGKILL and not child.exited:
            if isinstance(child, FakeWorker):
                child.exit(killed_by(signal.SIGKILL))
            else:
                child.status = killed_by(signal.SIGKILL)

    def waitpid(self, pid: int, options: int) -> tuple[int, int]:
        assert (pid, options) == (-1, os.WNOHANG), "the parent only ever reaps without blocking"
        pending = [c for c in self.children.values() if not c.reaped]
        if not pending:
            raise ChildProcessError("no children")
        for child in pending:
            if child.status is not None:
                child.reaped = True
                return child.pid, child.status
        return 0, 0

    def worker(self, remainder: int) -> FakeWorker:
        """The newest worker of ``remainder``."""
        return [w for w in self.workers if w.remainder == remainder][-1]

    def running(self) -> dict[int, FakeWorker]:
        """Every worker not yet exited, by remainder (at most one each, or the test fails)."""
        out: dict[int, FakeWorker] = {}
        for worker in self.workers:
            if not worker.exited:
                assert worker.remainder not in out, f"two workers for remainder {worker.remainder}"
                out[worker.remainder] = worker
        return out

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


class RecordingNotifier(Notifier):
    """A notifier that records each sd_notify datagram instead of sending it."""

    def __init__(self, watchdog_usec: int | None = None) -> None:
        super().__init__(None, watchdog_usec)
        self.sent: list[dict[str, str]] = []

    def send(self, text: str | None = None, /, **fields: object) -> bool:
        self.sent.append({key: str(value) for key, value in fields.items()})
        return True

    def said(self, key: str) -> list[dict[str, str]]:
        return [message for message in self.sent if key in message]


BASE: dict[str, dict[str, Any]] = {
    "tradovate": {"rest_url": "http://127.0.0.1:9/v1", "ws_url": "ws://127.0.0.1:9/v1/websocket",
                  "app_id": "unit", "cid": 1},
    "sync": {"divisor": 4, "remainders": "all"},
    "supervisor": {"heartbeat_interval": 1.0, "heartbeat_timeout": 10.0, "backoff_initial": 1.0,
                   "backoff_max": 60.0, "stable_after": 60.0, "shutdown_timeout": 5.0, "start_timeout": 30.0,
                   "connect_spacing": 0.0, "max_concurrent_connects": 2},
    "sink": {"kind": "sqlite", "path": "./state"},
    "status": {"listen": ""},
    "log": {"format": "json", "level": "info"},
}


def config_text(sections: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """A config file: :data:`BASE` with ``sections`` merged in per key."""
    merged = {name: dict(values) for name, values in BASE.items()}
    for name, values in (sections or {}).items():
        merged.setdefault(name, {}).update(values)
    lines: list[str] = []
    for name, values in merged.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


class Parent:
    """One in-process Arbiter with its fakes; the test steps its loop and moves its clocks."""

    def __init__(self, config: Path, sections: Mapping[str, Mapping[str, Any]] | None = None, *,
                 watchdog_usec: int | None = None) -> None:
        from shardsync.config import load_config

        self.config = config
        config.write_text(config_text(sections))
        self.clock = Clock(1000.0)
        self.wall = Clock(1_700_000_000.0)
        self.fakes = FakeProcesses()
        self.selector = FakeSelector()
        self.notifier = RecordingNotifier(watchdog_usec)
        self.arbiter = Arbiter(
            load_config(config), str(config), Credentials("user", "password", "secret"),
            clock=self.clock, wall=self.wall, notifier=self.notifier, processes=self.fakes.processes(),
            selector=self.selector, os_signals=False,
        )
        self.arbiter.start()
        self.done = False

    def step(self, times: int = 1) -> None:
        for _ in range(times):
            if self.done:
                return
            self.done = not self.arbiter.step()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, then run one pass of the loop."""
        self.clock.advance(seconds)
        self.wall.advance(seconds)
        self.step()

    def signal(self, sig: int) -> None:
        """Deliver ``sig`` as the wakeup fd would, and run one pass."""
        self.arbiter.signal_queue.append(int(sig))
        self.step()

    def reload(self, sections: Mapping[str, Mapping[str, Any]] | None = None, *, text: str | None = None) -> None:
        """Rewrite the config file and SIGHUP."""
        self.config.write_text(text if text is not None else config_text(sections))
        self.signal(signal.SIGHUP)

    def log_in(self, token: str = "tok-1", lifetime: float = 3600.0) -> None:  # noqa: S107 - a fake token
        """Answer the pending login with a grant and run a pass."""
        helper = self.fakes.helpers[-1]
        assert helper.action is not None and not helper.exited
        helper.answer(Grant(token, self.wall() + lifetime, 7))
        self.step()

    def all_live(self, remainders: list[int] | None = None) -> None:
        """Every running worker (or those of ``remainders``) beats live, and the loop reads it."""
        for remainder, worker in self.fakes.running().items():
            if remainders is None or remainder in remainders:
                worker.beat(ShardState.LIVE)
        self.step(2)  # one pass reads the beats, the next runs the timers they made due

    def close(self) -> None:
        if not self.done:
            self.arbiter.cleanup()
            self.done = True
        self.fakes.close()
