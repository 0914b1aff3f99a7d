"""The `shardsync` command line: exit codes and output of check-config and run on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]


def shardsync(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shardsync", *args], capture_output=True, text=True, check=False,
                          timeout=60)


def test_check_config_valid_prints_masked_settings() -> None:
    """check-config on the shipped example exits 0 and prints the effective settings as JSON."""
    result = shardsync("check-config", "-c", str(ROOT / "config" / "shardsync.toml"))
    assert result.returncode == 0, result.stderr
    shown = orjson.loads(result.stdout)
    assert shown["sync"]["remainders"] == [0]
    assert shown["tradovate"]["ws_url"].startswith("wss://")


def test_check_config_masks_the_dsn_password(tmp_path: Path) -> None:
    """A postgres DSN's password never reaches check-config's output."""
    config = tmp_path / "c.toml"
    config.write_text('[tradovate]\napp_id = "a"\ncid = 1\n[sink]\nkind = "postgres"\n'
                      'dsn = "postgresql://sync:hunter2secret@db/shardsync"\n')
    result = shardsync("check-config", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "hunter2secret" not in result.stdout + result.stderr


def test_check_config_invalid_exits_78_naming_file_and_keys(tmp_path: Path) -> None:
    """Every problem of a broken file is reported at once, each naming the file and dotted key, exit 78."""
    config = tmp_path / "broken.toml"
    config.write_text('[tradovate]\ncid = 1\n[sync]\ndivisor = 4\nremainders = [5]\ndivsor = 2\n')
    result = shardsync("check-config", "-c", str(config))
    assert result.returncode == 78
    assert f"{config}: tradovate.app_id" in result.stderr
    assert f"{config}: sync.remainders" in result.stderr
    assert f"{config}: sync.divsor" in result.stderr


def test_run_with_broken_config_exits_78_before_starting(tmp_path: Path) -> None:
    """`run` refuses an invalid file with exit 78 (systemd's RestartPreventExitStatus) and starts nothing."""
    config = tmp_path / "broken.toml"
    config.write_text("[tradovate\n")
    result = shardsync("run", "-c", str(config))
    assert result.returncode == 78
    assert "line 1" in result.stderr
