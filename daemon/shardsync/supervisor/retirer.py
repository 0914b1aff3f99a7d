"""Retiring stale shards in a short-lived forked helper, so the parent's loop never waits on a disk or a database.

``retire.py`` decides which shards and when; this module runs their
``sinks.retire`` calls in a child (like the login helper), reads the results
from its pipe in the loop's selector, logs them and reaps the child without
blocking.  A helper still running after :data:`RETIRE_DEADLINE` is killed;
its jobs are retried at the next start or reload.
"""

from __future__ import annotations

import os
import selectors
from collections.abc import Callable, Iterable
from typing import Any, Final

import orjson

from shardsync.clip import clip
from shardsync.config import Settings
from shardsync.logs import get_logger
from shardsync.supervisor.helper import HelperCall, fork_helper
from shardsync.supervisor.retire import RetireJob, still_stale

__all__ = ["RETIRE_DEADLINE", "RetireCall", "Retirer", "retire_all"]

RETIRE_DEADLINE: Final = 60.0


def retire_all(jobs: Iterable[RetireJob]) -> list[dict[str, Any]]:
    """Run every job; one result each: the shard, and ``error`` when it could not be retired."""
    from shardsync import sinks

    results: list[dict[str, Any]] = []
    for job in jobs:
        result: dict[str, Any] = {"kind": job.kind, "remainder": job.remainder, "divisor": job.divisor}
        try:
            sinks.retire(job.kind, path=job.path, dsn=job.dsn, remainder=job.remainder, divisor=job.divisor,
                         replaced=job.replaced)
        except Exception as exc:
            result["error"] = clip(f"{type(exc).__name__}: {exc}")
        results.append(result)
    return results


class RetireCall(HelperCall):
    """A helper running some jobs; the parent reads their results from ``fd``."""

    def __init__(self, jobs: list[RetireJob], pid: int, fd: int, deadline: float,
                 *, kill: Callable[[int, int], None] = os.kill) -> None:
        super().__init__(pid, fd, deadline, kill=kill)
        self.jobs = jobs

    @classmethod
    def start(cls, jobs: list[RetireJob], now: float) -> RetireCall:
        pid, read_fd = fork_helper(lambda: orjson.dumps(retire_all(jobs)))
        return cls(jobs, pid, read_fd, now + RETIRE_DEADLINE)

    def read(self) -> list[dict[str, Any]] | None:
        """Drain the pipe; the results once the helper closed it (an empty list if it died first), else None."""
        data = self.drain()
        if data is None:
            return None
        try:
            results = orjson.loads(data)
        except orjson.JSONDecodeError:
            return []
        return results if isinstance(results, list) else []


class Retirer:
    """Pending retire jobs and the one helper carrying them out."""

    def __init__(self, selector: selectors.BaseSelector,
                 start: Callable[[list[RetireJob], float], RetireCall]) -> None:
        self.selector = selector
        self._start = start
        self.pending: set[RetireJob] = set()
        self.ready: set[RetireJob] = set()
        self.call: RetireCall | None = None
        self._exiting: set[int] = set()
        self.log = get_logger("shardsync.supervisor")

    @property
    def alive(self) -> bool:
        return self.call is not None or bool(self._exiting)

    def add(self, jobs: Iterable[RetireJob]) -> None:
        self.pending.update(jobs)

    def add_ready(self, jobs: Iterable[RetireJob]) -> None:
        """Jobs due whatever the other shards do: a reshard's old shards, once their replacements were live."""
        self.ready.update(jobs)

    def start(self, settings: Settings, now: float, *, gated: bool = True) -> None:
        """Retire what is still stale under ``settings`` (the shards the config took back are dropped).

        ``gated``: every current shard is live, so the pending jobs may go too;
        the ready ones go either way.
        """
        ready = still_stale(self.ready, settings)
        pending = still_stale(self.pending, settings) if gated else []
        self.ready.clear()
        if gated:
            self.pending.clear()
        jobs = sorted(set(ready) | set(pending))
        if not jobs or self.call is not None:
            self.ready.update(ready)
            self.pending.update(pending)
            return
        self.log.info("retiring", shards=[f"{j.remainder}/{j.divisor}" for j in jobs], kind=jobs[0].kind)
        self.call = self._start(jobs, now)
        self.selector.register(self.call.fd, selectors.EVENT_READ, self.on_readable)

    def on_readable(self, mask: int) -> None:
        call = self.call
        if call is None:
            return
        results = call.read()
        if results is None:
            return
        call.finish(self.selector)
        self._exiting.add(call.pid)
        self.call = None
        for result in results:
            if not isinstance(result, dict):
                continue
            if "error" in result:
                self.log.warning("retire_failed", shard=result.get("remainder"), divisor=result.get("divisor"),
                                 kind=result.get("kind"), error=clip(str(result["error"])))
            else:
                self.log.info("shard_retired", shard=result.get("remainder"), divisor=result.get("divisor"),
                              kind=result.get("kind"))
        if len(results) < len(call.jobs):
            self.log.warning("retire_incomplete", done=len(results), jobs=len(call.jobs))

    def kill_slow(self) -> None:
        if self.call is not None:
            self.log.error("retire_helper_timeout", jobs=len(self.call.jobs))
            self.call.kill()
            self.call.deadline = float("inf")  # its EOF comes with the death

    def reaped(self, pid: int) -> bool:
        if self.call is not None and self.call.pid == pid:
            self.on_readable(selectors.EVENT_READ)
            self._exiting.discard(pid)
            return True
        if pid in self._exiting:
            self._exiting.discard(pid)
            return True
        return False

    def kill(self) -> None:
        if self.call is not None:
            self.call.kill()
