"""A private PostgreSQL server that a test may crash and start again (the shared ``pg_server`` must never be).

``crash()`` is ``pg_ctl stop -m immediate``: every backend quits at once
without a checkpoint, as after a kill; ``start()`` again runs crash recovery
and listens on the same socket, so a client's DSN stays valid throughout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from pgserver import PG_BIN, free_port


class PgProcess:
    """One server on a unix socket only, its data directory in a fresh temporary directory."""

    def __init__(self) -> None:
        # initdb refuses to run as root; under root the server runs as the postgres user.
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.base = Path(tempfile.mkdtemp(prefix="shardsync-pgcrash-"))
        if self._as_user:
            shutil.chown(self.base, "postgres", "postgres")
        self.data, self.port = self.base / "data", free_port()
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "shardsync", "-A", "trust", "-E", "UTF8",
                  "--no-sync")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.base} port={self.port} user=shardsync dbname={dbname} connect_timeout=5"

    def start(self) -> None:
        options = f"-k {self.base} -p {self.port} -c listen_addresses='' -c fsync=off"
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "log"), "-w", "-o", options,
                  "start")

    def crash(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        subprocess.run([*self._as_user, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                        "stop"], capture_output=True, timeout=60, check=False)
        shutil.rmtree(self.base, ignore_errors=True)

    def _run(self, *argv: str) -> None:
        done = subprocess.run([*self._as_user, *argv], capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = self.base / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr or done.stdout}\n{tail}")
