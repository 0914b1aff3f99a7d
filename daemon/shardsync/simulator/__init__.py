"""Protocol-faithful fake Tradovate (REST + WebSocket + admin API on one port) with fault knobs.

In tests: ``with Simulator(event_rate=0) as sim: ...``; as a process:
``shardsync simulate`` / ``python -m shardsync.simulator`` (see :func:`add_arguments`).

Behaviours chosen where Tradovate is undocumented (each [U] has a switch in SimOptions):

* a request other than ``authorize`` first: ``{"s":401,"i":id,"d":"Access is denied"}``, then close 1008;
  no authorize within ``authorize_timeout``: close 1008 "Authorization timeout";
  client silent for ``client_idle_timeout``: close 1001 "Heartbeat timeout";
  unparsable request: close 1002; binary frame: 1003; a revoked token with ``close_on_revoke``: 1008.
* ``require_split`` and no ``splitResponses:true``: close 1008 with no reason and no response.
* split snapshots: exactly ``split_chunks`` ``{"s":200,"i":id,"d":{...}}`` messages, the first holding
  ``users``/``contractGroups``; ``split_end=empty`` adds ``"d":{}``, ``split_end=flag`` adds ``"d":{"done":true}``.
* ``shutdown`` and ``c[...]`` knobs close with 1000 after the frame; ``drop`` aborts TCP (no close frame).
"""

from shardsync.simulator.handle import Simulator
from shardsync.simulator.options import SimOptions, add_arguments, from_args
from shardsync.simulator.runner import run
from shardsync.simulator.server import MALFORMED_KINDS, SimServer
from shardsync.simulator.truth import ENTITY_TYPES, PLURALS, SINGULARS, Mutation, Scope, Shard, Truth

__all__ = [
    "ENTITY_TYPES",
    "MALFORMED_KINDS",
    "PLURALS",
    "SINGULARS",
    "Mutation",
    "Scope",
    "Shard",
    "SimOptions",
    "SimServer",
    "Simulator",
    "Truth",
    "add_arguments",
    "from_args",
    "run",
]
