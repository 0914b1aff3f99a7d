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


def test_run_help_describes_exit_codes_reload_credentials_and_host_slots() -> None:
    """`run --help` lists every exit code, what SIGHUP does, the three credential sources in their order and
    the host-slot flags."""
    result = shardsync("run", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for code, meaning in (("0", "clean stop"), ("1", "unexpected error"), ("3", "global breaker"),
                          ("77", "credentials"), ("78", "invalid configuration")):
        assert f" {code} {meaning}" in text, code
    assert "SIGHUP re-read FILE: an invalid file is refused" in text
    sources = ["$CREDENTIALS_DIRECTORY/{username,password,secret}", "SHARDSYNC_USERNAME, SHARDSYNC_PASSWORD",
               "[credentials] file"]
    positions = [text.index(source) for source in sources]
    assert positions == sorted(positions)
    assert "--host-index I" in text and "--host-count N" in text


def test_run_host_flags_go_together_and_are_checked(tmp_path: Path) -> None:
    """--host-index without --host-count (or the reverse) and a malformed index are usage errors (exit 2); a slot
    that does not fit the file's divisor is exit 78 naming the flag."""
    config = tmp_path / "c.toml"
    config.write_text('[tradovate]\napp_id = "a"\ncid = 1\n[sync]\ndivisor = 4\n')
    alone = shardsync("run", "-c", str(config), "--host-index", "1")
    assert alone.returncode == 2 and "--host-index and --host-count go together" in alone.stderr
    reverse = shardsync("run", "-c", str(config), "--host-count", "2")
    assert reverse.returncode == 2 and "go together" in reverse.stderr
    bad = shardsync("run", "-c", str(config), "--host-index", "-1", "--host-count", "2")
    assert bad.returncode == 2 and "neither an index" in bad.stderr
    zero = shardsync("run", "-c", str(config), "--host-index", "0", "--host-count", "0")
    assert zero.returncode == 2 and "not a number of hosts" in zero.stderr
    too_many = shardsync("run", "-c", str(config), "--host-index", "0", "--host-count", "5")
    assert too_many.returncode == 78
    assert f"{config}: --host-count 5 > sync.divisor 4" in too_many.stderr
