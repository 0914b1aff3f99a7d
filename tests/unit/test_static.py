"""The repository's own contracts: lint, types, and the README/CI test command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_ruff_clean() -> None:
    """ruff finds nothing in daemon/, tests/ and bench/."""
    result = subprocess.run(
        [str(BIN / "ruff"), "check", "daemon", "tests", "bench"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_clean() -> None:
    """mypy --strict (configured in setup.cfg) finds nothing in daemon/."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "setup.cfg", "daemon/shardsync"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_readme_test_command() -> None:
    """`.ci/run` runs the README's test command verbatim, so CI tests what newcomers run."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.DOTALL)
    assert len(blocks) >= 2, "README must open with the demo and the test command"
    test_command = blocks[1].strip()
    assert "pytest" in test_command
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines
    assert "shardsync demo" in blocks[0]
