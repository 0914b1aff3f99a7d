"""deploy/kubernetes/shardsync.yaml: valid for a pinned Kubernetes, one config whose pods partition the shards,
probes that mean liveness and readiness, and a pod that can do no more than it needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from shardsync.cli import build_parser
from shardsync.config import load_config
from shardsync.ordinal import HostSlot

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kubernetes" / "shardsync.yaml"
BIN = Path(sys.executable).parent
#: The Kubernetes version the manifests are checked against (the pod-index label needs >= 1.28).
KUBERNETES_VERSION = "1.30"
#: Endpoints rendered by the parent's loop whatever the shards do: 200 whenever the loop answers.
LOOP_ANSWERED = {"/status"}
POD_INDEX_LABEL = "metadata.labels['apps.kubernetes.io/pod-index']"


def documents(text: str | None = None) -> dict[str, dict[str, Any]]:
    """The manifest's resources by kind (each kind appears once)."""
    docs = [d for d in yaml.safe_load_all(text if text is not None else MANIFEST.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one resource per kind"
    return by_kind


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", KUBERNETES_VERSION,
                           str(path)], capture_output=True, text=True, timeout=120, check=False)


def pod(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = docs["StatefulSet"]["spec"]["template"]["spec"]
    return spec


def container(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = pod(docs)["containers"]
    result: dict[str, Any] = only
    return result


def test_manifests_validate_against_the_pinned_schema() -> None:
    """Every resource validates strictly (unknown fields are errors) against the Kubernetes 1.30 schema, offline
    (kubernetes-validate ships the schemas)."""
    assert set(documents()) == {"ConfigMap", "ServiceAccount", "Service", "StatefulSet", "PodDisruptionBudget",
                                "NetworkPolicy"}
    result = validate(MANIFEST)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validation_is_not_blind(tmp_path: Path) -> None:
    """A misspelt field or a missing required one makes the same validation fail, naming it."""
    text = MANIFEST.read_text()
    for broken, name in ((text.replace("unhealthyPodEvictionPolicy", "unhealthyPodEvictionPolcy"),
                          "unhealthyPodEvictionPolcy"),
                         (text.replace("maxSkew: 1", "skew: 1"), "maxSkew")):
        path = tmp_path / "broken.yaml"
        path.write_text(broken)
        result = validate(path)
        assert result.returncode != 0 and name in result.stdout + result.stderr


def _slot(args: list[str], index: str) -> HostSlot:
    """The host slot `shardsync run` gets from the container's args, $(POD_INDEX) expanded to ``index``."""
    parsed = build_parser().parse_args([a.replace("$(POD_INDEX)", index) for a in args])
    assert parsed.command == "run"
    return HostSlot(parsed.host_index, parsed.host_count)


def test_one_config_map_and_the_pods_partition_the_shards(tmp_path: Path) -> None:
    """The ConfigMap holds one file; each of the `replicas` pods runs it with its ordinal from the pod-index label,
    and their remainders together are 0..divisor-1, each exactly once."""
    docs = documents()
    (name,) = docs["ConfigMap"]["data"]
    config = tmp_path / name
    config.write_text(docs["ConfigMap"]["data"][name])
    settings = load_config(config)
    box = container(docs)
    assert box["args"][:3] == ["run", "-c", f"/etc/shardsync/{name}"]
    assert {"name": "POD_INDEX", "valueFrom": {"fieldRef": {"fieldPath": POD_INDEX_LABEL}}} in box["env"]
    replicas = docs["StatefulSet"]["spec"]["replicas"]
    slots = [_slot(box["args"], str(i)) for i in range(replicas)]
    assert {slot.count for slot in slots} == {replicas}
    blocks = [load_config(config, host=slot).sync.remainders for slot in slots]
    assert sorted(r for block in blocks for r in block) == list(range(settings.sync.divisor))
    assert blocks[1] == (4, 5, 6, 7)
    # Before 1.28 there is no pod-index label; the pod name gives the same slot.
    assert _slot(box["args"], "shardsync-1") == slots[1]


def test_liveness_asks_the_loop_and_readiness_asks_the_shards(tmp_path: Path) -> None:
    """Liveness and startup are HTTP GETs of an endpoint the parent's loop renders (never a TCP check, which a
    stopped process passes; never /healthz, which a shard in backoff fails), readiness is /healthz, all on the
    port the config listens on; a hang is noticed within a minute; the grace period outlasts shutdown_timeout."""
    docs = documents()
    box = container(docs)
    (port,) = box["ports"]
    for probe in ("livenessProbe", "startupProbe"):
        assert box[probe]["httpGet"] == {"path": box[probe]["httpGet"]["path"], "port": port["name"]}
        assert box[probe]["httpGet"]["path"] in LOOP_ANSWERED, probe
    assert box["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    live = box["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] + live["timeoutSeconds"] <= 60
    (name,) = docs["ConfigMap"]["data"]
    config = tmp_path / name
    config.write_text(docs["ConfigMap"]["data"][name])
    settings = load_config(config)
    assert settings.status.address == ("0.0.0.0", port["containerPort"])
    assert pod(docs)["terminationGracePeriodSeconds"] > settings.supervisor.shutdown_timeout + 5


def test_disruptions_and_placement_take_one_pod_at_a_time() -> None:
    """The budget lets one pod down at a time (a not-ready one may still be evicted), selects exactly the pods,
    and the pods spread over nodes, cordoned nodes not counted."""
    docs = documents()
    labels = docs["StatefulSet"]["spec"]["template"]["metadata"]["labels"]
    budget = docs["PodDisruptionBudget"]["spec"]
    assert budget["maxUnavailable"] == 1 and "minAvailable" not in budget
    assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert budget["selector"] == {"matchLabels": labels}
    (spread,) = pod(docs)["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["maxSkew"] == 1
    assert spread["nodeTaintsPolicy"] == "Honor"
    assert spread["labelSelector"] == {"matchLabels": labels}
    assert docs["StatefulSet"]["spec"]["selector"] == {"matchLabels": labels}


def test_the_pod_can_reach_only_what_it_needs() -> None:
    """No service-account token is mounted; the network policy selects the pods and lets in only the status port
    and out only HTTPS and DNS; credentials come from a Secret volume, never an environment variable."""
    docs = documents()
    spec = pod(docs)
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    assert docs["ServiceAccount"]["automountServiceAccountToken"] is False
    policy = docs["NetworkPolicy"]["spec"]
    assert policy["podSelector"] == {"matchLabels": docs["StatefulSet"]["spec"]["template"]["metadata"]["labels"]}
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    (port,) = container(docs)["ports"]
    assert policy["ingress"] == [{"ports": [{"protocol": "TCP", "port": port["containerPort"]}]}]
    egress = sorted((p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"])
    assert egress == [("TCP", 53), ("TCP", 443), ("UDP", 53)]
    env = container(docs)["env"]
    assert not [e for e in env if e["name"].startswith("SHARDSYNC_")]
    secrets = [v for v in spec["volumes"] if "secret" in v]
    assert [v["name"] for v in secrets] == ["credentials"]
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "credentials")
    assert {"name": "CREDENTIALS_DIRECTORY", "value": mount["mountPath"]} in env
