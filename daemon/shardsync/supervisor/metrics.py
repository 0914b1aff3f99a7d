"""Prometheus text exposition of the parent's view of its shards.

Every sample is built at scrape time from one :class:`StatusSnapshot`, so
nothing accumulates per worker or per restart: no multiprocess mode, no
metric objects that outlive a shard, no series left behind by a removed shard.
Every shard has every per-shard series whatever its state (NaN where a value
is not known yet), so a state change flips values instead of adding series.

The parent's own ``process_*`` series come from prometheus_client's process
collector (/proc/self); the workers' from their heartbeats.  README "Metrics"
lists them all; deploy/prometheus/alerts.yml alerts on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from shardsync import __version__, ipc
from shardsync.ipc import ShardState
from shardsync.supervisor.shardkey import ShardKey
from shardsync.supervisor.status import ShardStatus, StatusSnapshot

__all__ = ["CONTENT_TYPE", "KNOWN_STATES", "ShardCollector", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Every state gets a 0/1 series so a state change flips values instead of
# creating and dropping series (which would look like gaps to alerts).
KNOWN_STATES = tuple(ShardState)


class ShardCollector(Collector):
    """Yields the ``shardsync_*`` families from a fresh snapshot on every collect()."""

    def __init__(self, provider: Callable[[], StatusSnapshot]) -> None:
        self._provider = provider

    def collect(self) -> Iterable[Metric]:
        snap = self._provider()
        up = GaugeMetricFamily("shardsync_shard_up", "1 if the shard is live", labels=["shard"])
        state = GaugeMetricFamily("shardsync_shard_state", "1 for the shard's current state", labels=["shard", "state"])
        restarts = CounterMetricFamily(
            "shardsync_shard_restarts_total", "Worker restarts of the shard since the daemon started", labels=["shard"]
        )
        reconnects = CounterMetricFamily(
            "shardsync_shard_reconnects_total", "Reconnects reported by the current worker", labels=["shard"]
        )
        events = CounterMetricFamily(
            "shardsync_shard_events_total", "Change events written by the current worker", labels=["shard"]
        )
        entities = GaugeMetricFamily("shardsync_shard_entities", "Entities in the shard's mirror", labels=["shard"])
        age = GaugeMetricFamily(
            "shardsync_shard_last_heartbeat_age_seconds", "Seconds since the worker's last heartbeat", labels=["shard"]
        )
        parked = GaugeMetricFamily(
            "shardsync_shard_parked", "1 if the shard exceeded its restart intensity", labels=["shard"]
        )
        for shard in snap.shards:
            label = _label(shard, snap.divisor)
            up.add_metric([label], 1.0 if shard.live else 0.0)
            states = KNOWN_STATES if shard.state in KNOWN_STATES else (*KNOWN_STATES, shard.state)
            for name in states:
                state.add_metric([label, name], 1.0 if name == shard.state else 0.0)
            restarts.add_metric([label], shard.restarts)
            reconnects.add_metric([label], shard.reconnects)
            events.add_metric([label], shard.events)
            entities.add_metric([label], shard.entities)
            age.add_metric([label], _known(shard.last_heartbeat_age))
            parked.add_metric([label], 1.0 if shard.parked else 0.0)
        yield from (up, state, restarts, reconnects, events, entities, age, parked)
        yield from _budget_families(snap)
        yield GaugeMetricFamily("shardsync_shards_configured", "Shards this host runs", value=len(snap.shards))
        yield GaugeMetricFamily("shardsync_ready", "1 once READY=1 was sent", value=1.0 if snap.ready else 0.0)
        yield from reshard_families(snap)
        yield GaugeMetricFamily("shardsync_parent_uptime_seconds", "Seconds since the parent started", snap.uptime)
        yield from worker_families(snap.shards, snap.divisor)
        yield from freshness_families(snap.shards, snap.divisor)
        yield from token_families(snap)
        yield InfoMetricFamily("shardsync_build", "The running shardsync's version", value={"version": __version__})


# --- worker processes, from their heartbeats ----------------------------------------------------


def worker_families(shards: Iterable[ShardStatus], divisor: int = 0) -> Iterable[Metric]:
    """Each shard's worker process: memory and fds of the current one (0 while none runs), CPU of all."""
    rss = GaugeMetricFamily("shardsync_worker_resident_memory_bytes",
                            "Resident memory of the shard's worker process (0 while none runs)", labels=["shard"])
    cpu = CounterMetricFamily("shardsync_worker_cpu_seconds_total",
                              "User and system CPU seconds of the shard's worker processes since the daemon started",
                              labels=["shard"])
    fds = GaugeMetricFamily("shardsync_worker_open_fds",
                            "Open file descriptors of the shard's worker process (0 while none runs)", labels=["shard"])
    for shard in shards:
        label = [_label(shard, divisor)]
        rss.add_metric(label, shard.rss_bytes)
        cpu.add_metric(label, shard.counts.cpu_seconds)
        fds.add_metric(label, shard.open_fds)
    return rss, cpu, fds


# --- data freshness and the sink, per shard -------------------------------------------------------


def freshness_families(shards: Iterable[ShardStatus], divisor: int = 0) -> Iterable[Metric]:
    """Ages of the last frame and commit, snapshot duration, commit latency and the data-quality counters."""
    event_age = GaugeMetricFamily(
        "shardsync_shard_last_event_age_seconds",
        "Seconds since the shard last received a frame from the server (from when the daemon took it on, if none)",
        labels=["shard"])
    commit_age = GaugeMetricFamily(
        "shardsync_shard_last_commit_age_seconds",
        "Seconds since the shard last committed a batch to its sink (from when the daemon took it on, if none)",
        labels=["shard"])
    snapshot = GaugeMetricFamily(
        "shardsync_shard_snapshot_duration_seconds",
        "Seconds from syncrequest to live of the shard's last (re)sync (NaN before the first)", labels=["shard"])
    latency = HistogramMetricFamily(
        "shardsync_shard_commit_duration_seconds",
        "Sink commit latency of the shard's batches, summed over its workers since the daemon started",
        labels=["shard"])
    quarantined = CounterMetricFamily(
        "shardsync_shard_quarantined_total", "Entities refused as unstorable (logged as rejected)", labels=["shard"])
    unattributed = CounterMetricFamily(
        "shardsync_shard_unattributed_total", "Changes whose account could not be found through their parent",
        labels=["shard"])
    sink_errors = CounterMetricFamily(
        "shardsync_shard_sink_errors_total", "Sink writes that failed (each ends the session; the next resyncs)",
        labels=["shard"])
    sink_down = GaugeMetricFamily(
        "shardsync_shard_sink_down_seconds",
        "Seconds the shard's worker has not reached its sink, riding out the outage on its socket (0: reachable)",
        labels=["shard"])
    for shard in shards:
        label = [_label(shard, divisor)]
        counts = shard.counts
        event_age.add_metric(label, _known(shard.last_event_age))
        commit_age.add_metric(label, _known(shard.last_commit_age))
        snapshot.add_metric(label, _known(shard.snapshot_seconds))
        bounds = [*(_le(b) for b in ipc.COMMIT_BUCKETS), "+Inf"]
        latency.add_metric(label, list(zip(bounds, map(float, counts.commits), strict=True)), counts.commit_seconds)
        quarantined.add_metric(label, counts.quarantined)
        unattributed.add_metric(label, counts.unattributed)
        sink_errors.add_metric(label, counts.sink_errors)
        sink_down.add_metric(label, shard.sink_down_for or 0.0)
    return event_age, commit_age, snapshot, latency, quarantined, unattributed, sink_errors, sink_down


# --- resharding (supervisor/resharding.py) -----------------------------------------------------------


def reshard_families(snap: StatusSnapshot) -> Iterable[Metric]:
    """Whether a resharding runs, and its moves per state (0 for every state when there was none)."""
    reshard = snap.reshard or {}
    yield GaugeMetricFamily("shardsync_resharding", "1 while a change of divisor is being carried out",
                            value=1.0 if reshard.get("state") == "running" else 0.0)
    moves = GaugeMetricFamily("shardsync_reshard_moves", "Moves of the current or last resharding, by state",
                              labels=["state"])
    for state in ("pending", "starting", "done", "aborted"):
        moves.add_metric([state], float(sum(m.get("state") == state for m in reshard.get("moves") or ())))
    yield moves


# --- the parent's token -----------------------------------------------------------------------------


def token_families(snap: StatusSnapshot) -> Iterable[Metric]:
    """Seconds the parent's token has left (0 when it holds none or it expired) and its renewal margin."""
    left = max(0.0, snap.token_expires_in or 0.0)
    yield GaugeMetricFamily("shardsync_token_expiry_seconds",
                            "Seconds until the parent's access token expires (0: none held, or expired)", value=left)
    yield GaugeMetricFamily("shardsync_token_renew_margin_seconds",
                            "The token is renewed this many seconds before it expires",
                            value=_known(snap.token_renew_margin))


def _label(shard: ShardStatus, divisor: int) -> str:
    """The ``shard`` label: the remainder, with ``/divisor`` for a shard of another divisor (a reshard's old ones)."""
    return ShardKey(shard.divisor or divisor, shard.remainder).label(divisor or shard.divisor)


def _known(value: float | None) -> float:
    """NaN for a value not known yet: the series stays, and no comparison in an alert holds for it."""
    return math.nan if value is None else value


def _le(bound: float) -> str:
    # Prometheus' own spelling of bucket bounds ("0.005", "1.0", "10.0"), as prometheus_client writes them.
    return repr(float(bound))


#: The parent's own process_* series (memory, CPU, fds, start time), read from /proc/self per scrape.
_PROCESS = ProcessCollector(registry=None)


def render(provider: Callable[[], StatusSnapshot]) -> bytes:
    """The exposition text for the snapshot ``provider`` returns (called once)."""
    # A throwaway registry per scrape: nothing global, nothing to unregister on reload.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ShardCollector(provider))
    registry.register(_PROCESS)
    return generate_latest(registry)


# --- the API budget (supervisor/budget.py) and the login cap: throttles, refusals, failed logins ---------


def _budget_families(snap: StatusSnapshot) -> Iterable[Metric]:
    """The API budget's series: pause, throttles by reason, refusals and refusal parks per shard, failed logins."""
    budget = snap.budget or {}
    paused = GaugeMetricFamily(
        "shardsync_connections_paused", "1 while Tradovate's rate limit holds back every new connection")
    paused.add_metric([], 1.0 if budget.get("state") == "paused" else 0.0)
    remaining = GaugeMetricFamily(
        "shardsync_connections_paused_seconds", "Seconds until new connections may start again (0: not paused)")
    remaining.add_metric([], float(budget.get("until_in") or 0.0))
    throttles = CounterMetricFamily(
        "shardsync_throttles", "Throttles (ws429, quota, captcha, rest429) since the daemon started", labels=["reason"])
    for reason in ("ws429", "quota", "captcha", "rest429"):
        throttles.add_metric([reason], float((budget.get("throttles") or {}).get(reason, 0)))
    rejections = CounterMetricFamily(
        "shardsync_shard_rejections", "Requests of the shard the server refused since the daemon started",
        labels=["shard"])
    refused = GaugeMetricFamily(
        "shardsync_shard_refused_parked", "1 if the shard is parked because the server keeps refusing it "
        "(a configuration error: see parked_reason in /status)", labels=["shard"])
    parked = set(budget.get("parked") or ())
    for shard in snap.shards:
        label = _label(shard, snap.divisor)
        rejections.add_metric([label], float(shard.rejections))
        refused.add_metric([label], 1.0 if ShardKey(shard.divisor or snap.divisor, shard.remainder) in parked else 0.0)
    yield from (paused, remaining, throttles, rejections, refused)
    failures = (snap.login or {}).get("failed_logins_last_hour")
    if failures is not None:
        yield GaugeMetricFamily("shardsync_failed_logins_last_hour",
                                "Failed logins counted in the last hour (no login while 2)", value=float(failures))
