"""In-process handle for tests: the simulator's loop on a background thread, knobs as thread-safe calls."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from shardsync.change import Entity, Key
from shardsync.simulator.history import Interval
from shardsync.simulator.options import SimOptions, replace
from shardsync.simulator.server import SimServer
from shardsync.simulator.truth import Mutation

T = TypeVar("T")
_CALL_TIMEOUT = 30.0


class Simulator:
    """``with Simulator(SimOptions(...)) as sim:`` serves on ``sim.port`` until the block ends.

    Keyword overrides are applied on top of ``options``: ``Simulator(event_rate=0)``.
    """

    def __init__(self, options: SimOptions | None = None, **overrides: Any) -> None:
        self.options = replace(options or SimOptions(), **overrides)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: SimServer | None = None
        self._stopped: asyncio.Event | None = None
        self.port = 0

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Simulator:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._main(ready))
            except BaseException as exc:
                failure.append(exc)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=serve, name="shardsync-simulator", daemon=True)
        self._thread.start()
        ready.wait(_CALL_TIMEOUT)
        if failure:
            raise RuntimeError("simulator failed to start") from failure[0]
        if not self.port:
            raise RuntimeError("simulator did not start in time")
        return self

    async def _main(self, ready: threading.Event) -> None:
        self._server = SimServer(self.options)
        self._stopped = asyncio.Event()
        self.port = await self._server.start()
        ready.set()
        await self._stopped.wait()
        await self._server.stop()

    def stop(self) -> None:
        if self._loop is None or self._stopped is None or self._thread is None:
            return
        stopped = self._stopped
        self._loop.call_soon_threadsafe(stopped.set)
        self._thread.join(_CALL_TIMEOUT)
        self._loop = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses (https/wss when served over TLS) ----------------------------------------------
    @property
    def rest_url(self) -> str:
        return f"{'https' if self.options.tls_cert else 'http'}://{self.options.host}:{self.port}/v1"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.options.tls_cert else 'ws'}://{self.options.host}:{self.port}/v1/websocket"

    @property
    def admin_url(self) -> str:
        return f"{'https' if self.options.tls_cert else 'http'}://{self.options.host}:{self.port}/admin"

    # -- calls into the loop ---------------------------------------------------------------------
    def call(self, fn: Callable[[SimServer], T]) -> T:
        """Run ``fn(server)`` on the simulator's loop and return its result (the escape hatch)."""
        if self._loop is None or self._server is None:
            raise RuntimeError("simulator is not running")
        server = self._server

        async def invoke() -> T:
            return fn(server)

        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result(_CALL_TIMEOUT)

    def truth(self, divisor: int = 1, remainder: int | None = None, expression: str = "modAccountId",
              entity_types: list[str] | None = None) -> dict[Key, Entity]:
        """Ground truth of one shard (``remainder`` None = everything), keyed by (entityType, id);
        poison entities are not in it (a correct client quarantines them)."""
        return self.call(lambda s: s.truth_of(divisor, remainder, expression, entity_types))

    def stats(self) -> dict[str, Any]:
        """Counters: connections per remainder, logins, renewals, authorize attempts, syncrequests,
        client heartbeat times per connection, closes seen, ``handshakes`` (sockets between the accepted
        upgrade and a successful authorize, or their close) and its maximum so far, ``peak_handshakes``;
        ``refused_upgrades``; ``subscriptions`` (one record per synced socket ever, see
        :mod:`shardsync.simulator.records`); ``socket_penalties`` per endpoint; ``poisoned``."""
        return self.call(lambda s: s.stats())

    def subscriptions(self) -> list[dict[str, Any]]:
        """One record per synced socket ever: conn, divisor, remainder, expression, synced_at,
        snapshot_sent_at, closed_at (epoch seconds; closed_at None while live)."""
        return self.call(lambda s: [dict(r) for r in s.records.subscriptions])

    def history(self) -> dict[Key, list[Interval]]:
        """Per key that ever existed, the (created_at, deleted_at | None) intervals the server had it."""
        return self.call(lambda s: s.truth.history.all())

    def connections(self) -> dict[int, int]:
        """Open synced sockets per remainder."""
        return {int(k): v for k, v in self.stats()["connections"].items()}

    def drop(self, remainder: int | None = None, divisor: int | None = None) -> int:
        return self.call(lambda s: s.drop(remainder, divisor))

    def reset(self, remainder: int | None = None, divisor: int | None = None) -> int:
        """Like :meth:`drop`, with a TCP RST instead of a FIN."""
        return self.call(lambda s: s.reset(remainder, divisor))

    def refuse(self, seconds: float) -> None:
        """New WebSocket upgrades get HTTP 503 for ``seconds`` (0 ends it); REST keeps working."""
        self.call(lambda s: s.refuse(seconds))

    def close_frame(self, code: int = 3000, reason: str = "Go away!", remainder: int | None = None,
                    divisor: int | None = None) -> int:
        return self.call(lambda s: s.close_frame(code, reason, remainder, divisor))

    def shutdown(self, reason_code: str = "Maintenance", reason: str = "Server maintenance",
                 remainder: int | None = None, divisor: int | None = None) -> int:
        return self.call(lambda s: s.shutdown(reason_code, reason, remainder, divisor))

    def revoke(self, token: str | None = None) -> int:
        return self.call(lambda s: s.revoke(token))

    def stall(self, seconds: float | None = None, remainder: int | None = None, divisor: int | None = None) -> int:
        return self.call(lambda s: s.stall(seconds, remainder, divisor))

    def unstall(self, remainder: int | None = None, divisor: int | None = None) -> int:
        return self.call(lambda s: s.unstall(remainder, divisor))

    def pause(self) -> None:
        self.call(lambda s: s.pause())

    def resume(self) -> None:
        self.call(lambda s: s.resume())

    def step(self, count: int = 1) -> list[Mutation]:
        return self.call(lambda s: s.step(count))

    def mutate(self, count: int = 5, remainder: int | None = None, divisor: int = 1,
               expression: str = "modAccountId", deletions: int = 1) -> list[Mutation]:
        return self.call(lambda s: s.mutate(count, remainder, divisor, expression, deletions))

    def inflate(self, count: int, text_bytes: int = 200, remainder: int | None = None, divisor: int = 1,
                expression: str = "modAccountId") -> int:
        return self.call(lambda s: s.inflate(count, text_bytes, remainder, divisor, expression))

    def grow(self, orders: int, text_bytes: int = 0, remainder: int | None = None, divisor: int = 1,
             expression: str = "modAccountId") -> int:
        """``orders`` working orders (4 entities each) added to one shard at once, sent to nobody live."""
        return self.call(lambda s: s.grow(orders, text_bytes, remainder, divisor, expression))

    def churn(self, updates: int, *, deletions: int = 0, creations: int = 0, remainder: int | None = None,
              divisor: int = 1, expression: str = "modAccountId") -> dict[str, Any]:
        """Flip ``updates`` orders, delete ``deletions`` command reports, add ``creations`` orders; published."""
        return self.call(lambda s: s.churn(updates, deletions=deletions, creations=creations, remainder=remainder,
                                           divisor=divisor, expression=expression))

    def malformed(self, kind: str, remainder: int | None = None, divisor: int | None = None,
                  size_mib: float = 1.0) -> int:
        return self.call(lambda s: s.malformed(kind, remainder, divisor, size_mib))

    def ws429(self, count: int = 1) -> None:
        self.call(lambda s: s.ws429(count))

    def penalty(self, mode: str = "ticket", count: int = 1, p_time: float = 1.0) -> None:
        self.call(lambda s: s.penalty(mode, count, p_time))

    def lockout(self, status: int = 429, count: int = 1) -> None:
        self.call(lambda s: s.lockout(status, count))

    def socket_penalty(self, endpoint: str = "authorize", mode: str = "ticket", count: int = 1,
                       p_time: float = 1.0) -> None:
        """p-ticket (or p-captcha) answers to the next ``count`` authorize/syncrequest socket requests."""
        self.call(lambda s: s.socket_penalty(endpoint, mode, count, p_time))

    def poison(self, kind: str, remainder: int | None = None, divisor: int = 1, in_snapshot: bool = True,
               expression: str = "modAccountId") -> dict[str, Any]:
        """One ``deep``/``bigid``/``badtype`` order a client must quarantine; returns kind, entityType, id,
        accountId. Not part of :meth:`truth`."""
        return self.call(lambda s: s.poison(kind, remainder, divisor, in_snapshot, expression))

    def blank_snapshot(self, count: int = 1, remainder: int | None = None, divisor: int | None = None) -> None:
        """The next ``count`` snapshots of that shard (remainder None: any) carry no entity; the truth stays."""
        self.call(lambda s: s.blank_snapshot(count, remainder, divisor))

    def purge(self, entity_types: list[str], remainder: int | None = None, divisor: int = 1,
              expression: str = "modAccountId") -> list[Mutation]:
        """Delete every entity of ``entity_types`` the shard holds (published live); returns the deletions."""
        return self.call(lambda s: s.purge(entity_types, remainder, divisor, expression))

    def cure(self) -> int:
        """Take every poison entity out of later snapshots."""
        return self.call(lambda s: s.cure())

    def replay(self, count: int = 100, remainder: int | None = None, divisor: int | None = None) -> int:
        return self.call(lambda s: s.replay(count, remainder, divisor))

    def system_event(self, name: str = "OtherEnvAdminAlertSignal", data: Any = None,
                     remainder: int | None = None, divisor: int | None = None) -> int:
        return self.call(lambda s: s.system_event(name, data, remainder, divisor))

    def touch_users(self, count: int = 1) -> list[Mutation]:
        """Update ``count`` users now: changes every shard receives (``reference_routing=all``)."""
        return self.call(lambda s: s.touch_users(count))

    def configure(self, **changes: Any) -> None:
        self.call(lambda s: s.configure(**changes))
        self.options = replace(self.options, **changes)
