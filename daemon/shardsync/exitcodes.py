"""Every exit code of the daemon and its commands, in one place (systemd units and tests rely on them)."""

from __future__ import annotations

from typing import Final

#: Clean stop (SIGTERM/SIGINT, or a command that succeeded).
EX_OK: Final = 0
#: Unexpected error (a bug, or a daemon that could not start for a reason not below).
EX_ERROR: Final = 1
#: The global breaker tripped: most shards failing together; let systemd back off.
EX_BREAKER: Final = 3
#: A worker raised (EX_SOFTWARE): the parent restarts that shard.
EX_CRASH: Final = 70
#: Credentials unreadable, too open or refused by Tradovate (EX_NOPERM): not restarted.
EX_NOPERM: Final = 77
#: Invalid configuration (EX_CONFIG): not restarted.
EX_CONFIG: Final = 78

__all__ = ["EX_BREAKER", "EX_CONFIG", "EX_CRASH", "EX_ERROR", "EX_NOPERM", "EX_OK"]
