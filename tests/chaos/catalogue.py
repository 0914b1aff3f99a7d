"""The fault kinds of the campaign: how often a seed draws each, what each may disturb, what it needs.

``aimed`` kinds name target shards: only those may change pid or connection
while the fault lasts (plus ``SETTLE`` seconds, or ``QUOTA_SETTLE`` after a
quota shutdown).  Kinds that are not aimed (a SIGHUP of an unchanged or a
broken file) may disturb no shard at all.  ``kills`` is how many worker exits
the parent must count as failures (and restart) for the kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    weight: int
    aimed: bool = True
    kills: int = 0
    help: str = ""


KINDS: Final[dict[str, Kind]] = {k.name: k for k in (
    Kind("sigkill", 4, kills=1, help="SIGKILL the target's worker"),
    Kind("sigkill_twice", 1, kills=2, help="SIGKILL the worker, then its replacement (restart attempt 2 backs off)"),
    Kind("sigstop_short", 3, help="SIGSTOP the worker for well under heartbeat_timeout, then SIGCONT"),
    Kind("sigstop_long", 2, kills=1, help="SIGSTOP the worker until the parent replaces it as hung"),
    Kind("drop", 3, help="abort the target's socket (FIN, no close frame)"),
    Kind("reset", 3, help="abort the target's socket with a TCP RST"),
    Kind("refuse", 2, help="refuse every WebSocket upgrade for a while, drop the target meanwhile"),
    Kind("shutdown", 2, help="a shutdown event (Maintenance, ConnectionQuotaReached or IPQuotaReached)"),
    Kind("close_frame", 1, help="a SockJS c[3000,...] frame, then close"),
    Kind("mutate_down", 4, help="creates, updates and deletes on the target's accounts while it cannot connect"),
    Kind("revoke", 2, help="revoke every token, drop the target so it must authorize again"),
    Kind("hup_same", 1, aimed=False, help="SIGHUP with the file unchanged"),
    Kind("hup_readd", 2, help="SIGHUP removing 1-2 remainders, once reaped a SIGHUP adding them back"),
    Kind("hup_readd_fast", 2, help="remove and re-add one remainder while its worker is still stopping"),
    Kind("hup_broken", 1, aimed=False, help="SIGHUP with a broken file (syntax, a bad value, an unknown key)"),
    Kind("split_spaced", 3, help="the target resyncs from a split snapshot, parts spaced under the quiet period"),
    Kind("split_slow", 2, help="the target resyncs from a split snapshot, parts spaced beyond the quiet period"),
    Kind("malformed", 2, help="one broken frame (truncated, not an array, bad UTF-8, unknown letter)"),
    Kind("oversized", 1, help="one frame above max_message_bytes"),
    Kind("poison", 2, help="an entity no sink can store, in the target's snapshots or live"),
)}

#: Seconds after a fault's end within which its target may still reconnect or restart.
SETTLE: Final = 10.0
#: After a quota shutdown the worker waits out its quota backoff (60 s) before reconnecting.
QUOTA_SETTLE: Final = 75.0


def default_kinds() -> tuple[str, ...]:
    """Every kind, in catalogue order (a seed draws from these unless told otherwise)."""
    return tuple(KINDS)
