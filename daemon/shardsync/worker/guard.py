"""The mass-deletion guard: a snapshot that would delete most of a shard is not believed on its own word (pure).

A server that answers a resync with an empty or truncated snapshot would
otherwise make the worker delete every entity it missed, a false state that
lasts until the next resync.  So a snapshot whose deletions are more than
``ratio`` of the shard's entities and more than :data:`MASS_MINIMUM` keeps
them as *suspects* and asks for one more snapshot (the session resyncs on a
new connection); of the suspects, only those the next snapshot also lacks
are deleted (``confirmed``), the others were never gone (``refused``).  The
next snapshot's other deletions are judged the same way on their own: when
they are a mass deletion again, nothing at all is deleted and everything
that snapshot lacks becomes the suspects, so a server that keeps sending
different partial snapshots never gets a mass deletion through (like
rclone's ``--max-delete``, without an operator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from shardsync.change import Key

#: A snapshot deleting this many entities or fewer is never a mass deletion, whatever the shard's size.
MASS_MINIMUM: Final = 10


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one snapshot's deletions."""

    #: Keys to delete, in the order given.
    delete: list[Key]
    #: Deletions held back as suspects; the session resyncs to confirm them (0: no resync).
    suspected: int = 0
    #: Earlier suspects this snapshot confirmed (they are in ``delete``) and refused (it has them).
    confirmed: int = 0
    refused: int = 0
    #: Whether this snapshot was judged against earlier suspects.
    second_look: bool = False

    @property
    def resync(self) -> bool:
        return self.suspected > 0


class DeletionGuard:
    """Judges each snapshot's deletions; keeps the suspects of the last one until the next."""

    def __init__(self, ratio: float, minimum: int = MASS_MINIMUM) -> None:
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        self.ratio = ratio
        self.minimum = minimum
        self._suspects: frozenset[Key] | None = None

    @property
    def suspects(self) -> frozenset[Key] | None:
        """Deletions awaiting confirmation by the next snapshot, if any."""
        return self._suspects

    def is_mass(self, deletions: int, entities: int) -> bool:
        """Would deleting ``deletions`` of ``entities`` be a mass deletion?"""
        return deletions > self.minimum and deletions > self.ratio * entities

    def judge(self, vanished: Sequence[Key], entities: int) -> Verdict:
        """The verdict on a snapshot that lacks ``vanished`` (sorted) of the shard's ``entities``."""
        suspects, self._suspects = self._suspects, None
        if suspects is None:
            confirmed: list[Key] = []
            rest = list(vanished)
            refused = 0
        else:
            confirmed = [key for key in vanished if key in suspects]
            rest = [key for key in vanished if key not in suspects]
            refused = len(suspects) - len(confirmed)
        if self.is_mass(len(rest), entities):
            # Nothing is deleted on this snapshot's word, not even what it confirmed: all of
            # it waits for the next one (suspects that keep rolling over could never settle).
            self._suspects = frozenset(vanished)
            return Verdict([], suspected=len(vanished), confirmed=len(confirmed), refused=refused,
                           second_look=suspects is not None)
        # Confirmed and the rest together are all of ``vanished``, in its order.
        return Verdict(list(vanished), confirmed=len(confirmed), refused=refused, second_look=suspects is not None)

    def forget(self) -> None:
        """Drop the suspects (nothing is pending confirmation any more)."""
        self._suspects = None
