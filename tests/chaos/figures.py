"""A campaign's figures: faults by kind, quiesce -> converged percentiles, restarts, logins, failures."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from .runner import Result


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summary(results: Sequence[Result], wall: float) -> str:
    kinds: Counter[str] = Counter(e.fault.kind for r in results for e in r.journal)
    params: Counter[str] = Counter()
    for r in results:
        for e in r.journal:
            if e.fault.kind == "shutdown":
                params[f"shutdown {e.fault.params['reason']}"] += 1
            if e.fault.kind in ("split_spaced", "split_slow"):
                params[f"{e.fault.kind} end={e.fault.params['end']}"] += 1
    converge = [r.converge_seconds for r in results if r.converge_seconds is not None]
    failed = [r for r in results if not r.ok]
    short_tokens = sum(1 for r in results if r.schedule.setup.token_lifetime < 60)
    p50, p99 = percentile(converge, 0.5), percentile(converge, 0.99)
    out = [
        f"seeds: {len(results)} run, {len(results) - len(failed)} passed, {len(failed)} failed"
        + (f" ({', '.join(str(r.schedule.seed) for r in failed)})" if failed else ""),
        f"wall time: {wall:.0f}s ({wall / max(1, len(results)):.1f}s per seed)",
        f"faults: {sum(kinds.values())} carried out; by kind:",
        *(f"  {kind:16} {count}" for kind, count in sorted(kinds.items())),
        *(f"  {name:32} {count}" for name, count in sorted(params.items())),
        f"seeds with short token lifetimes (renewals inside faults): {short_tokens}",
        "quiesce -> converged: "
        + ("n/a" if p50 is None else f"p50 {p50:.2f}s, p99 {p99:.2f}s, max {max(converge):.2f}s (n={len(converge)})"),
        f"worker restarts (failures the parent restarted): {sum(r.restarts for r in results)}",
        f"logins: {sum(r.logins for r in results)}, renewals: {sum(r.renewals for r in results)}",
    ]
    return "\n".join(out)
