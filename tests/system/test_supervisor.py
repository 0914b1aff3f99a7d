"""The supervisor as a real process tree: `shardsync run` against the simulator over loopback.

Faults are injected from outside (kill -9, SIGSTOP, SIGHUP with a rewritten
file, SIGTERM, a killed parent) and judged from outside: /proc, the status
endpoint, the log lines, the simulator's own counters and the shard files.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from harness import Daemon, alive, children, proc_state, wait_until
from prometheus_client.parser import text_string_to_metric_families

from shardsync.simulator import Simulator

ROOT = Path(__file__).resolve().parents[2]
CRASH_LOOP = {"intensity": 3, "period": 60.0, "backoff_max": 30.0, "stable_after": 30.0}


# --- helpers ----------------------------------------------------------------------------------


def conn_ids(sim: Simulator) -> dict[int, list[int]]:
    """The simulator's connection ids per remainder, in the order their syncrequests came in."""
    out: dict[int, list[int]] = {}
    for request in sim.stats()["syncrequests"]:
        body = request["body"]
        if isinstance(body, dict) and "shardingExpression" in body:
            out.setdefault(body["shardingExpression"]["remainder"], []).append(request["conn"])
    return out


def wait_one_connection_each(sim: Simulator, remainders: list[int], timeout: float = 10.0) -> None:
    """Until the simulator holds exactly one synced socket per remainder, and nothing else."""
    wanted = {r: 1 for r in remainders}

    def settled() -> bool:
        stats = sim.stats()
        return {int(k): v for k, v in stats["connections"].items()} == wanted and stats["unsynced_connections"] == 0

    wait_until(settled, timeout, f"one connection per remainder {remainders}")


def new_pid(daemon: Daemon, remainder: int, old: int) -> Callable[[], int | None]:
    """A predicate: the shard's pid once it is a new one."""

    def check() -> int | None:
        pid = daemon.pids().get(remainder)
        return pid if pid is not None and pid != old else None

    return check


def status_or_none(daemon: Daemon) -> dict[int, dict[str, Any]] | None:
    """The shard table, or None once the daemon no longer answers (it is exiting)."""
    try:
        return daemon.shards()
    except (urllib.error.URLError, ConnectionError, TimeoutError, AssertionError):
        return None


def crash_loop(daemon: Daemon, remainders: list[int], *, until: Callable[[], bool], timeout: float) -> list[int]:
    """SIGKILL the newest worker of each of ``remainders`` as soon as it appears, until ``until()``."""
    killed: list[int] = []
    done: set[int] = set()
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"crash loop did not finish in {timeout} s (killed {killed})"
        shards = status_or_none(daemon)
        if shards is None:
            time.sleep(0.02)
            continue
        for remainder in remainders:
            pid = shards[remainder]["pid"] if remainder in shards else None
            if pid is not None and pid not in done:
                done.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.01)
    return killed


def zombie_children(pid: int) -> list[int]:
    return [child for child in children(pid) if proc_state(child) == "Z"]


# --- isolation ---------------------------------------------------------------------------------


def threads(pid: int) -> int:
    """How many threads a process runs (from /proc)."""
    return len(os.listdir(f"/proc/{pid}/task"))


def test_the_parent_has_one_thread_and_a_worker_only_its_checkpointer(sim_factory: Callable[..., Simulator],
                                                                      daemon_factory: Callable[..., Daemon]) -> None:
    """While every shard streams into sqlite, the parent runs one thread (it forks: no thread may hold a lock
    across fork) and each worker at most two: its loop and the sink's checkpoint thread."""
    sim = sim_factory(event_rate=200)
    daemon = daemon_factory(sim)
    daemon.wait_live()
    pids = daemon.pids()
    wait_until(lambda: all(daemon.shards()[r]["events"] > 20 for r in pids), 20, "every shard committing")
    assert threads(daemon.pid) == 1
    for remainder, pid in pids.items():
        assert pid is not None
        assert threads(pid) <= 2, remainder


def test_sigkill_worker_changes_only_its_shard(sim_factory: Callable[..., Simulator],
                                              daemon_factory: Callable[..., Daemon]) -> None:
    """SIGKILL of one worker replaces only that shard's process and socket, and the shard resyncs to the truth."""
    sim = sim_factory()
    daemon = daemon_factory(sim)
    daemon.wait_live()
    wait_one_connection_each(sim, [0, 1, 2, 3])
    before_pids = daemon.pids()
    before_conns = conn_ids(sim)
    total = sim.stats()["ws_connections_total"]
    victim = 2

    os.kill(before_pids[victim], signal.SIGKILL)
    sim.mutate(count=8, remainder=victim, divisor=4)  # changes the dead worker can only learn by resyncing
    replacement = wait_until(new_pid(daemon, victim, before_pids[victim]), 10, "replacement worker")
    daemon.wait_live()
    wait_one_connection_each(sim, [0, 1, 2, 3])
    daemon.wait_converged(victim)

    after_pids = daemon.pids()
    after_conns = conn_ids(sim)
    assert after_pids == {**before_pids, victim: replacement}
    assert sim.stats()["ws_connections_total"] == total + 1
    for remainder in (0, 1, 3):
        assert after_conns[remainder] == before_conns[remainder]
    assert len(after_conns[victim]) == len(before_conns[victim]) + 1
    assert proc_state(before_pids[victim]) is None  # reaped
    exits = daemon.events("shard_exited")
    assert [e["shard"] for e in exits] == [victim] and "SIGKILL" in exits[0]["status"]
    for remainder in range(4):
        daemon.wait_converged(remainder)


def test_sigstop_worker_is_replaced_within_heartbeat_timeout(sim_factory: Callable[..., Simulator],
                                                             daemon_factory: Callable[..., Daemon]) -> None:
    """A SIGSTOPped worker is killed, reaped and replaced within heartbeat_timeout + 1 s; no other shard moves."""
    sim = sim_factory()
    daemon = daemon_factory(sim)
    daemon.wait_live()
    wait_one_connection_each(sim, [0, 1, 2, 3])
    before_pids = daemon.pids()
    before_conns = conn_ids(sim)
    victim = 1
    old = before_pids[victim]
    assert old is not None

    try:
        started = time.monotonic()
        os.kill(old, signal.SIGSTOP)
        replacement = wait_until(new_pid(daemon, victim, old), 6, "replacement of the stopped worker")
        elapsed = time.monotonic() - started
    finally:
        if alive(old):
            os.kill(old, signal.SIGCONT)
    assert elapsed <= 2.0 + 1.0, f"replaced after {elapsed:.2f} s"
    assert proc_state(old) is None  # killed and reaped: no zombie, no stopped leftover
    hung = daemon.events("shard_hung")
    assert [e["shard"] for e in hung] == [victim]

    daemon.wait_live()
    wait_one_connection_each(sim, [0, 1, 2, 3])
    assert daemon.pids() == {**before_pids, victim: replacement}
    after_conns = conn_ids(sim)
    for remainder in (0, 2, 3):
        assert after_conns[remainder] == before_conns[remainder]
    daemon.wait_converged(victim)


# --- bounded restarts --------------------------------------------------------------------------


def test_crash_looping_shard_is_parked_and_others_never_notice(sim_factory: Callable[..., Simulator],
                                                             daemon_factory: Callable[..., Daemon]) -> None:
    """A shard whose worker dies at once every time is parked after `intensity` restarts, alone, with no breaker."""
    sim = sim_factory()
    daemon = daemon_factory(sim, sections={"supervisor": CRASH_LOOP})
    daemon.wait_live()
    wait_one_connection_each(sim, [0, 1, 2, 3])
    before_pids = daemon.pids()
    before_conns = conn_ids(sim)
    victim = 3

    def parked() -> bool:
        shards = daemon.shards()
        return bool(shards[victim]["parked"])

    killed = crash_loop(daemon, [victim], until=parked, timeout=20)
    assert len(killed) == CRASH_LOOP["intensity"] + 1  # the first run plus `intensity` restarts

    shard = daemon.shards()[victim]
    assert shard["state"] == "parked" and shard["parked"] is True and shard["pid"] is None
    assert shard["next_restart_in"] is not None and shard["next_restart_in"] > 20
    assert len(daemon.events("shard_parked")) == 1
    code, body = daemon.http("/healthz")
    assert code == 503 and b"parked: 3" in body
    status = daemon.status()
    assert status["summary"]["parked"] == 1 and status["summary"]["live"] == 3

    assert daemon.proc is not None and daemon.proc.poll() is None
    assert not daemon.events("global_breaker_tripped")
    others = {r: p for r, p in before_pids.items() if r != victim}
    assert {r: p for r, p in daemon.pids().items() if r != victim} == others
    after_conns = conn_ids(sim)
    for remainder in others:
        assert after_conns[remainder] == before_conns[remainder]
    wait_until(lambda: {int(k): v for k, v in sim.stats()["connections"].items()} == {0: 1, 1: 1, 2: 1}, 10,
               "the parked shard's socket closed, the others' kept")
    for pid in killed:
        wait_until(lambda pid=pid: proc_state(pid) is None, 5, f"killed worker {pid} reaped")


def test_global_breaker_trips_when_most_shards_fail(sim_factory: Callable[..., Simulator],
                                                   daemon_factory: Callable[..., Daemon]) -> None:
    """Three of four shards crash-looping together trip the global breaker: the daemon stops its workers and exits 3."""
    sim = sim_factory()
    daemon = daemon_factory(sim, sections={"supervisor": CRASH_LOOP})
    daemon.wait_live()
    survivor = daemon.pids()[0]
    assert daemon.proc is not None
    proc = daemon.proc

    killed = crash_loop(daemon, [1, 2, 3], until=lambda: proc.poll() is not None, timeout=20)
    assert daemon.wait_exit(10) == 3
    tripped = daemon.events("global_breaker_tripped")
    assert len(tripped) == 1
    assert survivor is not None
    for pid in [survivor, *killed]:
        assert proc_state(pid) is None
    wait_until(lambda: not sim.stats()["connections"], 5, "every socket closed")


# --- stopping ----------------------------------------------------------------------------------


def test_parent_sigkill_takes_every_worker_down(sim_factory: Callable[..., Simulator],
                                                daemon_factory: Callable[..., Daemon]) -> None:
    """When the parent is SIGKILLed, every worker exits by itself within 2 s and every server socket closes."""
    sim = sim_factory()
    daemon = daemon_factory(sim)
    daemon.wait_live()
    wait_one_connection_each(sim, [0, 1, 2, 3])
    workers = [p for p in daemon.pids().values() if p is not None]
    assert sorted(workers) == sorted(children(daemon.pid))
    try:
        daemon.signal(signal.SIGKILL)
        started = time.monotonic()
        wait_until(lambda: not any(alive(p) for p in workers), 2.0, "every worker gone")
        assert time.monotonic() - started <= 2.0
        wait_until(lambda: not sim.stats()["connections"] and not sim.stats()["unsynced_connections"], 2.0,
                   "every server socket closed")
        assert daemon.wait_exit(5) == -signal.SIGKILL
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_sigterm_stops_cleanly_with_close_frames_and_flushed_sinks(sim_factory: Callable[..., Simulator],
                                                                 daemon_factory: Callable[..., Daemon]) -> None:
    """SIGTERM: exit 0 within shutdown_timeout, a 1000 close frame per socket, sinks equal to the truth, no zombie.

    The sinks converge after the simulator pauses and before SIGTERM: a stop drops deletions still held (the
    replacement's snapshot end is inferred; 1 s grace here) and frames not yet read, by design; the next start
    resyncs them. The stop itself must lose nothing committed (the final flush: test_batch_status)."""
    sim = sim_factory(event_rate=40.0)
    daemon = daemon_factory(sim, sections={"supervisor": {"shutdown_timeout": 5.0},
                                           "tradovate": {"deletion_grace": 1.0}})
    daemon.wait_live()
    wait_one_connection_each(sim, [0, 1, 2, 3])

    # A worker SIGKILLed mid-run is reaped at once: no child of the daemon stays a zombie.
    pids = daemon.pids()
    victim = pids[0]
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    wait_until(new_pid(daemon, 0, victim), 10, "replacement worker")
    wait_until(lambda: proc_state(victim) is None, 2, "killed worker reaped")
    wait_until(lambda: not zombie_children(daemon.pid), 1, "no zombie child")
    daemon.wait_live()
    wait_one_connection_each(sim, [0, 1, 2, 3])
    wait_until(lambda: all(s["events"] > 0 for s in daemon.shards().values()), 10, "live events in every shard")

    workers = {r: p for r, p in daemon.pids().items() if p is not None}
    current = {r: ids[-1] for r, ids in conn_ids(sim).items()}
    sim.pause()
    for remainder in range(4):
        daemon.wait_converged(remainder)
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(10) == 0
    assert time.monotonic() - started <= 5.0

    closes = {c["conn"]: c for c in sim.stats()["closes"] if c["by"] == "client"}
    for remainder, conn in current.items():
        assert conn in closes, f"no close frame from shard {remainder}"
        assert closes[conn]["code"] == 1000
    wait_until(lambda: not sim.stats()["connections"], 5, "every server socket closed")
    for remainder in range(4):
        assert daemon.sink_entities(remainder) == daemon.truth(remainder), f"shard {remainder} sink != truth"
    for pid in [victim, *workers.values()]:
        assert proc_state(pid) is None
    assert [e["exit_code"] for e in daemon.events("supervisor_stopped")] == [0]


# --- reload ------------------------------------------------------------------------------------


def _reload(daemon: Daemon, **config: Any) -> dict[str, Any]:
    """Rewrite the config, SIGHUP, and return the `reloaded` log line it produced."""
    done = len(daemon.events("reloaded"))
    daemon.write_config(credentials=daemon.tmp / "credentials.toml", **config)
    daemon.signal(signal.SIGHUP)
    lines: list[dict[str, Any]] = wait_until(lambda: daemon.events("reloaded")[done:], 10, "reloaded log line")
    return lines[0]


def test_sighup_adds_and_removes_exactly_the_changed_remainders(sim_factory: Callable[..., Simulator],
                                                               daemon_factory: Callable[..., Daemon]) -> None:
    """SIGHUP with remainders [0,1,2] -> [1,2,3] stops 0, starts 3 and leaves 1 and 2 alone (pid and socket)."""
    sim = sim_factory()
    daemon = daemon_factory(sim, remainders=[0, 1, 2])
    daemon.wait_live()
    wait_one_connection_each(sim, [0, 1, 2])
    before = daemon.pids()
    before_conns = conn_ids(sim)

    reloaded = _reload(daemon, remainders=[1, 2, 3])
    assert reloaded["added"] == [3] and reloaded["removed"] == [0] and reloaded["restarted"] == []
    wait_until(lambda: sorted(daemon.shards()) == [1, 2, 3], 10, "shard 0 gone from the status")
    shards = daemon.wait_live()
    assert sorted(shards) == [1, 2, 3]
    assert shards[1]["pid"] == before[1] and shards[2]["pid"] == before[2]
    assert shards[3]["pid"] not in before.values()
    old_zero = before[0]
    assert old_zero is not None
    wait_until(lambda: proc_state(old_zero) is None, 5, "the removed shard's worker reaped")
    wait_one_connection_each(sim, [1, 2, 3])
    after_conns = conn_ids(sim)
    assert after_conns[1] == before_conns[1] and after_conns[2] == before_conns[2]
    assert [e["shard"] for e in daemon.events("shard_stopped")] == [0]
    daemon.wait_converged(3)


def test_sighup_restarts_every_shard_for_sync_settings_and_none_for_log_level(
        sim_factory: Callable[..., Simulator], daemon_factory: Callable[..., Daemon]) -> None:
    """A changed sync.entity_types restarts every shard; a changed log.level restarts none."""
    sim = sim_factory()
    daemon = daemon_factory(sim)
    daemon.wait_live()
    wait_one_connection_each(sim, [0, 1, 2, 3])
    first = daemon.pids()

    types = ["user", "account", "position"]
    reloaded = _reload(daemon, sections={"sync": {"entity_types": types}})
    assert reloaded["restarted"] == [0, 1, 2, 3]
    wait_until(lambda: all(p is not None and p != first[r] for r, p in daemon.pids().items()), 10,
               "every shard restarted")
    daemon.wait_live()
    wait_one_connection_each(sim, [0, 1, 2, 3])
    second = daemon.pids()
    assert not set(second.values()) & set(first.values())
    for pid in first.values():
        assert pid is not None
        wait_until(lambda pid=pid: proc_state(pid) is None, 5, f"old worker {pid} reaped")
    for request in sim.stats()["syncrequests"][-4:]:
        assert request["body"]["entityTypes"] == types
    assert not daemon.events("shard_exited")  # stopped on purpose, not failures

    total = sim.stats()["ws_connections_total"]
    reloaded = _reload(daemon, sections={"sync": {"entity_types": types}, "log": {"level": "debug"}})
    assert reloaded["added"] == [] and reloaded["removed"] == [] and reloaded["restarted"] == []
    assert daemon.pids() == second
    assert sim.stats()["ws_connections_total"] == total
    code, _ = daemon.http("/healthz")
    assert code == 200


def test_sighup_with_a_broken_file_keeps_everything(sim_factory: Callable[..., Simulator],
                                                   daemon_factory: Callable[..., Daemon]) -> None:
    """SIGHUP with a broken TOML file logs reload_rejected with the error and changes no shard."""
    sim = sim_factory()
    daemon = daemon_factory(sim)
    daemon.wait_live()
    before = daemon.pids()
    total = sim.stats()["ws_connections_total"]

    daemon.config.write_text(daemon.config.read_text() + "\n[sync\ndivisor = = 3\n")
    daemon.signal(signal.SIGHUP)
    rejected = wait_until(lambda: daemon.events("reload_rejected"), 10, "reload_rejected log line")
    assert str(daemon.config) in rejected[0]["error"] and "TOML" in rejected[0]["error"]
    assert rejected[0]["level"] == "error"

    # The loop is still serving and nothing moved.
    assert daemon.pids() == before
    assert not daemon.events("reloaded")
    assert sim.stats()["ws_connections_total"] == total
    code, body = daemon.http("/healthz")
    assert code == 200, body
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert all(s["state"] == "live" for s in daemon.shards().values())


def test_sighup_removed_then_re_added_while_stopping_runs_again_once_reaped(
        sim_factory: Callable[..., Simulator], daemon_factory: Callable[..., Daemon]) -> None:
    """A shard removed by one SIGHUP and re-added by the next while its worker is still stopping (held in
    SIGSTOP, within shutdown_timeout) runs again as soon as that worker has exited and been reaped, and
    converges; no other shard moves."""
    sim = sim_factory()
    daemon = daemon_factory(sim)
    daemon.wait_live()
    wait_one_connection_each(sim, [0, 1, 2, 3])
    before = daemon.pids()
    old = before[2]
    assert old is not None
    os.kill(old, signal.SIGSTOP)  # it cannot finish its stop until SIGCONT
    try:
        removed = _reload(daemon, remainders=[0, 1, 3])
        assert removed["removed"] == [2]
        assert daemon.shards()[2]["state"] == "stopping"
        re_added = _reload(daemon, remainders="all")
        assert re_added["added"] == [2] and re_added["removed"] == [] and re_added["restarted"] == []
        assert proc_state(old) == "T"  # still the old worker, still stopping
        assert daemon.pids()[2] == old
    finally:
        os.kill(old, signal.SIGCONT)
    wait_until(lambda: proc_state(old) is None, 5, "the old worker exited and was reaped")
    replacement = wait_until(new_pid(daemon, 2, old), 5, "a new worker for the re-added shard")
    shards = daemon.wait_live()
    assert sorted(shards) == [0, 1, 2, 3]
    assert daemon.pids() == {**before, 2: replacement}
    assert not daemon.events("shard_killed")  # it stopped cleanly: the re-add came within shutdown_timeout
    wait_one_connection_each(sim, [0, 1, 2, 3])
    sim.mutate(count=6, remainder=2, divisor=4)
    daemon.wait_converged(2)


def test_sighup_backoff_max_reaches_running_workers(sim_factory: Callable[..., Simulator],
                                                    daemon_factory: Callable[..., Daemon]) -> None:
    """A reload changing only supervisor.backoff_max restarts every worker with it: once the server is gone,
    each new worker's reconnect delays stay under the new cap, where the old cap would have let them grow."""
    sim = sim_factory()
    supervisor = {"backoff_initial": 0.1, "backoff_max": 30.0}
    daemon = daemon_factory(sim, sections={"supervisor": supervisor})
    daemon.wait_live()
    first = daemon.pids()

    reloaded = _reload(daemon, sections={"supervisor": {**supervisor, "backoff_max": 0.25}})
    assert reloaded["restarted"] == [0, 1, 2, 3]
    wait_until(lambda: all(p is not None and p != first[r] for r, p in daemon.pids().items()), 10,
               "every worker restarted")
    second = daemon.wait_live()
    new_pids = {s["pid"] for s in second.values()}
    assert not new_pids & set(first.values())

    sim.stop()  # every reconnect now fails at once: attempts 1, 2, 3... back off up to the cap

    def delays() -> dict[int, list[float]]:
        out: dict[int, list[float]] = {pid: [] for pid in new_pids}
        for line in daemon.events("session_ended"):
            if line.get("pid") in out:
                out[line["pid"]].append(line["reconnect_in"])
        return out

    enough = wait_until(lambda: (d := delays()) and all(len(v) >= 6 for v in d.values()) and d, 20,
                        "six failed reconnects per worker")
    for pid, seen in enough.items():
        # With the old cap (30 s) attempt 5 would wait at least 0.1 * 2**4 / 2 = 0.8 s.
        assert max(seen[:6]) <= 0.25, (pid, seen)


# --- status and workers ------------------------------------------------------------------------


def test_status_endpoints_cli_and_worker_titles(sim_factory: Callable[..., Simulator],
                                                daemon_factory: Callable[..., Daemon]) -> None:
    """/status, /metrics and /healthz describe every shard, `shardsync status` prints them, and workers are titled."""
    sim = sim_factory()
    daemon = daemon_factory(sim)
    daemon.wait_live()

    status = daemon.status()
    assert status["pid"] == daemon.pid and status["ready"] is True and status["divisor"] == 4
    assert status["summary"] == {"total": 4, "live": 4, "backoff": 0, "parked": 0}
    for remainder, shard in enumerate(status["shards"]):
        assert shard["remainder"] == remainder
        assert set(shard) >= {"state", "pid", "uptime", "restarts", "parked", "last_heartbeat_age", "events_per_s",
                              "entities", "last_error"}
        assert shard["state"] == "live" and shard["restarts"] == 0 and shard["parked"] is False
        assert shard["entities"] == len(daemon.truth(remainder))
        assert shard["last_heartbeat_age"] < 2.0

    code, body = daemon.http("/metrics")
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    up = {s.labels["shard"]: s.value for s in families["shardsync_shard_up"].samples}
    assert up == {"0": 1.0, "1": 1.0, "2": 1.0, "3": 1.0}

    assert daemon.http("/healthz")[0] == 200

    for remainder, pid in daemon.pids().items():
        assert pid is not None
        title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        assert title.startswith(f"shardsync: shard {remainder}/4".encode()), title

    url = f"127.0.0.1:{daemon.status_port}"
    table = subprocess.run([sys.executable, "-m", "shardsync", "status", "--url", url],
                           capture_output=True, timeout=30, check=False)
    assert table.returncode == 0, table.stderr
    text = table.stdout.decode()
    assert "4/4 live" in text and "SHARD" in text
    for pid in daemon.pids().values():
        assert str(pid) in text
    as_json = subprocess.run([sys.executable, "-m", "shardsync", "status", "--url", url, "--json"],
                             capture_output=True, timeout=30, check=False)
    assert as_json.returncode == 0, as_json.stderr
    assert [s["remainder"] for s in orjson.loads(as_json.stdout)["shards"]] == [0, 1, 2, 3]

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    refused = subprocess.run([sys.executable, "-m", "shardsync", "status", "--url", f"127.0.0.1:{closed_port}"],
                             capture_output=True, timeout=30, check=False)
    assert refused.returncode == 1
    assert b"connection refused" in refused.stderr
