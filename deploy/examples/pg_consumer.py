"""A PostgreSQL consumer of shardsync's change log: LISTEN, then read every shard after its own cursor.

The cursor is ``(divisor, shard) -> shard_seq``: each shard numbers its events
1, 2, ... in commit order with no gaps.  Never use the global ``events.seq``
as a cursor: shards commit its values out of order, so ``seq > last`` skips
rows that commit late.  Keep ``positions`` where you keep the effects of
``handle`` (same transaction if you can) and you have exactly once.

    positions = load_positions()
    follow_changes(dsn, positions, handle)   # handle(divisor, shard, row); row as in READ below
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

HEADS = "SELECT divisor, shard, last_seq FROM shard_seqs"
READ = (
    "SELECT shard_seq, origin, entity_type, event_type, id, account_id, received_at, data FROM events "
    "WHERE divisor = %s AND shard = %s AND shard_seq > %s ORDER BY shard_seq LIMIT 1000"
)


def follow_changes(
    dsn: str,
    positions: dict[tuple[int, int], int],
    handle: Callable[[int, int, tuple[Any, ...]], None],
    *,
    stop: Callable[[], bool] = lambda: False,
    idle: float = 5.0,
) -> None:
    """Call ``handle`` for every committed change after ``positions``, shard by shard in order, until ``stop()``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("LISTEN shardsync_changes")  # before the first read: no commit can slip in between
        while not stop():
            for divisor, shard, last in conn.execute(HEADS).fetchall():
                after = positions.get((divisor, shard), 0)
                while after < last:
                    rows = conn.execute(READ, (divisor, shard, after)).fetchall()
                    if not rows:
                        break  # the rest was pruned by retention
                    for row in rows:
                        handle(divisor, shard, row)
                    after = positions[(divisor, shard)] = rows[-1][0]
            # One notification per committed batch wakes us; `idle` bounds the wait if one is ever lost.
            for _ in conn.notifies(timeout=idle, stop_after=1):
                pass
