"""Seed -> the campaign's setup and its faults (pure: the same seed and kinds give the same schedule).

A schedule fixes which faults happen, in which order, aimed where, with which
parameters and after which gaps; the machine's timing decides only how long
each takes to carry out.  Two rules keep a seed inside what the daemon is
specified to absorb without parking a shard or tripping the global breaker
(those have their own tests): faults that kill the same shard's worker are
at least :data:`KILL_SPACING` seconds of gaps apart, and so are any two
``sigkill_twice`` (the only kind that gives a shard two failures in one
restart period), so at most one shard is ever "failing".
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .catalogue import KINDS, default_kinds

#: The campaign's daemon runs this many shards.
DIVISOR: Final = 4
#: [supervisor] period of the campaign's config, plus a margin (see the module docstring).
KILL_SPACING: Final = 12.0
GAP: Final = (0.2, 2.5)
FAULTS: Final = (6, 15)
SHUTDOWN_REASONS: Final = ("Maintenance", "ConnectionQuotaReached", "IPQuotaReached")
MALFORMED: Final = ("truncated", "not_array", "bad_utf8", "unknown_letter")
SPLIT_ENDS: Final = ("none", "empty", "flag")
BROKEN_FILES: Final = ("syntax", "value", "unknown_key")
POISONS: Final = ("deep", "bigid", "badtype")


@dataclass(frozen=True)
class Setup:
    """What the simulator streams for the whole seed."""

    event_rate: float
    batch: int
    entity_list: str
    deleted_entity: str
    #: Short lifetimes make the parent renew every few seconds, inside faults.
    token_lifetime: float
    #: User-level changes (which reach every shard) sent between faults.
    user_events: int


@dataclass(frozen=True)
class Fault:
    index: int
    kind: str
    targets: tuple[int, ...]
    #: Seconds to wait after the previous fault was carried out.
    gap: float
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        where = ",".join(map(str, self.targets)) if self.targets else "-"
        extra = " ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"#{self.index} {self.kind} @{where} after {self.gap:.2f}s {extra}".rstrip()


@dataclass(frozen=True)
class Schedule:
    seed: int
    setup: Setup
    faults: tuple[Fault, ...]
    kinds: tuple[str, ...]

    def replay(self) -> str:
        """The command that runs this schedule again."""
        command = f"python -m tests.chaos --seed {self.seed}"
        if self.kinds != default_kinds():
            command += f" --kinds {','.join(self.kinds)}"
        return command


def make(seed: int, kinds: Sequence[str] | None = None, count: tuple[int, int] = FAULTS) -> Schedule:
    """The schedule of ``seed`` over ``kinds`` (default: every kind whose feature is here)."""
    chosen = tuple(kinds) if kinds is not None else default_kinds()
    unknown = sorted(set(chosen) - set(KINDS))
    if unknown or not chosen:
        raise ValueError(f"unknown fault kinds: {', '.join(unknown)}" if unknown else "no fault kinds")
    rng = random.Random(seed)
    setup = Setup(
        event_rate=rng.choice((15.0, 40.0)),
        batch=rng.choice((1, 4, 8)),
        entity_list=rng.choice(("never", "some", "always")),
        deleted_entity=rng.choice(("full", "id")),
        token_lifetime=rng.choice((4800.0, round(rng.uniform(8.0, 16.0), 1))),
        user_events=rng.randint(1, 3),
    )
    weights = [KINDS[name].weight for name in chosen]
    faults: list[Fault] = []
    elapsed = 0.0
    last_kill: dict[int, float] = {}
    last_double = float("-inf")
    for index in range(rng.randint(*count)):
        gap = round(rng.uniform(*GAP), 2)
        elapsed += gap
        for _ in range(50):
            kind = rng.choices(chosen, weights)[0]
            targets = _targets(rng, kind)
            if _allowed(kind, targets, elapsed, last_kill, last_double):
                break
        else:
            # Nothing that kills fits here: a socket drop always does.
            kind, targets = "drop", (rng.randrange(DIVISOR),)
        if KINDS[kind].kills:
            for target in targets:
                last_kill[target] = elapsed
            if kind == "sigkill_twice":
                last_double = elapsed
        faults.append(Fault(index, kind, targets, gap, _params(rng, kind)))
    return Schedule(seed, setup, tuple(faults), chosen)


def _targets(rng: random.Random, kind: str) -> tuple[int, ...]:
    if not KINDS[kind].aimed:
        return ()
    if kind == "hup_readd":
        return tuple(sorted(rng.sample(range(DIVISOR), rng.randint(1, 2))))
    return (rng.randrange(DIVISOR),)


def _allowed(kind: str, targets: tuple[int, ...], elapsed: float, last_kill: dict[int, float],
             last_double: float) -> bool:
    if not KINDS[kind].kills:
        return True
    if kind == "sigkill_twice" and elapsed - last_double < KILL_SPACING:
        return False
    return all(elapsed - last_kill.get(t, float("-inf")) >= KILL_SPACING for t in targets)


def _params(rng: random.Random, kind: str) -> dict[str, Any]:
    if kind == "sigstop_short":
        return {"fraction": round(rng.uniform(0.15, 0.4), 2)}  # of heartbeat_timeout
    if kind == "refuse":
        return {"seconds": round(rng.uniform(1.0, 4.0), 2)}
    if kind == "shutdown":
        return {"reason": rng.choice(SHUTDOWN_REASONS)}
    if kind == "mutate_down":
        return {"seconds": round(rng.uniform(1.0, 2.5), 2), "count": rng.randint(6, 14),
                "deletions": rng.randint(2, 4)}
    if kind == "hup_broken":
        return {"how": rng.choice(BROKEN_FILES)}
    # The simulator spaces every message of a split snapshot by split_delay, and generates the props it
    # interleaves when the snapshot is taken: spaced, they would reach the socket after newer live props
    # (a server never reorders its own stream).  So parts are either spaced (live props fall between
    # them) or back to back with generated props interleaved.
    if kind == "split_spaced":
        spaced = rng.random() < 0.5
        return {"delay": round(rng.uniform(0.1, 0.6), 2) if spaced else 0.0, "chunks": rng.randint(2, 5),
                "end": rng.choice(SPLIT_ENDS), "interleave": 0 if spaced else rng.randint(1, 3)}
    if kind == "split_slow":
        return {"delay": round(rng.uniform(1.3, 2.0), 2), "chunks": rng.randint(2, 4),
                "end": rng.choice(SPLIT_ENDS), "interleave": 0}
    if kind == "malformed":
        return {"what": rng.choice(MALFORMED)}
    if kind == "poison":
        return {"what": rng.choice(POISONS), "in_snapshot": rng.random() < 0.7}
    return {}
