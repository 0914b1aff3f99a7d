"""`shardsync demo` end to end: simulator plus a real 4-shard daemon, stopped cleanly."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from harness import alive, wait_until


def test_demo_runs_four_live_shards_and_stops_cleanly(tmp_path: Path) -> None:
    """The demo brings 4 shards live, fills one SQLite file per shard and exits 0 on SIGINT."""
    state = tmp_path / "demo-state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardsync", "demo", "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
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
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, (seen + rest)[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    files = sorted(state.glob("shard-*-of-004.sqlite3"))
    assert [f.name for f in files] == [f"shard-{r:03d}-of-004.sqlite3" for r in range(4)]
    for file in files:
        with sqlite3.connect(file) as conn:
            assert conn.execute("SELECT count(*) FROM entities").fetchone()[0] > 0
    assert (state / "credentials.toml").stat().st_mode & 0o077 == 0
    pids = [int(p) for p in (state / "daemon.log").read_text().split('"worker_pid":')[1:] for p in [p.split(",")[0]]]
    wait_until(lambda: not any(alive(pid) for pid in pids), 5, "every worker gone")
