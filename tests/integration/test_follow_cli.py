"""`shardsync follow` as a process: streaming, SIGTERM with the cursor saved, restart, refusals, NOTIFY wake-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from polling import wait_until
from shardsync.change import Change
from shardsync.sinks import open_sink

AT = "2024-05-01T12:00:00.000Z"


def change(ident: int) -> Change:
    return Change("live", "position", "Updated", ident, {"id": ident, "accountId": 7}, AT, 7)


class FollowProcess:
    def __init__(self, tmp: Path, *args: str, name: str = "out") -> None:
        self.out_path, self.err_path = tmp / f"{name}.jsonl", tmp / f"{name}.err"
        self._out, self._err = open(self.out_path, "wb"), open(self.err_path, "wb")  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self.proc = subprocess.Popen([sys.executable, "-m", "shardsync", "follow", *args],
                                     stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL, env=env)

    def lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.out_path.read_bytes().splitlines()]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(15)
        self._out.close()
        self._err.close()
        return code


@pytest.fixture
def processes() -> Iterator[list[FollowProcess]]:
    started: list[FollowProcess] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(5)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shardsync", "follow", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_once_prints_what_is_committed_and_exits(tmp_path: Path) -> None:
    """--once --from-start writes every committed change of every shard and exits 0; the kind is detected."""
    for r in range(3):
        with open_sink("sqlite", path=str(tmp_path), remainder=r, divisor=3) as sink:
            sink.write([change(r * 10 + n) for n in range(r + 1)])
    done = run("--path", str(tmp_path), "--from-start", "--once")
    assert done.returncode == 0, done.stderr
    lines = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert [(line["shard"], line["seq"], line["id"]) for line in lines] == [
        (0, 1, 0), (1, 1, 10), (1, 2, 11), (2, 1, 20), (2, 2, 21), (2, 3, 22)
    ]


def test_sigterm_saves_the_cursor_and_a_restart_continues(tmp_path: Path, processes: list[FollowProcess]) -> None:
    """A streaming follow stopped by SIGTERM exits 0 with its cursor at the last line; the next run goes on."""
    state, cursor = tmp_path / "state", tmp_path / "cursor.json"
    sink = open_sink("jsonl", path=str(state), remainder=0, divisor=1)
    sink.write([change(1)])
    first = FollowProcess(tmp_path, "--path", str(state), "--cursor", str(cursor), "--from-start",
                          "--interval", "0.05", name="first")
    processes.append(first)
    wait_until(lambda: len(first.lines()) == 1, 20, "first line")
    sink.write([change(2), change(3)])
    wait_until(lambda: len(first.lines()) == 3, 20, "three lines")
    assert first.stop() == 0
    assert orjson.loads(cursor.read_bytes())["positions"] == [{"divisor": 1, "remainder": 0, "seq": 3}]
    sink.write([change(4)])
    second = FollowProcess(tmp_path, "--path", str(state), "--cursor", str(cursor), "--interval", "0.05",
                           name="second")
    processes.append(second)
    wait_until(lambda: len(second.lines()) == 1, 20, "the line written while stopped")
    sink.write([change(5)])
    wait_until(lambda: len(second.lines()) == 2, 20, "a new line")
    assert second.stop() == 0
    sink.close()
    assert [line["seq"] for line in first.lines() + second.lines()] == [1, 2, 3, 4, 5]


def test_refusals(tmp_path: Path) -> None:
    """A DSN with a password on the command line is refused (78) without echoing it; no shard files is 1."""
    refused = run("--dsn", "host=/nowhere dbname=x password=hunter2", "--once")
    assert refused.returncode == 78
    assert "hunter2" not in refused.stderr + refused.stdout
    assert "PGPASSWORD" in refused.stderr
    empty = run("--path", str(tmp_path), "--once")
    assert empty.returncode == 1
    assert "--kind" in empty.stderr


def test_postgres_follow_wakes_on_notify(pg_dsn: str, tmp_path: Path, processes: list[FollowProcess]) -> None:
    """With 60 s between polls and status looks, a committed batch still reaches follow at once: NOTIFY woke it."""
    sink = open_sink("postgres", dsn=pg_dsn, remainder=1, divisor=2)
    follow = FollowProcess(tmp_path, "--dsn", pg_dsn, "--interval", "60", "--status-interval", "60",
                           "--from-start")
    processes.append(follow)
    wait_until(lambda: follow.err_path.read_bytes().count(b"unknown") >= 1, 20, "follow connected")
    sink.write([change(1)])
    wait_until(lambda: len(follow.lines()) == 1, 10, "the line, well before the 60 s poll")
    sink.write([change(2), change(3)])
    wait_until(lambda: len(follow.lines()) == 3, 10, "more lines")
    assert follow.stop() == 0
    sink.close()
    lines = follow.lines()
    assert [(line["shard"], line["divisor"], line["seq"]) for line in lines] == [(1, 2, 1), (1, 2, 2), (1, 2, 3)]
    assert lines[0]["receivedAt"] == AT
    assert lines[0]["entity"] == {"id": 1, "accountId": 7}
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (3,)
