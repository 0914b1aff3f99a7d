"""Tests for the status model and renderings, the parent's status listener (httpd), metrics and `shardsync status`."""

# ruff: noqa: S105 - fake secrets are the point of the redaction test

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import math
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shardsync import secrets, statusclient
from shardsync.supervisor import metrics
from shardsync.supervisor.httpd import MAX_HEAD, StatusServer
from shardsync.supervisor.status import ShardStatus, StatusSnapshot, render_status, status_line, summarize

SHARDS = (
    ShardStatus(
        0, "live", pid=101, uptime=12.5, restarts=1, last_heartbeat_age=0.4, events_per_s=3.5,
        events=120, entities=40, reconnects=2,
    ),
    ShardStatus(1, "backoff", restarts=3, last_error="connection reset by peer", next_restart_in=2.0),
    ShardStatus(2, "parked", restarts=10, parked=True, last_error="authorize refused " * 10),
)


def snapshot(shards: tuple[ShardStatus, ...] = SHARDS, *, ready: bool = True) -> StatusSnapshot:
    return StatusSnapshot(pid=4242, started_at=1_700_000_000.0, uptime=3725.0, ready=ready, divisor=4, shards=shards)


ALL_LIVE = tuple(ShardStatus(r, "live", pid=200 + r, last_heartbeat_age=0.1) for r in range(3))


class Loop:
    """The parent's selector loop in miniature: one selector, the server's keys dispatched to it."""

    def __init__(self, provider: Callable[[], StatusSnapshot], **kwargs: Any) -> None:
        self.selector = selectors.DefaultSelector()
        self.server = StatusServer(("127.0.0.1", 0), provider, **kwargs)
        self.server.register(self.selector)

    def step(self) -> None:
        for key, mask in self.selector.select(0.01):
            key.data(mask)  # as the arbiter dispatches: the key's data is its handler

    def pump(self, until: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, "the server did not get there in time"
            self.step()

    def connect(self) -> socket.socket:
        client = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
        client.setblocking(False)
        return client

    def exchange(self, raw: bytes) -> bytes:
        """Send ``raw`` on a fresh connection and collect everything up to the server's EOF."""
        client = self.connect()
        client.sendall(raw)
        try:
            return self.collect(client)
        finally:
            client.close()

    def collect(self, client: socket.socket) -> bytes:
        chunks: list[bytes] = []
        done = False

        def poll() -> bool:
            nonlocal done
            while not done:
                try:
                    data = client.recv(65536)
                except BlockingIOError:
                    break
                except ConnectionResetError:
                    done = True
                    break
                done = not data
                chunks.append(data)
            return done

        self.pump(poll)
        return b"".join(chunks)

    def get(self, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        return parse(self.exchange(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()))

    def close(self) -> None:
        self.server.close()
        self.selector.close()


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop(snapshot)
    yield lp
    lp.close()


def test_status_json_has_every_field(loop: Loop) -> None:
    """/status returns the parent's identity, a per-state summary and every shard field."""
    code, headers, body = loop.get("/status")
    assert code == 200
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    doc = orjson.loads(body)
    assert {k: doc[k] for k in ("pid", "started_at", "uptime", "ready", "divisor")} == {
        "pid": 4242, "started_at": 1_700_000_000.0, "uptime": 3725.0, "ready": True, "divisor": 4,
    }
    assert doc["summary"] == {"total": 3, "live": 1, "backoff": 1, "parked": 1}
    first = doc["shards"][0]
    assert first == {
        "divisor": 4,
        "remainder": 0, "state": "live", "pid": 101, "uptime": 12.5, "restarts": 1, "parked": False,
        "last_heartbeat_age": 0.4, "events_per_s": 3.5, "events": 120, "entities": 40, "reconnects": 2,
        "last_error": None, "next_restart_in": None, "parked_reason": None, "rejections": 0, "sink_down_for": None,
    }
    assert doc["shards"][1]["next_restart_in"] == 2.0
    assert doc["shards"][2]["parked"] is True


def test_status_redacts_registered_secrets_and_ignores_query(loop: Loop) -> None:
    """A registered secret inside last_error comes out masked; a query string does not change the route."""
    secret = "tok-0123456789abcdef"
    failing = (ShardStatus(0, "backoff", last_error=f"401 for {secret}"),)
    lp = Loop(lambda: snapshot(failing))
    secrets.register_secret(secret)
    try:
        code, _, body = lp.get("/status?verbose=1")
    finally:
        secrets.clear_secrets()
        lp.close()
    assert code == 200
    assert secret.encode() not in body
    assert orjson.loads(body)["shards"][0]["last_error"] == "401 for ***"


def test_metrics_exposition(loop: Loop) -> None:
    """/metrics is Prometheus text with every shardsync_ family and the snapshot's values."""
    code, headers, body = loop.get("/metrics")
    assert code == 200
    assert headers["content-type"] == metrics.CONTENT_TYPE
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("shardsync_shard_up", shard="0") == 1
    assert value("shardsync_shard_up", shard="1") == 0
    assert value("shardsync_shard_up", shard="2") == 0
    assert value("shardsync_shard_state", shard="1", state="backoff") == 1
    assert value("shardsync_shard_state", shard="1", state="live") == 0
    assert value("shardsync_shard_restarts_total", shard="2") == 10
    assert value("shardsync_shard_reconnects_total", shard="0") == 2
    assert value("shardsync_shard_events_total", shard="0") == 120
    assert value("shardsync_shard_entities", shard="0") == 40
    assert value("shardsync_shard_last_heartbeat_age_seconds", shard="0") == pytest.approx(0.4)
    assert math.isnan(value("shardsync_shard_last_heartbeat_age_seconds", shard="1"))  # no heartbeat yet: NaN, kept
    assert value("shardsync_shard_parked", shard="2") == 1
    assert value("shardsync_shard_parked", shard="0") == 0
    assert value("shardsync_shards_configured") == 3
    assert value("shardsync_parent_uptime_seconds") == 3725
    assert value("shardsync_ready") == 1
    assert b"connection reset" not in body  # errors are free text: status only, never labels


def test_metrics_state_set_covers_unknown_states() -> None:
    """Each shard has one 1-valued state series, including a state the collector does not know."""
    body = metrics.render(lambda: snapshot((ShardStatus(5, "resyncing"),))).decode()
    (family,) = [f for f in text_string_to_metric_families(body) if f.name == "shardsync_shard_state"]
    ones = [s.labels["state"] for s in family.samples if s.value == 1]
    assert ones == ["resyncing"]
    assert len(family.samples) == len(metrics.KNOWN_STATES) + 1


def test_healthz_ok_only_when_every_shard_is_live() -> None:
    """/healthz is 200 when all shards are live, 503 naming the shards otherwise."""
    for shards, code, text in [
        (ALL_LIVE, 200, "ok"),
        (SHARDS, 503, "1/3 live; parked: 2; not live: 1 (backoff)"),
        ((*ALL_LIVE[:2], ShardStatus(2, "syncing")), 503, "2/3 live; not live: 2 (syncing)"),
        ((ShardStatus(0, "live", parked=True),), 503, "0/1 live; parked: 0"),
        ((), 503, "no shards running"),
    ]:
        lp = Loop(functools.partial(snapshot, shards))
        try:
            got, headers, body = lp.get("/healthz")
        finally:
            lp.close()
        assert (got, body.decode().strip()) == (code, text)
        assert headers["content-type"].startswith("text/plain")


def test_unknown_path_404_and_other_methods_405(loop: Loop) -> None:
    """An unknown path is 404, POST is 405 with Allow, HEAD gets headers without a body."""
    assert loop.get("/nope")[0] == 404
    code, headers, _ = loop.get("/status", method="POST")
    assert code == 405
    assert headers["allow"] == "GET, HEAD"
    code, headers, body = loop.get("/nope", method="HEAD")
    assert (code, body) == (404, b"")
    code, headers, body = loop.get("/status", method="HEAD")
    assert (code, body) == (200, b"")
    assert int(headers["content-length"]) > 100


def test_malformed_request_line_is_400(loop: Loop) -> None:
    """A request line that is not METHOD TARGET HTTP/x gets 400."""
    assert parse(loop.exchange(b"hello\r\n\r\n"))[0] == 400


def test_bare_lf_request_is_accepted(loop: Loop) -> None:
    """A hand-typed request with bare LF line ends (nc, printf) still gets an answer."""
    assert parse(loop.exchange(b"GET /healthz HTTP/1.0\n\n"))[0] == 503


def test_oversized_head_is_431_and_server_keeps_serving(loop: Loop) -> None:
    """A request head past 8 KiB is answered 431 and the server goes on serving others."""
    raw = b"GET /status HTTP/1.1\r\nX-Junk: " + b"a" * (MAX_HEAD + 100)
    assert parse(loop.exchange(raw))[0] == 431
    assert loop.get("/healthz")[0] == 503
    loop.pump(lambda: loop.server.connections == 0)


def test_provider_failure_is_500_not_a_crash() -> None:
    """A provider that raises costs one 500 response; the next request is served."""
    calls = []

    def provider() -> StatusSnapshot:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("shard table bug")
        return snapshot(ALL_LIVE)

    lp = Loop(provider)
    try:
        assert lp.get("/status")[0] == 500
        assert lp.get("/healthz")[0] == 200
    finally:
        lp.close()


def test_silent_client_is_dropped_by_expire() -> None:
    """A client that connects and sends nothing is closed by expire() at its deadline, not before."""
    now = [100.0]
    lp = Loop(snapshot, clock=lambda: now[0], idle_timeout=5.0)
    try:
        assert lp.server.next_deadline() is None
        client = lp.connect()
        lp.pump(lambda: lp.server.connections == 1)
        assert lp.server.next_deadline() == 105.0
        assert lp.server.expire(104.9) == 0
        assert lp.server.expire(105.0) == 1
        assert lp.server.connections == 0
        assert lp.server.next_deadline() is None
        client.setblocking(True)
        client.settimeout(5)
        with contextlib.suppress(ConnectionResetError):  # EOF or RST: either way the client is dropped
            assert client.recv(1) == b""
        client.close()
    finally:
        lp.close()


def test_many_concurrent_clients() -> None:
    """Fifty clients with requests in flight at once all get complete answers, then every socket is closed."""
    lp = Loop(lambda: snapshot(ALL_LIVE))
    try:
        clients = [lp.connect() for _ in range(50)]
        for i, client in enumerate(clients):
            path = ("/status", "/metrics", "/healthz")[i % 3]
            client.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        answers = [parse(lp.collect(c)) for c in clients]
        assert [a[0] for a in answers] == [200] * 50
        assert all(len(a[2]) == int(a[1]["content-length"]) for a in answers)
        for client in clients:
            client.close()
        lp.pump(lambda: lp.server.connections == 0)
    finally:
        lp.close()


def test_idle_clients_over_the_cap_make_room_for_a_scrape() -> None:
    """With every slot held by idle clients, a new client closes the oldest idle one and is answered."""
    lp = Loop(lambda: snapshot(ALL_LIVE), max_connections=2)
    try:
        held = [lp.connect(), lp.connect()]
        lp.pump(lambda: lp.server.connections == 2)
        scrape = lp.connect()
        scrape.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        code, _, body = parse(lp.collect(scrape))
        assert (code, body) == (200, b"ok\n")
        assert lp.server.evicted == 1
        assert lp.collect(held[0]) == b""  # the oldest was closed; the newer one still waits
        held[1].sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert parse(lp.collect(held[1]))[0] == 200
        for client in (*held, scrape):
            client.close()
    finally:
        lp.close()


def test_a_client_being_answered_is_never_evicted() -> None:
    """When every slot is sending a response, a new client is refused (closed) rather than cutting an answer."""
    many = tuple(ShardStatus(r, "live", events=r) for r in range(300))
    lp = Loop(lambda: snapshot(many), max_connections=1)
    lp.server._listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)  # accepted sockets inherit it
    try:
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.settimeout(5)
        slow.connect(("127.0.0.1", lp.server.port))
        slow.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        slow.setblocking(False)
        lp.pump(lambda: any(c.phase == "writing" for c in lp.server._connections.values()))
        extra = lp.connect()
        assert lp.collect(extra) == b""
        assert lp.server.evicted == 0
        code, headers, body = parse(lp.collect(slow))
        assert code == 200 and len(body) == int(headers["content-length"])
        for client in (slow, extra):
            client.close()
    finally:
        lp.close()


def test_a_client_has_read_timeout_from_connect_and_write_timeout_for_the_answer() -> None:
    """The deadline is READ_TIMEOUT (2 s) after connect by default, and the write timeout once answering."""
    now = [50.0]
    lp = Loop(lambda: snapshot(ALL_LIVE), clock=lambda: now[0], write_timeout=7.0)
    try:
        client = lp.connect()
        lp.pump(lambda: lp.server.connections == 1)
        assert lp.server.next_deadline() == 52.0
        client.sendall(b"GET /status HTTP/1.0\r\n\r\n")
        now[0] = 51.0
        lp.pump(lambda: next(iter(lp.server._connections.values())).phase != "reading")
        assert lp.server.next_deadline() == 58.0
        client.close()
    finally:
        lp.close()


def test_slow_reader_gets_the_whole_large_response(monkeypatch: pytest.MonkeyPatch) -> None:
    """A response larger than the socket buffers is written in pieces as the client drains it."""
    many = tuple(ShardStatus(r, "live", events=r) for r in range(300))
    lp = Loop(lambda: snapshot(many))
    lp.server._listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)  # accepted sockets inherit it
    waited_for_write: list[int] = []
    modify = lp.server._modify

    def spy(conn: Any, events: int) -> None:
        waited_for_write.append(events)
        modify(conn, events)

    monkeypatch.setattr(lp.server, "_modify", spy)
    try:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.settimeout(5)
        client.connect(("127.0.0.1", lp.server.port))
        client.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        client.setblocking(False)
        for _ in range(20):
            lp.step()  # the client is not reading: the server must park the rest, not block
        code, headers, body = parse(lp.collect(client))
        client.close()
    finally:
        lp.close()
    assert code == 200
    assert selectors.EVENT_WRITE in waited_for_write
    assert len(body) == int(headers["content-length"]) > 1 << 18
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert len(families["shardsync_shard_events"].samples) == 300


class FailingListener:
    """Stands in for the listening socket when accept() fails as with EMFILE."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> tuple[socket.socket, Any]:
        raise OSError(errno.EMFILE, "Too many open files")


def test_accept_failure_pauses_the_listener_instead_of_spinning() -> None:
    """When accept() fails (EMFILE) the listener is unwatched until expire() passes the pause, then serves."""
    now = [100.0]
    lp = Loop(lambda: snapshot(ALL_LIVE), clock=lambda: now[0])
    real = lp.server._listener
    client = lp.connect()  # queued in the backlog until the loop accepts it
    try:
        lp.server._listener = FailingListener(real)  # type: ignore[assignment]
        client.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        lp.pump(lambda: lp.server.next_deadline() == 101.0)
        lp.server._listener = real
        assert not lp.selector.select(0.05)  # the pending connection no longer wakes the loop
        lp.server.expire(100.5)
        assert not lp.selector.select(0.05)
        lp.server.expire(101.0)
        assert lp.server.next_deadline() is None
        assert parse(lp.collect(client))[0] == 200
        client.close()
    finally:
        lp.server._listener = real
        lp.close()


def test_close_after_fork_leaves_the_parent_serving() -> None:
    """A forked child closing its copies of the sockets does not disturb the parent's listener or clients."""
    lp = Loop(lambda: snapshot(ALL_LIVE))
    try:
        client = lp.connect()
        lp.pump(lambda: lp.server.connections == 1)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            lp.server.close_after_fork()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        client.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert parse(lp.collect(client))[0] == 200
        client.close()
        assert lp.get("/healthz")[0] == 200
    finally:
        lp.close()


def test_close_stops_listening() -> None:
    """close() drops clients, unregisters and closes the listener, so connects are refused."""
    lp = Loop(snapshot)
    port = lp.server.port
    client = lp.connect()
    lp.pump(lambda: lp.server.connections == 1)
    lp.close()
    assert lp.server.connections == 0
    client.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_ipv6_listener() -> None:
    """A host with a colon binds an IPv6 socket."""
    try:
        server = StatusServer(("::1", 0), snapshot)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert server.address[0] == "::1"
        assert server.port > 0
    finally:
        server.close()


def test_every_key_carries_its_own_handler(loop: Loop) -> None:
    """The listener's and each client's selector key hold a callable handler, so the loop needs no tags."""
    client = loop.connect()
    try:
        loop.pump(lambda: loop.server.connections == 1)
        keys = list(loop.selector.get_map().values())
        assert len(keys) == 2
        assert all(callable(key.data) for key in keys)
    finally:
        client.close()


def test_status_line_counts_live_backoff_parked_then_the_rest() -> None:
    """The STATUS= line reads live/total, backoff, parked, then every other state with a count."""
    summary = summarize([("live", False), ("live", False), ("backoff", False), ("syncing", False), ("live", True)])
    assert status_line(summary) == "2/5 live, 1 backoff, 1 parked, 1 syncing"
    assert status_line(summarize([("live", False)])) == "1/1 live, 0 backoff, 0 parked"


# -- the client ------------------------------------------------------------------


def run_while_serving(loop: Loop, fn: Callable[[], Any]) -> Any:
    """Run a blocking client call in a helper thread while this thread drives the server."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    loop.pump(lambda: not thread.is_alive())
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def test_render_table() -> None:
    """The table has the summary line, one row per shard, dashes for unknowns and truncated errors."""
    status = orjson.loads(
        orjson.dumps(
            {
                "pid": 4242, "uptime": 3725.0, "ready": True, "divisor": 4,
                "summary": {"total": 3, "live": 1, "backoff": 1, "parked": 1, "syncing": 0},
                "shards": [
                    {"remainder": 0, "state": "live", "pid": 101, "uptime": 12.5, "restarts": 1,
                     "last_heartbeat_age": 0.4, "events_per_s": 3.5, "entities": 40, "last_error": None},
                    {"remainder": 1, "state": "backoff", "pid": None, "restarts": 3, "next_restart_in": 2.0,
                     "last_error": "connection reset\nby peer"},
                    {"remainder": 12, "state": "parked", "parked": True, "restarts": 10,
                     "last_error": "authorize refused " * 10},
                ],
            }
        )
    )
    lines = statusclient.render_table(status).splitlines()
    assert lines[0] == "1/3 live, 1 backoff, 1 parked"
    assert lines[1] == "pid 4242, up 1h02m, ready, divisor 4"
    assert lines[3].split() == ["SHARD", "STATE", "PID", "UPTIME", "RESTARTS", "HEARTBEAT", "EVENTS/S", "ENTITIES",
                                "LAST", "ERROR"]
    assert lines[4].split() == ["0", "live", "101", "12s", "1", "0.4s", "3.5", "40"]
    assert lines[5].split()[:3] == ["1", "backoff", "(2.0s)"]
    assert lines[5].endswith("connection reset by peer")
    assert lines[6].split()[:2] == ["12", "parked"]
    assert lines[6].endswith("…")
    assert len(lines) == 7


def test_summary_line_lists_other_states() -> None:
    """States other than live/backoff/parked appear in the summary when any shard is in them."""
    status = {"summary": {"total": 16, "live": 12, "backoff": 1, "parked": 0, "syncing": 3}, "shards": []}
    assert statusclient.render_table(status).splitlines()[0] == "12/16 live, 1 backoff, 0 parked, 3 syncing"


def test_fetch_status_from_the_server(loop: Loop) -> None:
    """fetch_status() GETs and decodes the document the server renders, and main() tables it."""
    url = f"http://127.0.0.1:{loop.server.port}/status"
    doc = run_while_serving(loop, lambda: statusclient.fetch_status(url))
    assert doc["summary"]["live"] == 1
    assert [s["remainder"] for s in doc["shards"]] == [0, 1, 2]


def test_main_prints_table_and_json(loop: Loop, capsys: pytest.CaptureFixture[str]) -> None:
    """main() prints the table by default and the raw document with --json, exit 0."""
    base = f"127.0.0.1:{loop.server.port}"
    args = argparse.Namespace(url=base, config=None, json=False, timeout=5.0)
    assert run_while_serving(loop, lambda: statusclient.main(args)) == 0
    assert capsys.readouterr().out.startswith("1/3 live, 1 backoff, 1 parked\n")
    args.json = True
    assert run_while_serving(loop, lambda: statusclient.main(args)) == 0
    assert orjson.loads(capsys.readouterr().out)["pid"] == 4242


def test_main_exit_1_when_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    """main() exits 1 with 'connection refused' when no daemon listens on the port."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    args = argparse.Namespace(url=f"http://127.0.0.1:{port}", config=None, json=False, timeout=2.0)
    assert statusclient.main(args) == 1
    assert capsys.readouterr().err.strip() == (
        f"shardsync: no shardsync status at http://127.0.0.1:{port}/status: connection refused"
    )


def test_fetch_status_rejects_non_status_answers(loop: Loop) -> None:
    """A 404 or a non-JSON answer raises StatusUnavailable with the reason."""
    url = f"http://127.0.0.1:{loop.server.port}"
    with pytest.raises(statusclient.StatusUnavailable, match="HTTP 404"):
        run_while_serving(loop, lambda: statusclient.fetch_status(url + "/nope"))
    with pytest.raises(statusclient.StatusUnavailable, match="not JSON"):
        run_while_serving(loop, lambda: statusclient.fetch_status(url + "/metrics"))
    with pytest.raises(statusclient.StatusUnavailable, match="only http"):
        statusclient.fetch_status("file:///etc/passwd")


CONFIG = """
[tradovate]
app_id = "test"
cid = 1
[status]
listen = "{listen}"
"""


def test_main_reads_the_listen_address_from_config(
    loop: Loop, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """main() -c FILE asks the [status] listen address of that config."""
    path = tmp_path / "shardsync.toml"
    path.write_text(CONFIG.format(listen=f"127.0.0.1:{loop.server.port}"))
    args = argparse.Namespace(url=None, config=str(path), json=True, timeout=5.0)
    assert run_while_serving(loop, lambda: statusclient.main(args)) == 0
    assert orjson.loads(capsys.readouterr().out)["divisor"] == 4


def test_main_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid config exits 78; a config with the listener off exits 1 saying so."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[status]\nlisten = 5\n")
    assert statusclient.main(argparse.Namespace(url=None, config=str(bad), json=False, timeout=1.0)) == 78
    assert "status.listen" in capsys.readouterr().err
    off = tmp_path / "off.toml"
    off.write_text(CONFIG.format(listen=""))
    assert statusclient.main(argparse.Namespace(url=None, config=str(off), json=False, timeout=1.0)) == 1
    assert "listener is off" in capsys.readouterr().err


def test_url_for_listen_and_arguments() -> None:
    """Wildcard binds are asked on loopback, IPv6 hosts get brackets, and the parser has every option."""
    assert statusclient.url_for_listen(("0.0.0.0", 9464)) == "http://127.0.0.1:9464/status"
    assert statusclient.url_for_listen(("::", 9464)) == "http://[::1]:9464/status"
    assert statusclient.url_for_listen(("10.0.0.5", 1)) == "http://10.0.0.5:1/status"
    parser = argparse.ArgumentParser()
    statusclient.add_arguments(parser)
    args = parser.parse_args(["-c", "x.toml", "--json", "--url", "h:1"])
    assert (args.config, args.json, args.url, args.timeout) == ("x.toml", True, "h:1", 3.0)


def test_server_text_in_status_is_printable_and_clipped() -> None:
    """last_error, parked_reason and the budget's text from a server: control characters replaced, at most 500
    characters (and an ellipsis), whatever the worker or the server sent."""
    hostile = "\x1b[31mred\r\nSet-Cookie: x\x00" + "y" * 5000
    snap = StatusSnapshot(pid=1, started_at=0.0, uptime=1.0, ready=True, divisor=1,
                          shards=(ShardStatus(0, "parked", parked=True, last_error=hostile, parked_reason=hostile),),
                          budget={"state": "paused", "text": hostile}, login={"state": "failed", "last_error": hostile})
    doc = orjson.loads(render_status(snap))
    for text in (doc["shards"][0]["last_error"], doc["shards"][0]["parked_reason"], doc["budget"]["text"],
                 doc["login"]["last_error"]):
        assert len(text) <= 501 and text.endswith("…")
        assert all(ch.isprintable() for ch in text)


def test_two_divisors_side_by_side_stay_apart_in_status_and_metrics() -> None:
    """While resharding, shard 3 of 2 and shard 3 of 4 are two lines and two series (label "3/2" vs "3")."""
    from shardsync.supervisor.shardkey import ShardKey

    shards = (ShardStatus(3, "live", divisor=4), ShardStatus(1, "live", divisor=2),
              ShardStatus(3, "syncing", divisor=2, parked=True))
    snap = StatusSnapshot(pid=1, started_at=0.0, uptime=1.0, ready=True, divisor=4, shards=shards,
                          budget={"parked": [ShardKey(2, 3)], "throttles": {}})
    doc = orjson.loads(render_status(snap))
    assert [(s["remainder"], s["divisor"]) for s in doc["shards"]] == [(3, 4), (1, 2), (3, 2)]
    assert doc["budget"]["parked"] == ["3/2"]
    body = metrics.render(lambda: snap).decode()
    up = {s.labels["shard"]: s.value for f in text_string_to_metric_families(body) if f.name == "shardsync_shard_up"
          for s in f.samples}
    assert up == {"3": 1.0, "1/2": 1.0, "3/2": 0.0}
    refused = {s.labels["shard"]: s.value for f in text_string_to_metric_families(body)
               if f.name == "shardsync_shard_refused_parked" for s in f.samples}
    assert refused == {"3": 0.0, "1/2": 0.0, "3/2": 1.0}
