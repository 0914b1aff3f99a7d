"""The shipped units under a real systemd (252), run inside the container that .ci/systemd-nspawn boots.

Not a pytest module (pytest collects test_*.py only): it needs to be PID 1's
guest. It installs shardsync from the wheels built from the checkout into
/opt/shardsync/venv with Debian's /usr/bin/python3 (pyenv's python lives under
/root, which ProtectHome hides), installs both units, starts the simulator as
the fake Tradovate (the container has loopback only) and runs the checks in
order. Each prints one PASS or FAIL line; the exit status is 1 if any failed.
Every wait polls against a deadline. Standard library only.

    /usr/bin/python3 nspawn_checks.py --checkout /checkout --wheels /wheels [--break type-simple]

``--break NAME`` installs a deliberately broken copy of the units (see BREAKAGES)
to show that the checks catch it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

VENV = Path("/opt/shardsync/venv")
SHARDSYNC = VENV / "bin" / "shardsync"
ETC = Path("/etc/shardsync")
CREDENTIALS = ETC / "credentials"
UNIT = "shardsync.service"
SIM_UNIT = "shardsync-sim.service"
INSTANCE = "ci"
DIVISOR = 4
# the simulator's demo login (shardsync simulate --help)
LOGIN = {"username": "demo", "password": "demo-password", "secret": "demo-secret"}
# syslog priority of each level the daemon logs at
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
DYNAMIC_UIDS = range(61184, 65520)  # systemd's DynamicUser= range
STOP_TIMEOUT = 30.0  # the units' TimeoutStopSec=
RESTART_SEC = 5.0  # the units' RestartSec=

# name -> (what it breaks, pattern, replacement) applied to both unit files
BREAKAGES: dict[str, tuple[str, str, str]] = {
    "type-simple": ("Type=simple: systemd no longer waits for READY=1", r"(?m)^Type=notify$", "Type=simple"),
    "reload-unchecked": ("ExecReload without check-config: a bad file no longer fails reload",
                         r"(?m)^ExecReload=\S+ check-config .*\n", ""),
    "restart-243": ("243 restarted again", r"(?m)^(RestartPreventExitStatus=77 78) 243$", r"\1"),
}


# --------------------------------------------------------------------------
# small helpers around systemctl and journalctl


class CheckFailed(Exception):
    """A check's expectation did not hold."""


def run(*argv: str, timeout: float = 60.0, check: bool = True, input: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; its stdout and stderr as text. A non-zero exit fails the check when *check*."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, input=input, env=env)
    if check and result.returncode != 0:
        raise CheckFailed(f"{' '.join(argv)} exited {result.returncode}: {(result.stderr or result.stdout).strip()}")
    return result


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def wait_until(what: str, probe: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll *probe* until it returns something truthy; that value. CheckFailed naming *what* at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def show(unit: str, *props: str) -> dict[str, str]:
    """``systemctl show`` properties of *unit*."""
    out = run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def main_pid(unit: str = UNIT) -> int:
    return int(show(unit, "MainPID")["MainPID"])


def cursor() -> str:
    """The journal's current end, to read only what comes after."""
    out = run("journalctl", "-n", "1", "-o", "json", "--no-pager").stdout.strip().splitlines()
    return str(json.loads(out[-1])["__CURSOR"]) if out else ""


def journal(after: str, *args: str) -> list[dict[str, Any]]:
    """Journal entries after *after* (a cursor) matching *args*, as dicts."""
    argv = ["journalctl", "-o", "json", "--no-pager", *args]
    if after:
        argv.append(f"--after-cursor={after}")
    lines = run(*argv).stdout.splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def message(entry: dict[str, Any]) -> str:
    value = entry.get("MESSAGE", "")
    if isinstance(value, list):  # journald gives non-UTF-8 messages as byte arrays
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def record(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The daemon's JSON record in a journal entry, or None if the message is not a JSON object."""
    try:
        value = json.loads(message(entry))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def daemon_lines(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the service's own processes wrote to stdout/stderr (not systemd's lines about them)."""
    return [e for e in entries if e.get("_TRANSPORT") == "stdout"]


def events(entries: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for e in daemon_lines(entries) if (r := record(e)) is not None and r.get("event") == name]


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def shardsync_processes() -> list[tuple[int, str]]:
    """Every process that is the daemon or one of its workers (not the simulator)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if cmdline.startswith("shardsync: shard") or re.search(r"shardsync run\b", cmdline):
            found.append((int(proc.name), cmdline))
    return found


def uid_of(pid: int) -> int:
    """The real uid of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise CheckFailed(f"no Uid line for pid {pid}")


def live(unit: str = UNIT, divisor: int = DIVISOR) -> bool:
    props = show(unit, "ActiveState", "StatusText")
    return props["ActiveState"] == "active" and props["StatusText"].startswith(f"{divisor}/{divisor} live")


def ensure_live(unit: str = UNIT, divisor: int = DIVISOR) -> None:
    """The unit running with every shard live, whatever an earlier check left behind."""
    if show(unit, "ActiveState")["ActiveState"] != "active":
        run("systemctl", "reset-failed", unit, check=False)
        run("systemctl", "start", unit, timeout=120)
    wait_until(f"{unit} with {divisor}/{divisor} live", lambda: live(unit, divisor), timeout=60)


def stop(unit: str) -> None:
    run("systemctl", "stop", unit, timeout=STOP_TIMEOUT + 30, check=False)
    run("systemctl", "reset-failed", unit, check=False)


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def config_text(port: int, *, divisor: int = DIVISOR, listen: str = "127.0.0.1:9464", extra: str = "") -> str:
    return (
        "[tradovate]\n"
        f'rest_url = "http://127.0.0.1:{port}/v1"\n'
        f'ws_url = "ws://127.0.0.1:{port}/v1/websocket"\n'
        'app_id = "shardsync-ci"\n'
        "cid = 1\n"
        f"{extra}"
        "[sync]\n"
        f"divisor = {divisor}\n"
        "[sink]\n"
        'kind = "sqlite"\n'
        'path = "./state"\n'
        "[log]\n"
        'format = "json"\n'
        "[status]\n"
        f'listen = "{listen}"\n'
    )


# --------------------------------------------------------------------------
# the checks, in the order they run

CHECKS: list[tuple[str, Callable[[Context], str]]] = []


def check(func: Callable[[Context], str]) -> Callable[[Context], str]:
    CHECKS.append((func.__name__, func))
    return func


class Context:
    """What the checks share: the simulator's port and the config the unit runs with."""

    def __init__(self, checkout: Path, port: int) -> None:
        self.checkout = checkout
        self.port = port
        self.config = ETC / "shardsync.toml"
        self.good = config_text(port)

    @contextlib.contextmanager
    def config_replaced(self, text: str) -> Iterator[None]:
        write(self.config, text)
        try:
            yield
        finally:
            write(self.config, self.good)


@check
def start_waits_for_ready(ctx: Context) -> str:
    """`systemctl start` stays activating (main pid running) until READY=1, then shows the daemon's STATUS line."""
    stop(UNIT)
    mark = cursor()
    starter = subprocess.Popen(["systemctl", "start", UNIT], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    began = time.monotonic()
    activating: list[float] = []  # times at which the unit was activating with the daemon running
    while starter.poll() is None:
        props = show(UNIT, "ActiveState", "MainPID")
        if props["ActiveState"] == "activating" and int(props["MainPID"]) > 0:
            activating.append(time.monotonic() - began)
        if time.monotonic() - began > 120:
            starter.kill()
            raise CheckFailed("systemctl start did not return within 120 s")
        time.sleep(0.05)
    output = starter.communicate()[0]
    expect(starter.returncode == 0, f"systemctl start exited {starter.returncode}: {output.strip()}")
    returned = time.monotonic() - began
    props = show(UNIT, "ActiveState", "SubState", "StatusText", "Type")
    expect(props["ActiveState"] == "active", f"not active after start: {props}")
    expect(props["StatusText"].startswith(f"{DIVISOR}/{DIVISOR} live"),
           f"start returned with STATUS {props['StatusText']!r}, not all shards live: READY=1 was not awaited")
    # the snapshot is split with delays (simulator switches), so a unit that waits is activating for > 1 s
    expect(len(activating) >= 5 and activating[-1] - activating[0] >= 1.0,
           f"never seen activating with the daemon running (Type={props['Type']}): start returned after "
           f"{returned:.2f} s, activating samples {len(activating)}")
    ready = events(journal(mark, "-u", UNIT), "ready")
    expect(len(ready) == 1, f"expected one 'ready' record, got {len(ready)}")
    status = run("systemctl", "status", UNIT, "--no-pager", check=False).stdout
    expect(f'Status: "{DIVISOR}/{DIVISOR} live' in status, f"systemctl status shows no STATUS line:\n{status}")
    return f"activating {activating[-1] - activating[0]:.1f} s until READY=1; Status: \"{props['StatusText']}\""


@check
def dynamic_user_and_state_directory(ctx: Context) -> str:
    """DynamicUser= runs the daemon under a transient uid that owns the sink files in StateDirectory= (0600)."""
    ensure_live()
    pid = main_pid()
    uid = uid_of(pid)
    expect(uid in DYNAMIC_UIDS, f"main process uid {uid} is not a dynamic one")
    link = Path("/var/lib/shardsync")
    expect(link.is_symlink() and os.readlink(link) == "private/shardsync", f"{link} is not DynamicUser's symlink")
    files = sorted(Path("/var/lib/private/shardsync/state").glob("shard-*-of-004.sqlite3"))
    expect([f.name for f in files] == [f"shard-{r:03d}-of-004.sqlite3" for r in range(DIVISOR)],
           f"sink files: {[f.name for f in files]}")
    rows = 0
    for f in files:
        info = f.stat()
        expect(info.st_uid == uid and info.st_mode & 0o777 == 0o600, f"{f}: uid {info.st_uid} mode {info.st_mode:o}")
        with sqlite3.connect(f"file:{f}?mode=ro", uri=True) as db:
            rows += db.execute("SELECT count(*) FROM entities").fetchone()[0]
    expect(rows > 0, "the sink files hold no entities")
    return f"uid {uid} owns {len(files)} sqlite files (0600), {rows} entities"


@check
def credentials_from_load_credential(ctx: Context) -> str:
    """LoadCredential= hands the login to the daemon; the secrets appear in no log, argv or environment."""
    ensure_live()
    directory = Path(f"/run/credentials/{UNIT}")
    expect(sorted(p.name for p in directory.iterdir()) == ["password", "secret", "username"],
           f"{directory}: {sorted(p.name for p in directory.iterdir())}")
    pids = [main_pid(), *children(main_pid())]
    expect(len(pids) == DIVISOR + 1, f"expected the parent and {DIVISOR} workers, got {pids}")
    for pid in pids:
        for part in ("cmdline", "environ"):
            data = Path(f"/proc/{pid}/{part}").read_bytes()
            for name in ("password", "secret"):
                expect(LOGIN[name].encode() not in data, f"the {name} is in /proc/{pid}/{part}")
    logged = run("journalctl", "-o", "json", "--no-pager").stdout
    for name in ("password", "secret"):
        expect(LOGIN[name] not in logged, f"the {name} is in the journal")
    return f"3 credentials in {directory}; no secret in the journal or in /proc of {len(pids)} processes"


@check
def journal_fields_and_priorities(ctx: Context) -> str:
    """Every daemon line is a JSON record filed with its level's PRIORITY; `journalctl -p warning` shows warnings."""
    ensure_live()
    mark = cursor()
    victim = children(main_pid())[0]
    os.kill(victim, signal.SIGKILL)  # the parent logs shard_exited at warning, then restarts the shard

    # (journalctl 252 finds nothing for -u with -p after a cursor: the priority is filtered here first)
    def warned() -> list[dict[str, Any]]:
        return [e for e in journal(mark, "-u", UNIT)
                if (r := record(e)) is not None and r.get("event") == "shard_exited"]

    (entry, *_) = wait_until("the shard_exited record", warned, timeout=20)
    expect(entry["PRIORITY"] == "4", f"shard_exited filed at PRIORITY {entry['PRIORITY']}")
    wait_until("the killed shard live again", live, timeout=60)
    # everything this run of the unit wrote (no reload has run a check-config yet)
    lines = daemon_lines(journal("", f"_SYSTEMD_INVOCATION_ID={show(UNIT, 'InvocationID')['InvocationID']}"))
    not_json = [message(e) for e in lines if record(e) is None]
    expect(not not_json, f"non-JSON daemon lines: {not_json[:3]}")
    wrong = [(e["PRIORITY"], r["level"], r["event"]) for e in lines if (r := record(e)) is not None
             and str(PRIORITY.get(r.get("level", ""), "?")) != e.get("PRIORITY")]
    expect(not wrong, f"lines whose PRIORITY does not match their level: {wrong[:5]}")
    # each line is filed under the process that wrote it, parent or worker
    misfiled = [(e.get("_PID"), r.get("pid")) for e in lines if (r := record(e)) is not None
                and str(r.get("pid")) != e.get("_PID")]
    expect(not misfiled, f"lines whose _PID is not the writer's pid: {misfiled[:5]}")
    fields = {"_SYSTEMD_UNIT": UNIT, "SYSLOG_IDENTIFIER": "shardsync", "_TRANSPORT": "stdout"}
    for key, value in fields.items():
        expect(entry.get(key) == value, f"{key}={entry.get(key)!r}, expected {value!r}")
    shown = [json.loads(line) for line in
             run("journalctl", "-u", UNIT, "-p", "warning", "-o", "json", "--no-pager").stdout.splitlines()]
    expect(entry["__CURSOR"] in {e["__CURSOR"] for e in shown}, "journalctl -p warning does not show shard_exited")
    levels = {r["level"] for e in shown if (r := record(e)) is not None}
    expect(levels <= {"warning", "error", "critical"}, f"journalctl -p warning shows levels {levels}")
    writers = len({e.get("_PID") for e in lines})
    return (f"{len(lines)} daemon lines from {writers} processes, all JSON with matching PRIORITY and _PID; "
            f"-p warning shows {sorted(levels)}")


@check
def reload_keeps_pid_and_notifies(ctx: Context) -> str:
    """`systemctl reload` checks the file, sends SIGHUP; the daemon answers RELOADING=1 then READY=1, same pid."""
    ensure_live()
    run("systemctl", "log-level", "debug")  # systemd then logs every notification it receives
    try:
        pid, workers = main_pid(), sorted(children(main_pid()))
        mark = cursor()
        write(ctx.config, config_text(ctx.port, extra="renew_before = 901.0\n"))  # touches no shard
        ctx.good = ctx.config.read_text()
        run("systemctl", "reload", UNIT, timeout=60)
        done_at_return = bool(events(journal(mark, "-u", UNIT), "reloaded"))

        def notified() -> list[str] | None:
            notes = [m for e in journal(mark, "-u", UNIT) if (m := message(e)).startswith(
                f"{UNIT}: Got notification message from PID {pid} (")]
            first = next((i for i, m in enumerate(notes) if "RELOADING=1" in m), None)
            if first is None or not any("READY=1" in m for m in notes[first:]):
                return None
            return notes

        wait_until("RELOADING=1 then READY=1 from the main pid", notified, timeout=30)
        wait_until("the 'reloaded' record", lambda: events(journal(mark, "-u", UNIT), "reloaded"), timeout=30)
        wait_until("active again", lambda: show(UNIT, "ActiveState")["ActiveState"] == "active", timeout=30)
        expect(main_pid() == pid, f"main pid changed {pid} -> {main_pid()}")
        expect(sorted(children(pid)) == workers, "a parent-only change restarted workers")
    finally:
        run("systemctl", "log-level", "info")
    semantics = "after" if done_at_return else "before"
    return f"pid {pid} kept, RELOADING=1 -> READY=1 seen; systemctl reload returned {semantics} the daemon's reload"


@check
def reload_with_invalid_file_fails(ctx: Context) -> str:
    """An invalid file fails `systemctl reload` (ExecReload's check-config, its reason at priority err), no SIGHUP."""
    ensure_live()
    pid = main_pid()
    mark = cursor()
    with ctx.config_replaced(ctx.good.replace(f"divisor = {DIVISOR}", "divisor = 0")):
        result = run("systemctl", "reload", UNIT, timeout=60, check=False)
        expect(result.returncode != 0, "systemctl reload succeeded with an invalid file")
    entries = journal(mark, "-u", UNIT)
    reasons = [e for e in daemon_lines(entries) if "sync.divisor" in message(e)]
    expect(bool(reasons) and all(e["PRIORITY"] == "3" for e in reasons),
           f"check-config's reason at priorities {[e['PRIORITY'] for e in reasons]}")
    expect(not events(entries, "reloaded") and not events(entries, "reload_rejected"),
           "the daemon got SIGHUP although the file was invalid")
    props = show(UNIT, "ActiveState", "MainPID")
    expect(props["ActiveState"] == "active" and int(props["MainPID"]) == pid, f"service disturbed: {props}")
    return f"systemctl reload exited {result.returncode}; still active, pid {pid}; reason: {message(reasons[0])[:90]}"


@check
def sighup_with_invalid_file_keeps_running(ctx: Context) -> str:
    """A bare SIGHUP with an invalid file: the daemon logs reload_rejected at priority err and keeps running."""
    ensure_live()
    pid = main_pid()
    mark = cursor()
    with ctx.config_replaced(ctx.good.replace(f"divisor = {DIVISOR}", "divisor = 0")):
        os.kill(pid, signal.SIGHUP)
        rejected = wait_until(
            "reload_rejected", lambda: [e for e in daemon_lines(journal(mark, "-u", UNIT))
                                        if (r := record(e)) is not None and r.get("event") == "reload_rejected"],
            timeout=30)
    expect(all(e["PRIORITY"] == "3" for e in rejected), "reload_rejected not at PRIORITY 3")
    wait_until("active with every shard live", live, timeout=30)
    expect(main_pid() == pid, "the main pid changed")
    return f"reload_rejected at PRIORITY 3, pid {pid} kept, {DIVISOR}/{DIVISOR} live"


def _install_md_recipes(checkout: Path) -> list[str]:
    """The `journalctl ... | jq` command lines INSTALL.md gives operators."""
    text = (checkout / "deploy" / "INSTALL.md").read_text()
    return [line.split("#", 1)[0].strip() for line in text.splitlines()
            if line.startswith("journalctl ") and "| jq" in line and " -f" not in line]


@check
def install_md_jq_recipe(ctx: Context) -> str:
    """INSTALL.md's `journalctl ... | jq` recipes run on the real journal (systemd's and check-config's lines too)."""
    ensure_live()
    recipes = _install_md_recipes(ctx.checkout)
    expect(bool(recipes), "INSTALL.md has no journalctl | jq recipe")
    for recipe in recipes:
        result = run("bash", "-o", "pipefail", "-c", recipe, timeout=60, check=False)
        expect(result.returncode == 0, f"{recipe!r} exited {result.returncode}: {result.stderr.strip()[-300:]}")
        outputs = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        expect(bool(outputs), f"{recipe!r} printed nothing")
        expect(all(isinstance(o, dict) and "event" in o for o in outputs), f"{recipe!r} printed non-records")
    return f"{len(recipes)} recipe(s) work: {recipes[0]}"


@check
def watchdog_kills_a_stopped_daemon(ctx: Context) -> str:
    """SIGSTOP of the main pid: the watchdog (shortened to 2 s by a /run drop-in) kills it, systemd restarts it."""
    dropin = Path(f"/run/systemd/system/{UNIT}.d/50-watchdog.conf")
    write(dropin, "[Service]\nWatchdogSec=2s\nLimitCORE=0\n")
    try:
        run("systemctl", "daemon-reload")
        run("systemctl", "restart", UNIT, timeout=120)
        wait_until("live under the short watchdog", live, timeout=60)
        expect(show(UNIT, "WatchdogUSec")["WatchdogUSec"] == "2s", "the drop-in did not apply")
        before = int(show(UNIT, "NRestarts")["NRestarts"])
        pid = main_pid()
        mark = cursor()
        stopped = time.monotonic()
        os.kill(pid, signal.SIGSTOP)

        def replaced() -> bool:
            props = show(UNIT, "MainPID", "ActiveState")
            return props["ActiveState"] == "active" and int(props["MainPID"]) not in (0, pid)

        wait_until("a new main pid", replaced, timeout=2 + RESTART_SEC + 60)
        took = time.monotonic() - stopped
        texts = [message(e) for e in journal(mark, "-u", UNIT)]
        expect(any("Failed with result 'watchdog'" in t for t in texts), "no watchdog failure in the journal")
        expect(int(show(UNIT, "NRestarts")["NRestarts"]) == before + 1, "NRestarts did not go up by one")
        expect(not Path(f"/proc/{pid}").exists(), f"the stopped pid {pid} is still there")
        wait_until("the replacement live", live, timeout=60)
    finally:
        dropin.unlink(missing_ok=True)
        run("systemctl", "daemon-reload")
    return f"pid {pid} killed by the watchdog and replaced in {took:.1f} s (RestartSec={RESTART_SEC:.0f}s included)"


@check
def stop_is_clean_and_complete(ctx: Context) -> str:
    """`systemctl stop` ends the daemon with exit 0 well within TimeoutStopSec, leaving no process behind."""
    ensure_live()
    pid = main_pid()
    pids = [pid, *children(pid)]
    mark = cursor()
    began = time.monotonic()
    run("systemctl", "stop", UNIT, timeout=STOP_TIMEOUT + 30)
    took = time.monotonic() - began
    props = show(UNIT, "ActiveState", "Result")
    expect(props["ActiveState"] == "inactive" and props["Result"] == "success", f"after stop: {props}")
    expect(took < STOP_TIMEOUT, f"stop took {took:.1f} s, TimeoutStopSec is {STOP_TIMEOUT:.0f} s")
    # systemd resets ExecMainStatus on a manual stop; the daemon says how it ended, and only SIGKILL
    # after the timeout (Result=timeout) or a non-zero exit (exit-code) would change the Result
    entries = journal(mark, "-u", UNIT)
    stopped = events(entries, "supervisor_stopped")
    expect([r.get("exit_code") for r in stopped] == [0], f"supervisor_stopped records: {stopped}")
    expect(any(message(e) == f"{UNIT}: Deactivated successfully." for e in entries), "no 'Deactivated successfully'")
    left = [p for p in pids if Path(f"/proc/{p}").exists()] + [p for p, _ in shardsync_processes()]
    expect(not left, f"processes left after stop: {left}")
    return f"exit 0 after {took:.1f} s (TimeoutStopSec={STOP_TIMEOUT:.0f}s), {len(pids)} processes gone"


def _fails_without_restart(expected_status: int) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Start the unit expecting it to fail with *expected_status* and stay failed; its props and journal."""
    stop(UNIT)
    mark = cursor()
    result = run("systemctl", "start", UNIT, timeout=120, check=False)
    expect(result.returncode != 0, "systemctl start succeeded")

    def settled() -> dict[str, str] | None:
        props = show(UNIT, "ActiveState", "SubState", "ExecMainStatus", "ExecMainPID", "NRestarts")
        return props if props["SubState"] in ("failed", "auto-restart") else None

    props = wait_until("the unit failed or scheduled for restart", settled, timeout=30)
    expect(props["ExecMainStatus"] == str(expected_status),
           f"exit status {props['ExecMainStatus']}, not {expected_status}")
    expect(props["SubState"] == "failed" and props["NRestarts"] == "0",
           f"exit {expected_status} is being restarted: SubState={props['SubState']} NRestarts={props['NRestarts']}")
    return props, journal(mark, "-u", UNIT)


def _single_error_record(entries: list[dict[str, Any]], pid: str, event: str) -> dict[str, Any]:
    mine = [e for e in daemon_lines(entries) if e.get("_PID") == pid]
    expect(len(mine) == 1, f"expected exactly one line from pid {pid}, got {[message(e) for e in mine]}")
    rec = record(mine[0])
    expect(rec is not None and rec.get("event") == event, f"not a JSON {event} record: {message(mine[0])}")
    expect(mine[0]["PRIORITY"] == "3", f"{event} at PRIORITY {mine[0]['PRIORITY']}")
    assert rec is not None
    return rec


@check
def exit_78_not_restarted(ctx: Context) -> str:
    """An invalid file at start: exit 78, one JSON error record (PRIORITY 3), the unit stays failed (no restart)."""
    with ctx.config_replaced(ctx.good.replace("[sync]\n", "[sync]\ndivsor = 2\n")):
        props, entries = _fails_without_restart(78)
    rec = _single_error_record(entries, props["ExecMainPID"], "config_invalid")
    expect("sync.divsor" in rec.get("error", ""), f"the record does not name the key: {rec}")
    run("systemctl", "reset-failed", UNIT)
    return f"exit 78, SubState=failed, NRestarts=0, one record: {rec['error']}"


@check
def exit_77_not_restarted(ctx: Context) -> str:
    """An empty credential file: exit 77, one JSON error record (PRIORITY 3), the unit stays failed."""
    secret = CREDENTIALS / "secret"
    write(secret, "", 0o600)
    try:
        props, entries = _fails_without_restart(77)
    finally:
        write(secret, LOGIN["secret"], 0o600)
    rec = _single_error_record(entries, props["ExecMainPID"], "credentials_unusable")
    run("systemctl", "reset-failed", UNIT)
    return f"exit 77, SubState=failed, NRestarts=0, one record: {rec['error']}"


@check
def exit_243_not_restarted(ctx: Context) -> str:
    """A missing LoadCredential= file: status 243/CREDENTIALS and no restart (RestartPreventExitStatus)."""
    secret = CREDENTIALS / "secret"
    secret.unlink()
    try:
        _props, entries = _fails_without_restart(243)
    finally:
        write(secret, LOGIN["secret"], 0o600)
    texts = [message(e) for e in entries]
    expect(any("status=243/CREDENTIALS" in t for t in texts), "no 243/CREDENTIALS in the journal")
    run("systemctl", "reset-failed", UNIT)
    return "status=243/CREDENTIALS, SubState=failed, NRestarts=0"


@check
def template_instance_runs_beside_the_main_unit(ctx: Context) -> str:
    """shardsync@ci.service runs from /etc/shardsync/ci.toml with its own credentials, user and state directory."""
    instance = f"shardsync@{INSTANCE}.service"
    write(ETC / f"{INSTANCE}.toml", config_text(ctx.port, divisor=2, listen="127.0.0.1:9465"))
    for name, value in LOGIN.items():
        write(CREDENTIALS / INSTANCE / name, value, 0o600)
    try:
        ensure_live()
        run("systemctl", "start", instance, timeout=120)
        wait_until(f"{instance} 2/2 live", lambda: live(instance, 2), timeout=60)
        props = show(instance, "User", "StatusText", "SyslogIdentifier")
        expect(props["User"] == f"shardsync-{INSTANCE}", f"User={props['User']}")
        uids = {unit: uid_of(main_pid(unit)) for unit in (UNIT, instance)}
        expect(len(set(uids.values())) == 2, f"both units run as uid {uids}")
        files = sorted(p.name for p in Path(f"/var/lib/private/shardsync-{INSTANCE}/state").glob("*.sqlite3"))
        expect(files == ["shard-000-of-002.sqlite3", "shard-001-of-002.sqlite3"], f"instance sink files: {files}")
        logged = journal("", "-u", instance)
        expect(bool(events(logged, "ready")), "no 'ready' record in the instance's journal")
        expect(all(e.get("SYSLOG_IDENTIFIER") == f"shardsync-{INSTANCE}" for e in daemon_lines(logged)),
               "instance lines not under SyslogIdentifier=shardsync-ci")
        run("systemctl", "stop", instance, timeout=STOP_TIMEOUT + 30)
    finally:
        stop(instance)
    return f"{instance}: {props['StatusText']!r}, user {props['User']}, uids {sorted(uids.values())}, {files}"


@check
def security_exposure_online(ctx: Context) -> str:
    """`systemd-analyze security` on the loaded units rates both at exposure 2.0 or less."""
    scores = []
    for unit in (UNIT, f"shardsync@{INSTANCE}.service"):
        out = run("systemd-analyze", "security", unit, "--no-pager", check=False).stdout
        match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
        expect(match is not None, f"no exposure for {unit}: {out[-300:]}")
        assert match is not None
        scores.append(float(match.group(1)))
        expect(scores[-1] <= 2.0, f"{unit}: exposure {scores[-1]}")
    return f"exposure {scores[0]} and {scores[1]}"


# --------------------------------------------------------------------------
# setup and driver


def install(checkout: Path, wheels: Path, breakage: str | None) -> None:
    """The venv from the checkout's wheels with /usr/bin/python3, and both units (maybe broken) in /etc."""
    if not SHARDSYNC.exists():
        run("/usr/bin/python3", "-m", "venv", str(VENV), timeout=120)
        # no pip configuration of the host applies in here: only the wheels built from the checkout
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PIP_CONFIG_FILE": os.devnull}
        run(str(VENV / "bin" / "pip"), "install", "--quiet", "--no-index", "--no-cache-dir", "--find-links",
            str(wheels), "shardsync", timeout=300, env=env)
    for name in ("shardsync.service", "shardsync@.service"):
        text = (checkout / "systemd" / name).read_text()
        if breakage:
            _why, pattern, replacement = BREAKAGES[breakage]
            text, count = re.subn(pattern, replacement, text)
            if count == 0:
                raise CheckFailed(f"--break {breakage} changed nothing in {name}")
        write(Path("/etc/systemd/system") / name, text)
    run("systemctl", "daemon-reload")


def start_simulator() -> int:
    """The simulator as a transient unit; the port it announces. Snapshots arrive in delayed parts (~1.5 s)."""
    run("systemctl", "stop", SIM_UNIT, check=False)
    run("systemctl", "reset-failed", SIM_UNIT, check=False)
    announcement = Path("/run/shardsync-sim.json")
    announcement.unlink(missing_ok=True)
    run("systemd-run", "--quiet", f"--unit={SIM_UNIT}", "--property=Type=exec",
        f"--property=StandardOutput=file:{announcement}", str(SHARDSYNC), "simulate",
        "--port", "0", "--accounts", "40", "--event-rate", "20", "--snapshot-mode", "split", "--split-chunks", "3",
        "--split-delay", "0.75", "--split-end", "flag")

    def announced() -> int | None:
        try:
            line = announcement.read_text().splitlines()[0]
        except (OSError, IndexError):
            return None
        return int(json.loads(line)["port"])

    port: int = wait_until("the simulator's port", announced, timeout=30)
    return port


def write_config_and_credentials(ctx: Context) -> None:
    write(ctx.config, ctx.good)
    CREDENTIALS.mkdir(parents=True, exist_ok=True)
    CREDENTIALS.chmod(0o700)
    for name, value in LOGIN.items():
        write(CREDENTIALS / name, value, 0o600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, required=True)
    parser.add_argument("--wheels", type=Path, required=True)
    parser.add_argument("--break", dest="breakage", choices=sorted(BREAKAGES), default=None,
                        help="install a deliberately broken copy of the units")
    args = parser.parse_args(argv)
    began = time.monotonic()
    try:
        install(args.checkout, args.wheels, args.breakage)
        ctx = Context(args.checkout, start_simulator())
        write_config_and_credentials(ctx)
    except (CheckFailed, OSError, subprocess.TimeoutExpired) as exc:
        print(f"FAIL setup: {exc}", flush=True)
        return 1
    if args.breakage:
        print(f"note: units broken on purpose ({args.breakage}: {BREAKAGES[args.breakage][0]})", flush=True)
    print(f"note: {run('systemctl', '--version').stdout.splitlines()[0]}; simulator on 127.0.0.1:{ctx.port}",
          flush=True)
    failed = 0
    for name, func in CHECKS:
        started = time.monotonic()
        try:
            detail = func(ctx)
        except CheckFailed as exc:
            failed += 1
            print(f"FAIL {name}: {exc}", flush=True)
        except Exception as exc:  # a crash in a check is a failure of that check, not of the run
            failed += 1
            print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc(file=sys.stdout)
        else:
            print(f"PASS {name} ({time.monotonic() - started:.1f} s): {detail}", flush=True)
    stop(UNIT)
    print(f"{len(CHECKS) - failed}/{len(CHECKS)} checks passed in {time.monotonic() - began:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
