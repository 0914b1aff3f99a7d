"""The `shardsync` command line: exit codes and output of check-config and run on bad input."""

from __future__ import annotations

import os
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


def host_config(directory: Path, name: str, remainders: str, divisor: int = 16, extra: str = "") -> Path:
    """A valid config for one host of a sharded deployment."""
    path = directory / name
    path.write_text(f'[tradovate]\napp_id = "a"\ncid = 1\n[sync]\ndivisor = {divisor}\n'
                    f'remainders = "{remainders}"\n{extra}')
    return path


def test_check_config_quiet_prints_nothing_when_valid() -> None:
    """`check-config --quiet` (ExecReload) exits 0 silently on a valid file."""
    result = shardsync("check-config", "--quiet", "-c", str(ROOT / "config" / "shardsync.toml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""


def test_check_config_quiet_still_reports_errors(tmp_path: Path) -> None:
    """`check-config -q` on a broken file still names file and key on stderr and exits 78."""
    config = tmp_path / "broken.toml"
    config.write_text('[tradovate]\ncid = 1\n')
    result = shardsync("check-config", "-q", "-c", str(config))
    assert result.returncode == 78
    assert f"{config}: tradovate.app_id" in result.stderr and result.stdout == ""


def test_check_config_several_hosts_partition(tmp_path: Path) -> None:
    """Two hosts' files that split 0..15 pass: exit 0 and each file's remainders shown."""
    a = host_config(tmp_path, "a.toml", "0-7")
    b = host_config(tmp_path, "b.toml", "8-15")
    result = shardsync("check-config", "-c", str(a), "-c", str(b))
    assert result.returncode == 0, result.stderr
    assert f"{a}: remainders 0-7" in result.stdout and f"{b}: remainders 8-15" in result.stdout
    assert "ok: 2 files partition 0-15" in result.stdout
    quiet = shardsync("check-config", "-q", "-c", str(a), "-c", str(b))
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


def test_check_config_several_hosts_names_gaps_and_overlaps(tmp_path: Path) -> None:
    """Overlapping and missing remainders across files are each named, compressed, and the exit is 78."""
    a = host_config(tmp_path, "a.toml", "0-4,8-9")
    b = host_config(tmp_path, "b.toml", "8-11,13-15")
    result = shardsync("check-config", "-c", str(a), "-c", str(b))
    assert result.returncode == 78
    assert f"overlap: 8-9 (in {a}, {b})" in result.stderr
    assert "gap: 5-7, 12 (in no file; divisor 16)" in result.stderr
    assert result.stdout == ""


def test_check_config_several_hosts_must_share_divisor_and_expression(tmp_path: Path) -> None:
    """Files disagreeing on divisor or expression fail with 78, naming each file's value."""
    a = host_config(tmp_path, "a.toml", "0-3", divisor=8)
    b = host_config(tmp_path, "b.toml", "4-7", divisor=8, extra='expression = "modUserId"\n')
    c = host_config(tmp_path, "c.toml", "0-7", divisor=16)
    result = shardsync("check-config", "-c", str(a), "-c", str(b))
    assert result.returncode == 78
    assert f"sync.expression differs: {a}: modAccountId; {b}: modUserId" in result.stderr
    result = shardsync("check-config", "-c", str(a), "-c", str(c))
    assert result.returncode == 78
    assert f"sync.divisor differs: {a}: 8; {c}: 16" in result.stderr


def test_check_config_several_hosts_reports_every_invalid_file(tmp_path: Path) -> None:
    """With several files, each broken file's problems are printed and the exit is 78."""
    a = tmp_path / "a.toml"
    a.write_text("[tradovate\n")
    b = tmp_path / "b.toml"
    b.write_text("[tradovate]\ncid = 1\n")
    good = host_config(tmp_path, "good.toml", "all")
    result = shardsync("check-config", "-c", str(a), "-c", str(good), "-c", str(b))
    assert result.returncode == 78
    assert f"{a}: line 1" in result.stderr and f"{b}: tradovate.app_id" in result.stderr


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line]


def test_run_json_config_error_is_one_json_record_per_problem(tmp_path: Path) -> None:
    """`run` refusing a file that asks for JSON logs writes only JSON: one error record per problem, nothing twice."""
    config = tmp_path / "broken.toml"
    config.write_text('[tradovate]\ncid = 1\n[sync]\ndivsor = 2\n[log]\nformat = "json"\n')
    result = shardsync("run", "-c", str(config))
    assert result.returncode == 78
    records = [orjson.loads(line) for line in stderr_lines(result)]  # every line is JSON
    assert [r["event"] for r in records] == ["config_invalid", "config_invalid"]
    assert all(r["level"] == "error" for r in records)
    assert [r["error"] for r in records] == [
        f"{config}: tradovate.app_id: required", f"{config}: sync.divsor: unknown key",
    ]
    assert sum("sync.divsor" in line for line in stderr_lines(result)) == 1


def test_run_unparsable_config_off_a_tty_is_json(tmp_path: Path) -> None:
    """A file that is not even TOML cannot name its format: off a terminal (journald) the error is JSON anyway."""
    config = tmp_path / "broken.toml"
    config.write_text("[tradovate\n")
    result = shardsync("run", "-c", str(config))
    assert result.returncode == 78
    (record,) = [orjson.loads(line) for line in stderr_lines(result)]
    assert record["event"] == "config_invalid" and "line 1" in record["error"]


def test_run_console_config_error_stays_plain_text(tmp_path: Path) -> None:
    """With format = "console" the refusal is the readable plain text, printed once."""
    config = tmp_path / "broken.toml"
    config.write_text('[tradovate]\ncid = 1\n[log]\nformat = "console"\n')
    result = shardsync("run", "-c", str(config))
    assert result.returncode == 78
    assert stderr_lines(result) == ["shardsync: invalid configuration", f"{config}: tradovate.app_id: required"]


def test_run_credentials_error_is_one_json_record(tmp_path: Path) -> None:
    """No credentials anywhere with JSON logs: exit 77 and exactly one JSON line, which names the sources."""
    config = tmp_path / "c.toml"
    config.write_text('[tradovate]\napp_id = "a"\ncid = 1\n[log]\nformat = "json"\n[status]\nlisten = ""\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDSYNC_") and k != "CREDENTIALS_DIRECTORY"}
    result = subprocess.run([sys.executable, "-m", "shardsync", "run", "-c", str(config)], capture_output=True,
                            text=True, check=False, timeout=60, env=env, cwd=tmp_path)
    assert result.returncode == 77
    (line,) = stderr_lines(result)
    record = orjson.loads(line)
    assert record["event"] == "credentials_unusable" and record["level"] == "error"
    assert "CREDENTIALS_DIRECTORY" in record["error"]


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


def test_check_config_warns_about_placeholders_and_names_the_credential_source(tmp_path: Path) -> None:
    """check-config on the shipped file warns about its placeholders and says where credentials would come from."""
    env = {**os.environ, "SHARDSYNC_USERNAME": "u", "SHARDSYNC_PASSWORD": "pw-12345", "SHARDSYNC_SECRET": "sec-12345"}
    shipped = str(ROOT / "config" / "shardsync.toml")
    result = subprocess.run([sys.executable, "-m", "shardsync", "check-config", "-c", shipped],
                            capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert "tradovate.app_id is still the shipped placeholder 'my-vendor-sync'" in result.stderr
    assert "tradovate.cid is still the shipped placeholder 1234" in result.stderr
    assert "credentials: from the environment variables SHARDSYNC_USERNAME" in result.stderr
    assert "pw-12345" not in result.stderr + result.stdout
    bare = {k: v for k, v in os.environ.items() if not k.startswith(("SHARDSYNC_", "CREDENTIALS_DIRECTORY"))}
    config = tmp_path / "mine.toml"
    config.write_text('[tradovate]\napp_id = "acme-sync"\ncid = 77\n')
    mine = subprocess.run([sys.executable, "-m", "shardsync", "check-config", "-c", str(config)],
                          capture_output=True, text=True, env=bare, check=False)
    assert mine.returncode == 0 and "placeholder" not in mine.stderr
    assert "credentials are not usable here (run would exit 77): no credentials found" in mine.stderr


def test_the_placeholders_are_the_shipped_values() -> None:
    """The placeholder list check-config warns about is what config/shardsync.toml really ships."""
    import tomllib

    from shardsync.config.models import PLACEHOLDERS

    shipped = tomllib.loads((ROOT / "config" / "shardsync.toml").read_text())
    assert {key: shipped[section][key[1]] for key in PLACEHOLDERS for section in [key[0]]} == PLACEHOLDERS


def test_check_config_resharding_accepts_hosts_midway_through_a_split(tmp_path: Path) -> None:
    """`check-config --resharding`: one host already at 8 (its aligned share), the other still at 4: exit 0;
    without the flag the divisors must agree (78)."""
    a = host_config(tmp_path, "a.toml", "0,1,4,5", divisor=8)
    b = host_config(tmp_path, "b.toml", "2,3", divisor=4)
    result = shardsync("check-config", "--resharding", "-c", str(a), "-c", str(b))
    assert result.returncode == 0, result.stderr
    assert "ok: 2 files of divisors 4, 8 cover every account once (a resharding in progress)" in result.stdout
    assert shardsync("check-config", "-c", str(a), "-c", str(b)).returncode == 78
