"""The systemd units checked with systemd-analyze (v252) (the supervisord snippet: test_supervisord.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shardsync.config import SupervisorSettings

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
DEFAULTS = SupervisorSettings()
STOP_MARGIN = 5.0  # seconds the service manager must wait beyond the daemon's own shutdown_timeout

# unit file name -> the name systemd-analyze checks it under (templates need an instance)
UNIT_NAMES = {"shardsync.service": "shardsync.service", "shardsync@.service": "shardsync@demo.service"}
# keys and values that systemd 252 does not know (added in 253/254)
NEWER_THAN_252 = {"RestartSteps", "RestartMaxDelaySec", "RestartMode", "OpenFile", "ReloadSignal"}
EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")
_SPAN_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as ordered ``(key, value)`` lists (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    """Every value given to ``key`` in ``section``, in file order."""
    return [v for k, v in unit.get(section, []) if k == key]


def only(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    """The single value of ``key`` in ``section``."""
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= expected once, found {found}"
    return found[0]


def timespan(text: str) -> float:
    """A systemd time span (``30s``, ``1min 30s``, ``90``) in seconds."""
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text):
        total += float(number) * _SPAN_UNITS[unit or "s"]
    return total


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    """The systemd-analyze binary; missing is a failure, not a skip."""
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze not found: install the Debian package 'systemd' (apt-get install systemd)")
    return path


@pytest.fixture(scope="module")
def unit_copies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Copies of the units whose ExecStart/ExecReload use this venv's shardsync (verify needs an executable)."""
    shardsync = Path(sys.executable).with_name("shardsync")
    if not shardsync.exists():
        found = shutil.which("shardsync")
        assert found, "the shardsync console script is not installed (pip install -e .)"
        shardsync = Path(found)
    directory = tmp_path_factory.mktemp("units")
    for name in UNIT_NAMES:
        text = (UNITS / name).read_text()
        rewritten, count = re.subn(r"(?m)^(ExecStart|ExecReload)=/opt/shardsync/venv/bin/shardsync ",
                                   rf"\1={shardsync} ", text)
        assert count == 2, f"{name}: expected one ExecStart= and one ExecReload= line running shardsync"
        (directory / name).write_text(rewritten)
    return directory


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command, stdout and stderr together."""
    return subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
                          check=False)


@pytest.mark.parametrize("name", list(UNIT_NAMES))
def test_unit_verifies_clean_on_this_systemd(systemd_analyze: str, unit_copies: Path, name: str) -> None:
    """`systemd-analyze verify --recursive-errors=no` accepts the unit (template as an instance) without warnings."""
    target = f"./{name}" if name == UNIT_NAMES[name] else f"./{name}:{UNIT_NAMES[name]}"
    result = run([systemd_analyze, "verify", "--man=no", "--recursive-errors=no", target], cwd=unit_copies)
    assert result.returncode == 0, result.stdout
    unknown = [line for line in result.stdout.splitlines() if re.search(r"Unknown (key|section|lvalue)", line)]
    assert not unknown, result.stdout


@pytest.mark.parametrize("name", list(UNIT_NAMES))
def test_unit_exposure_at_most_2(systemd_analyze: str, name: str) -> None:
    """`systemd-analyze security --offline=true --threshold=20` passes and reports an exposure of 2.0 or less."""
    result = run([systemd_analyze, "security", "--offline=true", "--threshold=20", f"./{name}"], cwd=UNITS)
    assert result.returncode == 0, result.stdout
    match = EXPOSURE.search(result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) <= 2.0, result.stdout


@pytest.mark.parametrize("name", list(UNIT_NAMES))
def test_unit_speaks_the_daemon_contract(name: str) -> None:
    """Type=notify from the main pid, mixed kill, watchdog, no restart on 77/78/243, timeouts above the daemon's."""
    unit = parse_unit((UNITS / name).read_text())
    assert only(unit, "Service", "Type") == "notify"
    assert only(unit, "Service", "NotifyAccess") == "main"
    assert only(unit, "Service", "KillMode") == "mixed"
    assert only(unit, "Service", "Restart") == "on-failure"
    assert {"77", "78", "243"} <= set(" ".join(values(unit, "Service", "RestartPreventExitStatus")).split())
    assert timespan(only(unit, "Service", "TimeoutStopSec")) > DEFAULTS.shutdown_timeout + STOP_MARGIN
    assert timespan(only(unit, "Service", "TimeoutStartSec")) > DEFAULTS.start_timeout
    assert timespan(only(unit, "Service", "WatchdogSec")) > 0
    exec_start = only(unit, "Service", "ExecStart")
    assert exec_start.startswith("/") and " run -c /etc/shardsync/" in exec_start
    binary, config = exec_start.split(" run -c ")
    # the file is checked first: a bad one fails `systemctl reload` and no SIGHUP is sent
    assert values(unit, "Service", "ExecReload") == [f"{binary} check-config --quiet -c {config}",
                                                    "/bin/kill -HUP $MAINPID"]
    assert values(unit, "Unit", "StartLimitIntervalSec") and values(unit, "Unit", "StartLimitBurst")
    used = {key for section in unit.values() for key, _ in section}
    assert not used & NEWER_THAN_252, "systemd 252 does not know these keys"


@pytest.mark.parametrize("name", list(UNIT_NAMES))
def test_unit_takes_secrets_only_from_credentials(name: str) -> None:
    """Username, password and secret come through LoadCredential=; no secret sits in the unit or its environment."""
    text = (UNITS / name).read_text()
    unit = parse_unit(text)
    ids = {value.split(":", 1)[0] for value in values(unit, "Service", "LoadCredential")}
    assert ids == {"username", "password", "secret"}
    assert not values(unit, "Service", "EnvironmentFile")
    for value in values(unit, "Service", "Environment"):
        assert not re.search(r"SHARDSYNC_(USERNAME|PASSWORD|SECRET)|PASSWORD|SECRET", value, re.IGNORECASE), value
    assert not re.search(r"(?im)^\s*(SetCredential|Environment)\s*=.*(password|secret)", text)


def test_template_unit_is_per_instance() -> None:
    """The template keeps each instance apart: its own config, credentials, state directory and user."""
    unit = parse_unit((UNITS / "shardsync@.service").read_text())
    assert only(unit, "Service", "ExecStart").endswith("-c /etc/shardsync/%i.toml")
    assert all("/%i/" in value for value in values(unit, "Service", "LoadCredential"))
    assert "%i" in only(unit, "Service", "StateDirectory")
    assert "%i" in only(unit, "Service", "User")
