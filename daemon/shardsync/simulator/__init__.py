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
* ``shutdown`` and ``c[...]`` knobs close with 1000 after the frame; ``drop`` aborts TCP (no close frame),
  ``reset`` aborts it with an RST; ``refuse`` answers upgrades HTTP 503 for a while.
* fidelity switches (defaults follow Tradovate's own sample clients): ``authorize_body=lenient`` also
  takes the token JSON-quoted; ``entity_types_default=per_form`` gives an unsharded request every type
  and a sharded one none; ``empty_collections=include`` sends all 31 SyncMessage collections as arrays
  (split: in the first part); ``eviction`` picks 401, 408 or 502 for an evicted session's renewal.
* time penalties on ``authorize``/``user/syncrequest`` (``socket_penalty``; rules in :mod:`.penalties`).
* poison entities (``poison``: ``deep``, ``bigid``, ``badtype``) are kept beside the truth, never in it:
  ``truth_of``/``Simulator.truth`` and ``history`` leave them out (a correct client quarantines them).
* records for oracles: ``stats()["subscriptions"]`` (:mod:`.records`), ``history()`` (:mod:`.history`);
  ``stamp_events`` adds ``"ts"`` to live props; ``tls_cert``/``tls_key`` serve https/wss on the one port.

Module map: ``server`` (HTTP and upgrades) mixes in ``faults`` and ``activity`` (the knobs);
``session`` (one socket) sees the server only as a ``hub.Hub``; ``wire`` (pure codec), ``truth``,
``history``, ``records``, ``penalties``, ``tokens`` (REST auth), ``poison``, ``generator``.
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
