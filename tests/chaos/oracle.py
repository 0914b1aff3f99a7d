"""The oracle: pure checks over what one seed's run left behind; each returns its violations as sentences.

Nothing here reads a clock, a file or a socket: :mod:`.collect` gathers a
:class:`Observed` (sinks, change logs, the simulator's records, the daemon's
log lines) and the runner hands in the journal of the faults it carried out.
The checks do not depend on exact interleavings: times are compared with the
windows the faults were carried out in, never with each other's order.

Times are wall-clock epoch seconds everywhere (the simulator's records, the
daemon's log timestamps and the change log's ``received_at`` share the one
clock of this machine).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .catalogue import QUOTA_SETTLE, SETTLE
from .schedule import Fault

Key = tuple[str, int]
Interval = tuple[float, float | None]

#: received_at has milliseconds, truncated: a genuine deletion may look up to 1 ms early.
CLOCK_SLACK = 0.002
#: A stopped worker is replaced within heartbeat_timeout plus this (design.md §6).
HANG_SLACK = 1.0
#: A restart may be logged this much before its scheduled time (the loop's timer resolution).
TIMER_SLACK = 0.02


@dataclass
class Executed:
    """One fault as it was carried out: when, and what it did."""

    fault: Fault
    started: float
    ended: float
    #: Worker exits the parent must count as failures for this fault.
    kills: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def settle(self) -> float:
        quota = self.fault.kind == "shutdown" and self.fault.params.get("reason") != "Maintenance"
        return QUOTA_SETTLE if quota else SETTLE

    def covers(self, shard: int, at: float, pauses: Sequence[Interval] = ()) -> bool:
        """Whether this fault may explain a disturbance of ``shard`` at ``at``.

        A pause of every handshake (``pauses``, the parent's after a quota shutdown) that began before this
        fault's window closed holds its target's reconnect back: the window then lasts until SETTLE after it.
        """
        if shard not in self.fault.targets or at < self.started - 0.05:
            return False
        until = self.ended + self.settle
        for began, ended in pauses:
            if began <= until and ended is not None:
                until = max(until, ended + SETTLE)
        return at <= until


@dataclass(frozen=True)
class Config:
    """The daemon settings the checks judge against."""

    divisor: int
    heartbeat_timeout: float
    backoff_max: float
    max_concurrent_connects: int
    token_lifetime: float
    renew_before: float


@dataclass(frozen=True)
class Row:
    """One change-log row."""

    seq: int
    received_at: float
    origin: str
    entity_type: str
    event_type: str
    id: int | None
    #: A rejected row's entity id as received (it may be the part no sink can store); None otherwise.
    refused_id: object = None


@dataclass
class Observed:
    """Everything a seed's checks look at, gathered once the daemon converged (or gave up)."""

    #: Remainders the last valid config runs.
    remainders: list[int]
    sinks: dict[int, dict[Key, Any]]
    truths: dict[int, dict[Key, Any]]
    changes: dict[int, list[Row]]
    #: ``shard_status`` state per shard file (None: no row).
    sink_states: dict[int, str | None]
    #: /status shard table by remainder.
    status: dict[int, dict[str, Any]]
    history: dict[Key, list[Interval]]
    subscriptions: list[dict[str, Any]]
    logs: list[dict[str, Any]]
    logins: int
    renewals: int
    peak_handshakes: int
    #: When faults began and when the run was quiesced (epoch seconds).
    began: float
    quiesced: float
    converged: bool
    zombies: list[int] = field(default_factory=list)


# --- helpers ---------------------------------------------------------------------------------


def epoch(iso: str) -> float:
    """ISO-8601 UTC (``...Z``) -> epoch seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def lines(logs: Iterable[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [line for line in logs if line.get("event") == event]


def _had(intervals: Sequence[Interval], at: float) -> bool:
    """Whether the server had the key at ``at`` (a deletion it sent is seen after its ``deleted_at``)."""
    return any(created <= at and (deleted is None or at + CLOCK_SLACK < deleted) for created, deleted in intervals)


def _diff(sink: Mapping[Key, Any], truth: Mapping[Key, Any]) -> str:
    missing = sorted(set(truth) - set(sink))
    extra = sorted(set(sink) - set(truth))
    differ = sorted(k for k in set(sink) & set(truth) if sink[k] != truth[k])
    return (f"{len(sink)} vs {len(truth)} entities; missing {missing[:4]} ({len(missing)}), extra {extra[:4]} "
            f"({len(extra)}), differ {differ[:4]} ({len(differ)})")


# --- the checks ----------------------------------------------------------------------------------


def convergence(seen: Observed) -> list[str]:
    """Every shard's sink equals the simulator's truth exactly; /status and shard_status say live."""
    out = []
    if not seen.converged:
        out.append("did not converge before the deadline")
    for remainder in seen.remainders:
        sink, truth = seen.sinks.get(remainder, {}), seen.truths.get(remainder, {})
        if sink != truth:
            out.append(f"shard {remainder}: sink != truth: {_diff(sink, truth)}")
        shard = seen.status.get(remainder)
        if shard is None:
            out.append(f"shard {remainder}: missing from /status")
        elif shard.get("state") != "live":
            out.append(f"shard {remainder}: /status state {shard.get('state')!r}")
        if seen.sink_states.get(remainder) != "live":
            out.append(f"shard {remainder}: shard_status state {seen.sink_states.get(remainder)!r}")
    for remainder in sorted(set(seen.status) - set(seen.remainders)):
        out.append(f"shard {remainder}: in /status but not configured")
    return out


def phantom_deletions(seen: Observed) -> list[str]:
    """Every Deleted in a change log is of an entity the server did not have when it was received."""
    out = []
    for remainder, rows in sorted(seen.changes.items()):
        for row in rows:
            if row.event_type != "Deleted" or row.origin in ("rejected", "system") or row.id is None:
                continue
            key = (row.entity_type, row.id)
            if _had(seen.history.get(key, []), row.received_at):
                out.append(f"shard {remainder}: phantom Deleted of {key} (origin {row.origin}, seq {row.seq}) "
                           f"at {row.received_at:.3f}; the server had it: {seen.history.get(key)}")
    return out


def ownership(seen: Observed) -> list[str]:
    """Never two live subscriptions for one remainder (the simulator's records)."""
    by_remainder: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in seen.subscriptions:
        if record.get("remainder") is not None:
            by_remainder[int(record["remainder"])].append(record)
    out = []
    for remainder, records in sorted(by_remainder.items()):
        records.sort(key=lambda r: r["synced_at"])
        for before, after in itertools.pairwise(records):
            closed = before["closed_at"]
            if closed is None or closed > after["synced_at"]:
                out.append(f"shard {remainder}: subscriptions {before['conn']} and {after['conn']} overlap "
                           f"(closed {closed}, next synced {after['synced_at']})")
    return out


def pauses(logs: Sequence[dict[str, Any]]) -> list[Interval]:
    """The parent's pauses of every shard's handshakes (``connections_paused``, until its ``resume_in`` or
    an earlier ``connections_resumed``), in order."""
    out: list[Interval] = []
    resumed = sorted(epoch(line["timestamp"]) for line in lines(logs, "connections_resumed"))
    for line in lines(logs, "connections_paused"):
        began = epoch(line["timestamp"])
        ended = began + float(line["resume_in"])
        ended = min([ended, *(at for at in resumed if began <= at <= ended)])
        out.append((began, ended))
    return out


def isolation(seen: Observed, journal: Sequence[Executed]) -> list[str]:
    """A fault aimed at some shards changed no other shard's worker pid or connection (a pause of every
    handshake holds a target's reconnect back, see :meth:`Executed.covers`)."""
    disturbances: list[tuple[int, float, str]] = []
    for line in lines(seen.logs, "shard_started"):
        at = epoch(line["timestamp"])
        if at >= seen.began:
            disturbances.append((int(line["shard"]), at, f"worker {line['worker_pid']} started"))
    for record in seen.subscriptions:
        if record.get("remainder") is not None and record["synced_at"] >= seen.began:
            disturbances.append((int(record["remainder"]), record["synced_at"], f"subscription {record['conn']}"))
    held = pauses(seen.logs)
    out = []
    for shard, at, what in sorted(disturbances, key=lambda d: d[1]):
        if not any(e.covers(shard, at, held) for e in journal):
            out.append(f"shard {shard}: {what} at {at - seen.began:.2f}s into the faults, no fault aimed at it")
    return out


def restarts(seen: Observed, journal: Sequence[Executed], config: Config) -> list[str]:
    """Worker failures are exactly the kills; each restart waited its scheduled backoff; handshakes stayed
    within the permits; nothing was parked and the breaker never tripped."""
    out = []
    expected: dict[int, int] = defaultdict(int)
    for executed in journal:
        for target in executed.fault.targets:
            expected[target] += executed.kills
    exits: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for line in lines(seen.logs, "shard_exited"):
        exits[int(line["shard"])].append(line)
    for shard in sorted(set(expected) | set(exits)):
        if len(exits[shard]) != expected[shard]:
            out.append(f"shard {shard}: {len(exits[shard])} worker failures, the faults explain {expected[shard]}")
    per_shard: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for line in seen.logs:
        if line.get("event") in ("shard_exited", "shard_restart_scheduled", "shard_started", "shard_stopped"):
            per_shard[int(line["shard"])].append(line)
    for shard, events in sorted(per_shard.items()):
        due: float | None = None
        for line in events:
            at = epoch(line["timestamp"])
            if line["event"] == "shard_restart_scheduled":
                delay, attempt = float(line["delay"]), int(line["attempt"])
                if delay > config.backoff_max + 1e-9 or (attempt == 1 and delay != 0.0):
                    out.append(f"shard {shard}: restart attempt {attempt} scheduled after {delay} s")
                due = at + delay
            elif line["event"] == "shard_started" and due is not None:
                if at < due - TIMER_SLACK:
                    out.append(f"shard {shard}: worker started {due - at:.3f}s before its backoff was over")
                due = None
    if seen.peak_handshakes > config.max_concurrent_connects:
        out.append(f"{seen.peak_handshakes} handshakes at once, permits allow {config.max_concurrent_connects}")
    for event in ("shard_parked", "global_breaker_tripped"):
        for line in lines(seen.logs, event):
            out.append(f"{event}: {line.get('shard', '')} {line.get('reason', '')}".rstrip())
    return out


def hangs(journal: Sequence[Executed], config: Config) -> list[str]:
    """A worker stopped longer than heartbeat_timeout was replaced within heartbeat_timeout + 1 s; one
    stopped for less kept its pid."""
    out = []
    for executed in journal:
        kind, notes = executed.fault.kind, executed.notes
        if kind == "sigstop_long" and "replaced_after" in notes:
            if notes["replaced_after"] > config.heartbeat_timeout + HANG_SLACK:
                out.append(f"fault #{executed.fault.index}: stopped worker replaced after "
                           f"{notes['replaced_after']:.2f}s (heartbeat_timeout {config.heartbeat_timeout})")
        elif kind == "sigstop_long" and notes.get("pid") is not None:
            out.append(f"fault #{executed.fault.index}: stopped worker {notes['pid']} never replaced")
        if kind == "sigstop_short" and notes.get("pid_after") not in (None, notes.get("pid")):
            out.append(f"fault #{executed.fault.index}: a worker stopped for {notes.get('stopped_for')}s was "
                       f"replaced ({notes.get('pid')} -> {notes.get('pid_after')})")
    return out


def logins(seen: Observed, journal: Sequence[Executed], config: Config) -> list[str]:
    """Logins: one, plus at most one per token revocation; renewals: what the token lifetime and the
    revocations explain."""
    revokes = sum(1 for e in journal if e.fault.kind == "revoke")
    out = []
    if not 1 <= seen.logins <= 1 + revokes:
        out.append(f"{seen.logins} logins; one plus {revokes} revocations explain at most {1 + revokes}")
    renew_every = config.token_lifetime - min(config.renew_before, config.token_lifetime / 2)
    duration = seen.quiesced - seen.began + 120.0  # start-up and the convergence wait included, generously
    allowed = int(duration / renew_every) + 1 + revokes
    if seen.renewals > allowed:
        out.append(f"{seen.renewals} renewals; a {config.token_lifetime:g}s token and {revokes} revocations "
                   f"explain at most {allowed}")
    return out


def delivered_for_sure(seen: Observed, shard: int, executed: Executed) -> bool:
    """Whether a live poison reached a worker that surely read it: a subscription of the shard open when it was
    sent stayed open to the end of the run.

    The simulator sends a live poison once and keeps it out of later snapshots: with no subscription open
    (a quota pause), or one closed before its worker read or applied it (killed, stopped, its snapshot
    abandoned), the server itself no longer has it and no rejected row is owed.
    """
    return any(record.get("remainder") == shard and record["synced_at"] <= executed.started
               and (record["closed_at"] is None or record["closed_at"] >= seen.quiesced)
               for record in seen.subscriptions)


def quarantine(seen: Observed, journal: Sequence[Executed]) -> list[str]:
    """Each poison entity is in its shard's change log as a ``rejected`` row of its own id (the convergence
    check sees that it never reached the sink): every one in a snapshot, a live one when it surely arrived."""
    out = []
    for executed in journal:
        bad = executed.notes.get("poisoned")
        if executed.fault.kind != "poison" or not bad:
            continue
        shard = executed.fault.targets[0]
        if not executed.fault.params.get("in_snapshot", True) and not delivered_for_sure(seen, shard, executed):
            continue
        if not any(row.origin == "rejected" and row.entity_type == bad["entityType"]
                   and str(row.refused_id) == str(bad["id"]) for row in seen.changes.get(shard, [])):
            out.append(f"shard {shard}: poison {bad} left no rejected row of its id")
    return out


def processes(seen: Observed) -> list[str]:
    """No zombie children of the parent once the run is quiet."""
    return [f"zombie child {pid} of the parent" for pid in seen.zombies]


def exit_clean(exit_code: int | None, survivors: Sequence[int]) -> list[str]:
    """SIGTERM: the parent exits 0 and leaves no worker behind."""
    out = []
    if exit_code != 0:
        out.append(f"daemon exited {exit_code} on SIGTERM")
    out += [f"worker {pid} outlived the parent" for pid in survivors]
    return out


def judge(seen: Observed, journal: Sequence[Executed], config: Config) -> dict[str, list[str]]:
    """Every check's violations by check name (empty lists included, so a report shows what ran)."""
    return {
        "convergence": convergence(seen),
        "phantom_deletions": phantom_deletions(seen),
        "ownership": ownership(seen),
        "isolation": isolation(seen, journal),
        "restarts": restarts(seen, journal, config),
        "hangs": hangs(journal, config),
        "logins": logins(seen, journal, config),
        "quarantine": quarantine(seen, journal),
        "processes": processes(seen),
    }
