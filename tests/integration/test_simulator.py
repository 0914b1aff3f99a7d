"""The simulator over loopback, driven by a bare websocket-client and urllib, as the daemon would."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
import websocket
from simclient import (
    ACCOUNT_OWNED,
    ALL_TYPES,
    CREDS,
    Client,
    Factory,
    Key,
    apply,
    connect,
    http,
    login,
    merge,
    snapshot_of,
    sync_body,
)

from polling import wait_until
from shardsync.simulator import Simulator
from shardsync.simulator.truth import REFERENCE_TYPES

# -- REST ------------------------------------------------------------------------------------


def test_login_returns_token_response(sim_server: Simulator) -> None:
    """Valid credentials get a full AccessTokenResponse and are counted as exactly one login."""
    body = login(sim_server)
    assert {"accessToken", "mdAccessToken", "expirationTime", "passwordExpirationTime", "userId"} <= set(body)
    assert body["userStatus"] == "Active" and body["hasLive"] is False and body["name"] == "demo"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["expirationTime"])
    assert sim_server.stats()["logins"] == 1


def test_login_bad_credentials_is_200_with_error_text(sim_server: Simulator) -> None:
    """Wrong credentials are HTTP 200 with errorText, and the path is matched case-insensitively."""
    status, body = http("POST", sim_server.rest_url + "/auth/accessTokenRequest", {**CREDS, "password": "x"})
    assert status == 200
    assert body == {"errorText": "Incorrect username or password. Please try again."}


def test_renewal_gives_new_later_token_and_expired_gets_401(sim_factory: Factory) -> None:
    """Renewal returns a different token with a later expiry; an expired token gets 401."""
    sim = sim_factory(token_lifetime=1.0)
    first = login(sim)
    time.sleep(0.01)  # expirationTime has millisecond resolution
    status, renewed = http("GET", sim.rest_url + "/auth/renewaccesstoken", token=first["accessToken"])
    assert status == 200
    assert renewed["accessToken"] != first["accessToken"]
    assert renewed["expirationTime"] > first["expirationTime"]
    assert sim.stats()["renewals"] == 1
    wait_until(lambda: http("GET", sim.rest_url + "/auth/renewaccesstoken", token=renewed["accessToken"])[0] == 401,
               timeout=4)
    assert http("GET", sim.rest_url + "/auth/renewaccesstoken", token="nonsense")[0] == 401  # noqa: S106


def test_p_ticket_retry_needs_ticket_and_wait(sim_server: Simulator) -> None:
    """A p-ticket login succeeds only when retried with the ticket after p-time; early retries are penalized."""
    sim_server.penalty("ticket", count=1, p_time=0.4)
    first = login(sim_server)
    assert set(first) == {"p-ticket", "p-time"} and first["p-time"] == 0.4
    early = login(sim_server, **{"p-ticket": first["p-ticket"]})
    assert "p-ticket" in early and early["p-ticket"] != first["p-ticket"]
    time.sleep(0.45)  # the penalty itself is a wait the client must sit out
    without = login(sim_server)
    assert "p-ticket" in without
    time.sleep(0.45)
    assert "accessToken" in login(sim_server, **{"p-ticket": without["p-ticket"]})


def test_p_captcha_is_flagged(sim_server: Simulator) -> None:
    """The captcha penalty carries p-captcha:true and no token."""
    sim_server.penalty("captcha", count=1, p_time=0.1)
    body = login(sim_server)
    assert body["p-captcha"] is True and "p-ticket" in body and "accessToken" not in body
    assert "accessToken" in login(sim_server)


@pytest.mark.parametrize("status", [423, 429])
def test_lockout_status_with_empty_body(sim_server: Simulator, status: int) -> None:
    """423 and 429 lock-outs answer the login with that status and an empty body."""
    sim_server.lockout(status, count=1)
    assert http("POST", sim_server.rest_url + "/auth/accesstokenrequest", CREDS) == (status, None)
    assert "accessToken" in login(sim_server)


def test_session_cap_evicts_oldest_session(sim_factory: Factory) -> None:
    """A third login evicts the oldest session: its socket gets shutdown ConnectionQuotaReached and its token dies."""
    sim = sim_factory(session_cap=2)
    oldest = login(sim)["accessToken"]
    client = connect(sim, oldest)
    second = login(sim)["accessToken"]
    login(sim)
    got = client.messages(lambda m: any(x.get("e") == "shutdown" for x in m))
    assert got[-1]["d"]["reasonCode"] == "ConnectionQuotaReached"
    assert client.closed_code() == 1000
    assert http("GET", sim.rest_url + "/auth/renewaccesstoken", token=oldest)[0] == 401
    assert http("GET", sim.rest_url + "/auth/renewaccesstoken", token=second)[0] == 200


def test_session_cap_can_be_switched_off(sim_factory: Factory) -> None:
    """With session_cap=0 no login evicts another."""
    sim = sim_factory(session_cap=0)
    first = login(sim)["accessToken"]
    for _ in range(3):
        login(sim)
    assert http("GET", sim.rest_url + "/auth/renewaccesstoken", token=first)[0] == 200


# -- WebSocket: authorization -------------------------------------------------------------------------


def test_invalid_token_then_valid_authorize(sim_server: Simulator) -> None:
    """An invalid token gets s:401 'Invalid access token'; a valid one on the same socket gets s:200."""
    client = Client(sim_server)
    assert client.authorize("bogus", 3) == {"s": 401, "i": 3, "d": "Invalid access token"}
    assert client.authorize(login(sim_server)["accessToken"], 4) == {"s": 200, "i": 4}
    assert sim_server.stats()["authorize_attempts"] == 2


def test_invalid_token_json_quoted_variant(sim_factory: Factory) -> None:
    """The error_quoting=json switch double-encodes the error text."""
    client = Client(sim_factory(error_quoting="json"))
    assert client.authorize("bogus")["d"] == '"Invalid access token"'


def test_request_before_authorize_is_refused_and_closed(sim_server: Simulator) -> None:
    """A first request other than authorize gets s:401 and the socket is closed with 1008."""
    client = Client(sim_server)
    client.send("user/syncrequest", 1, sync_body())
    assert client.response(1)["s"] == 401
    assert client.closed_code() == 1008


def test_authorize_deadline_closes_socket(sim_factory: Factory) -> None:
    """A socket that does not authorize within authorize_timeout is closed with 1008."""
    client = Client(sim_factory(authorize_timeout=0.3))
    client.ws.send("[]")
    assert client.closed_code() == 1008


def test_malformed_client_request_closes_only_that_socket(sim_server: Simulator) -> None:
    """A request without an integer id closes that socket (1002), a binary frame gets 1003; the server lives on."""
    bad = Client(sim_server)
    bad.ws.send("authorize\nnot-a-number\n\nx")
    assert bad.closed_code() == 1002
    binary = Client(sim_server)
    binary.ws.send_binary(b"\x00\x01")
    assert binary.closed_code() == 1003
    connect(sim_server).close()


# -- WebSocket: syncrequest -----------------------------------------------------------------------------

INVALID_SYNCS = [
    ({"users": [1], "shardingExpression": {"expressionType": "modAccountId", "divisor": 2, "remainder": 0}},
     "users cannot be combined with shardingExpression"),
    ({"users": [1], "entityTypes": ["order"]}, "users cannot be combined with entityTypes"),
    ({"accounts": [1], "shardingExpression": {"expressionType": "modAccountId", "divisor": 2, "remainder": 0}},
     "accounts cannot be combined with shardingExpression"),
    ({"shardingExpression": {"divisor": 2, "remainder": 0}}, "requires expressionType"),
    ({"shardingExpression": {"expressionType": "modAccountId", "remainder": 0}}, "requires divisor"),
    ({"shardingExpression": {"expressionType": "modAccountId", "divisor": 2}}, "requires remainder"),
    ({"shardingExpression": {"expressionType": "modFoo", "divisor": 2, "remainder": 0}}, "expressionType"),
    ({"shardingExpression": {"expressionType": "modUserId", "divisor": 0, "remainder": 0}}, "divisor"),
    ({"shardingExpression": {"expressionType": "modUserId", "divisor": 2, "remainder": 2}}, "remainder"),
    ({"shardingExpression": {"expressionType": "modUserId", "divisor": 2, "remainder": -1}}, "remainder"),
    ({"entityTypes": ["order", "nonsense"]}, "unknown entityTypes"),
    ([1, 2], "JSON object"),
]


@pytest.mark.parametrize(("body", "text"), INVALID_SYNCS)
def test_syncrequest_validation(sim_server: Simulator, body: Any, text: str) -> None:
    """Each §4.2 rule violation is answered with s:400 and a text naming the rule."""
    client = connect(sim_server)
    client.send("user/syncrequest", 5, json.dumps(body))
    answer = client.response(5)
    assert answer["s"] == 400 and text in answer["d"]
    assert sim_server.stats()["syncrequests"][-1]["body"] == body


def test_missing_split_closes_when_required(sim_factory: Factory) -> None:
    """With require_split a syncrequest without splitResponses terminates the socket; by default it is served."""
    strict = connect(sim_factory(require_split=True))
    strict.send("user/syncrequest", 1, sync_body(split=False))
    assert strict.closed_code() == 1008
    lenient = connect(sim_factory())
    lenient.send("user/syncrequest", 1, sync_body(split=False))
    assert lenient.response(1)["s"] == 200


@pytest.mark.parametrize("default", ["empty", "all"])
def test_entity_types_default(sim_factory: Factory, default: str) -> None:
    """An omitted entityTypes gives an empty snapshot or everything, per entity_types_default."""
    sim = sim_factory(entity_types_default=default, empty_collections="omit")
    client = connect(sim)
    client.send("user/syncrequest", 1, json.dumps({"splitResponses": True}))
    data = client.response(1)["d"]
    if default == "empty":
        assert data == {"users": [], "contractGroups": []}
    else:
        assert merge([{"s": 200, "i": 1, "d": data}]) == sim.truth()


@pytest.mark.parametrize("mode", ["reject", "ignore", "replace"])
def test_second_syncrequest(sim_factory: Factory, mode: str) -> None:
    """A second syncrequest on one socket is rejected with s:400, ignored, or replaces the first."""
    sim = sim_factory(second_sync=mode)
    client = connect(sim)
    client.send("user/syncrequest", 1, sync_body(types=["account"]))
    client.response(1)
    client.send("user/syncrequest", 2, sync_body(types=["user"]))
    if mode == "reject":
        assert client.response(2)["s"] == 400
    elif mode == "replace":
        assert set(merge([client.response(2)], 2)) == set(sim.truth(entity_types=["user"]))
    else:
        client.send("nope/list", 3)
        got = client.messages(lambda m: any(x.get("i") == 3 for x in m))
        assert [x["i"] for x in got] == [3] and got[0]["s"] == 404


@pytest.mark.parametrize("expression", ["modAccountId", "modUserId"])
def test_routing_partitions_account_owned_entities(sim_factory: Factory, expression: str) -> None:
    """With divisor 4 every account-owned entity is in exactly one remainder and the union equals the truth."""
    sim = sim_factory(accounts=16, users=5)
    seen: dict[Key, list[int]] = {}
    for remainder in range(4):
        client, snapshot = snapshot_of(sim, sync_body(4, remainder, expression))
        client.close()
        assert snapshot == sim.truth(4, remainder, expression, ALL_TYPES)
        for key in snapshot:
            seen.setdefault(key, []).append(remainder)
    owned = {k for k in sim.truth(entity_types=ALL_TYPES) if k[0] in ACCOUNT_OWNED}
    assert owned and owned <= set(seen)
    assert all(len(seen[k]) == 1 for k in owned)
    references = {k for k in seen if k[0] in REFERENCE_TYPES}
    assert references and all(len(seen[k]) == 4 for k in references)
    if expression == "modUserId":
        accounts = sim.truth(entity_types=["account"])
        for (_, account_id), entity in accounts.items():
            assert seen[("account", account_id)] == [entity["userId"] % 4]


def test_reference_routing_zero(sim_factory: Factory) -> None:
    """With reference_routing=zero reference and user data go to remainder 0 only."""
    sim = sim_factory(reference_routing="zero")
    _, zero = snapshot_of(sim, sync_body(2, 0))
    _, one = snapshot_of(sim, sync_body(2, 1))
    assert any(k[0] == "contract" for k in zero) and any(k[0] == "user" for k in zero)
    assert not any(k[0] in REFERENCE_TYPES or k[0] == "user" for k in one)


@pytest.mark.parametrize(("split_end", "frames"), [("none", "many"), ("empty", "one"), ("flag", "many")])
def test_split_snapshot_variants(sim_factory: Factory, split_end: str, frames: str) -> None:
    """Split snapshots come as K same-id chunks (plus the chosen end marker) whose merge equals the truth."""
    sim = sim_factory(snapshot_mode="split", split_chunks=4, split_end=split_end, snapshot_frames=frames)
    client = connect(sim)
    client.send("user/syncrequest", 1, sync_body())
    expected = 4 if split_end == "none" else 5
    got = client.messages(lambda m: sum(x.get("i") == 1 for x in m) >= expected)
    responses = [x for x in got if x.get("i") == 1]
    assert len(responses) == expected and "users" in responses[0]["d"]
    if split_end == "empty":
        assert responses[-1]["d"] == {}
    if split_end == "flag":
        assert responses[-1]["d"] == {"done": True}
    assert len(client.raw) - 1 == (1 if frames == "one" else expected)  # minus the authorize answer
    assert merge(got) == sim.truth(entity_types=ALL_TYPES)


def test_interleaved_props_keep_snapshot_consistent(sim_factory: Factory) -> None:
    """Props interleaved between chunks (same frame) still merge with the chunks to the truth."""
    sim = sim_factory(snapshot_mode="split", split_chunks=3, split_end="empty", interleave_props=2,
                      snapshot_frames="one")
    client = connect(sim)
    client.send("user/syncrequest", 1, sync_body())
    got = client.messages(lambda m: sum(x.get("i") == 1 for x in m) >= 4)
    kinds = ["r" if "i" in x else "p" for x in got]
    assert kinds[0] == "r" and "p" in kinds[: kinds.index("r", 1)]
    mirror = merge(got)
    apply(mirror, got)
    assert mirror == sim.truth(entity_types=ALL_TYPES)


def test_live_props_as_lists_in_batches(sim_factory: Factory) -> None:
    """entity_list=always sends entity as a list, and batch=50 packs several messages in one frame."""
    sim = sim_factory(entity_list="always", batch=50)
    client, mirror = snapshot_of(sim, sync_body())
    changes = sim.step(10)
    got = client.messages(lambda m: len(m) >= len(changes))
    assert all(isinstance(x["d"]["entity"], list) for x in got)
    assert len(client.raw) < len(changes) + 1
    apply(mirror, got)
    assert mirror == sim.truth(entity_types=ALL_TYPES)


def test_snapshot_plus_live_stream_converges(sim_factory: Factory) -> None:
    """Under a fast generator, snapshot + every later prop of a shard equals that shard's truth."""
    sim = sim_factory(event_rate=300, deleted_entity="id", entity_list="some")
    client, mirror = snapshot_of(sim, sync_body(2, 1))
    got = client.messages(lambda m: len(m) > 100)
    sim.pause()
    expected = sim.truth(2, 1, "modAccountId", ALL_TYPES)
    apply(mirror, got)
    deadline = time.monotonic() + 5
    while mirror != expected and time.monotonic() < deadline:
        more = client.messages(lambda m: len(m) > 0, timeout=2)
        apply(mirror, more)
        got += more
    assert mirror == expected
    deleted = [x["d"]["entity"] for x in got if x.get("e") == "props" and x["d"]["eventType"] == "Deleted"]
    assert deleted
    for entity in deleted:
        assert set(entity[0] if isinstance(entity, list) else entity) == {"id"}


def test_system_event_bypasses_entity_types(sim_server: Simulator) -> None:
    """A system event reaches a socket whose entityTypes is empty, and only the targeted remainder."""
    _, _ = snapshot_of(sim_server, sync_body(2, 0, types=[]))
    other, _ = snapshot_of(sim_server, sync_body(2, 1, types=[]))
    assert sim_server.system_event("OtherEnvAdminAlertSignal", {"text": "hi"}, remainder=1) == 1
    got = other.messages(lambda m: len(m) >= 1)
    assert got == [{"e": "OtherEnvAdminAlertSignal", "d": {"text": "hi"}}]


# -- heartbeats and idleness ------------------------------------------------------------------------------


def test_server_heartbeat_only_when_idle(sim_factory: Factory) -> None:
    """'h' never appears while props stream and appears once the stream goes quiet."""
    sim = sim_factory(event_rate=400, server_heartbeat=0.3, accounts=4, users=2)
    client, _ = snapshot_of(sim, sync_body())
    client.messages(lambda m: len(m) > 150)
    assert b"h" not in client.raw
    sim.pause()
    start = time.monotonic()
    while client.recv_raw() != b"h":
        pass
    assert time.monotonic() - start < 2


def test_client_idle_timeout_and_heartbeat_record(sim_factory: Factory) -> None:
    """A client sending [] stays open and its heartbeats are recorded; a silent one is closed with 1001."""
    sim = sim_factory(client_idle_timeout=0.5, server_heartbeat=0.1)
    alive = connect(sim)
    silent = connect(sim)
    for _ in range(8):
        alive.ws.send("[]")
        time.sleep(0.1)  # the client's own heartbeat cadence
    assert silent.closed_code() == 1001
    alive.ws.send("[]")
    assert alive.recv_raw() == b"h"
    beats = sim.stats()["heartbeats"]
    assert len(max(beats.values(), key=len)) >= 8


# -- fault knobs ------------------------------------------------------------------------------------------


def test_drop_aborts_without_close_frame_only_that_shard(sim_server: Simulator) -> None:
    """drop(remainder) cuts that shard's socket without a close frame and leaves the other shard alone."""
    zero, _ = snapshot_of(sim_server, sync_body(2, 0))
    one, _ = snapshot_of(sim_server, sync_body(2, 1))
    assert sim_server.connections() == {0: 1, 1: 1}
    assert sim_server.drop(remainder=0) == 1
    assert zero.closed_code() == 1006
    wait_until(lambda: sim_server.connections() == {1: 1})
    sim_server.system_event(remainder=1)
    assert one.messages(lambda m: len(m) == 1)[0]["e"] == "OtherEnvAdminAlertSignal"


def test_c_frame_then_close(sim_server: Simulator) -> None:
    """close_frame sends c[code,"reason"] and then closes the WebSocket."""
    client, _ = snapshot_of(sim_server, sync_body())
    sim_server.close_frame(3000, "Go away!")
    assert client.closed_code() == 1000
    assert client.raw[-1] == b'c[3000,"Go away!"]'


@pytest.mark.parametrize("reason", ["Maintenance", "ConnectionQuotaReached", "IPQuotaReached"])
def test_shutdown_event_then_close(sim_server: Simulator, reason: str) -> None:
    """shutdown sends {"e":"shutdown","d":{"reasonCode":...}} and closes."""
    client, _ = snapshot_of(sim_server, sync_body())
    sim_server.shutdown(reason)
    got = client.messages(lambda m: len(m) == 1)
    assert got[0]["e"] == "shutdown" and got[0]["d"]["reasonCode"] == reason
    assert client.closed_code() == 1000


def test_revoke_keeps_socket_streaming_but_kills_renewal(sim_server: Simulator) -> None:
    """A revoked token cannot be renewed or reused, while its authorized socket keeps streaming (§2.3)."""
    token = login(sim_server)["accessToken"]
    client = connect(sim_server, token)
    client.send("user/syncrequest", 1, sync_body())
    client.response(1)
    assert sim_server.revoke(token) == 1
    assert http("GET", sim_server.rest_url + "/auth/renewaccesstoken", token=token)[0] == 401
    assert Client(sim_server).authorize(token)["s"] == 401
    sim_server.step(3)
    assert client.messages(lambda m: len(m) >= 1)[0]["e"] == "props"


def test_revoke_closes_when_switched(sim_factory: Factory) -> None:
    """With close_on_revoke, revoking all tokens closes the sockets authorized with them."""
    sim = sim_factory(close_on_revoke=True)
    client = connect(sim)
    sim.revoke()
    assert client.closed_code() == 1008


def test_stall_silences_socket_until_unstalled(sim_factory: Factory) -> None:
    """A stalled socket sends nothing (not even h); after unstall the queued props arrive."""
    sim = sim_factory(server_heartbeat=0.1)
    client, _ = snapshot_of(sim, sync_body())
    sim.stall()
    changes = sim.step(3)
    with pytest.raises(websocket.WebSocketTimeoutException):
        while True:
            assert client.recv_raw(timeout=0.5) == b"h"  # only frames queued before the stall
    sim.unstall()
    got = client.messages(lambda m: len(m) >= len(changes))
    assert len(got) == len(changes)


def test_timed_stall_ends_by_itself(sim_factory: Factory) -> None:
    """stall(seconds) resumes on its own."""
    sim = sim_factory(server_heartbeat=0.1)
    client, _ = snapshot_of(sim, sync_body())
    sim.stall(0.3)
    start = time.monotonic()
    client.recv_raw(timeout=3)
    assert time.monotonic() - start >= 0.25


def test_mutation_while_disconnected_shows_in_next_snapshot(sim_server: Simulator) -> None:
    """Changes (incl. deletions) made while a shard is away are in its reconnect snapshot."""
    client, before = snapshot_of(sim_server, sync_body(2, 1))
    sim_server.drop(remainder=1)
    client.closed_code()
    changes = sim_server.mutate(6, remainder=1, divisor=2, deletions=2)
    deleted = [c.key for c in changes if c.event_type == "Deleted"]
    assert deleted and all(key in before for key in deleted if key[0] in ALL_TYPES)
    _, after = snapshot_of(sim_server, sync_body(2, 1))
    assert after == sim_server.truth(2, 1, "modAccountId", ALL_TYPES)
    assert not set(deleted) & set(after)
    assert after != before


@pytest.mark.parametrize(("kind", "expected"), [
    ("truncated", b'a[{"s":'), ("not_array", b"a{}"), ("bad_utf8", b'a[{"e":"props","d":"\xff\xfe\xfd"}]'),
    ("unknown_letter", b"x"),
])
def test_malformed_frames(sim_server: Simulator, kind: str, expected: bytes) -> None:
    """Each malformed-frame kind arrives byte for byte and the socket stays usable."""
    client, _ = snapshot_of(sim_server, sync_body())
    assert sim_server.malformed(kind) == 1
    assert client.recv_raw() == expected
    client.send("nope/list", 9)
    assert client.response(9)["s"] == 404


def test_huge_frame_is_valid_and_large(sim_server: Simulator) -> None:
    """The huge frame is one valid a[...] frame of at least the asked size re-sending current entities."""
    client, mirror = snapshot_of(sim_server, sync_body())
    sim_server.malformed("huge", size_mib=3)
    data = client.recv_raw()
    assert len(data) >= 3 * 1024 * 1024
    messages = json.loads(data[1:])
    before = dict(mirror)
    apply(mirror, messages)
    assert mirror == before


def test_inflated_snapshot_exceeds_one_mib(sim_server: Simulator) -> None:
    """inflate makes the next snapshot of that shard larger than 1 MiB, and it still equals the truth."""
    sim_server.inflate(2500, text_bytes=400, remainder=0, divisor=2)
    client, snapshot = snapshot_of(sim_server, sync_body(2, 0))
    assert len(client.raw[-1]) > 1024 * 1024
    assert snapshot == sim_server.truth(2, 0, "modAccountId", ALL_TYPES)


def test_grow_adds_orders_to_one_shard_and_sends_nothing_live(sim_server: Simulator) -> None:
    """grow adds 4 entities per order to that shard's truth only, sends nothing to a synced socket,
    and the next snapshot carries them."""
    watcher, _ = snapshot_of(sim_server, sync_body(2, 0))
    other_before = sim_server.truth(2, 1, "modAccountId", ALL_TYPES)
    before = sim_server.truth(2, 0, "modAccountId", ALL_TYPES)
    assert sim_server.grow(300, text_bytes=40, remainder=0, divisor=2) == 1200
    after = sim_server.truth(2, 0, "modAccountId", ALL_TYPES)
    assert len(after) == len(before) + 1200
    assert sim_server.truth(2, 1, "modAccountId", ALL_TYPES) == other_before
    grown = [e for k, e in after.items() if k[0] == "orderVersion" and k not in before]
    assert len(grown) == 300 and all(e["text"] == "x" * 40 for e in grown)
    sim_server.system_event("Marker", {"id": 1}, remainder=0, divisor=2)
    assert watcher.messages(bool)[0]["e"] == "Marker"  # nothing live came before it
    _, snapshot = snapshot_of(sim_server, sync_body(2, 0))
    assert snapshot == after


def test_churn_changes_one_shard_and_publishes_it(sim_server: Simulator) -> None:
    """churn flips orders, deletes command reports and adds orders in that shard; a synced socket that
    applies what it is sent ends up equal to the truth."""
    sim_server.grow(100, remainder=0, divisor=2)
    client, mirror = snapshot_of(sim_server, sync_body(2, 0))
    counts = sim_server.churn(30, deletions=5, creations=2, remainder=0, divisor=2)
    assert counts == {"changes": 30 + 5 + 8, "Updated": 30, "Deleted": 5, "Created": 8}
    apply(mirror, client.messages(lambda m: len(m) >= counts["changes"]))
    assert mirror == sim_server.truth(2, 0, "modAccountId", ALL_TYPES)
    with pytest.raises(ValueError, match="command reports"):
        sim_server.churn(1, deletions=10**6, remainder=0, divisor=2)


def test_ws_429_on_syncrequest(sim_server: Simulator) -> None:
    """ws429 answers the next syncrequest with {"s":429,"i":id} and no d; the following one is served."""
    sim_server.ws429(1)
    client = connect(sim_server)
    client.send("user/syncrequest", 1, sync_body())
    assert client.response(1) == {"s": 429, "i": 1}
    client.send("user/syncrequest", 2, sync_body())
    assert client.response(2)["s"] == 200


# -- admin HTTP API and the process entry point -----------------------------------------------------------


def test_admin_http_api(sim_server: Simulator) -> None:
    """Every knob family is reachable over POST /admin/<knob>, with truth and stats over GET."""
    admin = sim_server.admin_url
    client, _ = snapshot_of(sim_server, sync_body(2, 0))
    status, truth = http("GET", admin + "/truth?divisor=2&remainder=0&expression=modAccountId&entity_types=account")
    assert status == 200
    assert {(e["entityType"], e["id"]) for e in truth["entities"]} == set(
        sim_server.truth(2, 0, "modAccountId", ["account"]))
    assert http("GET", admin + "/stats")[1]["connections"] == {"0": 1}
    assert http("POST", admin + "/step", {"count": 2})[0] == 200
    status, mutated = http("POST", admin + "/mutate", {"count": 3, "remainder": 1, "divisor": 2})
    assert status == 200 and len(mutated["result"]) >= 3
    assert http("POST", admin + "/penalty", {"mode": "ticket", "p_time": 0.1})[0] == 200
    assert "p-ticket" in login(sim_server)
    assert http("POST", admin + "/event", {"name": "Custom", "data": {"x": 1}})[1]["result"] == 1
    assert http("POST", admin + "/malformed", {"kind": "bogus"})[0] == 400
    assert http("POST", admin + "/nope", {})[0] == 404
    assert http("POST", admin + "/configure", {"snapshot_mode": "weird"})[0] == 400
    assert http("POST", admin + "/shutdown", {"reason_code": "Maintenance", "remainder": 0})[1]["result"] == 1
    assert client.closed_code() == 1000


def test_run_as_subprocess_announces_port_and_stops_on_sigterm() -> None:
    """`python -m shardsync.simulator --port 0` prints its port as JSON, serves logins and exits 0 on SIGTERM."""
    process = subprocess.Popen([sys.executable, "-m", "shardsync.simulator", "--port", "0", "--event-rate", "0"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        announce = json.loads(process.stdout.readline())
        assert announce["event"] == "simulator_listening"
        with socket.create_connection(("127.0.0.1", announce["port"]), timeout=5):
            pass
        status, body = http("POST", announce["rest_url"] + "/auth/accesstokenrequest", CREDS)
        assert status == 200 and "accessToken" in body
        process.terminate()
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
