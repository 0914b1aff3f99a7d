"""The status model: the parent's view of its shards at one instant, and its renderings.

The loop owns the shard table and builds a :class:`StatusSnapshot` on demand;
this module only describes and renders it: ``/status`` (JSON), ``/healthz``
(200 when every shard is live, 503 otherwise) and the one-line summary for
systemd's STATUS=.  ``/metrics`` is ``metrics.py``; the listener serving all
three is ``httpd.py``.  The snapshot types have no field that could hold a
secret, and ``last_error`` is passed through the log redactor on the way out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from shardsync.clip import clip
from shardsync.ipc import ShardState
from shardsync.secrets import redact_text
from shardsync.supervisor.tally import Counts

__all__ = ["LIVE", "ShardStatus", "StatusSnapshot", "render_healthz", "render_status", "status_line", "summarize"]

LIVE: Final = ShardState.LIVE
_MAX_ERROR: Final = 500


@dataclass(frozen=True, slots=True)
class ShardStatus:
    """One shard as the parent sees it; times are seconds, None when not applicable."""

    remainder: int
    state: str  # the worker's heartbeat state while it runs, else the parent's (backoff, hung, parked...)
    pid: int | None = None
    uptime: float | None = None  # since the current worker was forked
    restarts: int = 0
    parked: bool = False
    last_heartbeat_age: float | None = None
    events_per_s: float = 0.0
    events: int = 0
    entities: int = 0
    reconnects: int = 0
    last_error: str | None = None
    next_restart_in: float | None = None
    # --- for /metrics: the worker process, data freshness, commit latency -------------------
    # rss/fds are the current worker's (0 while none runs); the counts are summed over every
    # worker the shard had (supervisor/tally.py); ages are wall-clock seconds at the snapshot,
    # counted from when the parent took the shard on if no worker reported one yet.
    rss_bytes: int = 0
    open_fds: int = 0
    last_event_age: float | None = None
    last_commit_age: float | None = None
    snapshot_seconds: float | None = None  # syncrequest to live, of the shard's last (re)sync
    counts: Counts = field(default_factory=Counts)
    #: Why it is parked: the restart policy's reason, or the server's refusal (clipped).
    parked_reason: str | None = None
    #: Requests of this shard the server refused (``Rejected``) since the daemon started.
    rejections: int = 0
    #: The shard's divisor: two run side by side while resharding (0: the snapshot's).
    divisor: int = 0
    #: Its part in a resharding in progress: "old" (to be replaced), "pending" (new, its move not
    #: done yet: the old shard it replaces still holds its accounts) or "new"; None when none runs.
    reshard: str | None = None
    #: Seconds its worker has not reached its sink (an outage it rides out on its socket); None: reachable.
    sink_down_for: float | None = None

    @property
    def live(self) -> bool:
        """Connected and streaming (a parked shard never is)."""
        return self.state == LIVE and not self.parked


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    """The parent at one instant: identity, readiness and every shard."""

    pid: int
    started_at: float  # wall clock, seconds since the epoch
    uptime: float
    ready: bool
    divisor: int
    shards: tuple[ShardStatus, ...] = ()
    # --- for /metrics: the parent's token (seconds; None while it holds none) ----------------
    token_expires_in: float | None = None
    token_renew_margin: float | None = None  # renewed this long before it expires
    #: The API budget (``budget.Budget.status``): whether new connections are paused, why, until when.
    budget: dict[str, Any] | None = None
    #: The token keeper (``tokens.TokenKeeper.status``): login state, failed logins in the last hour.
    login: dict[str, Any] | None = None
    #: The resharding in progress or last finished (``resharding.Resharding.status``).
    reshard: dict[str, Any] | None = None

    def summary(self) -> dict[str, int]:
        """Shards per state (a parked shard counts as parked), always with live/backoff/parked."""
        return summarize((s.state, s.parked) for s in self.shards)


def summarize(shards: Iterable[tuple[str, bool]]) -> dict[str, int]:
    """Counts per state of ``(state, parked)`` pairs: a parked shard counts as parked; plus the total."""
    # Plain str keys: orjson refuses str subclasses (the enum) as dict keys.
    counts = Counter(str(ShardState.PARKED if parked else state) for state, parked in shards)
    always = {str(state): 0 for state in (ShardState.LIVE, ShardState.BACKOFF, ShardState.PARKED)}
    return {"total": sum(counts.values()), **always, **counts}


def _text(value: str | None) -> str | None:
    """Text that may come from a server: printable, clipped, secrets redacted."""
    return None if value is None else redact_text(clip(value, _MAX_ERROR))


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def render_status(snap: StatusSnapshot) -> bytes:
    """The ``/status`` JSON document."""
    shards = [
        {
            "remainder": s.remainder,
            "divisor": s.divisor or snap.divisor,
            "state": s.state,
            "pid": s.pid,
            "uptime": _seconds(s.uptime),
            "restarts": s.restarts,
            "parked": s.parked,
            "last_heartbeat_age": _seconds(s.last_heartbeat_age),
            "events_per_s": round(s.events_per_s, 2),
            "events": s.events,
            "entities": s.entities,
            "reconnects": s.reconnects,
            "last_error": _text(s.last_error),
            "next_restart_in": _seconds(s.next_restart_in),
            "parked_reason": _text(s.parked_reason),
            "rejections": s.rejections,
            "sink_down_for": _seconds(s.sink_down_for),
            **({"reshard": s.reshard} if s.reshard is not None else {}),
        }
        for s in snap.shards
    ]
    doc: dict[str, Any] = {
        "pid": snap.pid,
        "started_at": snap.started_at,
        "uptime": _seconds(snap.uptime),
        "ready": snap.ready,
        "divisor": snap.divisor,
        "summary": snap.summary(),
        "shards": shards,
    }
    if snap.budget is not None:
        parked = [_key_label(k, snap.divisor) for k in snap.budget.get("parked") or ()]
        doc["budget"] = {**snap.budget, "text": _text(snap.budget.get("text")), "parked": parked}
    if snap.reshard is not None:
        doc["reshard"] = {**snap.reshard, "moves": [
            {**move, "why": _text(move["why"])} if "why" in move else move for move in snap.reshard["moves"]]}
    if snap.login is not None:
        doc["login"] = {**snap.login, "last_error": _text(snap.login.get("last_error"))}
    return orjson.dumps(doc)


def _key_label(key: object, divisor: int) -> object:
    """A budget-parked shard for /status: its remainder, or "r/d" for a shard of another divisor."""
    if isinstance(key, tuple) and len(key) == 2:
        return key[1] if key[0] == divisor else f"{key[1]}/{key[0]}"
    return key


def render_healthz(snap: StatusSnapshot) -> tuple[int, bytes]:
    """``(200, "ok")`` when every shard is live and none parked, else 503 and why.

    A resharding's pending new shards do not count: until their move is done the
    old shard they replace holds their accounts (and counts).
    """
    if not snap.shards:
        return 503, b"no shards running\n"
    if all(s.live or s.reshard == "pending" for s in snap.shards):
        return 200, b"ok\n"
    parked = [str(s.remainder) for s in snap.shards if s.parked]
    down = [f"{s.remainder} ({s.state})" for s in snap.shards if not s.live and not s.parked]
    live = sum(s.live for s in snap.shards)
    reason = f"{live}/{len(snap.shards)} live"
    if parked:
        reason += "; parked: " + ", ".join(parked[:16]) + (" ..." if len(parked) > 16 else "")
    if down:
        reason += "; not live: " + ", ".join(down[:16]) + (" ..." if len(down) > 16 else "")
    return 503, reason.encode() + b"\n"


def status_line(summary: dict[str, int]) -> str:
    """The STATUS= line for systemd: live/total, backoff, parked, then any other state with a count."""
    others = ", ".join(f"{n} {state}" for state, n in sorted(summary.items())
                       if state not in ("total", "live", "backoff", "parked") and n)
    line = f"{summary['live']}/{summary['total']} live, {summary['backoff']} backoff, {summary['parked']} parked"
    return f"{line}, {others}" if others else line
