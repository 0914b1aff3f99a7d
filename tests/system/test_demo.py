"""`shardsync demo` end to end: simulator plus a real 4-shard daemon, stopped cleanly."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
from harness import alive, children, wait_until

from shardsync.demo import start_simulator
from shardsync.simulator.options import SimOptions

URL = re.compile(rb"^status: http://127\.0\.0\.1:(\d+)/status ", re.MULTILINE)
NEXT = re.compile(r"^next: (.+)$", re.MULTILINE)
DEMO_TOML = Path(__file__).resolve().parents[2] / "config" / "demo.toml"


def demo_until_live(state: Path, cwd: Path | None = None) -> tuple[bytes, str]:
    """Run the demo until its table shows 4/4 live, fetch the status URL it printed (asserting it is this run's
    daemon, a child of the demo), then SIGINT it; returns the output up to live and the rest, after exit 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardsync", "demo", "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        seen = b""
        while b"4/4 live" not in seen:
            assert time.monotonic() < deadline, seen[-2000:]
            line = proc.stdout.readline()
            assert line, f"demo ended early: {seen[-2000:]!r}"
            seen += line
        ports = set(URL.findall(seen))
        assert len(ports) == 1, seen[-2000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{int(ports.pop())}/status", timeout=5) as response:
            assert orjson.loads(response.read())["pid"] in children(proc.pid)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, (seen + rest)[-2000:]
        return seen, rest.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_runs_four_live_shards_and_stops_cleanly(tmp_path: Path) -> None:
    """The demo brings 4 shards live, fills one SQLite file per shard and exits 0 on SIGINT."""
    state = tmp_path / "demo-state"
    demo_until_live(state)
    files = sorted(state.glob("shard-*-of-004.sqlite3"))
    assert [f.name for f in files] == [f"shard-{r:03d}-of-004.sqlite3" for r in range(4)]
    for file in files:
        with sqlite3.connect(file) as conn:
            assert conn.execute("SELECT count(*) FROM entities").fetchone()[0] > 0
    assert (state / "credentials.toml").stat().st_mode & 0o077 == 0
    pids = [int(p) for p in (state / "daemon.log").read_text().split('"worker_pid":')[1:] for p in [p.split(",")[0]]]
    wait_until(lambda: not any(alive(pid) for pid in pids), 5, "every worker gone")


def test_a_second_run_in_the_same_directory_reads_its_own_status_port(tmp_path: Path) -> None:
    """Run twice into one state directory (the log is appended to), the second run shows its own daemon's live
    table and URL, never "status unavailable" from the first run's dead port."""
    state = tmp_path / "demo-state"
    demo_until_live(state)
    seen, _ = demo_until_live(state)
    assert b"status unavailable" not in seen
    assert len(re.findall(rb'"event":"status_listening"', (state / "daemon.log").read_bytes())) == 2


def test_the_printed_next_step_works(tmp_path: Path) -> None:
    """The "next:" line printed at the end is a command that reads shard 0's file, run from where the demo ran
    (here with a relative --state-dir), and it answers with the entity counts."""
    _, rest = demo_until_live(Path("demo-state"), cwd=tmp_path)
    (command,) = NEXT.findall(rest)
    argv = shlex.split(command)
    assert argv[:2] == ["sqlite3", "demo-state/shard-000-of-004.sqlite3"]
    with sqlite3.connect(tmp_path / argv[1]) as conn:
        counts = dict(conn.execute(argv[2]).fetchall())
    assert counts.get("account", 0) > 0
    if shutil.which("sqlite3"):
        shown = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=30, check=True).stdout
        assert f"account|{counts['account']}" in shown.splitlines()


def test_config_demo_toml_works_as_its_comments_say(tmp_path: Path) -> None:
    """config/demo.toml names the port its `shardsync simulate --port N` line gives and the simulator's default
    credentials; run that way (the port and status listener moved to free ones), its 4 shards go live."""
    text = DEMO_TOML.read_text()
    (port,) = re.findall(r"(?m)^#\s+shardsync simulate --port (\d+)$", text)
    assert re.findall(r'(?m)^(?:rest|ws)_url = "\w+://127\.0\.0\.1:(\d+)/', text) == [port, port]
    (assignments,) = re.findall(r"(?m)^#\s+(SHARDSYNC_USERNAME=.*?)\s*\\$", text)
    env = dict(item.split("=", 1) for item in assignments.split())
    defaults = SimOptions()
    assert env == {"SHARDSYNC_USERNAME": defaults.username, "SHARDSYNC_PASSWORD": defaults.password,
                   "SHARDSYNC_SECRET": defaults.secret}
    for value in env.values():
        assert f'"{value}"' in text  # named in the prose too

    sim, free = start_simulator(event_rate=0)
    try:
        copy = tmp_path / "demo.toml"
        moved = text.replace(f"127.0.0.1:{port}/", f"127.0.0.1:{free}/")
        assert moved.count(f":{free}/") == 2
        copy.write_text(moved.replace('listen = "127.0.0.1:9464"', 'listen = "127.0.0.1:0"'))
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("SHARDSYNC_", "NOTIFY_", "WATCHDOG_"))}
        with open(tmp_path / "daemon.log", "wb") as log:
            daemon = subprocess.Popen([sys.executable, "-m", "shardsync", "run", "-c", str(copy)], cwd=tmp_path,
                                      env={**environ, **env}, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        try:
            def listening() -> int | None:
                assert daemon.poll() is None, (tmp_path / "daemon.log").read_bytes()[-2000:]
                for raw in (tmp_path / "daemon.log").read_bytes().splitlines():
                    if b'"status_listening"' in raw:
                        return int(orjson.loads(raw)["port"])
                return None

            url = f"http://127.0.0.1:{wait_until(listening, 15, 'the status port')}/status"

            def live() -> bool:
                with urllib.request.urlopen(url, timeout=5) as response:
                    shards = orjson.loads(response.read())["shards"]
                return len(shards) == 4 and all(s["state"] == "live" for s in shards)

            wait_until(live, 30, "4 shards live")
            assert sorted(p.name for p in (tmp_path / "demo-state").glob("*.sqlite3")) == [
                f"shard-{r:03d}-of-004.sqlite3" for r in range(4)]
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(20) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    finally:
        sim.terminate()
        sim.wait(10)
