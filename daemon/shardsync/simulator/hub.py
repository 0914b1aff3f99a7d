"""What one socket session needs from the server it belongs to (the server implements it).

A Protocol of its own so that :mod:`session` depends on this small surface and not
on :class:`~shardsync.simulator.server.SimServer`, which imports the session.
"""

from __future__ import annotations

from typing import Any, Protocol

from shardsync.simulator.options import SimOptions
from shardsync.simulator.penalties import SocketPenalties
from shardsync.simulator.records import Records
from shardsync.simulator.tokens import AuthState
from shardsync.simulator.truth import Mutation, Scope, Truth


class Hub(Protocol):
    """Shared state and services of the fake server, seen from one socket."""

    options: SimOptions
    auth: AuthState
    truth: Truth
    records: Records
    socket_penalties: SocketPenalties
    ws429_left: int

    def generate_for(self, scope: Scope, count: int) -> list[Mutation]:
        """Generate ``count`` changes of ``scope``'s accounts now and publish them."""
        ...

    def take_blank(self, scope: Scope) -> bool:
        """Whether ``scope``'s snapshot about to be sent is to be empty (a blank_snapshot knob, used up)."""
        ...

    def poisoned_for(self, scope: Scope) -> list[tuple[str, dict[str, Any]]]:
        """Poison entities (plural collection, entity) that belong in ``scope``'s snapshot."""
        ...
