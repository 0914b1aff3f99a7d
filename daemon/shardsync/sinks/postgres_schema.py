"""The PostgreSQL tables shared by every shard, and their in-place upgrade (``schema_version``).

Version 1 is what shardsync created before ``schema_version`` existed:
``entities``/``events`` keyed by ``shard`` alone, TEXT times, ``json`` data,
and one global ``events.seq`` (a BIGSERIAL that shards take values from
concurrently and commit out of order: **not a cursor**).  Version 2:

* ``divisor`` in every key, so two divisors' rows can live side by side
  while shards move between them (live resharding); upgraded rows get the
  divisor of the daemon that upgrades (the one they were written under,
  unless the divisor is changed in the same restart as the upgrade);
* ``events.shard_seq``: 1, 2, ... per ``(divisor, shard)``, taken from the
  shard's row in ``shard_seqs`` inside the batch's transaction, under the
  shard's writer lock; ``(divisor, shard, shard_seq)`` is the gap-free cursor
  in commit order (upgraded rows are numbered in their old ``seq`` order,
  which was commit order within one shard);
* ``received_at``/``updated_at`` ``timestamptz``, ``data`` ``jsonb``;
* ``events.account_id`` with an index for per-account time windows;
* ``shard_status`` keyed by ``(divisor, remainder)``.

New and upgraded databases have the same columns in the same order.  The
whole upgrade is one transaction under the schema lock.
"""

from __future__ import annotations

from typing import Any

import psycopg

from shardsync.sinks.attribution import backfill_statements
from shardsync.sinks.base import SinkError

CURRENT = 2

_SHARED: tuple[str, ...] = (
    "CREATE UNIQUE INDEX events_cursor ON events (divisor, shard, shard_seq)",
    "CREATE INDEX events_shard_received_at ON events (divisor, shard, received_at)",
    "CREATE INDEX events_account_received_at ON events (account_id, received_at)",
    """CREATE TABLE shard_seqs (
        divisor INTEGER NOT NULL,
        shard INTEGER NOT NULL,
        last_seq BIGINT NOT NULL,
        PRIMARY KEY (divisor, shard)
    )""",
    """CREATE TABLE shard_status (
        remainder INTEGER NOT NULL,
        divisor INTEGER NOT NULL,
        expression TEXT NOT NULL,
        state TEXT NOT NULL,
        snapshot_at TIMESTAMPTZ,
        last_event_at TIMESTAMPTZ,
        last_commit_at TIMESTAMPTZ,
        session TEXT NOT NULL,
        PRIMARY KEY (divisor, remainder)
    )""",
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
)

CREATE: tuple[str, ...] = (
    """CREATE TABLE entities (
        shard INTEGER NOT NULL,
        entity_type TEXT NOT NULL,
        id BIGINT NOT NULL,
        account_id BIGINT,
        data JSONB,
        updated_at TIMESTAMPTZ,
        divisor INTEGER NOT NULL,
        PRIMARY KEY (divisor, shard, entity_type, id)
    )""",
    """CREATE TABLE events (
        seq BIGSERIAL PRIMARY KEY,
        shard INTEGER NOT NULL,
        received_at TIMESTAMPTZ,
        origin TEXT,
        entity_type TEXT,
        event_type TEXT,
        id BIGINT,
        data JSONB,
        divisor INTEGER NOT NULL,
        shard_seq BIGINT NOT NULL,
        account_id BIGINT
    )""",
    "CREATE INDEX entities_account_id ON entities (account_id)",
    *_SHARED,
)


def upgrades(divisor: int) -> dict[int, tuple[str, ...]]:
    """Statements taking the schema from version N to N+1; old rows get ``divisor``."""
    d = int(divisor)  # an int from the config, formatted into DDL (which takes no parameters)
    return {
        1: (
            f"ALTER TABLE entities ADD COLUMN divisor INTEGER NOT NULL DEFAULT {d}",
            "ALTER TABLE entities ALTER COLUMN divisor DROP DEFAULT",
            "ALTER TABLE entities DROP CONSTRAINT entities_pkey",
            "ALTER TABLE entities ADD PRIMARY KEY (divisor, shard, entity_type, id)",
            "ALTER TABLE entities ALTER COLUMN data TYPE jsonb USING data::jsonb, "
            "ALTER COLUMN updated_at TYPE timestamptz USING updated_at::timestamptz",
            f"ALTER TABLE events ADD COLUMN divisor INTEGER NOT NULL DEFAULT {d}, ADD COLUMN shard_seq BIGINT, "
            "ADD COLUMN account_id BIGINT",
            "ALTER TABLE events ALTER COLUMN divisor DROP DEFAULT",
            "UPDATE events AS e SET shard_seq = n.rn FROM (SELECT seq, row_number() OVER "
            "(PARTITION BY divisor, shard ORDER BY seq) AS rn FROM events) AS n WHERE e.seq = n.seq",
            "ALTER TABLE events ALTER COLUMN shard_seq SET NOT NULL, "
            "ALTER COLUMN received_at TYPE timestamptz USING received_at::timestamptz, "
            "ALTER COLUMN data TYPE jsonb USING data::jsonb",
            "DROP INDEX IF EXISTS events_shard_received_at",
            *_SHARED,
            "INSERT INTO shard_seqs (divisor, shard, last_seq) "
            "SELECT divisor, shard, max(shard_seq) FROM events GROUP BY divisor, shard",
            *backfill_statements("(entities.data->>'{}')::bigint",
                                 " AND p.divisor = entities.divisor AND p.shard = entities.shard"),
        ),
    }


def version_of(conn: psycopg.Connection[Any]) -> int:
    """The schema version in the connection's search path: 0 when empty, 1 for tables without ``schema_version``."""
    row = conn.execute("SELECT to_regclass('schema_version'), to_regclass('entities')").fetchone()
    assert row is not None
    if row[0] is not None:
        found = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(found[0]) if found and found[0] is not None else 0
    return 1 if row[1] is not None else 0


def prepare(conn: psycopg.Connection[Any], divisor: int, where: str) -> int:
    """Create or upgrade the schema; the caller is inside a transaction holding the schema lock."""
    found = version_of(conn)
    if found > CURRENT:
        raise SinkError(f"postgres sink: {where}: schema version {found} is newer than this shardsync ({CURRENT})")
    if found == CURRENT:
        return found
    steps = upgrades(divisor)
    statements = CREATE if found == 0 else tuple(s for v in range(found, CURRENT) for s in steps[v])
    for statement in statements:
        conn.execute(statement)  # constants, and one validated int
    conn.execute("DELETE FROM schema_version")
    conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (CURRENT,))
    return found
