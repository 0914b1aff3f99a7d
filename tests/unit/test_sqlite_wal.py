"""What the checkpointer reads of a WAL from outside SQLite agrees with what SQLite itself reports."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from shardsync.sinks.sqlite_wal import WAL_FRAME_HEADER, WalIndex, restarts, sync_wal, wal_bytes


def database(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, pad TEXT)")
    return conn


def test_the_log_length_is_sqlites_own_frame_count(tmp_path: Path) -> None:
    """After commits, and again after the WAL started over, the wal-index header's length is the frame count
    ``PRAGMA wal_checkpoint`` reports (times a frame's size), while the file keeps its size."""
    file = tmp_path / "db.sqlite3"
    conn = database(file)
    index = WalIndex(str(file))
    page = int(conn.execute("PRAGMA page_size").fetchone()[0])
    try:
        for n in range(50):
            conn.execute("INSERT INTO t VALUES (?, ?)", (n, "x" * 3000))
        logged = index.log_bytes()
        _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert frames > 50 and logged == frames * (page + WAL_FRAME_HEADER)
        assert restarts(str(file)) == 0
        big = wal_bytes(str(file))
        conn.execute("INSERT INTO t VALUES (1000, 'y')")  # everything was copied: this starts the WAL over
        assert restarts(str(file)) == 1
        assert wal_bytes(str(file)) == big
        logged = index.log_bytes()
        _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert 0 < frames < 5 and logged == frames * (page + WAL_FRAME_HEADER)
        sync_wal(str(file))
    finally:
        index.close()
        conn.close()


def test_without_a_wal_index_the_length_is_unknown(tmp_path: Path) -> None:
    """No ``-shm`` file (no WAL-mode connection open): None, not a guess; no WAL file: size 0, no restarts."""
    index = WalIndex(str(tmp_path / "none.sqlite3"))
    assert index.log_bytes() is None
    index.close()
    assert wal_bytes(str(tmp_path / "none.sqlite3")) == 0
    assert restarts(str(tmp_path / "none.sqlite3")) == 0
