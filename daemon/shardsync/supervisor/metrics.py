"""Prometheus text exposition of the parent's view of its shards.

Every sample is built at scrape time from one :class:`StatusSnapshot`, so
nothing accumulates per worker or per restart: no multiprocess mode, no
metric objects that outlive a shard, no series left behind by a removed shard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shardsync.ipc import ShardState
from shardsync.supervisor.status import StatusSnapshot

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
            label = str(shard.remainder)
            up.add_metric([label], 1.0 if shard.live else 0.0)
            states = KNOWN_STATES if shard.state in KNOWN_STATES else (*KNOWN_STATES, shard.state)
            for name in states:
                state.add_metric([label, name], 1.0 if name == shard.state else 0.0)
            restarts.add_metric([label], shard.restarts)
            reconnects.add_metric([label], shard.reconnects)
            events.add_metric([label], shard.events)
            entities.add_metric([label], shard.entities)
            if shard.last_heartbeat_age is not None:
                age.add_metric([label], shard.last_heartbeat_age)
            parked.add_metric([label], 1.0 if shard.parked else 0.0)
        yield from (up, state, restarts, reconnects, events, entities, age, parked)
        yield from _budget_families(snap)
        yield GaugeMetricFamily("shardsync_shards_configured", "Shards this host runs", value=len(snap.shards))
        yield GaugeMetricFamily("shardsync_ready", "1 once READY=1 was sent", value=1.0 if snap.ready else 0.0)
        yield GaugeMetricFamily("shardsync_parent_uptime_seconds", "Seconds since the parent started", snap.uptime)


def render(provider: Callable[[], StatusSnapshot]) -> bytes:
    """The exposition text for the snapshot ``provider`` returns (called once)."""
    # A throwaway registry per scrape: nothing global, nothing to unregister on reload.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ShardCollector(provider))
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
        label = str(shard.remainder)
        rejections.add_metric([label], float(shard.rejections))
        refused.add_metric([label], 1.0 if shard.remainder in parked else 0.0)
    yield from (paused, remaining, throttles, rejections, refused)
    failures = (snap.login or {}).get("failed_logins_last_hour")
    if failures is not None:
        yield GaugeMetricFamily("shardsync_failed_logins_last_hour",
                                "Failed logins counted in the last hour (no login while 2)", value=float(failures))
