"""The seeded chaos campaign: faults against a real daemon and the simulator, judged by an oracle.

``python -m tests.chaos --seed N`` replays one seed; ``--seeds 1-200`` runs a
campaign and prints its figures.  Module map: ``catalogue`` (the fault kinds
and what each may disturb), ``schedule`` (seed -> faults, pure), ``world``
(the daemon's config and the running simulator + daemon), ``faults`` (each
kind carried out, journaled), ``oracle`` (pure checks over what was
collected), ``collect`` (reads sinks, logs and simulator records), ``runner``
(one seed end to end), ``figures`` (a campaign's summary), ``launch`` (starts
the daemon with a deliberately broken variant patched in).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The system-test harness (Daemon) and the polling helper live beside this package.
_TESTS = Path(__file__).resolve().parents[1]
for _path in (_TESTS, _TESTS / "system"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
