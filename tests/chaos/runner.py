"""One seed end to end: start, stream, fault, quiesce, converge, judge, SIGTERM, judge the exit.

The gaps between faults and the length of a short SIGSTOP are the schedule's
own timing, not waits for a condition; every wait for the daemon polls
against a deadline.  Convergence gives up early once nothing has moved for
:data:`STUCK` seconds while every shard it runs says live: a daemon in that
state never converges by itself (no timer of it is pending).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
from harness import alive, children

from .catalogue import QUOTA_SETTLE
from .collect import observe, sink_state, status_or_empty, zombies
from .faults import carry_out, poll
from .oracle import Executed, exit_clean, judge, lines
from .schedule import DIVISOR, Schedule, make
from .world import SECTIONS, World, judged_config

#: Seconds after quiescence within which every shard must have converged.
CONVERGE: Final = 30.0
#: Nothing changed this long while every shard says live: it will not converge.
STUCK: Final = 8.0
#: Converged means converged this long with the same workers and sockets: a worker killed a moment ago
#: still looks live until the parent reaps it and the simulator reads its FIN.
HOLD: Final = 1.0


@dataclass
class Result:
    schedule: Schedule
    journal: list[Executed] = field(default_factory=list)
    verdict: dict[str, list[str]] = field(default_factory=dict)
    converge_seconds: float | None = None
    restarts: int = 0
    logins: int = 0
    renewals: int = 0
    seconds: float = 0.0
    home: Path | None = None
    variant: str | None = None

    @property
    def ok(self) -> bool:
        return not any(self.verdict.values())

    def failures(self) -> list[str]:
        return [f"{check}: {line}" for check, found in self.verdict.items() for line in found]

    def report(self) -> str:
        schedule = self.schedule
        head = (f"seed {schedule.seed}{f' variant {self.variant}' if self.variant else ''}: "
                f"{'ok' if self.ok else 'FAIL'} ({len(self.journal)} faults, {self.seconds:.1f}s, converged "
                f"{'never' if self.converge_seconds is None else f'{self.converge_seconds:.2f}s'} after quiesce)")
        if self.ok:
            return head
        body = [f"  setup: {schedule.setup}"]
        body += [f"  {e.fault.describe()} -> {e.notes}" for e in self.journal]
        body += [f"  VIOLATION {line}" for line in self.failures()[:40]]
        body.append(f"  replay: {schedule.replay()}" + (f" --variant {self.variant}" if self.variant else ""))
        if self.home is not None:
            body.append(f"  kept: {self.home}")
        return "\n".join([head, *body])


def _fingerprint(world: World, states: dict[int, str]) -> str:
    digest = hashlib.sha256(orjson.dumps(sorted(states.items())))
    digest.update(str(len(world.sim.subscriptions())).encode())
    for remainder in world.remainders:
        digest.update(orjson.dumps(sorted(world.d.sink_entities(remainder).items(), key=lambda kv: kv[0])))
    return digest.hexdigest()


def converged_now(world: World) -> tuple[bool, bool, dict[int, str]]:
    """(converged, every present shard live, states) at this instant."""
    status = status_or_empty(world)
    states = {r: str(s["state"]) for r, s in status.items()}
    all_live = bool(states) and all(state == "live" for state in states.values())
    if set(states) != set(world.remainders) or not all_live:
        return False, all_live, states
    if world.sim.connections() != {r: 1 for r in world.remainders}:
        return False, all_live, states
    if any(sink_state(world.d.db_path(r)) != "live" for r in world.remainders):
        return False, all_live, states
    same = all(world.d.sink_entities(r) == world.d.truth(r) for r in world.remainders)
    return same, all_live, states


def _identity(world: World) -> tuple[object, ...]:
    """Which workers and sockets serve the shards right now."""
    pids = sorted(world.d.pids().items())
    conns = sorted((r["remainder"], r["conn"]) for r in world.sim.subscriptions() if r["closed_at"] is None)
    return (pids, conns)


def converge(world: World, deadline: float) -> float | None:
    """Poll until converged for HOLD seconds: when that began (monotonic); None at the deadline, when the
    daemon died, or once it is stuck."""
    mark: tuple[str, float] | None = None
    held: tuple[tuple[object, ...], float] | None = None
    while True:
        daemon = world.d
        if daemon.proc is not None and daemon.proc.poll() is not None:
            return None
        done, all_live, states = converged_now(world)
        now = time.monotonic()
        if done:
            identity = _identity(world)
            if held is None or held[0] != identity:
                held = (identity, now)
            elif now - held[1] >= HOLD:
                return held[1]
        else:
            held = None
        if now >= deadline + (HOLD if held else 0.0):
            return None
        if done:
            time.sleep(0.2)
            continue
        if all_live:
            seen = _fingerprint(world, states)
            if mark is None or mark[0] != seen:
                mark = (seen, now)
            elif now - mark[1] >= STUCK:
                return None
        else:
            mark = None
        time.sleep(0.2)


def _gap(world: World, seconds: float, user_events: int) -> None:
    world.sim.touch_users(user_events)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def _stop(world: World) -> tuple[int | None, list[int]]:
    """SIGTERM the daemon: its exit code and every worker pid it ever had that is still alive after 2 s."""
    daemon = world.d
    workers = {int(line["worker_pid"]) for line in lines(daemon.logs(), "shard_started")}
    if daemon.proc is not None and daemon.proc.poll() is None:
        workers.update(children(daemon.pid))
    try:
        code = daemon.stop(timeout=float(SECTIONS["supervisor"]["shutdown_timeout"]) + 10.0)
    except AssertionError:
        code = None
    poll(lambda: not any(alive(p) for p in workers), 2.0)
    return code, sorted(p for p in workers if alive(p))


def _kill_leftovers(world: World) -> None:
    daemon = world.daemon
    if daemon is None or daemon.proc is None:
        return
    pids = {int(line["worker_pid"]) for line in lines(daemon.logs(), "shard_started")}
    if daemon.proc.poll() is None:
        pids.update(children(daemon.pid))
        daemon.proc.kill()
        daemon.proc.wait(5)
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        daemon.stop()


def run(schedule: Schedule, *, variant: str | None = None, keep: bool = False,
        say: Callable[[str], Any] | None = None, base: Path | None = None) -> Result:
    """Run ``schedule`` against a fresh simulator and daemon; the result holds every check's verdict.

    The run's directory (under ``base``, default the system's temporary directory) is removed when every
    check passed, unless ``keep``; a failed run's is kept for its logs and shard files.
    """
    started = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix=f"chaos-{schedule.seed}-", dir=base))
    result = Result(schedule, home=home, variant=variant)
    world = World(schedule, home, variant=variant)
    config = judged_config(schedule)
    try:
        daemon = world.start()
        daemon.wait_live(30)
        poll(lambda: world.sim.connections() == {r: 1 for r in range(DIVISOR)}, 10.0)
        began = time.time()
        for fault in schedule.faults:
            _gap(world, fault.gap, schedule.setup.user_events)
            if say is not None:
                say(f"  {fault.describe()}")
            result.journal.append(carry_out(world, fault))
        tail = max((e.ended for e in result.journal), default=time.time())
        while time.time() < tail:  # a refusal window still running
            time.sleep(0.05)
        world.sim.pause()
        quiesced, quiesced_mono = time.time(), time.monotonic()
        extra = max((e.started + QUOTA_SETTLE - quiesced for e in result.journal if e.settle == QUOTA_SETTLE),
                    default=0.0)
        converged_at = converge(world, quiesced_mono + CONVERGE + max(0.0, extra))
        converged = converged_at is not None
        if converged_at is not None:
            result.converge_seconds = round(converged_at - quiesced_mono, 3)
        poll(lambda: not zombies(daemon.pid), 2.0)  # one just exiting is reaped on the parent's next pass
        seen = observe(world, began=began, quiesced=quiesced, converged=converged, zombie_pids=zombies(daemon.pid))
        result.verdict = judge(seen, result.journal, config)
        result.restarts = len(lines(seen.logs, "shard_exited"))
        result.logins, result.renewals = seen.logins, seen.renewals
        code, survivors = _stop(world)
        result.verdict["exit"] = exit_clean(code, survivors)
    except Exception:
        result.verdict.setdefault("run", []).append(traceback.format_exc(limit=6).strip().replace("\n", "\n    "))
    finally:
        with contextlib.suppress(Exception):
            _kill_leftovers(world)
        world.stop()
        result.seconds = round(time.monotonic() - started, 1)
        if result.ok and not keep:
            shutil.rmtree(home, ignore_errors=True)
            result.home = None
    return result


def run_seed(seed: int, kinds: list[str], variant: str | None = None, keep: bool = False) -> Result:
    """:func:`run` of one seed's schedule (a campaign's unit of work, picklable for a process pool)."""
    return run(make(seed, kinds), variant=variant, keep=keep)
