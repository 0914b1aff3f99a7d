"""``shardsync query SQL``: one read-only query over every sqlite shard file of a state directory, merged.

Each file is opened on its own (``mode=ro``, ``query_only``), so there is no
ATTACH limit and no writer is ever blocked for long.  Rows come out shard by
shard (divisor, then remainder), each prefixed with ``shard`` and
``divisor``; ``ORDER BY``, ``LIMIT`` and aggregates apply within each shard
(sum the per-shard counts yourself).  Output is an aligned table, or with
``--json`` one JSON object per row.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any, TextIO
from urllib.request import pathname2url

import orjson

from shardsync.exitcodes import EX_ERROR, EX_OK
from shardsync.sinks.base import shard_files

__all__ = ["QueryError", "add_arguments", "main", "query_shards", "render_table"]


class QueryError(Exception):
    """The query failed on a shard file (the message names it), or there is nothing to query."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sql", metavar="SQL", help="one SELECT statement, run against every shard file")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--path", metavar="DIR", help="the sqlite state directory (default ./state)")
    where.add_argument("-c", "--config", metavar="FILE", help="the state directory of this config's [sink]")
    parser.add_argument("--json", action="store_true", help="one JSON object per row instead of a table")


def query_shards(path: str, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Columns (``shard``, ``divisor``, then the query's) and every shard's rows, in shard order."""
    files = shard_files(path, "sqlite3")
    if not files:
        raise QueryError(f"no shard files (shard-RRR-of-DDD.sqlite3) in {path}")
    columns: list[str] | None = None
    rows: list[tuple[Any, ...]] = []
    for (remainder, divisor), file in sorted(files.items(), key=lambda item: (item[0][1], item[0][0])):
        try:
            conn = sqlite3.connect(f"file:{pathname2url(file)}?mode=ro", uri=True, timeout=5)
        except sqlite3.Error as exc:
            raise QueryError(f"{file}: {exc}") from exc
        try:
            conn.execute("PRAGMA query_only = ON")
            cursor = conn.execute(sql, tuple(params))
            if cursor.description is None:
                raise QueryError("not a query: the statement returns no rows (shard files are opened read-only)")
            names = [d[0] for d in cursor.description]
            if columns is None:
                columns = ["shard", "divisor", *names]
            elif columns[2:] != names:
                raise QueryError(f"{file}: columns {names} differ from the other shards' {columns[2:]}")
            rows += [(remainder, divisor, *row) for row in cursor.fetchall()]
        except sqlite3.Error as exc:
            raise QueryError(f"{file}: {exc}") from exc
        finally:
            conn.close()
    assert columns is not None
    return columns, rows


def render_table(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(name)] + [len(row[i]) for row in cells]) for i, name in enumerate(columns)]
    lines = ["  ".join(name.ljust(w) for name, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _json_rows(columns: list[str], rows: list[tuple[Any, ...]], out: TextIO) -> None:
    # Unique keys: "SELECT a.id, b.id" must not lose a column.
    keys: list[str] = []
    for name in columns:
        key, n = name, 1
        while key in keys:
            n += 1
            key = f"{name}_{n}"
        keys.append(key)
    for row in rows:
        values = [v.hex() if isinstance(v, bytes) else v for v in row]
        out.write(orjson.dumps(dict(zip(keys, values, strict=True))).decode() + "\n")


def main(args: argparse.Namespace, *, path: str) -> int:
    try:
        columns, rows = query_shards(path, args.sql)
    except QueryError as exc:
        print(f"shardsync query: {exc}", file=sys.stderr)
        return EX_ERROR
    if args.json:
        _json_rows(columns, rows, sys.stdout)
    else:
        sys.stdout.write(render_table(columns, rows))
    return EX_OK
