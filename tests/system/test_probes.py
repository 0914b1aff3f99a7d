"""The Kubernetes probes of deploy/kubernetes/shardsync.yaml, carried out as kubelet does against a real daemon."""

from __future__ import annotations

import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from harness import Daemon, wait_until

from shardsync.simulator import Simulator

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "shardsync.yaml"


def probes() -> dict[str, dict[str, Any]]:
    """The container's probes, by name."""
    (stateful,) = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d["kind"] == "StatefulSet"]
    (box,) = stateful["spec"]["template"]["spec"]["containers"]
    return {name: box[name] for name in ("livenessProbe", "startupProbe", "readinessProbe")}


def kubelet(daemon: Daemon, probe: dict[str, Any]) -> bool:
    """One probe as kubelet runs it: an HTTP GET within timeoutSeconds, success on 200-399."""
    url = f"http://127.0.0.1:{daemon.status_port}{probe['httpGet']['path']}"
    try:
        with urllib.request.urlopen(url, timeout=probe["timeoutSeconds"]) as response:
            return 200 <= response.status < 400
    except urllib.error.HTTPError as exc:
        return 200 <= exc.code < 400
    except OSError:  # refused, reset or timed out
        return False


def test_probes_fail_a_stopped_parent_but_not_a_shard_in_backoff(sim_factory: Callable[..., Simulator],
                                                                  daemon_factory: Callable[..., Daemon]) -> None:
    """All probes pass with every shard live; with Tradovate gone (shards in backoff) readiness fails but
    liveness and startup still pass; with the parent SIGSTOPped liveness fails (within timeoutSeconds) although
    the kernel still accepts TCP connections, so a tcpSocket probe would have passed; SIGCONT heals it."""
    sim = sim_factory()
    daemon = daemon_factory(sim, divisor=2)
    daemon.wait_live()
    checks = probes()
    assert all(kubelet(daemon, probe) for probe in checks.values())

    sim.stop()
    wait_until(lambda: not kubelet(daemon, checks["readinessProbe"]), 20, "readiness to fail")
    assert any(s["state"] != "live" for s in daemon.shards().values())
    assert kubelet(daemon, checks["livenessProbe"]) and kubelet(daemon, checks["startupProbe"])

    daemon.signal(signal.SIGSTOP)
    try:
        with socket.create_connection(("127.0.0.1", daemon.status_port), timeout=2):
            pass  # what a tcpSocket probe checks: still fine
        assert not kubelet(daemon, checks["livenessProbe"])
        assert not kubelet(daemon, checks["startupProbe"])
    finally:
        daemon.signal(signal.SIGCONT)
    wait_until(lambda: kubelet(daemon, checks["livenessProbe"]), 10, "liveness to pass again")
