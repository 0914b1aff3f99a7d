"""Each fault kind carried out against the world, and journaled (:class:`~.oracle.Executed`).

A fault waits only for what it needs to be carried out at all (a pid to
signal, a reload to be taken in, a replacement for a stopped worker) and
never for the shard to recover: recovery is the oracle's business, and the
next fault may well land while the shard is still down.  What the machine's
timing decides (no worker to signal right now, no socket to drop) is noted,
never hidden.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import TypeVar

from harness import alive

from .oracle import Executed
from .schedule import DIVISOR, Fault
from .world import MAX_MESSAGE_BYTES, SECTIONS, World

T = TypeVar("T")
HEARTBEAT_TIMEOUT = float(SECTIONS["supervisor"]["heartbeat_timeout"])
SHUTDOWN_TIMEOUT = float(SECTIONS["supervisor"]["shutdown_timeout"])


def poll(predicate: Callable[[], T | None], timeout: float, interval: float = 0.02) -> T | None:
    """``predicate()``'s first truthy value within ``timeout`` seconds, else None (the caller notes it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def pid_of(world: World, remainder: int, timeout: float = 5.0, *, other_than: int | None = None) -> int | None:
    """The pid of the shard's running worker (a new one when ``other_than`` is given)."""

    def running() -> int | None:
        shard = world.d.shards().get(remainder)
        if shard is None or shard["pid"] is None or shard["state"] in ("stopping", "hung"):
            return None
        pid = int(shard["pid"])
        return pid if pid != other_than else None

    return poll(running, timeout)


def _reload(world: World, *, expect: str = "reloaded", timeout: float = 10.0) -> bool:
    """SIGHUP and wait until the parent logged it took the file in (or rejected it)."""
    before = world.count(expect)
    world.d.signal(signal.SIGHUP)
    return poll(lambda: world.count(expect) > before, timeout) is not None


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


# --- the kinds -----------------------------------------------------------------------------------


def sigkill(world: World, fault: Fault, done: Executed) -> None:
    pid = pid_of(world, fault.targets[0])
    done.notes["pid"] = pid
    if pid is not None and _signal(pid, signal.SIGKILL):
        done.kills = 1


def sigkill_twice(world: World, fault: Fault, done: Executed) -> None:
    sigkill(world, fault, done)
    first = done.notes["pid"]
    if not done.kills:
        return
    second = pid_of(world, fault.targets[0], other_than=first)
    done.notes["second_pid"] = second
    if second is not None and _signal(second, signal.SIGKILL):
        done.kills = 2


def sigstop_short(world: World, fault: Fault, done: Executed) -> None:
    remainder = fault.targets[0]
    pid = pid_of(world, remainder)
    done.notes["pid"] = pid
    if pid is None or not _signal(pid, signal.SIGSTOP):
        return
    stopped_for = round(fault.params["fraction"] * HEARTBEAT_TIMEOUT, 3)
    done.notes["stopped_for"] = stopped_for
    try:
        time.sleep(stopped_for)  # the fault itself: a pause of this length
    finally:
        _signal(pid, signal.SIGCONT)
    done.notes["pid_after"] = world.d.pids().get(remainder)


def sigstop_long(world: World, fault: Fault, done: Executed) -> None:
    remainder = fault.targets[0]
    pid = pid_of(world, remainder)
    done.notes["pid"] = pid
    if pid is None or not _signal(pid, signal.SIGSTOP):
        done.notes["pid"] = None
        return
    stopped = time.monotonic()
    try:
        replacement = poll(lambda: not alive(pid) and pid_of(world, remainder, 0.0, other_than=pid),
                           HEARTBEAT_TIMEOUT + 6.0)
    finally:
        _signal(pid, signal.SIGCONT)
    if replacement:
        done.notes["replaced_after"] = round(time.monotonic() - stopped, 3)
        done.kills = 1
    elif not alive(pid):
        done.kills = 1  # killed, its replacement still to come (backoff)
        done.notes["replaced_after"] = round(time.monotonic() - stopped, 3)


def drop(world: World, fault: Fault, done: Executed) -> None:
    done.notes["sockets"] = world.sim.drop(fault.targets[0], DIVISOR)


def reset(world: World, fault: Fault, done: Executed) -> None:
    done.notes["sockets"] = world.sim.reset(fault.targets[0], DIVISOR)


def refuse(world: World, fault: Fault, done: Executed) -> None:
    seconds = fault.params["seconds"]
    world.sim.refuse(seconds)
    done.notes["sockets"] = world.sim.drop(fault.targets[0], DIVISOR)
    done.ended = done.started + seconds  # the refusal goes on after we return


def shutdown(world: World, fault: Fault, done: Executed) -> None:
    reason = fault.params["reason"]
    done.notes["sockets"] = world.sim.shutdown(reason, f"chaos {reason}", fault.targets[0], DIVISOR)


def close_frame(world: World, fault: Fault, done: Executed) -> None:
    done.notes["sockets"] = world.sim.close_frame(3000, "Go away!", fault.targets[0], DIVISOR)


def mutate_down(world: World, fault: Fault, done: Executed) -> None:
    seconds, remainder = fault.params["seconds"], fault.targets[0]
    world.sim.refuse(seconds)
    done.notes["sockets"] = world.sim.drop(remainder, DIVISOR)
    changes = world.sim.mutate(fault.params["count"], remainder, DIVISOR, deletions=fault.params["deletions"])
    done.notes["deleted"] = sum(1 for c in changes if c.event_type == "Deleted")
    done.notes["changes"] = len(changes)
    done.ended = done.started + seconds


def revoke(world: World, fault: Fault, done: Executed) -> None:
    done.notes["tokens"] = world.sim.revoke()
    done.notes["sockets"] = world.sim.drop(fault.targets[0], DIVISOR)


def hup_same(world: World, fault: Fault, done: Executed) -> None:
    done.notes["reloaded"] = _reload(world)


def hup_readd(world: World, fault: Fault, done: Executed) -> None:
    gone = set(fault.targets)
    world.write([r for r in range(DIVISOR) if r not in gone])
    done.notes["removed"] = _reload(world)
    reaped = poll(lambda: not gone & set(world.d.shards()), SHUTDOWN_TIMEOUT + 5.0)
    done.notes["reaped"] = reaped is not None
    world.write()
    done.notes["re_added"] = _reload(world)


def hup_readd_fast(world: World, fault: Fault, done: Executed) -> None:
    remainder = fault.targets[0]
    pid = pid_of(world, remainder)
    done.notes["pid"] = pid
    # Held in SIGSTOP, the old worker cannot finish stopping: the re-add lands while it is still stopping.
    held = pid if pid is not None and _signal(pid, signal.SIGSTOP) else None
    try:
        world.write([r for r in range(DIVISOR) if r != remainder])
        done.notes["removed"] = _reload(world)
        world.write()
        done.notes["re_added"] = _reload(world)
        if held is not None:
            done.notes["still_stopping"] = alive(held)
    finally:
        if held is not None:
            _signal(held, signal.SIGCONT)


def hup_broken(world: World, fault: Fault, done: Executed) -> None:
    world.write(broken=fault.params["how"])
    try:
        done.notes["rejected"] = _reload(world, expect="reload_rejected")
    finally:
        world.write()  # the good file back, not reloaded: nothing changed


def _split(world: World, fault: Fault, done: Executed) -> None:
    params, remainder = fault.params, fault.targets[0]
    before = {r["conn"] for r in world.sim.subscriptions()}
    world.sim.configure(snapshot_mode="split", split_chunks=params["chunks"], split_delay=params["delay"],
                        split_end=params["end"], interleave_props=params["interleave"])
    try:
        done.notes["sockets"] = world.sim.drop(remainder, DIVISOR)

        def resynced() -> bool:
            return any(r["conn"] not in before and r["remainder"] == remainder and r["snapshot_sent_at"]
                       for r in world.sim.subscriptions())

        done.notes["resynced"] = poll(resynced, 15.0, 0.05) is not None
    finally:
        world.sim.configure(snapshot_mode="single", split_delay=0.0, split_end="none", interleave_props=0)


def split_spaced(world: World, fault: Fault, done: Executed) -> None:
    _split(world, fault, done)


def split_slow(world: World, fault: Fault, done: Executed) -> None:
    _split(world, fault, done)


def malformed(world: World, fault: Fault, done: Executed) -> None:
    done.notes["sockets"] = world.sim.malformed(fault.params["what"], fault.targets[0], DIVISOR)


def oversized(world: World, fault: Fault, done: Executed) -> None:
    size_mib = 2 * MAX_MESSAGE_BYTES / (1 << 20)
    done.notes["sockets"] = world.sim.malformed("huge", fault.targets[0], DIVISOR, size_mib=size_mib)


def poison(world: World, fault: Fault, done: Executed) -> None:
    remainder, in_snapshot = fault.targets[0], fault.params["in_snapshot"]
    bad = world.sim.poison(fault.params["what"], remainder, DIVISOR, in_snapshot=in_snapshot)
    done.notes["poisoned"] = bad
    if in_snapshot:
        done.notes["sockets"] = world.sim.drop(remainder, DIVISOR)


CARRY_OUT: dict[str, Callable[[World, Fault, Executed], None]] = {
    "sigkill": sigkill, "sigkill_twice": sigkill_twice, "sigstop_short": sigstop_short, "sigstop_long": sigstop_long,
    "drop": drop, "reset": reset, "refuse": refuse, "shutdown": shutdown, "close_frame": close_frame,
    "mutate_down": mutate_down, "revoke": revoke, "hup_same": hup_same, "hup_readd": hup_readd,
    "hup_readd_fast": hup_readd_fast, "hup_broken": hup_broken, "split_spaced": split_spaced,
    "split_slow": split_slow, "malformed": malformed, "oversized": oversized, "poison": poison,
}


def carry_out(world: World, fault: Fault) -> Executed:
    """Carry ``fault`` out; the record says when, and what happened."""
    done = Executed(fault, started=time.time(), ended=0.0)
    try:
        CARRY_OUT[fault.kind](world, fault, done)
    finally:
        done.ended = max(done.ended, time.time())
    return done
