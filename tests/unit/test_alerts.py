"""deploy/prometheus/alerts.yml: valid for promtool, unit-tested with promtool (alerts_test.yml) firing and not
firing, annotated with a runbook that exists, and written against series the daemon really exposes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from shardsync.supervisor import metrics
from shardsync.supervisor.status import ShardStatus, StatusSnapshot

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
INSTALL = ROOT / "deploy" / "INSTALL.md"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    # Not skipped when missing: .ci/run installs Debian's prometheus package, which provides promtool.
    tool = shutil.which("promtool")
    assert tool, "promtool not found: apt-get install --no-install-recommends prometheus (.ci/run does)"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promtool_check_rules_accepts_the_alerts() -> None:
    """`promtool check rules` finds every rule valid (PromQL parses, templates expand, no duplicates)."""
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_test_rules_passes_the_alert_unit_tests() -> None:
    """`promtool test rules` on alerts_test.yml: every expected alert fires with its labels and annotations, at
    its time, and no other."""
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """Each alert of alerts.yml has at least one evaluation in alerts_test.yml where it fires and one where it
    must not."""
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in rules()}
    assert len(names) == len(rules()), "alert names are unique"
    assert names - fires == set(), "never tested firing"
    assert names - silent == set(), "never tested not firing"


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown``."""
    anchors = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif line.startswith("#") and not fenced:
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_every_alert_has_a_severity_summary_description_and_a_runbook_that_exists() -> None:
    """Every rule has a severity, a summary, a description naming its target (and shard, for per-shard rules)
    and a runbook pointing at a heading of deploy/INSTALL.md."""
    anchors = github_anchors(INSTALL.read_text())
    for rule in rules():
        name, notes = rule["alert"], rule["annotations"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert set(notes) == {"summary", "description", "runbook"}, name
        path, _, anchor = notes["runbook"].partition("#")
        assert path == "deploy/INSTALL.md" and anchor in anchors, (name, notes["runbook"])
        assert anchor == name.lower(), name
        if "shardsync_shard_" in rule["expr"] and " by (" not in rule["expr"]:  # one alert per shard
            assert "{{ $labels.shard }}" in notes["description"], name
            assert "{{ $labels.shard }}" in notes["summary"], name
        if name != "ShardsyncMetricsAbsent":  # absent() has no instance to name
            assert "{{ $labels.instance }}" in notes["description"], name


def test_alerts_use_only_series_the_daemon_exposes() -> None:
    """Every metric name in an alert expression is in the daemon's /metrics (or is Prometheus' own `up`):
    a typo in a rule would make it silently never fire."""
    snap = StatusSnapshot(pid=1, started_at=0.0, uptime=1.0, ready=True, divisor=1, shards=(ShardStatus(0, "live"),),
                          token_expires_in=100.0, token_renew_margin=50.0)
    body = metrics.render(lambda: snap).decode()
    exposed = {sample.name for family in text_string_to_metric_families(body) for sample in family.samples}
    used = set()
    for rule in rules():
        used |= set(re.findall(r"\b(?:shardsync|process)_[a-z_]+\b", rule["expr"]))
    assert used, "the pattern finds the names"
    assert used - exposed == set()
