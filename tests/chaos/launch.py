"""Start `shardsync run` with one deliberately broken variant patched in (the oracle must catch each).

``python tests/chaos/launch.py VARIANT -m shardsync run -c FILE`` patches the
running interpreter, then calls :func:`shardsync.cli.main`; forked workers
inherit the patch.  Production code has no hook for this: each variant
replaces one function the way a plausible bug would.

* ``no_deletions``: reconciliation never deletes (a vanished entity stays);
* ``props_early``: the worker applies live props while the snapshot is still
  being assembled, instead of buffering them until it is reconciled;
* ``forget_readd``: the reload planner forgets a shard re-added while its old
  worker is still stopping.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping
from typing import Any

VARIANTS = ("no_deletions", "props_early", "forget_readd")


def _no_deletions() -> None:
    from shardsync.mirror import Mirror

    def _vanished(self: Mirror, snapshot: Mapping[Any, Any], scope: Any) -> list[Any]:
        # Whatever the mirror holds counts as still there: nothing ever vanishes from a snapshot, whether its
        # deletions apply at once or are held as provisional (both start from this list).
        return []

    Mirror._vanished = _vanished  # type: ignore[method-assign]


def _props_early() -> None:
    from shardsync.protocol import PropsEvent, SystemEvent
    from shardsync.worker.session import Worker

    original = Worker._on_message

    def _on_message(self: Worker, message: object, received_at: str) -> None:
        # Live events applied as they come while the snapshot is still being assembled (once the session has a
        # reconciler), instead of buffered until it is reconciled.
        if (isinstance(message, PropsEvent | SystemEvent) and not self._live and self._assembler is not None
                and self._reconciler is not None):
            self._apply(message, received_at)
            return
        original(self, message, received_at)

    Worker._on_message = _on_message  # type: ignore[method-assign]


def _forget_readd() -> None:
    from shardsync.supervisor import reload

    original = reload.plan

    def plan(table: Mapping[int, reload.Row], old: Any, new: Any) -> reload.Plan:
        result = original(table, old, new)
        kept = tuple(step for step in result.steps
                     if not (step.kind is reload.Kind.START and step.remainder in table
                             and table[step.remainder].then is reload.Then.REMOVE))
        return dataclasses.replace(result, steps=kept)

    reload.plan = plan


PATCHES: dict[str, Callable[[], None]] = {
    "no_deletions": _no_deletions,
    "props_early": _props_early,
    "forget_readd": _forget_readd,
}


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in PATCHES or argv[1:3] != ["-m", "shardsync"]:
        print(f"usage: launch.py {{{'|'.join(VARIANTS)}}} -m shardsync ARGS...", file=sys.stderr)
        return 2
    PATCHES[argv[0]]()
    from shardsync.cli import main as shardsync_main

    sys.argv = ["shardsync", *argv[3:]]
    return shardsync_main(argv[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
