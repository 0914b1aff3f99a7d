"""The resharding planner: the order in which a change of divisor starts new shards and stops old ones (pure).

An account ``a`` belongs to shard ``a % N`` of divisor N.  Going from this
host's old shards (divisor N, remainders R) to its new ones (divisor M,
remainders R') is a list of :class:`Move` values carried out one at a time:
start the move's new shards, and once every one of them is live, stop its old
shards.  So an account never lacks a live copy: until its new shard is live
its old one runs.

* **split** (M a multiple of N): one move per old r, starting every r' of R'
  with r' % N == r (M/N of them when R' has them all);
* **merge** (N a multiple of M): one move per new r', stopping every r of R
  with r % M == r';
* **other**: one move, every new shard then every old one (|R'| extra
  connections at once).

New shards whose accounts no old shard had (``added``) are started by moves
of their own, at most M/N at a time, before any old shard is stopped for
them; old shards whose accounts no new shard takes (``uncovered``: the new
configuration gives them to another host, or to nobody) are stopped by the
last moves, after everything else is live.  Coverage is counted in residues
modulo lcm(N, M): an account's residue decides both its old and its new shard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Move", "Reshape", "Reshard", "covered", "describe", "plan"]


class Reshape(StrEnum):
    SPLIT = "split"
    MERGE = "merge"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Move:
    """Start ``start`` (new remainders); once every one is live, stop ``stop`` (old remainders)."""

    start: tuple[int, ...]
    stop: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Reshard:
    """A whole change of divisor: its moves in order, and what the two configurations do not share."""

    old_divisor: int
    new_divisor: int
    shape: Reshape
    moves: tuple[Move, ...]
    #: Residues (mod ``modulus``) the old shards covered and the new ones do not: dropped by this host.
    uncovered: tuple[int, ...]
    #: Residues (mod ``modulus``) the new shards cover and the old ones did not: taken on by this host.
    added: tuple[int, ...]

    @property
    def modulus(self) -> int:
        return math.lcm(self.old_divisor, self.new_divisor)

    @property
    def max_extra(self) -> int:
        """New connections a move opens before it closes any: the most this plan adds at a time."""
        return max((len(move.start) for move in self.moves), default=0)

    @property
    def exact(self) -> bool:
        return not self.uncovered and not self.added


def covered(divisor: int, remainders: frozenset[int] | set[int], modulus: int) -> set[int]:
    """The residues modulo ``modulus`` (a multiple of ``divisor``) whose accounts ``remainders`` hold."""
    return {residue for residue in range(modulus) if residue % divisor in remainders}


def plan(old_divisor: int, old: frozenset[int], new_divisor: int, new: frozenset[int]) -> Reshard:
    """The moves from shards ``old`` of ``old_divisor`` to shards ``new`` of ``new_divisor`` (divisors differ)."""
    if old_divisor == new_divisor or old_divisor < 1 or new_divisor < 1:
        raise ValueError("a reshard changes the divisor")
    modulus = math.lcm(old_divisor, new_divisor)
    had, has = covered(old_divisor, old, modulus), covered(new_divisor, new, modulus)
    if new_divisor % old_divisor == 0:
        shape, moves = Reshape.SPLIT, _split(old_divisor, old, new_divisor, new)
    elif old_divisor % new_divisor == 0:
        shape, moves = Reshape.MERGE, _merge(old_divisor, old, new_divisor, new)
    else:
        shape, moves = Reshape.OTHER, [Move(tuple(sorted(new)), tuple(sorted(old)))] if old or new else []
    return Reshard(old_divisor, new_divisor, shape, tuple(moves),
                   uncovered=tuple(sorted(had - has)), added=tuple(sorted(has - had)))


def _split(n: int, old: frozenset[int], m: int, new: frozenset[int]) -> list[Move]:
    fan = m // n
    children = {r: tuple(sorted(c for c in new if c % n == r)) for r in sorted(old)}
    orphans = sorted(c for c in new if c % n not in old)
    moves = [Move(tuple(orphans[i:i + fan]), ()) for i in range(0, len(orphans), fan)]
    # Old shards that keep some accounts first; those whose accounts all leave this host last.
    moves += [Move(kids, (r,)) for r, kids in children.items() if kids]
    moves += [Move((), (r,)) for r, kids in children.items() if not kids]
    return moves


def _merge(n: int, old: frozenset[int], m: int, new: frozenset[int]) -> list[Move]:
    parents = {c: tuple(sorted(r for r in old if r % m == c)) for c in sorted(new)}
    moves = [Move((c,), rs) for c, rs in parents.items()]
    # Ordered like a split: taking accounts on before dropping any.
    moves.sort(key=lambda move: bool(move.stop))
    leaving = sorted(r for r in old if r % m not in new)
    moves += [Move((), (r,)) for r in leaving]
    return moves


def describe(residues: tuple[int, ...], modulus: int, limit: int = 16) -> str:
    """``residues`` for a log line: "account id % 8 in 3, 7" (clipped after ``limit``)."""
    shown = ", ".join(str(r) for r in residues[:limit])
    more = f" and {len(residues) - limit} more" if len(residues) > limit else ""
    return f"account id % {modulus} in {shown}{more}"
