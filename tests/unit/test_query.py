"""shardsync query: one read-only SELECT over every sqlite shard file (16 here, beyond SQLite's ATTACH limit)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from shardsync import cli
from shardsync.change import Change
from shardsync.query import QueryError, query_shards
from shardsync.sinks import open_sink, retire

AT = "2024-05-01T12:00:00.000Z"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """16 shard files; shard r holds account r with a position, and account 100+r with none."""
    for r in range(16):
        with open_sink("sqlite", path=str(tmp_path), remainder=r, divisor=16) as sink:
            sink.write([
                Change("live", "account", "Created", r, {"id": r, "name": f"a{r}"}, AT, r),
                Change("live", "position", "Created", 1000 + r, {"id": 1000 + r, "accountId": r, "netPos": r}, AT, r),
                Change("live", "account", "Created", 100 + r, {"id": 100 + r}, AT, 100 + r),
            ])
    return tmp_path


def test_rows_of_every_shard_file_merged_with_shard_and_divisor(state: Path) -> None:
    """All 16 files answer (no ATTACH limit); each row is prefixed with its shard and divisor, in shard order."""
    columns, rows = query_shards(str(state), "SELECT id, json_extract(data, '$.netPos') AS net FROM entities "
                                             "WHERE entity_type = 'position' ORDER BY id")
    assert columns == ["shard", "divisor", "id", "net"]
    assert rows == [(r, 16, 1000 + r, r) for r in range(16)]


def test_parameters_and_per_shard_aggregates(state: Path) -> None:
    """Aggregates apply per shard (one count per file), and parameters are bound, not formatted."""
    _, rows = query_shards(str(state), "SELECT count(*) FROM entities WHERE account_id = ?", [5])
    assert [row for row in rows if row[2]] == [(5, 16, 2)]
    assert len(rows) == 16


def test_files_are_opened_read_only(state: Path) -> None:
    """A statement that writes fails on the first file and changes nothing."""
    with pytest.raises(QueryError, match=r"shard-000-of-016\.sqlite3"):
        query_shards(str(state), "DELETE FROM entities RETURNING id")
    db = sqlite3.connect(state / "shard-000-of-016.sqlite3")
    assert db.execute("SELECT count(*) FROM entities").fetchone() == (3,)
    db.close()


def test_retired_files_and_other_files_are_not_queried(state: Path) -> None:
    """Files under retired/ and names that are not shard files are left out."""
    retire("sqlite", path=str(state), remainder=3, divisor=16)
    (state / "notes.sqlite3").write_bytes(b"")
    _, rows = query_shards(str(state), "SELECT count(*) FROM entities")
    assert [r[0] for r in rows] == [r for r in range(16) if r != 3]


def test_cli_table_and_json(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command prints an aligned table, or one JSON object per row with --json; errors exit 1."""
    sql = "SELECT id, data FROM entities WHERE entity_type = 'position' AND account_id IN (2, 11)"
    assert cli.main(["query", sql, "--path", str(state)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["shard", "divisor", "id", "data"]
    assert table[1].split()[:3] == ["2", "16", "1002"]
    assert len(table) == 3
    assert cli.main(["query", sql, "--path", str(state), "--json"]) == 0
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[1] == {"shard": 11, "divisor": 16, "id": 1011, "data": '{"id":1011,"accountId":11,"netPos":11}'}
    assert cli.main(["query", "SELECT nope FROM entities", "--path", str(state)]) == 1
    assert "no such column: nope" in capsys.readouterr().err
    assert cli.main(["query", "SELECT 1", "--path", str(state / "empty")]) == 1
    assert "no shard files" in capsys.readouterr().err


def test_duplicate_column_names_keep_every_value_in_json(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SELECT a.id, b.id gives id and id_2 in JSON rather than one overwriting the other."""
    sql = ("SELECT a.id, b.id FROM entities a JOIN entities b ON b.account_id = a.id "
           "WHERE a.entity_type = 'account' AND b.entity_type = 'position' AND a.id = 0")
    assert cli.main(["query", sql, "--path", str(state), "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out.splitlines()[0]) == {"shard": 0, "divisor": 16, "id": 0,
                                                                     "id_2": 1000}
