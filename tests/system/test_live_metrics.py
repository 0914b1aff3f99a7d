"""/metrics of a real daemon (`shardsync run` against the simulator): clean for `promtool check metrics`, and its
process, worker, freshness, commit-latency and token series carry the real processes' figures, across a worker
SIGKILL."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from harness import Daemon, wait_until
from prometheus_client.parser import text_string_to_metric_families

from shardsync import __version__, ipc
from shardsync.simulator import Simulator

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
TOKEN_LIFETIME = 600.0
RENEW_BEFORE = 900.0


def scrape(daemon: Daemon) -> tuple[str, Samples]:
    code, body = daemon.http("/metrics")
    assert code == 200, body
    text = body.decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    return text, samples


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def proc_figures(pid: int) -> tuple[float, float, int, float]:
    """RSS bytes, CPU seconds, open fds and start time (epoch) of ``pid``, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    btime = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                 if line.startswith("btime "))
    cpu, started = (int(stat[11]) + int(stat[12])) / ticks, btime + int(stat[19]) / ticks
    return rss, cpu, len(os.listdir(f"/proc/{pid}/fd")), started


def committed_everywhere(daemon: Daemon, shards: range) -> Samples | None:
    """The scrape once every shard has committed a batch and reported a snapshot duration, else None."""
    _, samples = scrape(daemon)
    for shard in map(str, shards):
        if get(samples, "shardsync_shard_commit_duration_seconds_count", shard=shard) < 1:
            return None
        if math.isnan(get(samples, "shardsync_shard_snapshot_duration_seconds", shard=shard)):
            return None
    return samples


def test_live_metrics_are_promtool_clean_and_report_the_real_processes(
        sim_factory: Callable[..., Simulator], daemon_factory: Callable[..., Daemon]) -> None:
    """A live 4-shard daemon's /metrics passes `promtool check metrics` with nothing reported; process_* are the
    parent's, the worker series each worker's (memory, CPU, fds against /proc), frames are seconds old, every
    shard has a consistent commit histogram and a snapshot duration, the token its seconds left and margin."""
    sim = sim_factory(event_rate=40, accounts=16, token_lifetime=TOKEN_LIFETIME)
    daemon = daemon_factory(sim, sections={"tradovate": {"renew_before": RENEW_BEFORE}})
    daemon.wait_live()
    samples = wait_until(lambda: committed_everywhere(daemon, range(4)), 30, "a commit and a snapshot on every shard")

    text, samples = scrape(daemon)
    tool = shutil.which("promtool")
    assert tool, "promtool not found: apt-get install --no-install-recommends prometheus (.ci/run does)"
    lint = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30,
                          check=False)
    assert (lint.returncode, lint.stdout, lint.stderr) == (0, "", ""), lint.stdout + lint.stderr

    rss, cpu, fds, started = proc_figures(daemon.pid)
    assert abs(get(samples, "process_start_time_seconds") - started) < 0.02
    assert 0.75 * rss < get(samples, "process_resident_memory_bytes") < 1.25 * rss
    assert 0 < get(samples, "process_cpu_seconds_total") <= cpu + 0.05
    assert abs(get(samples, "process_open_fds") - fds) <= 3  # the scrape's own connection comes and goes
    assert get(samples, "shardsync_build_info", version=__version__) == 1

    for shard, pid in daemon.pids().items():
        assert pid is not None
        label = str(shard)
        w_rss, w_cpu, w_fds, _ = proc_figures(pid)
        assert 0.75 * w_rss < get(samples, "shardsync_worker_resident_memory_bytes", shard=label) < 1.25 * w_rss
        assert 0 < get(samples, "shardsync_worker_cpu_seconds_total", shard=label) <= w_cpu + 0.05
        assert abs(get(samples, "shardsync_worker_open_fds", shard=label) - w_fds) <= 2
        assert get(samples, "shardsync_shard_last_event_age_seconds", shard=label) < 5.0  # a frame every 2.5 s
        assert get(samples, "shardsync_shard_last_commit_age_seconds", shard=label) < 30.0
        assert 0 < get(samples, "shardsync_shard_snapshot_duration_seconds", shard=label) < 30.0
        buckets = [get(samples, "shardsync_shard_commit_duration_seconds_bucket", shard=label, le=le)
                   for le in [*map(str, ipc.COMMIT_BUCKETS), "+Inf"]]
        assert buckets == sorted(buckets), "cumulative"
        count = get(samples, "shardsync_shard_commit_duration_seconds_count", shard=label)
        assert buckets[-1] == count >= 1
        assert 0 < get(samples, "shardsync_shard_commit_duration_seconds_sum", shard=label) < count * 10.0
        assert get(samples, "shardsync_shard_sink_errors_total", shard=label) == 0

    left = get(samples, "shardsync_token_expiry_seconds")
    assert TOKEN_LIFETIME - 120 < left <= TOKEN_LIFETIME
    # A short token is renewed at half its lifetime as seen on arrival (a little under the simulator's).
    assert TOKEN_LIFETIME / 2 - 1 < get(samples, "shardsync_token_renew_margin_seconds") <= TOKEN_LIFETIME / 2


def test_a_killed_workers_counters_are_kept_and_its_replacement_reports_its_own_process(
        sim_factory: Callable[..., Simulator], daemon_factory: Callable[..., Daemon]) -> None:
    """After a worker's SIGKILL the shard's CPU and commit counters do not go down, its restart is counted, and
    the worker series describe the replacement process once it is live."""
    sim = sim_factory(event_rate=40, accounts=16)
    daemon = daemon_factory(sim)
    daemon.wait_live()
    before = wait_until(lambda: committed_everywhere(daemon, range(4)), 30, "a commit on every shard")
    old = daemon.pids()[1]
    assert old is not None
    cpu_before = get(before, "shardsync_worker_cpu_seconds_total", shard="1")
    commits_before = get(before, "shardsync_shard_commit_duration_seconds_count", shard="1")
    os.kill(old, signal.SIGKILL)

    def replaced() -> int | None:
        shard = daemon.shards()[1]
        return shard["pid"] if shard["state"] == "live" and shard["pid"] not in (None, old) else None

    new = wait_until(replaced, 30, "shard 1 live with a new worker")

    def committed_again() -> Samples | None:
        _, samples = scrape(daemon)
        fresh = get(samples, "shardsync_shard_commit_duration_seconds_count", shard="1") > commits_before
        return samples if fresh and get(samples, "shardsync_worker_open_fds", shard="1") > 0 else None

    after = wait_until(committed_again, 30, "a commit by the replacement")
    assert get(after, "shardsync_shard_restarts_total", shard="1") == 1
    assert get(after, "shardsync_worker_cpu_seconds_total", shard="1") >= cpu_before
    w_rss, _, w_fds, _ = proc_figures(new)
    assert 0.75 * w_rss < get(after, "shardsync_worker_resident_memory_bytes", shard="1") < 1.25 * w_rss
    assert abs(get(after, "shardsync_worker_open_fds", shard="1") - w_fds) <= 2
