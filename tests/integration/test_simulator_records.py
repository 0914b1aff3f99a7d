"""The simulator's records for oracles: subscriptions per synced socket and the truth's existence history."""

from __future__ import annotations

import itertools
import time

import pytest
from simclient import Factory, connect, http, login, sync_body

from polling import wait_until
from shardsync.simulator import Simulator
from shardsync.simulator.history import History


def _records(sim: Simulator) -> dict[int, dict[str, object]]:
    return {int(r["conn"]): r for r in sim.subscriptions()}


def test_subscription_records_open_and_close(sim_server: Simulator) -> None:
    """Each synced socket gets one record with its shard and times; closed_at is set when it ends (server drop,
    client close), and stays null for a live one."""
    before = time.time()
    token = login(sim_server)["accessToken"]  # one login: a login per socket would evict the older ones
    zero = connect(sim_server, token)
    zero.send("user/syncrequest", 1, sync_body(2, 0))
    zero.response(1)
    one = connect(sim_server, token)
    one.send("user/syncrequest", 1, sync_body(2, 1))
    one.response(1)
    plain = connect(sim_server, token)
    plain.send("user/syncrequest", 1, sync_body())
    plain.response(1)
    connect(sim_server, token)  # authorized, never synced: no record
    records = sim_server.subscriptions()
    assert len(records) == 3
    r0, r1, rp = records
    assert (r0["divisor"], r0["remainder"], r0["expression"]) == (2, 0, "modAccountId")
    assert (r1["divisor"], r1["remainder"]) == (2, 1)
    assert (rp["divisor"], rp["remainder"], rp["expression"]) == (None, None, None)
    for record in records:
        assert set(record) == {"conn", "divisor", "remainder", "expression", "synced_at", "snapshot_sent_at",
                               "closed_at"}
        assert before <= record["synced_at"] <= record["snapshot_sent_at"] <= time.time()
        assert record["closed_at"] is None
    sim_server.drop(remainder=0)
    wait_until(lambda: _records(sim_server)[r0["conn"]]["closed_at"] is not None, message="drop recorded")
    one.close()
    wait_until(lambda: _records(sim_server)[r1["conn"]]["closed_at"] is not None, message="client close recorded")
    final = _records(sim_server)
    assert final[rp["conn"]]["closed_at"] is None
    assert final[r0["conn"]]["synced_at"] < final[r0["conn"]]["closed_at"] <= time.time()
    assert http("GET", sim_server.admin_url + "/stats")[1]["subscriptions"] == list(final.values())


def test_snapshot_sent_at_is_the_last_part(sim_factory: Factory) -> None:
    """With split parts spaced by split_delay, snapshot_sent_at is when the last part (the end marker) went out."""
    sim = sim_factory(snapshot_mode="split", split_chunks=3, split_end="empty", split_delay=0.2)
    client = connect(sim)
    client.send("user/syncrequest", 1, sync_body())
    client.messages(lambda m: any(x.get("i") == 1 for x in m))
    record = sim.subscriptions()[0]
    assert record["snapshot_sent_at"] is None  # the first part is here, the others are still on their way
    client.messages(lambda m: sum(x.get("i") == 1 for x in m) >= 3)
    record = wait_until(lambda: next((r for r in sim.subscriptions() if r["snapshot_sent_at"]), None))
    assert record["snapshot_sent_at"] - record["synced_at"] >= 3 * 0.2 - 0.05


def test_replaced_syncrequest_ends_the_old_subscription(sim_factory: Factory) -> None:
    """With second_sync=replace the first record is closed and a second one opens for the same socket."""
    sim = sim_factory(second_sync="replace")
    client = connect(sim)
    client.send("user/syncrequest", 1, sync_body(2, 0))
    client.response(1)
    client.send("user/syncrequest", 2, sync_body(2, 1))
    client.response(2)
    first, second = sim.subscriptions()
    assert first["conn"] == second["conn"]
    assert first["closed_at"] is not None and second["closed_at"] is None
    assert (first["remainder"], second["remainder"]) == (0, 1)


def test_no_two_live_subscriptions_per_remainder_after_reconnects(sim_server: Simulator) -> None:
    """Subscriptions drawn from the records of a drop-and-reconnect sequence never overlap for one remainder."""
    for _ in range(3):
        client = connect(sim_server)
        client.send("user/syncrequest", 1, sync_body(2, 1))
        client.response(1)
        sim_server.drop(remainder=1)
        assert client.closed_code() == 1006
    records = sim_server.subscriptions()
    assert len(records) == 3 and all(r["closed_at"] is not None for r in records)
    spans = sorted((r["synced_at"], r["closed_at"]) for r in records)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


# -- history ---------------------------------------------------------------------------------------------------


def test_history_intervals_follow_creations_and_deletions(sim_server: Simulator) -> None:
    """Every entity has an interval from start; a deletion closes its interval at the time it happened, a new
    entity opens one; the admin API says the same as Simulator.history()."""
    start = time.time()
    initial = sim_server.history()
    assert set(initial) == set(sim_server.truth())
    assert all(len(v) == 1 and v[0][1] is None and v[0][0] <= start for v in initial.values())
    before = time.time()
    changes = sim_server.mutate(8, remainder=0, divisor=2, deletions=2)
    after = time.time()
    deleted = {c.key for c in changes if c.event_type == "Deleted"}
    created = {c.key for c in changes if c.event_type == "Created"}
    assert deleted and created
    history = sim_server.history()
    for key in deleted:
        assert key not in sim_server.truth()
        ((opened, closed),) = history[key]
        assert closed is not None and before <= closed <= after and opened <= closed
    for key in created:
        ((opened, closed),) = history[key]
        assert closed is None and before <= opened <= after
    entity_type, entity_id = next(iter(deleted))
    status, one = http("GET", f"{sim_server.admin_url}/history?entity_type={entity_type}&id={entity_id}")
    assert status == 200 and one == {"entityType": entity_type, "id": entity_id,
                                     "intervals": [list(history[(entity_type, entity_id)][0])]}
    status, bulk = http("GET", sim_server.admin_url + "/history")
    assert status == 200
    assert {(r["entityType"], r["id"]): [tuple(i) for i in r["intervals"]] for r in bulk["history"]} == history
    assert http("GET", sim_server.admin_url + "/history?entity_type=order")[0] == 400


def test_history_reopens_a_recreated_key() -> None:
    """A key deleted and created again gets a second interval; updates and repeated deletions change nothing."""
    now = [100.0]
    history = History(clock=lambda: now[0])
    key = ("order", 1)
    history.created(key)
    now[0] = 101.0
    history.created(key)  # an update of an existing entity
    history.deleted(key)
    now[0] = 102.0
    history.deleted(key)
    history.created(key)
    assert history.of(key) == [(100.0, 101.0), (102.0, None)]
    assert history.of(("order", 2)) == []
    assert len(history) == 1


@pytest.mark.parametrize("accounts", [200])
def test_history_bulk_covers_a_larger_truth(sim_factory: Factory, accounts: int) -> None:
    """The bulk history of a larger truth lists every key, each with its one open interval."""
    sim = sim_factory(accounts=accounts, users=20)
    status, bulk = http("GET", sim.admin_url + "/history")
    assert status == 200 and len(bulk["history"]) == len(sim.truth()) > accounts * 5
