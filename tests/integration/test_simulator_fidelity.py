"""The simulator's fidelity switches for what Tradovate leaves undocumented, each against a bare client."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import pytest
from simclient import ALL_TYPES, Client, Factory, apply, connect, http, login, merge, sync_body

from shardsync.simulator import PLURALS, Simulator
from shardsync.simulator.truth import Scope

COLLECTIONS = list(PLURALS.values())


# -- authorize body ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "quoted_status"), [("lenient", 200), ("strict", 401)])
def test_authorize_body_json_quoted_token(sim_factory: Factory, mode: str, quoted_status: int) -> None:
    """A JSON-quoted token is accepted when lenient and refused (401) when strict; the raw token always works."""
    sim = sim_factory(authorize_body=mode)
    token = login(sim)["accessToken"]
    quoted = Client(sim)
    assert quoted.authorize(json.dumps(token))["s"] == quoted_status
    assert Client(sim).authorize(token) == {"s": 200, "i": 0}


def test_authorize_default_is_lenient(sim_server: Simulator) -> None:
    """Out of the box the simulator takes the JSON-quoted form Tradovate's sample clients send."""
    client = Client(sim_server)
    assert client.authorize('"' + login(sim_server)["accessToken"] + '"') == {"s": 200, "i": 0}


def test_authorize_json_object_without_ticket_is_not_a_token(sim_server: Simulator) -> None:
    """{"token": ...} alone (the documented client mistake) is refused in the default mode."""
    client = Client(sim_server)
    assert client.authorize(json.dumps({"token": login(sim_server)["accessToken"]}))["s"] == 401


# -- entityTypes default ----------------------------------------------------------------------------------


def _snapshot(sim: Simulator, body: dict[str, Any]) -> dict[str, Any]:
    client = connect(sim)
    client.send("user/syncrequest", 1, json.dumps(body))
    answer = client.response(1)
    assert answer["s"] == 200
    return dict(answer["d"])


def test_entity_types_default_per_form(sim_factory: Factory) -> None:
    """Without entityTypes, users/accounts/plain requests get every type and a sharded one gets nothing."""
    sim = sim_factory()
    assert sim.options.entity_types_default == "per_form"
    user_id = min(k[1] for k in sim.truth(entity_types=["user"]))
    account_id = min(k[1] for k in sim.truth(entity_types=["account"]))
    by_user = merge([{"s": 200, "i": 1, "d": _snapshot(sim, {"users": [user_id]})}])
    assert by_user == sim.call(lambda s: s.truth.select(Scope(users=frozenset([user_id]))))
    assert {"user", "account", "order", "position", "cashBalance"} <= {k[0] for k in by_user}
    by_account = merge([{"s": 200, "i": 1, "d": _snapshot(sim, {"accounts": [account_id]})}])
    assert by_account == sim.call(lambda s: s.truth.select(Scope(accounts=frozenset([account_id]))))
    assert ("account", account_id) in by_account and any(k[0] == "order" for k in by_account)
    plain = merge([{"s": 200, "i": 1, "d": _snapshot(sim, {"splitResponses": True})}])
    assert plain == sim.truth()
    sharded = _snapshot(sim, {"splitResponses": True, "shardingExpression": {
        "expressionType": "modAccountId", "divisor": 2, "remainder": 0}})
    assert all(v == [] for v in sharded.values())


# -- empty collections ------------------------------------------------------------------------------------


def test_empty_collections_include_single_snapshot(sim_server: Simulator) -> None:
    """By default a single snapshot carries all 31 SyncMessage collections as arrays, empty ones too."""
    data = _snapshot(sim_server, json.loads(sync_body(types=["account"])))
    assert list(data) == COLLECTIONS and len(COLLECTIONS) == 31
    assert all(isinstance(v, list) for v in data.values())
    assert data["accounts"] and data["orders"] == [] and data["users"] == []


def test_empty_collections_include_split_first_part(sim_factory: Factory) -> None:
    """In split mode the first part carries every collection; later parts only what they hold; merge == truth."""
    sim = sim_factory(snapshot_mode="split", split_chunks=3, split_end="empty")
    client = connect(sim)
    client.send("user/syncrequest", 1, sync_body())
    got = client.messages(lambda m: sum(x.get("i") == 1 for x in m) >= 4)
    parts = [x["d"] for x in got if x.get("i") == 1]
    assert set(COLLECTIONS) <= set(parts[0])
    assert all(v for part in parts[1:] for v in part.values())
    assert parts[-1] == {}
    assert merge(got) == sim.truth(entity_types=ALL_TYPES)


def test_empty_collections_omit(sim_factory: Factory) -> None:
    """omit sends only users/contractGroups (always) and the collections that hold something."""
    data = _snapshot(sim_factory(empty_collections="omit"), json.loads(sync_body(types=["account"])))
    assert set(data) == {"users", "contractGroups", "accounts"}


# -- socket-request penalties -----------------------------------------------------------------------------


def test_authorize_penalty_ticket_in_query(sim_factory: Factory) -> None:
    """A penalised authorize is served when resent with its due ticket as a query p-ticket=...; ticketless
    retries meanwhile are penalised again."""
    sim = sim_factory()
    token = login(sim)["accessToken"]
    sim.socket_penalty("authorize", "ticket", count=1, p_time=0)
    client = Client(sim)
    first = client.authorize(token)
    assert first["s"] == 200 and set(first["d"]) == {"p-ticket", "p-time"} and first["d"]["p-time"] == 0
    other = Client(sim)
    assert "p-ticket" in other.authorize(token)["d"]  # the limiter counts the user, not the socket
    client.send("authorize", 1, token, query="p-ticket=" + first["d"]["p-ticket"])
    assert client.response(1) == {"s": 200, "i": 1}
    client.send("user/syncrequest", 2, sync_body())
    assert client.response(2)["s"] == 200
    assert sim.stats()["socket_penalties"]["authorize"] == {"issued": 2, "redeemed": 1, "outstanding": 1, "armed": 0}


def test_authorize_penalty_early_retry_and_json_body(sim_factory: Factory) -> None:
    """An early resend loses its ticket and gets a new one; the JSON-body form {"token", "p-ticket"} is served
    once the ticket is due."""
    sim = sim_factory()
    token = login(sim)["accessToken"]
    sim.socket_penalty("authorize", "ticket", count=1, p_time=60)
    client = Client(sim)
    ticket = client.authorize(token)["d"]["p-ticket"]
    client.send("authorize", 1, json.dumps({"token": token, "p-ticket": ticket}))
    early = client.response(1)
    assert early["d"]["p-ticket"] != ticket and early["d"]["p-time"] == 60
    client.send("authorize", 2, json.dumps({"token": token, "p-ticket": ticket}))
    assert "p-ticket" in client.response(2)["d"]  # the withdrawn ticket is worth nothing
    sim.socket_penalty("authorize", "ticket", count=1, p_time=0)  # re-arm with no wait, old tickets forgotten
    fresh = client.authorize(token, 3)["d"]["p-ticket"]
    client.send("authorize", 4, json.dumps({"token": token, "p-ticket": fresh}))
    assert client.response(4) == {"s": 200, "i": 4}


def test_syncrequest_penalty_ticket_in_body(sim_factory: Factory) -> None:
    """A penalised syncrequest is served when resent with "p-ticket" added to its body; without it, penalised."""
    sim = sim_factory()
    sim.socket_penalty("syncrequest", "ticket", count=1, p_time=0)
    client = connect(sim)
    client.send("user/syncrequest", 1, sync_body())
    penalty = client.response(1)
    assert penalty["s"] == 200 and set(penalty["d"]) == {"p-ticket", "p-time"}
    client.send("user/syncrequest", 2, sync_body())
    retry = client.response(2)["d"]
    assert "p-ticket" in retry and "users" not in retry
    body = {**json.loads(sync_body()), "p-ticket": retry["p-ticket"]}
    client.send("user/syncrequest", 3, json.dumps(body))
    got = client.messages(lambda m: any(x.get("i") == 3 for x in m))
    assert merge(got, 3) == sim.truth(entity_types=ALL_TYPES)
    assert len(sim.subscriptions()) == 1  # penalised requests subscribe to nothing


def test_captcha_penalty_leaves_no_ticket(sim_factory: Factory) -> None:
    """captcha answers carry p-captcha:true and no redeemable ticket; once its count is spent requests pass."""
    sim = sim_factory()
    sim.socket_penalty("syncrequest", "captcha", count=1, p_time=5)
    client = connect(sim)
    client.send("user/syncrequest", 1, sync_body())
    answer = client.response(1)["d"]
    assert answer["p-captcha"] is True and answer["p-time"] == 5 and "p-ticket" in answer
    client.send("user/syncrequest", 2, sync_body())
    assert "users" in client.response(2)["d"]
    assert sim.stats()["socket_penalties"]["syncrequest"]["outstanding"] == 0


def test_socket_penalty_over_admin_api(sim_server: Simulator) -> None:
    """POST /admin/socket_penalty arms the penalty; bad endpoint or mode is a 400."""
    admin = sim_server.admin_url
    arm = {"endpoint": "authorize", "mode": "captcha", "count": 1, "p_time": 2}
    assert http("POST", admin + "/socket_penalty", arm)[0] == 200
    assert Client(sim_server).authorize(login(sim_server)["accessToken"])["d"]["p-captcha"] is True
    assert http("POST", admin + "/socket_penalty", {**arm, "endpoint": "md/getChart"})[0] == 400
    assert http("POST", admin + "/socket_penalty", {**arm, "mode": "sometimes"})[0] == 400


# -- eviction -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("eviction", "status"), [("revoke401", 401), ("http408", 408), ("http502", 502)])
def test_evicted_session_renewal(sim_factory: Factory, eviction: str, status: int) -> None:
    """The renewal of a session evicted by the session cap answers 401, or 408/502 with an empty body;
    a live session still renews, and an unknown token is 401 in every mode."""
    sim = sim_factory(session_cap=1, eviction=eviction)
    evicted = login(sim)["accessToken"]
    survivor = login(sim)["accessToken"]
    assert http("GET", sim.rest_url + "/auth/renewaccesstoken", token=evicted) == (status, None)
    assert http("GET", sim.rest_url + "/auth/renewaccesstoken", token=survivor)[0] == 200
    assert http("GET", sim.rest_url + "/auth/renewaccesstoken", token="unknown")[0] == 401  # noqa: S106
    assert Client(sim).authorize(evicted)["s"] == 401


def test_eviction_switch_at_run_time(sim_factory: Factory) -> None:
    """configure(eviction=...) changes the answer for sessions evicted afterwards."""
    sim = sim_factory(session_cap=1)
    sim.configure(eviction="http408")
    evicted = login(sim)["accessToken"]
    login(sim)
    assert http("GET", sim.rest_url + "/auth/renewaccesstoken", token=evicted) == (408, None)


# -- split spacing ------------------------------------------------------------------------------------------


def test_split_delay_spaces_the_parts(sim_factory: Factory) -> None:
    """With split_delay each part (and the end marker) comes in its own frame at least that long after the
    previous one, and the parts still merge (with the live props between them) to the truth."""
    sim = sim_factory(snapshot_mode="split", split_chunks=3, split_end="flag", split_delay=0.25)
    client = connect(sim)
    client.send("user/syncrequest", 1, sync_body())
    arrivals: list[float] = []
    got: list[dict[str, Any]] = []
    while sum(x.get("i") == 1 for x in got) < 4:
        data = client.recv_raw()
        if data.startswith(b"a"):
            arrivals.append(time.monotonic())
            got += json.loads(data[1:])
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(gaps) == 3 and min(gaps) >= 0.2
    assert got[-1] == {"s": 200, "i": 1, "d": {"done": True}}
    mirror = merge(got)
    apply(mirror, got)
    assert mirror == sim.truth(entity_types=ALL_TYPES)
