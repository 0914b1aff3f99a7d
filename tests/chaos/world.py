"""The campaign's world: the simulator and a real `shardsync run` (optionally a broken variant), its config.

The config is the system tests' (``tests/system/harness.py``) with the
campaign's choices on top: a short restart period (so a seed's kills never
park a shard, see ``schedule.py``), two connect permits, a 1 MiB message
limit (so an oversized frame is a few MiB, not 64).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Final

from harness import Daemon

from shardsync.simulator import Simulator

from .oracle import Config, lines
from .schedule import DIVISOR, Schedule

ROOT: Final = Path(__file__).resolve().parents[2]
LAUNCH: Final = Path(__file__).resolve().parent / "launch.py"
ACCOUNTS: Final = 16
USERS: Final = 5
MAX_MESSAGE_BYTES: Final = 1 << 20
LOCKOUT_BACKOFF: Final = 20.0

SECTIONS: Final[dict[str, dict[str, Any]]] = {
    "tradovate": {"idle_timeout": 10.0, "handshake_timeout": 5.0, "max_message_bytes": MAX_MESSAGE_BYTES,
                  "response_timeout": 10.0, "deletion_grace": 3.0,
                  # A quota shutdown pauses every shard's handshakes this long (budget.py rule 1; default an hour,
                  # which no seed could wait out): short, and the oracle holds every reconnect to it.
                  "lockout_backoff": LOCKOUT_BACKOFF},
    "supervisor": {"heartbeat_interval": 0.25, "heartbeat_timeout": 2.0, "backoff_initial": 0.1, "backoff_max": 2.0,
                   "stable_after": 3.0, "intensity": 5, "period": 10.0, "shutdown_timeout": 5.0,
                   "connect_spacing": 0.05, "max_concurrent_connects": 2, "start_timeout": 30.0},
}


def judged_config(schedule: Schedule) -> Config:
    supervisor = SECTIONS["supervisor"]
    return Config(divisor=DIVISOR, heartbeat_timeout=supervisor["heartbeat_timeout"],
                  backoff_max=supervisor["backoff_max"], max_concurrent_connects=supervisor["max_concurrent_connects"],
                  token_lifetime=schedule.setup.token_lifetime, renew_before=900.0)


class World:
    """One seed's simulator and daemon; ``variant`` names a broken daemon from ``launch.py``."""

    def __init__(self, schedule: Schedule, home: Path, *, variant: str | None = None) -> None:
        setup = schedule.setup
        self.schedule = schedule
        self.home = home
        # session_cap 0: a re-login after a revocation must not evict (and quota-shutdown) the sockets of the
        # revoked session, which would turn one revoke into a 60 s outage of every shard.
        self.sim = Simulator(
            seed=schedule.seed, accounts=ACCOUNTS, users=USERS, event_rate=setup.event_rate, batch=setup.batch,
            entity_list=setup.entity_list, deleted_entity=setup.deleted_entity, token_lifetime=setup.token_lifetime,
            session_cap=0, reference_routing="all",
        )
        launcher = [sys.executable, str(LAUNCH), variant] if variant else None
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "daemon"), os.environ.get("PYTHONPATH")]))}
        self._launcher = launcher
        self._env = env
        self.daemon: Daemon | None = None
        self.remainders: list[int] = list(range(DIVISOR))

    def start(self) -> Daemon:
        self.sim.start()
        self.daemon = Daemon(self.home, self.sim, divisor=DIVISOR, sections=SECTIONS, launcher=self._launcher,
                             env=self._env).start()
        return self.daemon

    @property
    def d(self) -> Daemon:
        assert self.daemon is not None
        return self.daemon

    def write(self, remainders: list[int] | None = None, broken: str | None = None) -> None:
        """Rewrite the config file: ``remainders`` (default all), or broken in one of three ways."""
        daemon = self.d
        if broken is None:
            wanted = list(range(DIVISOR)) if remainders is None else remainders
            daemon.write_config(credentials=self.home / "credentials.toml", divisor=DIVISOR,
                                remainders="all" if wanted == list(range(DIVISOR)) else wanted, sections=SECTIONS)
            self.remainders = wanted
            return
        text = daemon.config.read_text()
        if broken == "syntax":
            text += "\n[supervisor\nheartbeat_interval = \n"
        elif broken == "value":
            text = text.replace("heartbeat_interval = 0.25", "heartbeat_interval = -1.0")
        else:
            text = text.replace("[sync]\n", "[sync]\nno_such_key = 1\n")
        daemon.config.write_text(text)

    def count(self, event: str) -> int:
        return len(lines(self.d.logs(), event))

    def stop(self) -> None:
        self.sim.stop()
