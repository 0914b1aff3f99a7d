"""What every bench records beside its figures: the machine, its load, the code; and where results go.

A figure without the machine and the revision it came from cannot be compared
with the next one, so each bench writes ``bench/results/<bench>-<UTC time>.json``
holding :func:`info` and its own payload.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> str:
    """The checked-out commit, with ``+dirty`` when the tree has uncommitted changes."""
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def info() -> dict[str, Any]:
    """Machine facts at this moment: CPU model, cores, load average, Python, git revision."""
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_revision": git_revision(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def header(machine: dict[str, Any]) -> str:
    """One line for the top of a printed table."""
    load = ", ".join(f"{x:.2f}" for x in machine["load_average"])
    return (f"{machine['cpu_model']}, {machine['cores']} cores, load {load}, Python {machine['python']}, "
            f"rev {machine['git_revision']}")


def save(bench: str, machine: dict[str, Any], payload: dict[str, Any], label: str = "") -> Path:
    """Write ``{"bench", "machine", ...payload}`` to ``bench/results/<bench>[-label]-<time>.json``; the file."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = RESULTS / f"{bench}{'-' + label if label else ''}-{stamp}.json"
    path.write_bytes(orjson.dumps({"bench": bench, "machine": machine, **payload},
                                  option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    return path


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.99 = p99) of ``values``; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]
