"""The real Arbiter, in-process: fake fork, pidfd, kill, waitpid, clocks and selector wait; real pipes and ipc.

Each test steps the loop by hand, moves the fake clocks and pushes signals
into ``signal_queue`` (uvicorn's test seam), then asserts on what the fake
workers received, which signals they got, what was forked with which options
and what the loop logged.
"""

from __future__ import annotations

import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from arbiter_fakes import Parent, exited_with, killed_by
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from shardsync import ipc
from shardsync.ipc import ShardState
from shardsync.secrets import fingerprint
from shardsync.supervisor.arbiter import MAX_SLEEP
from shardsync.supervisor.hang import HANG_GRACE
from shardsync.supervisor.timers import SPAWNS_PER_PASS
from shardsync.supervisor.tokens import DoRenew


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    """Build in-process parents from config sections; each is cleaned up after the test."""
    parents: list[Parent] = []

    def build(sections: dict[str, dict[str, Any]] | None = None, **kwargs: Any) -> Parent:
        parent = Parent(tmp_path / f"shardsync-{len(parents)}.toml", sections, **kwargs)
        parents.append(parent)
        return parent

    yield build
    for parent in parents:
        parent.close()


def booted(make: Any, sections: dict[str, dict[str, Any]] | None = None, **kwargs: Any) -> Parent:
    """A parent whose workers are all forked, logged in and live."""
    parent: Parent = make(sections, **kwargs)
    parent.step(8)
    parent.log_in()
    parent.all_live()
    return parent


def kinds(messages: list[ipc.Message]) -> list[str]:
    return [type(m).__name__ for m in messages]


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [line for line in logs if line["event"] == name]


# --- start ---------------------------------------------------------------------------------


def test_boot_forks_a_few_per_pass_with_the_configured_options(make: Any) -> None:
    """Sixteen shards are forked SPAWNS_PER_PASS per pass (select timeout 0 meanwhile), each once, each with
    its remainder and the configured options, and the token reaches every worker."""
    parent: Parent = make({"sync": {"divisor": 16}})
    parent.step()
    assert len(parent.fakes.workers) == SPAWNS_PER_PASS
    assert parent.selector.timeouts[-1] == 0.0
    parent.step(16 // SPAWNS_PER_PASS)
    assert sorted(w.remainder for w in parent.fakes.workers) == list(range(16))
    for worker in parent.fakes.workers:
        assert worker.launch is not None
        assert worker.launch.options.divisor == 16 and worker.launch.options.backoff_max == 60.0
        assert worker.launch.parent_pid == parent.arbiter.pid
    parent.log_in("tok-A")
    for worker in parent.fakes.workers:
        tokens = [m for m in worker.received() if isinstance(m, ipc.Token)]
        assert [t.value for t in tokens] == ["tok-A"]


def test_select_timeout_comes_from_the_nearest_timer(make: Any) -> None:
    """With live workers the loop sleeps exactly until the nearest heartbeat deadline, never past MAX_SLEEP."""
    parent = booted(make, {"supervisor": {"heartbeat_timeout": 2.0}})
    parent.clock.advance(0.5)
    parent.step()
    assert parent.selector.timeouts[-1] == pytest.approx(1.5)
    for worker in parent.fakes.running().values():
        worker.beat()
    parent.step()  # reads the beats: the deadline moves to now + 2 s
    parent.step()
    assert parent.selector.timeouts[-1] == pytest.approx(2.0)

    relaxed = booted(make, {"supervisor": {"heartbeat_timeout": 60.0}})
    relaxed.step()
    assert relaxed.selector.timeouts[-1] == MAX_SLEEP


def test_readiness_when_every_shard_is_live_or_at_the_start_timeout(make: Any) -> None:
    """READY=1 goes out once every shard beat live; with one shard never live, exactly at start_timeout."""
    parent = booted(make)
    assert parent.arbiter.ready and len(parent.notifier.said("READY")) == 1

    slow: Parent = make({"supervisor": {"start_timeout": 20.0, "heartbeat_timeout": 60.0}})
    slow.step(2)
    slow.log_in()
    slow.all_live([0, 1, 2])
    assert not slow.arbiter.ready
    slow.advance(19.0)
    assert not slow.arbiter.ready and not slow.notifier.said("READY")
    assert slow.selector.timeouts[-1] == pytest.approx(20.0 - 19.0)
    slow.advance(1.0)
    assert slow.arbiter.ready and len(slow.notifier.said("READY")) == 1


def test_watchdog_pings_at_half_the_timeout(make: Any) -> None:
    """With WATCHDOG_USEC=2 s the loop pings at once and then every second of its own clock, not more often."""
    parent = booted(make, watchdog_usec=2_000_000)
    assert len(parent.notifier.said("WATCHDOG")) == 1
    for worker in parent.fakes.running().values():
        worker.beat()
    parent.step()
    assert len(parent.notifier.said("WATCHDOG")) == 1
    parent.advance(1.0)
    assert len(parent.notifier.said("WATCHDOG")) == 2


# --- crashes and hangs -------------------------------------------------------------------


def test_crash_is_restarted_at_once_then_after_a_backoff(make: Any) -> None:
    """A crashed worker's pidfd wakes the loop, the worker is reaped and replaced at once; a second crash waits
    out the backoff."""
    parent = booted(make)
    first = parent.fakes.worker(2)
    with structlog.testing.capture_logs() as logs:
        first.exit(exited_with(1))
        woken = [key.data for key, _ in parent.selector.ready_now()]
        assert parent.arbiter.table.on_exit_fd in woken
        parent.step(2)
    second = parent.fakes.worker(2)
    assert second is not first and not second.exited
    assert events(logs, "shard_exited")[0]["status"] == "exited with 1"
    assert parent.arbiter.shards[2].restarts == 1
    assert [m for m in second.received() if isinstance(m, ipc.Token)], "the replacement gets the token"

    with structlog.testing.capture_logs() as logs:
        second.exit(killed_by(signal.SIGSEGV))
        parent.step(2)
    scheduled = events(logs, "shard_restart_scheduled")
    assert len(scheduled) == 1 and scheduled[0]["attempt"] == 2
    delay = scheduled[0]["delay"]
    assert 0.5 <= delay <= 1.0  # backoff_initial 1 s, equal jitter
    assert parent.fakes.worker(2) is second
    assert parent.arbiter.shards[2].state is ShardState.BACKOFF
    parent.advance(delay - 0.01)
    assert parent.fakes.worker(2) is second
    parent.advance(0.02)
    assert parent.fakes.worker(2) is not second
    others = {r: w.pid for r, w in parent.fakes.running().items() if r != 2}
    assert len(others) == 3 and all(len(parent.fakes.children[p].signals) == 0 for p in others.values())


def test_hung_worker_gets_sigterm_then_sigkill_and_is_replaced_only_after_the_reap(make: Any) -> None:
    """A silent worker is judged hung at heartbeat_timeout (SIGTERM), SIGKILLed after the grace, and its
    replacement is forked only once it is reaped."""
    parent = booted(make, {"supervisor": {"heartbeat_timeout": 3.0}})
    victim = parent.fakes.worker(1)
    for _ in range(3):
        parent.clock.advance(1.0)
        parent.wall.advance(1.0)
        for remainder, worker in parent.fakes.running().items():
            if remainder != 1:
                worker.beat()
        parent.step()
    assert victim.signals == [signal.SIGTERM]
    assert parent.arbiter.shards[1].state is ShardState.HUNG
    parent.advance(HANG_GRACE - 0.01)
    assert victim.signals == [signal.SIGTERM]
    with structlog.testing.capture_logs() as logs:
        parent.advance(0.02)
        assert victim.signals == [signal.SIGTERM, signal.SIGKILL]
        parent.step()
    replacement = parent.fakes.worker(1)
    assert replacement is not victim and victim.reaped
    exited = events(logs, "shard_exited")
    assert exited and exited[0]["hung"] is True
    assert all(not w.signals for r, w in parent.fakes.running().items() if r != 1)


def test_without_pidfd_sigchld_brings_the_exit(make: Any) -> None:
    """On a kernel without pidfd the workers still start (no exit fd watched) and an exit is collected when
    SIGCHLD wakes the loop."""
    parent: Parent = make()
    parent.fakes.pidfd_works = False
    parent.step(2)
    parent.log_in()
    assert all(shard.pidfd is None for shard in parent.arbiter.shards.values())
    worker = parent.fakes.worker(0)
    worker.exit(exited_with(1))
    parent.signal(signal.SIGCHLD)
    assert worker.reaped and parent.fakes.worker(0) is not worker


# --- stopping ------------------------------------------------------------------------------


def test_sigterm_stops_every_worker_cleanly_and_exits_zero(make: Any) -> None:
    """SIGTERM: STOPPING=1, a Stop message and SIGTERM to each worker, no restart as they exit, exit code 0."""
    parent = booted(make)
    workers = dict(parent.fakes.running())
    for worker in workers.values():
        worker.received()
    parent.signal(signal.SIGTERM)
    assert parent.notifier.said("STOPPING")
    for worker in workers.values():
        assert kinds(worker.received()) == ["Stop"] and worker.signals == [signal.SIGTERM]
        worker.exit(exited_with(0))
    parent.step(3)
    assert parent.done and parent.arbiter.exit_code == 0
    assert len(parent.fakes.workers) == 4
    assert {s.state for s in parent.arbiter.shards.values()} == {ShardState.STOPPED}


def test_sigterm_kills_a_worker_that_outlives_shutdown_timeout_and_a_second_sigterm_kills_all(make: Any) -> None:
    """A worker still running shutdown_timeout after SIGTERM is SIGKILLed; a second SIGTERM SIGKILLs every worker."""
    parent = booted(make, {"supervisor": {"shutdown_timeout": 5.0}})
    parent.signal(signal.SIGTERM)
    stubborn = parent.fakes.worker(3)
    for remainder, worker in parent.fakes.running().items():
        if remainder != 3:
            worker.exit(exited_with(0))
    parent.advance(4.9)
    assert stubborn.signals == [signal.SIGTERM]
    parent.advance(0.1)
    assert stubborn.signals == [signal.SIGTERM, signal.SIGKILL]
    parent.step(2)
    assert parent.done and parent.arbiter.exit_code == 0

    quick = booted(make)
    quick.signal(signal.SIGTERM)
    quick.signal(signal.SIGTERM)
    assert all(w.signals == [signal.SIGTERM, signal.SIGKILL] for w in quick.fakes.workers)
    quick.step(2)
    assert quick.done


# --- reload ----------------------------------------------------------------------------------


def test_sighup_starts_an_added_shard_and_touches_no_other(make: Any) -> None:
    """SIGHUP adding remainder 3 forks only its worker; the others get no message and no signal."""
    parent = booted(make, {"sync": {"remainders": [0, 1, 2]}})
    before = {r: w.pid for r, w in parent.fakes.running().items()}
    for worker in parent.fakes.running().values():
        worker.received()
    with structlog.testing.capture_logs() as logs:
        parent.reload({"sync": {"remainders": [0, 1, 2, 3]}})
        parent.step()
    reloaded = events(logs, "reloaded")[0]
    assert (reloaded["added"], reloaded["removed"], reloaded["restarted"]) == ([3], [], [])
    running = parent.fakes.running()
    assert sorted(running) == [0, 1, 2, 3]
    assert {r: running[r].pid for r in (0, 1, 2)} == before
    assert all(not running[r].signals and not running[r].received() for r in (0, 1, 2))
    assert [m for m in running[3].received() if isinstance(m, ipc.Token)]


def test_sighup_stops_a_removed_shard_for_good(make: Any) -> None:
    """SIGHUP removing remainder 3 stops its worker (Stop, SIGTERM); once reaped it leaves the table, not restarted."""
    parent = booted(make)
    leaving = parent.fakes.worker(3)
    leaving.received()
    parent.reload({"sync": {"remainders": [0, 1, 2]}})
    assert kinds(leaving.received()) == ["Stop"] and leaving.signals == [signal.SIGTERM]
    assert parent.arbiter.shards[3].state is ShardState.STOPPING
    leaving.exit(exited_with(0))
    parent.step(3)
    assert sorted(parent.arbiter.shards) == [0, 1, 2]
    assert sorted(parent.fakes.running()) == [0, 1, 2] and len(parent.fakes.workers) == 4


def test_sighup_restarts_changed_shards_with_the_new_options(make: Any) -> None:
    """SIGHUP changing entity_types stops every worker and forks each replacement, after its reap, with them."""
    parent = booted(make)
    old = dict(parent.fakes.running())
    with structlog.testing.capture_logs() as logs:
        parent.reload({"sync": {"entity_types": ["user", "position"]}})
    assert events(logs, "reloaded")[0]["restarted"] == [0, 1, 2, 3]
    assert all(w.signals == [signal.SIGTERM] for w in old.values())
    parent.step()
    assert parent.fakes.running() == old  # nothing new while the old ones run
    for worker in old.values():
        worker.exit(exited_with(0))
    parent.step(2)
    new = parent.fakes.running()
    assert sorted(new) == [0, 1, 2, 3] and not set(new.values()) & set(old.values())
    for worker in new.values():
        assert worker.launch is not None and worker.launch.options.entity_types == ("user", "position")
    assert not events(logs, "shard_exited")
    assert all(s.restarts == 0 for s in parent.arbiter.shards.values())


@pytest.mark.parametrize("sections", [
    {"log": {"level": "info"}, "tradovate": {"app_version": "2.0"}},
    {"tradovate": {"renew_before": 60.0, "lockout_backoff": 10.0}},
    {"supervisor": {"heartbeat_timeout": 20.0, "intensity": 3}},
])
def test_sighup_keeps_shards_whose_options_did_not_change(make: Any, sections: dict[str, dict[str, Any]]) -> None:
    """Parent-only settings (app_version, renewal and lock-out timers, heartbeat timeout, intensity) restart nothing."""
    parent = booted(make)
    before = dict(parent.fakes.running())
    for worker in before.values():
        worker.received()
    with structlog.testing.capture_logs() as logs:
        parent.reload(sections)
        parent.step(2)
    reloaded = events(logs, "reloaded")[0]
    assert (reloaded["added"], reloaded["removed"], reloaded["restarted"]) == ([], [], [])
    assert parent.fakes.running() == before
    assert all(not w.signals and not w.received() for w in before.values())


def test_sighup_backoff_max_restarts_every_worker_with_it(make: Any) -> None:
    """A changed supervisor.backoff_max reaches the workers: each is restarted with the new value in its options."""
    parent = booted(make)
    old = dict(parent.fakes.running())
    parent.reload({"supervisor": {"backoff_max": 7.0}})
    for worker in old.values():
        assert worker.signals == [signal.SIGTERM]
        worker.exit(exited_with(0))
    parent.step(2)
    new = parent.fakes.running()
    assert sorted(new) == [0, 1, 2, 3]
    assert all(w.launch is not None and w.launch.options.backoff_max == 7.0 for w in new.values())


def test_sighup_with_an_invalid_file_changes_nothing(make: Any) -> None:
    """An unreadable config on SIGHUP logs reload_rejected, says READY=1 again and touches no shard."""
    parent = booted(make)
    before = dict(parent.fakes.running())
    settings = parent.arbiter.settings
    with structlog.testing.capture_logs() as logs:
        parent.reload(text="[sync\ndivisor = = 3\n")
        parent.step(2)
    assert events(logs, "reload_rejected") and not events(logs, "reloaded")
    assert parent.notifier.said("RELOADING") and len(parent.notifier.said("READY")) == 2
    assert parent.arbiter.settings is settings
    assert parent.fakes.running() == before and all(not w.signals for w in before.values())


def test_shard_removed_and_re_added_while_stopping_runs_again_once_reaped(make: Any) -> None:
    """Remove remainder 2, re-add it before its worker has exited: the old worker finishes its stop and, once it
    is reaped, a new worker with the latest options starts (never two at once)."""
    parent = booted(make)
    old = parent.fakes.worker(2)
    parent.reload({"sync": {"remainders": [0, 1, 3]}})
    assert old.signals == [signal.SIGTERM]
    with structlog.testing.capture_logs() as logs:
        parent.reload({"sync": {"remainders": "all", "entity_types": ["user"]}})
    assert events(logs, "reloaded")[0]["added"] == [2]
    parent.step(3)
    assert parent.fakes.worker(2) is old, "no second worker while the old one still runs"
    old.exit(exited_with(0))
    parent.step(2)
    new = parent.fakes.worker(2)
    assert new is not old and not new.exited
    assert new.launch is not None and new.launch.options.entity_types == ("user",)
    assert sorted(parent.arbiter.shards) == [0, 1, 2, 3]


def test_a_reload_keeps_the_permit_queue(make: Any) -> None:
    """A worker waiting for a connect permit when a reload changes the permit limits still gets its permit."""
    parent: Parent = make({"sync": {"remainders": [0, 1]}, "supervisor": {"max_concurrent_connects": 1}})
    parent.step(2)
    parent.log_in()
    first, second = parent.fakes.worker(0), parent.fakes.worker(1)
    first.send(ipc.NeedPermit())
    second.send(ipc.NeedPermit())
    parent.step(2)
    assert "Permit" in kinds(first.received()) and "Permit" not in kinds(second.received())
    first.beat(ShardState.CONNECTING)
    parent.reload({"sync": {"remainders": [0, 1]}, "supervisor": {"max_concurrent_connects": 1,
                                                                   "connect_spacing": 0.1}})
    first.beat(ShardState.LIVE)  # its handshake is over: the slot frees
    parent.step()
    parent.advance(0.2)
    assert "Permit" in kinds(second.received())


# --- the token --------------------------------------------------------------------------------


def test_worker_refused_an_old_token_gets_the_current_one(make: Any) -> None:
    """NeedToken naming an older token is answered with the current token; no renewal is started."""
    parent = booted(make)
    worker = parent.fakes.worker(0)
    worker.received()
    worker.send(ipc.NeedToken(rejected=fingerprint("some-older-token")))
    parent.step(2)
    tokens = [m for m in worker.received() if isinstance(m, ipc.Token)]
    assert [t.value for t in tokens] == ["tok-1"]
    assert len(parent.fakes.helpers) == 1


def test_worker_refused_the_current_token_starts_one_renewal(make: Any) -> None:
    """NeedToken naming the current token from two workers logs token_rejected_by_server and starts one renewal."""
    parent = booted(make)
    with structlog.testing.capture_logs() as logs:
        for remainder in (0, 1):
            parent.fakes.worker(remainder).send(ipc.NeedToken(rejected=fingerprint("tok-1")))
        parent.step(3)
    assert len(events(logs, "token_rejected_by_server")) == 2
    assert len(parent.fakes.helpers) == 2 and parent.fakes.helpers[1].action == DoRenew("tok-1")


# --- exactness of the whole loop --------------------------------------------------------------

RELOADS = st.one_of(
    st.none(),  # a broken file
    st.tuples(st.frozensets(st.integers(0, 3), min_size=1).map(sorted), st.sampled_from(["a", "b", "c"])),
)
LOOP_EVENTS = st.lists(st.one_of(
    st.tuples(st.just("reload"), RELOADS),
    st.tuples(st.sampled_from(["exit", "crash", "beat"]), st.integers(0, 3)),
    st.tuples(st.just("advance"), st.sampled_from([0.0, 0.3, 1.0, 6.0])),
), max_size=25)
#: Entity types per variant ("c" differs from "a" only in a parent-only setting).
VARIANT_TYPES = {"a": ["user", "account"], "b": ["user"], "c": ["user", "account"]}


def sections_for(remainders: list[int], variant: str) -> dict[str, dict[str, Any]]:
    return {
        "sync": {"remainders": remainders, "entity_types": VARIANT_TYPES[variant]},
        # A tiny period: crashes never accumulate into parking or the global breaker here.
        "supervisor": {"period": 0.01, "backoff_max": 2.0, "shutdown_timeout": 5.0},
        "tradovate": {"app_version": "2.0" if variant == "c" else "1.0"},
    }


@hyp_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=LOOP_EVENTS)
def test_any_sequence_of_sighups_leaves_exactly_the_last_valid_config_running(events: list[Any]) -> None:
    """Whatever SIGHUPs (valid or broken files), worker exits, crashes and time passing come in, once every
    stopping worker has exited the running workers are exactly the last valid config's remainders, one each,
    each forked with that config's options."""
    with tempfile.TemporaryDirectory() as tmp:
        parent = Parent(Path(tmp) / "shardsync.toml", sections_for([0, 1, 2, 3], "a"))
        try:
            last = ([0, 1, 2, 3], "a")
            parent.step(2)
            parent.log_in()
            for kind, arg in events:
                running = parent.fakes.running()
                if kind == "reload":
                    if arg is None:
                        parent.reload(text="[sync\nbroken = = 1\n")
                    else:
                        parent.reload(sections_for(*arg))
                        last = arg
                elif kind == "advance":
                    parent.advance(arg)
                elif arg in running:
                    worker = running[arg]
                    if kind == "beat":
                        worker.beat()
                    elif kind == "exit" and signal.SIGTERM in worker.signals:
                        worker.exit(exited_with(0))
                    elif kind == "crash":
                        worker.exit(exited_with(1))
                parent.step()
                running = parent.fakes.running()  # asserts: never two workers for one remainder
            for _ in range(40):
                for worker in parent.fakes.running().values():
                    if signal.SIGTERM in worker.signals:
                        worker.exit(exited_with(0))
                    else:
                        worker.beat()
                parent.advance(1.0)
            running = parent.fakes.running()
            assert sorted(running) == last[0]
            for worker in running.values():
                assert worker.launch is not None
                assert worker.launch.options.entity_types == tuple(VARIANT_TYPES[last[1]])
                assert not worker.signals
            assert sorted(parent.arbiter.shards) == last[0]
        finally:
            parent.close()
