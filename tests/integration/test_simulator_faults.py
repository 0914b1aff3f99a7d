"""The simulator's hostile knobs: TCP reset, refused upgrades, TLS, poison entities, stamped events."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
import websocket
from simclient import ALL_TYPES, Client, Factory, connect, http, login, merge, snapshot_of, sync_body

from polling import wait_until
from shardsync.simulator import Simulator


def _read_until_end(client: Client) -> str:
    """Read the raw TCP stream until it ends; "fin" for an orderly end, "rst" for a reset."""
    sock = client.ws.sock
    assert sock is not None
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return "rst"
    return "fin"


@pytest.mark.parametrize(("knob", "ending"), [("reset", "rst"), ("drop", "fin")])
def test_reset_sends_rst_where_drop_sends_fin(sim_factory: Factory, knob: str, ending: str) -> None:
    """reset ends the connection with a TCP RST, drop with a FIN; both only for the targeted shard."""
    sim = sim_factory(server_heartbeat=60)
    token = login(sim)["accessToken"]
    target = connect(sim, token)
    target.send("user/syncrequest", 1, sync_body(2, 0))
    target.response(1)
    other = connect(sim, token)
    other.send("user/syncrequest", 1, sync_body(2, 1))
    other.response(1)
    assert getattr(sim, knob)(remainder=0) == 1
    assert _read_until_end(target) == ending
    wait_until(lambda: sim.connections() == {1: 1}, message="only the other shard left")
    assert sim.stats()["closes"][-1]["reason"] == ("reset" if knob == "reset" else "dropped")


def test_refuse_answers_upgrades_503_while_rest_works(sim_server: Simulator) -> None:
    """During refuse(seconds) upgrades get HTTP 503 and are counted, REST and open sockets keep working;
    afterwards upgrades succeed again."""
    open_socket, _ = snapshot_of(sim_server, sync_body())
    sim_server.refuse(0.5)
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        Client(sim_server)
    assert refused.value.status_code == 503
    assert "accessToken" in login(sim_server)
    sim_server.step(2)
    assert open_socket.messages(lambda m: len(m) >= 1)[0]["e"] == "props"
    assert sim_server.stats()["refused_upgrades"] == 1
    client = wait_until(_connects(sim_server), timeout=5, message="upgrades accepted again")
    client.close()


def _connects(sim: Simulator) -> Any:
    def attempt() -> Client | None:
        try:
            return Client(sim)
        except websocket.WebSocketBadStatusException:
            return None
    return attempt


def test_refuse_zero_ends_refusal(sim_server: Simulator) -> None:
    """refuse(0) ends a running refusal at once (also over the admin API)."""
    sim_server.refuse(60)
    with pytest.raises(websocket.WebSocketBadStatusException):
        Client(sim_server)
    assert http("POST", sim_server.admin_url + "/refuse", {"seconds": 0})[0] == 200
    Client(sim_server).close()


# -- TLS -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and one for another host."""
    ca = trustme.CA()
    folder = tmp_path_factory.mktemp("tls")
    files = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem",
             "other_cert": folder / "other.pem", "other_key": folder / "other-key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    good = ca.issue_cert("127.0.0.1", "localhost")
    good.private_key_pem.write_to_path(str(files["key"]))
    good.cert_chain_pems[0].write_to_path(str(files["cert"]))
    other = ca.issue_cert("other.example")
    other.private_key_pem.write_to_path(str(files["other_key"]))
    other.cert_chain_pems[0].write_to_path(str(files["other_cert"]))
    return files


def test_tls_serves_rest_websocket_and_admin(sim_factory: Factory, tls_files: dict[str, Path]) -> None:
    """With tls_cert/tls_key the one port speaks https and wss; a client trusting the CA logs in, syncs and
    reads the admin API."""
    sim = sim_factory(tls_cert=str(tls_files["cert"]), tls_key=str(tls_files["key"]))
    assert sim.rest_url.startswith("https://") and sim.ws_url.startswith("wss://")
    context = ssl.create_default_context(cafile=str(tls_files["ca"]))
    token = login(sim, context)["accessToken"]
    client = Client(sim, sslopt={"ca_certs": str(tls_files["ca"])})
    assert client.authorize(token) == {"s": 200, "i": 0}
    client.send("user/syncrequest", 1, sync_body())
    assert merge([client.response(1)]) == sim.truth(entity_types=ALL_TYPES)
    status, stats = http("GET", sim.admin_url + "/stats", context=context)
    assert status == 200 and stats["logins"] == 1


def test_tls_refused_without_the_ca_or_for_another_host(sim_factory: Factory, tls_files: dict[str, Path]) -> None:
    """A client that does not trust the CA, or meets a certificate for another host, is refused; the server
    lives on."""
    sim = sim_factory(tls_cert=str(tls_files["cert"]), tls_key=str(tls_files["key"]))
    with pytest.raises(ssl.SSLCertVerificationError):
        Client(sim)
    other = sim_factory(tls_cert=str(tls_files["other_cert"]), tls_key=str(tls_files["other_key"]))
    with pytest.raises(ssl.SSLCertVerificationError):
        Client(other, sslopt={"ca_certs": str(tls_files["ca"])})
    Client(sim, sslopt={"ca_certs": str(tls_files["ca"])}).close()


def test_tls_options_are_validated_and_announced(tls_files: dict[str, Path]) -> None:
    """tls_cert without tls_key is refused; the process entry point announces https/wss URLs."""
    with pytest.raises(ValueError, match="go together"):
        Simulator(tls_cert=str(tls_files["cert"]))
    process = subprocess.Popen([sys.executable, "-m", "shardsync.simulator", "--port", "0", "--event-rate", "0",
                                "--tls-cert", str(tls_files["cert"]), "--tls-key", str(tls_files["key"])],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        announce = json.loads(process.stdout.readline())
        assert announce["rest_url"].startswith("https://127.0.0.1:")
        assert announce["ws_url"].startswith("wss://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(tls_files["ca"]))
        assert http("GET", announce["admin_url"] + "/stats", context=context)[0] == 200
        process.terminate()
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_unusable_tls_files_exit_78(tls_files: dict[str, Path]) -> None:
    """A certificate file that is not a certificate makes `python -m shardsync.simulator` exit 78 with a reason."""
    done = subprocess.run([sys.executable, "-m", "shardsync.simulator", "--port", "0", "--tls-cert",
                           str(tls_files["key"]), "--tls-key", str(tls_files["key"])],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 78 and "TLS certificate or key unusable" in done.stderr


# -- poison ----------------------------------------------------------------------------------------------------


def _raw_snapshot(sim: Simulator, remainder: int) -> bytes:
    """The snapshot frame as bytes (a deep poison is beyond what the json module parses)."""
    client = connect(sim)
    client.send("user/syncrequest", 1, sync_body(2, remainder))
    while not (data := client.recv_raw()).startswith(b'a[{"s":200,"i":1,'):
        pass
    return data


def test_poison_deep_in_the_next_snapshot(sim_server: Simulator) -> None:
    """A deep poison order reaches its shard's next snapshot nested 2000 deep (written by hand), and neither the
    other shard, the truth nor the history holds it."""
    truth_before = sim_server.truth()
    bad = sim_server.poison("deep", remainder=1, divisor=2)
    assert bad["kind"] == "deep" and bad["entityType"] == "order" and bad["accountId"] % 2 == 1
    raw = _raw_snapshot(sim_server, 1)
    nested = b"[" * 2000 + b"]" * 2000
    assert b'"text":' + nested in raw and b"[" * 2001 not in raw
    assert nested not in _raw_snapshot(sim_server, 0)
    assert sim_server.truth() == truth_before
    assert ("order", bad["id"]) not in sim_server.history()
    assert sim_server.stats()["poisoned"] == [bad]
    assert http("GET", sim_server.admin_url + "/truth")[0] == 200


@pytest.mark.parametrize(("kind", "bad_id"), [("bigid", 2**63), ("badtype", "poison-1")])
def test_poison_ids_in_snapshot_until_cured(sim_server: Simulator, kind: str, bad_id: object) -> None:
    """bigid/badtype orders appear (as JSON) in every later snapshot of their shard until cure(); the truth and
    a correct client's expectation (truth_of) stay without them."""
    bad = sim_server.poison(kind, remainder=0, divisor=2)
    assert bad["id"] == bad_id
    for _ in range(2):
        orders = json.loads(_raw_snapshot(sim_server, 0)[1:])[0]["d"]["orders"]
        assert [o["id"] for o in orders if o["id"] == bad_id] == [bad_id]
    assert all(key[1] != bad_id for key in sim_server.truth())
    assert sim_server.cure() == 1
    orders = json.loads(_raw_snapshot(sim_server, 0)[1:])[0]["d"]["orders"]
    assert all(o["id"] != bad_id for o in orders)


def test_poison_live_is_sent_once_as_props(sim_server: Simulator) -> None:
    """in_snapshot=false sends the poison as one live Created props to its shard and keeps it out of later
    snapshots; the admin API takes the same arguments."""
    client, _ = snapshot_of(sim_server, sync_body(2, 1))
    status, reply = http("POST", sim_server.admin_url + "/poison",
                         {"kind": "badtype", "remainder": 1, "divisor": 2, "in_snapshot": False})
    assert status == 200
    got = client.messages(lambda m: len(m) >= 1)
    assert got[0]["e"] == "props" and got[0]["d"]["eventType"] == "Created"
    assert got[0]["d"]["entity"]["id"] == reply["result"]["id"]
    assert sim_server.stats()["poisoned"] == []
    assert http("POST", sim_server.admin_url + "/poison", {"kind": "nonsense", "remainder": 1, "divisor": 2})[0] == 400


# -- stamped events ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stamp", [True, False])
def test_stamp_events_puts_ts_on_live_props(sim_factory: Factory, stamp: bool) -> None:
    """With stamp_events every live props gets a top-level "ts" (epoch seconds at writing); responses never do;
    without it no message has one."""
    sim = sim_factory(stamp_events=stamp, batch=3)
    client, _ = snapshot_of(sim, sync_body())
    before = time.time()
    changes = sim.step(6)
    got = client.messages(lambda m: len(m) >= len(changes))
    after = time.time()
    assert all(x["e"] == "props" for x in got)
    if stamp:
        assert all(set(x) == {"e", "d", "ts"} and before <= x["ts"] <= after for x in got)
    else:
        assert all(set(x) == {"e", "d"} for x in got)
    assert all("ts" not in json.loads(r[1:])[0] for r in client.raw if r.startswith(b'a[{"s"'))


def test_blank_snapshot_empties_the_next_snapshots_of_one_shard(sim_server: Simulator) -> None:
    """blank_snapshot(2, remainder=1, divisor=2): the next two snapshots of shard 1 are empty collections, the
    other shard's and later ones whole; the truth is untouched (admin API takes the same arguments)."""
    truth = sim_server.truth(2, 1, entity_types=ALL_TYPES)
    sim_server.blank_snapshot(1, remainder=1, divisor=2)
    status, reply = http("POST", sim_server.admin_url + "/blank_snapshot", {"count": 2, "remainder": 1, "divisor": 2})
    assert status == 200 and reply["ok"]
    _, other = snapshot_of(sim_server, sync_body(2, 0))
    assert other == sim_server.truth(2, 0, entity_types=ALL_TYPES)
    for _ in range(2):
        client, blank = snapshot_of(sim_server, sync_body(2, 1))
        assert blank == {}
        client.close()
    client, whole = snapshot_of(sim_server, sync_body(2, 1))
    assert whole == truth == sim_server.truth(2, 1, entity_types=ALL_TYPES)


def test_a_blank_snapshot_still_streams_live_changes(sim_server: Simulator) -> None:
    """The socket that got a blank snapshot is subscribed as usual: its shard's changes arrive as props."""
    sim_server.blank_snapshot(1)  # remainder None: any socket's next snapshot, an unsharded one too
    client, blank = snapshot_of(sim_server, sync_body())
    assert blank == {}
    changes = sim_server.mutate(count=3, remainder=0, divisor=1, deletions=0)
    props = client.messages(lambda m: sum(x.get("e") == "props" for x in m) >= len(changes))
    assert len([m for m in props if m.get("e") == "props"]) >= len(changes)


def test_purge_deletes_every_entity_of_the_types_in_one_shard(sim_server: Simulator) -> None:
    """purge(["order"], remainder=1, divisor=2) deletes shard 1's orders only, published as live Deleted props,
    and the history closes their intervals."""
    client, before = snapshot_of(sim_server, sync_body(2, 1))
    orders = {key for key in before if key[0] == "order"}
    others = {key for key in sim_server.truth(2, 0) if key[0] == "order"}
    assert orders and others
    deleted = sim_server.purge(["order"], remainder=1, divisor=2)
    assert {(c.entity_type, c.entity["id"]) for c in deleted} == orders
    assert all(c.event_type == "Deleted" for c in deleted)
    truth = sim_server.truth(2, 1)
    assert not any(key[0] == "order" for key in truth)
    assert {key for key in sim_server.truth(2, 0) if key[0] == "order"} == others
    got = client.messages(lambda m: sum(x.get("e") == "props" for x in m) >= len(orders))
    assert {(m["d"]["entityType"], m["d"]["entity"]["id"]) for m in got if m.get("e") == "props"} == orders
    history = sim_server.history()
    assert all(history[key][-1][1] is not None for key in orders)


@pytest.mark.parametrize("entity_list", ["never", "always"])
def test_stamp_entities_puts_ts_into_copies_of_live_entities(sim_factory: Factory, entity_list: str) -> None:
    """With stamp_entities every live props entity (object or list) carries "ts" (epoch seconds at writing)
    while the truth's own entities and the snapshot do not."""
    sim = sim_factory(stamp_entities=True, entity_list=entity_list)
    client, snapshot = snapshot_of(sim, sync_body())
    assert all("ts" not in entity for entity in snapshot.values())
    before = time.time()
    changes = sim.step(4)
    got = client.messages(lambda m: len(m) >= len(changes))
    after = time.time()
    entities = [e for x in got for e in (x["d"]["entity"] if entity_list == "always" else [x["d"]["entity"]])]
    assert entities and all(before <= e["ts"] <= after for e in entities)
    assert all("ts" not in x for x in got)  # stamp_events is a switch of its own
    assert all("ts" not in entity for entity in sim.truth().values())
