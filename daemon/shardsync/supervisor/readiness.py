"""When the parent tells systemd READY=1 (pure).

Ready once every configured shard has been live at least once, or at the
latest ``start_timeout`` after the parent started, live or not: systemd must
not wait forever on a shard the server refuses, and a slow start must not
hold the unit in "activating" past its own timeout.  Ready is said once.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Ready", "decide", "due_at"]


@dataclass(frozen=True, slots=True)
class Ready:
    """Send READY=1 now; ``all_live`` says which of the two rules fired."""

    all_live: bool
    after: float


def due_at(*, started: float, start_timeout: float, all_live: bool) -> float:
    """When READY=1 is due: at once when every shard has been live, else at the start timeout."""
    return started if all_live else started + start_timeout


def decide(*, now: float, started: float, start_timeout: float, all_live: bool) -> Ready | None:
    """READY=1 at ``now``, or None while neither rule holds."""
    if now < due_at(started=started, start_timeout=start_timeout, all_live=all_live):
        return None
    return Ready(all_live=all_live, after=now - started)
