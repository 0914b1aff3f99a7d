"""The README's consumer code is the tested example verbatim, and its recipes answer correctly (sqlite via
`shardsync query`, PostgreSQL as printed)."""

from __future__ import annotations

import inspect
import re
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from shardsync import cli
from shardsync.change import Change
from shardsync.sinks import Freshness, SinkState, open_sink
from shardsync.sinks.base import iso_utc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "examples"))
import pg_consumer  # noqa: E402

README = (ROOT / "README.md").read_text()


def block_after(marker: str) -> str:
    match = re.search(re.escape(marker) + r"\n```\w*\n(.*?)```", README, re.S)
    assert match, marker
    return match.group(1)


def populate(kind: str, **where: str) -> None:
    """Account 7 on shard 3 of 4: a position, a cash balance, a working and a filled order, a fill; a change two
    minutes old and two now; shard 3 live, shard 1 resyncing."""
    now, old = iso_utc(time.time()), iso_utc(time.time() - 120)
    changes = [
        Change("live", "position", "Created", 31, {"id": 31, "accountId": 7, "netPos": 2}, old, 7),
        Change("live", "cashBalance", "Created", 41, {"id": 41, "accountId": 7, "amount": 50000.5}, now, 7),
        Change("live", "order", "Created", 51, {"id": 51, "accountId": 7, "ordStatus": "Working"}, now, 7),
        Change("live", "order", "Created", 52, {"id": 52, "accountId": 7, "ordStatus": "Filled"}, old, 7),
        Change("live", "position", "Created", 32, {"id": 32, "accountId": 11, "netPos": 1}, now, 11),
    ]
    with open_sink(kind, remainder=3, divisor=4, **where) as sink:
        sink.write(changes, Freshness(3, 4, "modAccountId", SinkState.LIVE, now, now, now, "s3"))
    with open_sink(kind, remainder=1, divisor=4, **where) as sink:
        sink.write([Change("live", "order", "Created", 53, {"id": 53, "accountId": 5, "ordStatus": "Working"},
                           now, 5)], Freshness(1, 4, "modAccountId", SinkState.RESYNCING, None, now, now, "s1"))


def test_readme_quotes_the_tested_consumer() -> None:
    """The PostgreSQL consumer in the README is deploy/examples/pg_consumer.py's function, character for character."""
    assert inspect.getsource(pg_consumer.follow_changes) in README


def test_sqlite_recipes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each `shardsync query` recipe returns the rows a risk desk expects from the populated state."""
    populate("sqlite", path=str(tmp_path))
    recipes = re.findall(r'^shardsync query "(.*)"$', block_after("<!-- recipes: sqlite -->"), re.M)
    answers = []
    for sql in recipes:
        assert cli.main(["query", sql, "--path", str(tmp_path), "--json"]) == 0
        answers.append([orjson.loads(line) for line in capsys.readouterr().out.splitlines()])
    positions, cash, open_orders, recent, current = answers
    assert [(r["shard"], r["id"]) for r in positions] == [(3, 31)]
    assert [r["amount"] for r in cash] == [50000.5]
    assert sorted((r["shard"], r["id"]) for r in open_orders) == [(1, 53), (3, 51)]
    assert [(r["entity_type"], r["id"]) for r in recent] == [("cashBalance", 41), ("order", 51)]
    assert [(r["shard"], r["state"]) for r in current] == [(1, "resyncing"), (3, "live")]
    assert all(0 <= r["age_s"] < 60 for r in current)


def test_postgres_recipes(pg_dsn: str) -> None:
    """Each SQL recipe runs as printed against the PostgreSQL sink and returns the expected rows."""
    populate("postgres", dsn=pg_dsn)
    statements = [s.strip() for s in block_after("<!-- recipes: postgres -->").split(";") if s.strip()]
    answers: list[list[tuple[Any, ...]]] = []
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for statement in statements:
            sql = "\n".join(line for line in statement.splitlines() if not line.startswith("--"))
            answers.append(conn.execute(sql).fetchall())  # type: ignore[call-overload]
    positions, cash, open_orders, recent, current = answers
    assert [r[0] for r in positions] == [31]
    assert [float(r[0]) for r in cash] == [50000.5]
    assert sorted(r[0] for r in open_orders) == [51, 53]
    assert [(r[3], r[5]) for r in recent] == [("cashBalance", 41), ("order", 51)]
    assert [(r[0], r[1]) for r in current] == [(1, "resyncing")]
