"""/metrics from the real Arbiter in-process: worker vitals from heartbeats, freshness ages on the injected wall
clock, counters kept across worker restarts, the token's expiry, the parent's process series and build info, and
every per-shard series present for every shard (and gone with a removed one)."""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from arbiter_fakes import Parent, exited_with
from prometheus_client.parser import text_string_to_metric_families

from shardsync import __version__, ipc
from shardsync.ipc import ShardState
from shardsync.supervisor import metrics
from shardsync.supervisor.status import ShardStatus, StatusSnapshot
from shardsync.supervisor.tally import BUCKETS, Tally

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

#: Families with one series (or, for the histogram, one set) per shard.
PER_SHARD = (
    "shardsync_shard_up", "shardsync_shard_restarts_total", "shardsync_shard_reconnects_total",
    "shardsync_shard_events_total", "shardsync_shard_entities", "shardsync_shard_last_heartbeat_age_seconds",
    "shardsync_shard_parked", "shardsync_worker_resident_memory_bytes", "shardsync_worker_cpu_seconds_total",
    "shardsync_worker_open_fds", "shardsync_shard_last_event_age_seconds", "shardsync_shard_last_commit_age_seconds",
    "shardsync_shard_snapshot_duration_seconds", "shardsync_shard_commit_duration_seconds_bucket",
    "shardsync_shard_commit_duration_seconds_count", "shardsync_shard_commit_duration_seconds_sum",
    "shardsync_shard_quarantined_total", "shardsync_shard_unattributed_total", "shardsync_shard_sink_errors_total",
)


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    """Build in-process parents from config sections; each is cleaned up after the test."""
    parents: list[Parent] = []

    def build(sections: dict[str, dict[str, Any]] | None = None) -> Parent:
        parent = Parent(tmp_path / f"shardsync-{len(parents)}.toml", sections)
        parents.append(parent)
        return parent

    yield build
    for parent in parents:
        parent.close()


def booted(make: Any, sections: dict[str, dict[str, Any]] | None = None) -> Parent:
    """A parent whose workers are all forked and logged in (no heartbeat yet)."""
    parent: Parent = make(sections)
    parent.step(8)
    parent.log_in()
    return parent


def scrape(parent: Parent) -> Samples:
    body = metrics.render(parent.arbiter.snapshot).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def shards_of(samples: Samples, name: str) -> set[str]:
    return {dict(labels)["shard"] for n, labels in samples if n == name}


def histogram(counts: list[int]) -> tuple[int, ...]:
    """A cumulative per-bound histogram as a worker reports it: ``counts`` batches in each bucket."""
    assert len(counts) == BUCKETS
    total, out = 0, []
    for n in counts:
        total += n
        out.append(total)
    return tuple(out)


def beat(parent: Parent, remainder: int, **fields: Any) -> None:
    """The shard's current worker sends one heartbeat (live unless told), and the loop reads it."""
    fields.setdefault("state", ShardState.LIVE)
    parent.fakes.worker(remainder).beat(**fields)
    parent.step()


# --- the tally -----------------------------------------------------------------------------------


def test_tally_keeps_each_finished_workers_last_counts_and_adds_the_current_ones() -> None:
    """Counts of a worker are replaced by its next beat, kept once a new worker starts, and added to the new one's."""
    tally = Tally()
    one = histogram([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])

    def hb(**fields: Any) -> ipc.Heartbeat:
        base: dict[str, Any] = {"state": "live", "connected_since": None, "last_frame_age": None, "frames": 0,
                                "events": 0, "entities": 0, "reconnects": 0, "last_error": None}
        return ipc.Heartbeat(**{**base, **fields})

    tally.next_worker()
    tally.beat(hb(cpu_seconds=1.0, commits=one, commit_seconds=0.5, sink_errors=1))
    tally.beat(hb(cpu_seconds=2.0, commits=one, commit_seconds=0.5, sink_errors=2, quarantined=3, unattributed=4))
    assert tally.total.cpu_seconds == 2.0 and tally.total.sink_errors == 2  # replaced, not added
    tally.next_worker()
    assert tally.total.cpu_seconds == 2.0 and tally.total.commits == one
    tally.beat(hb(cpu_seconds=0.25, commits=one, commit_seconds=0.25, sink_errors=1))
    total = tally.total
    assert (total.cpu_seconds, total.commit_seconds, total.sink_errors, total.quarantined, total.unattributed) == (
        2.25, 0.75, 3, 3, 4)
    assert total.commits == tuple(2 * n for n in one)
    tally.beat(hb(commits=(1, 2)))  # a histogram of another shape: no commits, nothing raised
    assert tally.total.commits == one


# --- from heartbeats -------------------------------------------------------------------------------


def test_worker_vitals_and_freshness_come_from_heartbeats_and_ages_from_the_wall_clock(make: Any) -> None:
    """RSS, fds, CPU, commit histogram, counters and snapshot duration are the heartbeat's; the ages are the
    injected wall clock minus the reported times, recomputed at every scrape."""
    parent = booted(make)
    wall = parent.wall()
    commits = histogram([2, 1, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 1])
    beat(parent, 1, rss_bytes=50_000_000, open_fds=17, cpu_seconds=3.5, last_event_at=wall - 2.0,
         last_commit_at=wall - 5.0, snapshot_seconds=0.75, commits=commits, commit_seconds=12.25, quarantined=2,
         unattributed=6, sink_errors=1)
    samples = scrape(parent)
    assert value(samples, "shardsync_worker_resident_memory_bytes", shard="1") == 50_000_000
    assert value(samples, "shardsync_worker_open_fds", shard="1") == 17
    assert value(samples, "shardsync_worker_cpu_seconds_total", shard="1") == 3.5
    assert value(samples, "shardsync_shard_last_event_age_seconds", shard="1") == pytest.approx(2.0)
    assert value(samples, "shardsync_shard_last_commit_age_seconds", shard="1") == pytest.approx(5.0)
    assert value(samples, "shardsync_shard_snapshot_duration_seconds", shard="1") == 0.75
    buckets = [value(samples, "shardsync_shard_commit_duration_seconds_bucket", shard="1", le=le)
               for le in [*map(str, ipc.COMMIT_BUCKETS), "+Inf"]]
    assert buckets == list(commits)
    assert value(samples, "shardsync_shard_commit_duration_seconds_count", shard="1") == 7
    assert value(samples, "shardsync_shard_commit_duration_seconds_sum", shard="1") == 12.25
    assert value(samples, "shardsync_shard_quarantined_total", shard="1") == 2
    assert value(samples, "shardsync_shard_unattributed_total", shard="1") == 6
    assert value(samples, "shardsync_shard_sink_errors_total", shard="1") == 1

    parent.wall.advance(7.0)  # only the wall clock: the ages must follow it, not the loop's clock
    later = scrape(parent)
    assert value(later, "shardsync_shard_last_event_age_seconds", shard="1") == pytest.approx(9.0)
    assert value(later, "shardsync_shard_last_commit_age_seconds", shard="1") == pytest.approx(12.0)
    # Shard 0 never reported a frame or a commit: its ages count from when the parent took it on.
    taken_on = parent.wall() - parent.arbiter.shards[0].taken_wall
    assert 7.0 <= taken_on <= parent.wall() - 1_700_000_000.0  # the fake wall clock's start
    assert value(later, "shardsync_shard_last_event_age_seconds", shard="0") == pytest.approx(taken_on)
    assert value(later, "shardsync_shard_last_commit_age_seconds", shard="0") == pytest.approx(taken_on)
    assert math.isnan(value(later, "shardsync_shard_snapshot_duration_seconds", shard="0"))


def test_counters_and_freshness_survive_a_worker_restart(make: Any) -> None:
    """After a crash the shard keeps its counters, its last event and commit times and its snapshot duration;
    memory and fds read 0 until the replacement reports; the replacement's counts add to the old ones."""
    parent = booted(make)
    wall = parent.wall()
    first = histogram([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    beat(parent, 2, rss_bytes=40_000_000, open_fds=12, cpu_seconds=4.0, last_event_at=wall - 1.0,
         last_commit_at=wall - 1.0, snapshot_seconds=1.5, commits=first, commit_seconds=0.001, sink_errors=2)
    old = parent.fakes.worker(2)
    old.exit(exited_with(1))
    parent.step(2)
    assert parent.fakes.worker(2) is not old, "replaced at once"
    samples = scrape(parent)
    assert value(samples, "shardsync_shard_up", shard="2") == 0
    assert value(samples, "shardsync_worker_resident_memory_bytes", shard="2") == 0
    assert value(samples, "shardsync_worker_open_fds", shard="2") == 0
    assert value(samples, "shardsync_worker_cpu_seconds_total", shard="2") == 4.0
    assert value(samples, "shardsync_shard_sink_errors_total", shard="2") == 2
    assert value(samples, "shardsync_shard_commit_duration_seconds_count", shard="2") == 1
    assert value(samples, "shardsync_shard_snapshot_duration_seconds", shard="2") == 1.5
    assert value(samples, "shardsync_shard_last_event_age_seconds", shard="2") == pytest.approx(1.0)

    # The new worker starts from zero and has seen no frame yet (None): the shard's times stay.
    beat(parent, 2, state=ShardState.SYNCING, rss_bytes=30_000_000, open_fds=9, cpu_seconds=0.5, commits=first,
         commit_seconds=0.002, sink_errors=1)
    samples = scrape(parent)
    assert value(samples, "shardsync_worker_resident_memory_bytes", shard="2") == 30_000_000
    assert value(samples, "shardsync_worker_cpu_seconds_total", shard="2") == 4.5
    assert value(samples, "shardsync_shard_sink_errors_total", shard="2") == 3
    assert value(samples, "shardsync_shard_commit_duration_seconds_count", shard="2") == 2
    assert value(samples, "shardsync_shard_commit_duration_seconds_sum", shard="2") == pytest.approx(0.003)
    assert value(samples, "shardsync_shard_last_event_age_seconds", shard="2") == pytest.approx(1.0)
    assert value(samples, "shardsync_shard_last_commit_age_seconds", shard="2") == pytest.approx(1.0)
    assert value(samples, "shardsync_shard_snapshot_duration_seconds", shard="2") == 1.5


def test_sink_down_follows_the_current_workers_outage_on_the_wall_clock(make: Any) -> None:
    """A beat naming when the sink went down gives its age in /status and /metrics, growing with the wall clock;
    a beat without one, or the worker's death, reads reachable (None, 0)."""
    parent = booted(make)
    wall = parent.wall()

    def down() -> tuple[float | None, float]:
        status = next(s for s in parent.arbiter.snapshot().shards if s.remainder == 1)
        return status.sink_down_for, value(scrape(parent), "shardsync_shard_sink_down_seconds", shard="1")

    assert down() == (None, 0.0)
    beat(parent, 1, sink_down_at=wall - 3.0)
    assert down() == (pytest.approx(3.0), pytest.approx(3.0))
    parent.wall.advance(2.0)
    assert down() == (pytest.approx(5.0), pytest.approx(5.0))
    beat(parent, 1)
    assert down() == (None, 0.0)
    beat(parent, 1, sink_down_at=parent.wall() - 1.0)
    parent.fakes.worker(1).exit(exited_with(1))
    parent.step(2)
    assert down() == (None, 0.0), "a dead worker's outage is not the replacement's"


def test_every_series_is_there_for_every_shard_in_every_state(make: Any) -> None:
    """Before any heartbeat, live, crashed (backoff), parked and stopping: each per-shard family has every shard."""
    parent = make({"supervisor": {"intensity": 1, "period": 300.0}})
    every = {"0", "1", "2", "3"}
    seen_states: set[str] = set()

    def check() -> None:
        samples = scrape(parent)
        for name in PER_SHARD:
            assert shards_of(samples, name) == every, name
        seen_states.update(str(s.state) for s in parent.arbiter.shards.values())

    check()  # nothing forked yet
    parent.step(8)
    parent.log_in()
    check()
    for remainder in range(4):
        beat(parent, remainder)
    check()
    for _ in range(2):  # intensity 1: the second crash within the period parks it
        parent.fakes.worker(1).exit(exited_with(1))
        parent.step()
        check()
        parent.advance(2.0)
    assert parent.arbiter.shards[1].parked
    parent.fakes.worker(3).exit(exited_with(1))
    parent.step()
    check()
    parent.reload({"sync": {"remainders": [0, 1, 3]}})  # 2 is stopping until its worker is reaped
    check()
    assert {"live", "parked", "stopping", "starting"} <= seen_states, seen_states


def test_a_removed_shard_leaves_no_series_behind(make: Any) -> None:
    """Once a reload's removed shard is reaped, no series names it; an added one has all of them at once."""
    parent = booted(make)
    for remainder in range(4):
        beat(parent, remainder, cpu_seconds=1.0, sink_errors=1)
    parent.reload({"sync": {"remainders": [0, 1, 2]}})
    parent.fakes.worker(3).exit(exited_with(0))
    parent.step(3)
    samples = scrape(parent)
    assert not [key for key in samples if ("shard", "3") in key[1]]
    assert value(samples, "shardsync_shards_configured") == 3

    parent.reload({"sync": {"remainders": "all"}})
    samples = scrape(parent)
    for name in PER_SHARD:
        assert "3" in shards_of(samples, name), name
    assert value(samples, "shardsync_shard_sink_errors_total", shard="3") == 0  # a new shard starts from zero


# --- the token -------------------------------------------------------------------------------------


def test_token_expiry_counts_down_on_the_wall_clock_with_its_renewal_margin(make: Any) -> None:
    """No token: expiry 0 and the configured renew_before; a grant: its seconds left, falling with the wall clock,
    and the margin the keeper renews at (half a short token's lifetime)."""
    parent = make({"tradovate": {"renew_before": 900.0}})
    parent.step(8)
    samples = scrape(parent)
    assert value(samples, "shardsync_token_expiry_seconds") == 0
    assert value(samples, "shardsync_token_renew_margin_seconds") == 900
    parent.log_in(lifetime=4800.0)
    samples = scrape(parent)
    assert value(samples, "shardsync_token_expiry_seconds") == pytest.approx(4800.0)
    assert value(samples, "shardsync_token_renew_margin_seconds") == 900
    parent.wall.advance(1000.0)
    assert value(scrape(parent), "shardsync_token_expiry_seconds") == pytest.approx(3800.0)
    parent.wall.advance(10_000.0)  # long expired, never renewed
    assert value(scrape(parent), "shardsync_token_expiry_seconds") == 0

    short = make({"tradovate": {"renew_before": 900.0}})
    short.step(8)
    short.log_in(lifetime=600.0)
    samples = scrape(short)
    assert value(samples, "shardsync_token_renew_margin_seconds") == 300  # renewed at half-life
    assert value(samples, "shardsync_token_expiry_seconds") == pytest.approx(600.0)


# --- the parent process and build -------------------------------------------------------------------


def test_parent_process_series_and_build_info() -> None:
    """process_* describe the process that renders (/proc/self) under the standard names; build_info names
    the version."""
    empty = StatusSnapshot(pid=os.getpid(), started_at=0.0, uptime=0.0, ready=False, divisor=1)
    body = metrics.render(lambda: empty).decode()
    samples = {s.name: s for f in text_string_to_metric_families(body) for s in f.samples}
    with open("/proc/self/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    with open("/proc/stat", "rb") as proc_stat:
        btime = next(float(line.split()[1]) for line in proc_stat if line.startswith(b"btime "))
    started = btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    assert samples["process_start_time_seconds"].value == pytest.approx(started)
    assert samples["process_start_time_seconds"].value <= time.time()
    assert samples["process_resident_memory_bytes"].value > 1 << 20
    assert abs(samples["process_open_fds"].value - len(os.listdir("/proc/self/fd"))) <= 2
    assert samples["process_cpu_seconds_total"].value > 0
    assert samples["shardsync_build_info"].labels == {"version": __version__}
    assert samples["shardsync_build_info"].value == 1



# --- the README's list ------------------------------------------------------------------------------


def test_readme_lists_exactly_the_exposed_series() -> None:
    """README "Metrics" names every series /metrics exposes, and nothing it does not."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`((?:shardsync|process)_[a-z_]+)(?:\{[a-z,]+\})?`", section))
    snap = StatusSnapshot(pid=1, started_at=0.0, uptime=1.0, ready=True, divisor=1,
                          shards=(ShardStatus(0, "live"),), token_expires_in=1.0, token_renew_margin=1.0,
                          login={"failed_logins_last_hour": 0})
    body = metrics.render(lambda: snap).decode()
    families = list(text_string_to_metric_families(body))
    histograms = {f.name for f in families if f.type == "histogram"}

    def series(sample_name: str) -> str:
        stem = re.sub(r"_(bucket|sum|count)$", "", sample_name)
        return stem if stem in histograms else sample_name

    exposed = {series(s.name) for f in families for s in f.samples}
    assert listed == exposed
