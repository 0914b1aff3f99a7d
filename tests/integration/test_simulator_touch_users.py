"""The touch_users knob: user-level changes that every shard's socket receives (the chaos campaign's stream)."""

from __future__ import annotations

from typing import Any

import pytest
from simclient import ALL_TYPES, Client, Factory, apply, connect, http, login, merge, sync_body

from shardsync.simulator import Simulator


def _live(sim: Simulator, divisor: int, remainder: int, token: str) -> tuple[Client, dict[tuple[str, int], Any]]:
    client = connect(sim, token)
    client.send("user/syncrequest", 1, sync_body(divisor, remainder))
    return client, merge([client.response(1)])


def test_touch_users_reaches_every_shard_and_changes_the_truth(sim_factory: Factory) -> None:
    """Each touched user arrives as one Updated props on every shard's socket (reference_routing=all), the
    truth holds the new entity, and each shard's mirror (snapshot + props) equals its truth afterwards."""
    sim = sim_factory(reference_routing="all")
    token = login(sim)["accessToken"]
    shards = {r: _live(sim, 3, r, token) for r in range(3)}
    changes = sim.touch_users(2)
    assert [c.event_type for c in changes] == ["Updated", "Updated"]
    assert all(c.entity_type == "user" for c in changes)
    for remainder, (client, mirror) in shards.items():
        got = client.messages(lambda m: sum(x.get("e") == "props" for x in m) >= 2)
        props = [m["d"] for m in got if m.get("e") == "props"]
        assert [(p["entityType"], p["eventType"]) for p in props] == [("user", "Updated")] * 2
        apply(mirror, got)
        assert mirror == sim.truth(3, remainder, "modAccountId", ALL_TYPES)
    last = changes[-1].entity
    assert sim.truth()[("user", last["id"])] == last


def test_touch_users_only_reaches_remainder_zero_under_zero_routing(sim_factory: Factory) -> None:
    """With reference_routing=zero, user-level changes go to remainder 0 only."""
    sim = sim_factory(reference_routing="zero")
    token = login(sim)["accessToken"]
    zero, _ = _live(sim, 2, 0, token)
    one, _ = _live(sim, 2, 1, token)
    sim.touch_users(1)
    got = zero.messages(lambda m: any(x.get("e") == "props" for x in m))
    assert [m["d"]["entityType"] for m in got if m.get("e") == "props"] == ["user"]
    # A change of shard 1 comes after anything published before it on that socket.
    sim.mutate(count=1, remainder=1, divisor=2, deletions=0)
    got = one.messages(lambda m: any(x.get("e") == "props" for x in m))
    props = [m["d"]["entityType"] for m in got if m.get("e") == "props"]
    assert props and "user" not in props


def test_touch_users_admin_api_and_validation(sim_server: Simulator) -> None:
    """POST /admin/touch_users answers the changes it made; a count below 1 is a 400."""
    status, body = http("POST", sim_server.admin_url + "/touch_users", {"count": 1})
    assert status == 200 and body["result"][0]["entityType"] == "user"
    assert http("POST", sim_server.admin_url + "/touch_users", {"count": 0})[0] == 400
    with pytest.raises(ValueError, match="count"):
        sim_server.touch_users(0)
