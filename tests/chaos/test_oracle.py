"""The oracle's checks on exact, made-up observations: a good run passes every one, each flaw trips its own."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from .oracle import Config, Executed, Observed, Row, exit_clean, judge
from .schedule import Fault

T0 = 1_800_000_000.0
CONFIG = Config(divisor=2, heartbeat_timeout=2.0, backoff_max=2.0, max_concurrent_connects=2, token_lifetime=10.0,
                renew_before=900.0)
ORDER = ("order", 5)
FILL = ("fill", 9)


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def log(event: str, at: float, **fields: Any) -> dict[str, Any]:
    return {"event": event, "timestamp": iso(at), **fields}


def good() -> tuple[Observed, list[Executed]]:
    """Two shards; a SIGKILL of shard 1 at +5 s, restarted at once, resynced; one genuine deletion."""
    state = {ORDER: {"id": 5}}
    seen = Observed(
        remainders=[0, 1],
        sinks={0: dict(state), 1: {}},
        truths={0: dict(state), 1: {}},
        changes={0: [Row(1, T0 + 1, "snapshot", "order", "Created", 5),
                     Row(2, T0 + 3.0015, "live", "fill", "Deleted", 9)],
                 1: []},
        sink_states={0: "live", 1: "live"},
        status={0: {"state": "live"}, 1: {"state": "live"}},
        history={ORDER: [(T0 - 10, None)], FILL: [(T0 - 10, T0 + 3.002)]},
        subscriptions=[
            {"conn": 1, "remainder": 0, "synced_at": T0 - 5, "closed_at": None},
            {"conn": 2, "remainder": 1, "synced_at": T0 - 5, "closed_at": T0 + 5.01},
            {"conn": 3, "remainder": 1, "synced_at": T0 + 5.5, "closed_at": None},
        ],
        logs=[
            log("shard_started", T0 - 6, shard=0, worker_pid=10),
            log("shard_started", T0 - 6, shard=1, worker_pid=11),
            log("shard_exited", T0 + 5.01, shard=1, status="killed by SIGKILL"),
            log("shard_restart_scheduled", T0 + 5.01, shard=1, delay=0.0, attempt=1),
            log("shard_started", T0 + 5.02, shard=1, worker_pid=12),
        ],
        logins=1, renewals=2, peak_handshakes=2, began=T0, quiesced=T0 + 10, converged=True,
    )
    journal = [Executed(Fault(0, "sigkill", (1,), 5.0), started=T0 + 5.0, ended=T0 + 5.0, kills=1)]
    return seen, journal


def violations(seen: Observed, journal: list[Executed]) -> dict[str, list[str]]:
    return {check: found for check, found in judge(seen, journal, CONFIG).items() if found}


def test_a_good_run_passes_every_check() -> None:
    """The reference observation is clean: every check ran and found nothing."""
    seen, journal = good()
    verdict = judge(seen, journal, CONFIG)
    assert set(verdict) == {"convergence", "phantom_deletions", "ownership", "isolation", "restarts", "hangs",
                            "logins", "quarantine", "processes"}
    assert not any(verdict.values()), verdict


FLAWS = {
    "sink differs": ("convergence", lambda s, j: s.sinks[0].update({("order", 6): {"id": 6}})),
    "entity missing": ("convergence", lambda s, j: s.sinks[0].clear()),
    "stale value": ("convergence", lambda s, j: s.sinks[0].update({ORDER: {"id": 5, "old": True}})),
    "status not live": ("convergence", lambda s, j: s.status[1].update(state="backoff")),
    "shard missing from status": ("convergence", lambda s, j: s.status.pop(1)),
    "shard_status not live": ("convergence", lambda s, j: s.sink_states.update({0: "resyncing"})),
    "never converged": ("convergence", lambda s, j: setattr(s, "converged", False)),
    "phantom deletion": ("phantom_deletions",
                         lambda s, j: s.changes[0].append(Row(3, T0 + 4, "resync", "order", "Deleted", 5))),
    "deleted before the server did": ("phantom_deletions",
                                      lambda s, j: s.history.update({FILL: [(T0 - 10, T0 + 3.01)]})),
    "two live subscriptions": ("ownership", lambda s, j: s.subscriptions[1].update(closed_at=T0 + 5.6)),
    "an open one and another": ("ownership", lambda s, j: s.subscriptions[1].update(closed_at=None)),
    "another shard reconnected": ("isolation", lambda s, j: (s.subscriptions[0].update(closed_at=T0 + 5.4),
                                                              s.subscriptions.append({"conn": 4, "remainder": 0,
                                                                                      "synced_at": T0 + 5.5,
                                                                                      "closed_at": None}))),
    "another shard's pid changed": ("isolation",
                                    lambda s, j: s.logs.append(log("shard_started", T0 + 5.5, shard=0, worker_pid=13))),
    "a reconnect long after its fault": ("isolation", lambda s, j: (s.subscriptions[2].update(closed_at=T0 + 29),
                                                                     s.subscriptions.append({"conn": 5, "remainder": 1,
                                                                                             "synced_at": T0 + 30,
                                                                                             "closed_at": None}))),
    "an unexplained worker failure": ("restarts",
                                      lambda s, j: s.logs.append(log("shard_exited", T0 + 8, shard=0, status="x"))),
    "a kill the parent never saw": ("restarts", lambda s, j: setattr(j[0], "kills", 2)),
    "restart before its backoff": ("restarts", lambda s, j: s.logs[3].update(delay=0.5, attempt=2)),
    "first restart not immediate": ("restarts", lambda s, j: s.logs[3].update(delay=0.01)),
    "backoff above its cap": ("restarts", lambda s, j: s.logs.insert(4, log(
        "shard_restart_scheduled", T0 + 5.01, shard=1, delay=5.0, attempt=3))),
    "too many handshakes": ("restarts", lambda s, j: setattr(s, "peak_handshakes", 3)),
    "parked": ("restarts", lambda s, j: s.logs.append(log("shard_parked", T0 + 6, shard=1, reason="r"))),
    "breaker": ("restarts", lambda s, j: s.logs.append(log("global_breaker_tripped", T0 + 6, reason="r"))),
    "too many logins": ("logins", lambda s, j: setattr(s, "logins", 2)),
    "no login": ("logins", lambda s, j: setattr(s, "logins", 0)),
    "too many renewals": ("logins", lambda s, j: setattr(s, "renewals", 100)),
    "zombie": ("processes", lambda s, j: s.zombies.append(77)),
    "slow hang detection": ("hangs", lambda s, j: (j.append(Executed(
        Fault(1, "sigstop_long", (0,), 1.0), T0 + 6, T0 + 12, kills=1, notes={"pid": 10, "replaced_after": 3.5})),
        s.logs.extend([log("shard_exited", T0 + 9.4, shard=0, status="killed by SIGKILL"),
                       log("shard_restart_scheduled", T0 + 9.4, shard=0, delay=0.0, attempt=1),
                       log("shard_started", T0 + 9.5, shard=0, worker_pid=13)]))),
    "stopped worker never replaced": ("hangs", lambda s, j: j.append(Executed(
        Fault(1, "sigstop_long", (0,), 1.0), T0 + 6, T0 + 12, notes={"pid": 10}))),
    "short stop replaced": ("hangs", lambda s, j: j.append(Executed(
        Fault(1, "sigstop_short", (0,), 1.0), T0 + 6, T0 + 7, notes={"pid": 10, "pid_after": 14}))),
    "poison not quarantined": ("quarantine", lambda s, j: j.append(Executed(
        Fault(1, "poison", (0,), 1.0), T0 + 6, T0 + 7, notes={"poisoned": {"entityType": "order", "id": 1}}))),
    "another entity quarantined": ("quarantine", lambda s, j: (
        s.changes[0].append(Row(3, T0 + 6.5, "rejected", "order", "Created", None, 2**63 + 1)),
        j.append(Executed(Fault(1, "poison", (0,), 1.0), T0 + 6, T0 + 7,
                          notes={"poisoned": {"entityType": "order", "id": 2**63}})))),
    "live poison delivered, not quarantined": ("quarantine", lambda s, j: j.append(Executed(
        Fault(1, "poison", (0,), 1.0, {"in_snapshot": False}), T0 + 6, T0 + 7,
        notes={"poisoned": {"entityType": "order", "id": 1}}))),
}


@pytest.mark.parametrize("flaw", sorted(FLAWS))
def test_each_flaw_trips_its_check(flaw: str) -> None:
    """One flaw added to the good observation makes exactly its own check report it."""
    check, spoil = FLAWS[flaw]
    seen, journal = copy.deepcopy(good())
    spoil(seen, journal)
    found = violations(seen, journal)
    assert set(found) == {check}, found


def test_tolerances_are_the_stated_ones() -> None:
    """A deletion received within CLOCK_SLACK before the server's is genuine; a quiet-period disturbance of the
    target within SETTLE is explained; a revocation explains one more login and one more renewal."""
    seen, journal = good()
    seen.changes[0][1] = Row(2, T0 + 3.0005, "live", "fill", "Deleted", 9)  # 1.5 ms before deleted_at
    seen.subscriptions.append({"conn": 6, "remainder": 1, "synced_at": T0 + 14.9, "closed_at": None})
    seen.subscriptions[2]["closed_at"] = T0 + 14.8
    assert not violations(seen, journal)
    journal.append(Executed(Fault(1, "revoke", (0,), 1.0), T0 + 7, T0 + 7))
    seen.logins = 2
    seen.subscriptions.append({"conn": 7, "remainder": 0, "synced_at": T0 + 7.5, "closed_at": None})
    seen.subscriptions[0]["closed_at"] = T0 + 7.4
    assert not violations(seen, journal)


def test_a_pause_of_every_handshake_holds_a_targets_reconnect_back() -> None:
    """A reconnect long after its fault is explained while the parent paused every handshake (a quota
    shutdown) until SETTLE after the pause, or after its early connections_resumed; never before its fault."""
    seen, journal = good()
    seen.subscriptions[2].update(closed_at=T0 + 29)
    seen.subscriptions.append({"conn": 5, "remainder": 1, "synced_at": T0 + 30, "closed_at": None})
    assert set(violations(seen, journal)) == {"isolation"}  # 25 s after the fault, nothing to explain it
    seen.logs.append(log("connections_paused", T0 + 12, reason="quota", shard=0, resume_in=20.0))
    assert not violations(seen, journal)  # held until T0 + 32, explained until T0 + 42
    seen.logs.append(log("connections_resumed", T0 + 14))
    assert set(violations(seen, journal)) == {"isolation"}  # resumed early: explained only until T0 + 24
    seen.logs.pop()
    seen.logs[-1] = log("connections_paused", T0 + 16, reason="quota", shard=0, resume_in=20.0)
    assert set(violations(seen, journal)) == {"isolation"}  # the pause began after the fault's window closed


def test_a_quarantined_poison_passes() -> None:
    """A poison whose own id is in a rejected row of its shard's change log passes (ids past 64 bits too)."""
    seen, journal = good()
    for index, ident in enumerate((2**63, "poison-1", 77)):
        seen.changes[0].append(Row(3 + index, T0 + 6.5, "rejected", "order", "Snapshot", None, ident))
        journal.append(Executed(Fault(1 + index, "poison", (0,), 1.0), T0 + 6, T0 + 7,
                                notes={"poisoned": {"entityType": "order", "id": ident}}))
    assert not violations(seen, journal)


def test_exit_clean() -> None:
    """SIGTERM must give exit 0 and leave no worker."""
    assert exit_clean(0, []) == []
    assert exit_clean(1, []) == ["daemon exited 1 on SIGTERM"]
    assert exit_clean(None, [5]) == ["daemon exited None on SIGTERM", "worker 5 outlived the parent"]


def test_a_live_poison_no_worker_surely_read_is_not_owed() -> None:
    """A live poison sent while the shard's only subscription closed before the end (or none was open) owes no
    rejected row: the simulator keeps live poisons out of later snapshots, so the server no longer has it."""
    seen, journal = good()
    journal.append(Executed(Fault(1, "poison", (0,), 1.0, {"in_snapshot": False}), T0 + 6, T0 + 7,
                            notes={"poisoned": {"entityType": "order", "id": 1}}))
    seen.subscriptions[0]["closed_at"] = T0 + 6.2
    assert "quarantine" not in violations(seen, journal)
    seen.subscriptions[0].update(synced_at=T0 + 6.5, closed_at=None)  # opened after the poison was sent
    assert "quarantine" not in violations(seen, journal)
