"""Whether several hosts' configs split one sharded sync exactly: same shape, remainders a partition.

Every host of one Tradovate account must agree on ``divisor``, ``expression``
and ``entity_types``, and their ``remainders`` together must cover
``0 .. divisor-1`` exactly once: a gap leaves accounts unsynced, an overlap
opens two connections for one remainder. Pure: configs in, problems out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["HostShards", "check_partition", "compress"]


@dataclass(frozen=True)
class HostShards:
    """What one host's config says about the shared sharding."""

    source: str
    divisor: int
    expression: str
    entity_types: tuple[str, ...]
    remainders: tuple[int, ...]


def compress(numbers: Iterable[int]) -> str:
    """Sorted, unique numbers as ranges: ``[5, 6, 7, 12]`` -> ``"5-7, 12"``."""
    spans: list[list[int]] = []
    for n in sorted(set(numbers)):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in spans)


def _disagreement(hosts: Sequence[HostShards], key: str, values: Sequence[object]) -> str | None:
    if len(set(values)) <= 1:
        return None
    shown = "; ".join(f"{host.source}: {_show(value)}" for host, value in zip(hosts, values, strict=True))
    return f"sync.{key} differs: {shown}"


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def check_partition(hosts: Sequence[HostShards], *, resharding: bool = False) -> list[str]:
    """Every problem with *hosts* as one deployment, worded for an operator; empty when they fit.

    When the divisors differ the remainders cannot be compared, so only the
    disagreements are reported, unless ``resharding``: some hosts already run
    the new divisor, the others the old one.  Then every divisor must divide
    the largest, L, and the accounts (residues of the account id modulo L)
    must be covered exactly once.
    """
    if not hosts:
        return ["no configs to check"]
    divisors = {h.divisor for h in hosts}
    problems = [
        problem
        for problem in (
            None if resharding else _disagreement(hosts, "divisor", [h.divisor for h in hosts]),
            _disagreement(hosts, "expression", [h.expression for h in hosts]),
            # order does not matter to the server: compare as sets, show as sorted
            _disagreement(hosts, "entity_types", [tuple(sorted(set(h.entity_types))) for h in hosts]),
        )
        if problem is not None
    ]
    if len(divisors) > 1:
        return problems + (_residues(hosts, max(divisors)) if resharding else [])
    divisor = hosts[0].divisor
    owners: dict[int, list[str]] = {r: [] for r in range(divisor)}
    for host in hosts:
        for remainder in sorted(set(host.remainders)):
            owners.setdefault(remainder, []).append(host.source)
    # one line per set of files that overlap, each naming its remainders
    overlaps: dict[tuple[str, ...], list[int]] = {}
    for remainder, sources in sorted(owners.items()):
        if len(sources) > 1:
            overlaps.setdefault(tuple(sources), []).append(remainder)
    for sharing, remainders in overlaps.items():
        problems.append(f"overlap: {compress(remainders)} (in {', '.join(sharing)})")
    gaps = [r for r, sources in owners.items() if not sources]
    if gaps:
        problems.append(f"gap: {compress(gaps)} (in no file; divisor {divisor})")
    outside = [r for r in owners if not 0 <= r < divisor]
    if outside:
        problems.append(f"outside 0-{divisor - 1}: {compress(outside)}")
    return problems


def _residues(hosts: Sequence[HostShards], modulus: int) -> list[str]:
    """Hosts of several divisors (a resharding rolled out host by host): each account exactly once."""
    bad = sorted(d for d in {h.divisor for h in hosts} if modulus % d)
    if bad:
        return [f"divisors {', '.join(map(str, bad))} do not divide {modulus}: no split or merge goes between them"]
    owners: dict[int, list[str]] = {r: [] for r in range(modulus)}
    for host in hosts:
        for remainder in sorted(set(host.remainders)):
            for residue in range(remainder, modulus, host.divisor):
                owners[residue].append(f"{host.source} ({remainder} of {host.divisor})")
    problems = [f"overlap: account id % {modulus} = {r} (in {', '.join(sources)})"
                for r, sources in owners.items() if len(sources) > 1][:16]
    gaps = [r for r, sources in owners.items() if not sources]
    if gaps:
        problems.append(f"gap: account id % {modulus} in {compress(gaps)} (in no file)")
    return problems
