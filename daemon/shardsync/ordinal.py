"""A host's share of the shards from its ordinal: ``--host-index I --host-count N`` -> remainders.

One config file serves every host (a Kubernetes StatefulSet's one ConfigMap):
host ``I`` of ``N`` runs the ``I``-th of ``N`` contiguous blocks of
``0 .. divisor-1``, the blocks as even as possible (the first ``divisor % N``
hosts get one more).  Contiguous blocks keep the remainders of a host
readable in logs and status ("host 2 runs 8-11").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["HostSlot", "host_remainders", "parse_host_index"]


@dataclass(frozen=True)
class HostSlot:
    """This host's position among ``count`` hosts sharing one config: ``index`` in ``0 .. count-1``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"--host-index {self.index} --host-count {self.count}"


def host_remainders(divisor: int, index: int, count: int) -> tuple[int, ...]:
    """The remainders host ``index`` of ``count`` runs; ValueError when the slot does not fit ``divisor``."""
    if divisor < 1:
        raise ValueError(f"divisor {divisor} < 1")
    if count < 1:
        raise ValueError(f"--host-count {count} < 1")
    if not 0 <= index < count:
        raise ValueError(f"--host-index {index} is not in 0..{count - 1} (--host-count {count})")
    if count > divisor:
        # Such a host would run nothing while looking healthy; refuse rather than idle.
        raise ValueError(f"--host-count {count} > sync.divisor {divisor}: some hosts would run no shard")
    size, extra = divmod(divisor, count)
    start = index * size + min(index, extra)
    return tuple(range(start, start + size + (index < extra)))


# A pod name is a DNS label; its ordinal is the digits after the last dash.
_ORDINAL_RE = re.compile(r"(?:[a-z0-9](?:[-a-z0-9]*[a-z0-9])?-)?([0-9]{1,9})")


def parse_host_index(text: str) -> int:
    """``"2"``, or a StatefulSet pod name ``"shardsync-2"`` (its ordinal); ValueError otherwise."""
    m = _ORDINAL_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is neither an index 0, 1, ... nor a pod name ending in -N")
    return int(m.group(1))
