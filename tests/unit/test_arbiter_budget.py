"""The real Arbiter in-process (fakes of ``arbiter_fakes``) owning one API budget: pauses, parks, evictions,
checked tokens, whole frames to the workers, and what /status and /metrics say about them."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from arbiter_fakes import Parent

from shardsync import ipc
from shardsync.auth import Failed, Grant, Locked
from shardsync.ipc import ShardState
from shardsync.supervisor import metrics
from shardsync.supervisor.status import render_status
from shardsync.supervisor.tokencheck import MAX_TOKEN
from shardsync.supervisor.tokens import DoLogin

LOCKOUT = 600.0
SYNC = "user/syncrequest"
TEXT = "Invalid entityTypes: 'fills'"


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    """Build in-process parents from config sections; each is cleaned up after the test."""
    parents: list[Parent] = []

    def build(sections: dict[str, dict[str, Any]] | None = None) -> Parent:
        merged: dict[str, dict[str, Any]] = {
            "tradovate": {"lockout_backoff": LOCKOUT, "captcha_backoff": 2 * LOCKOUT},
            # The tests let hours pass (idle() keeps workers beating); permits are limited by the budget only.
            "supervisor": {"heartbeat_timeout": 3600.0, "max_concurrent_connects": 16},
        }
        for name, values in (sections or {}).items():
            merged.setdefault(name, {}).update(values)
        parent = Parent(tmp_path / f"shardsync-{len(parents)}.toml", merged)
        parents.append(parent)
        return parent

    yield build
    for parent in parents:
        parent.close()


def booted(make: Any, sections: dict[str, dict[str, Any]] | None = None) -> Parent:
    parent: Parent = make(sections)
    parent.step(8)
    parent.log_in()
    parent.all_live()
    for worker in parent.fakes.running().values():
        worker.received()
    return parent


def idle(parent: Parent, seconds: float, chunk: float = 60.0) -> None:
    """Let ``seconds`` pass, every running worker beating in its current state at least every ``chunk``."""
    while seconds > 0:
        for remainder, worker in parent.fakes.running().items():
            beat = parent.arbiter.shards[remainder].beat
            worker.beat(beat.state if beat is not None else ShardState.WAITING_PERMIT)
        parent.step()
        parent.advance(min(chunk, seconds))
        seconds -= chunk


def permitted(parent: Parent, remainders: list[int]) -> list[int]:
    """Workers of ``remainders`` ask for a permit; which of them get one in the next passes."""
    for remainder in remainders:
        parent.fakes.worker(remainder).send(ipc.NeedPermit())
    parent.step(2)
    return [r for r in remainders if any(isinstance(m, ipc.Permit) for m in parent.fakes.worker(r).received())]


def refused(parent: Parent, remainder: int, *, endpoint: str = SYNC, status: int = 400, text: str = TEXT) -> None:
    """The worker was refused, then asks for its next permit (its own short backoff is the test's to skip)."""
    worker = parent.fakes.worker(remainder)
    worker.send(ipc.Rejected(endpoint, status, text))
    worker.beat(ShardState.BACKOFF)
    parent.step()


def status(parent: Parent) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(render_status(parent.arbiter.snapshot()))
    return doc


def shard(parent: Parent, remainder: int) -> dict[str, Any]:
    return next(s for s in status(parent)["shards"] if s["remainder"] == remainder)


def scrape(parent: Parent) -> str:
    return metrics.render(parent.arbiter.snapshot).decode()


# --- pauses -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["ws429", "quota", "captcha"])
def test_a_throttled_shard_pauses_every_shards_handshakes(make: Any, reason: str) -> None:
    """One worker's Throttled: no worker gets a permit for lockout_backoff (captcha: captcha_backoff), then all
    do; /status, STATUS= and /metrics say so."""
    parent = booted(make)
    backoff = 2 * LOCKOUT if reason == "captcha" else LOCKOUT
    with structlog.testing.capture_logs() as logs:
        parent.fakes.worker(1).send(ipc.Throttled(reason, "authorize", "Too Many Requests"))
        parent.step()
    assert next(line for line in logs if line["event"] == "connections_paused")["reason"] == reason
    assert permitted(parent, [0, 1, 2, 3]) == []
    budget = status(parent)["budget"]
    assert budget["state"] == "paused" and budget["reason"] == reason
    assert budget["text"] == "authorize: Too Many Requests"
    assert "paused" in parent.arbiter.table.status_line()
    text = scrape(parent)
    assert "shardsync_connections_paused 1.0" in text
    assert f'shardsync_throttles_total{{reason="{reason}"}} 1.0' in text
    idle(parent, backoff - 1.0)
    parent.step(2)
    assert not any(isinstance(m, ipc.Permit) for w in parent.fakes.workers for m in w.received())
    idle(parent, 1.0)
    parent.step(8)
    got = [r for r in range(4) if any(isinstance(m, ipc.Permit) for m in parent.fakes.worker(r).received())]
    assert got == [0, 1, 2, 3]
    assert status(parent)["budget"]["state"] == "ok"


def test_a_throttle_during_a_pause_extends_it(make: Any) -> None:
    """A second 429 halfway through the pause moves its end to then + lockout_backoff."""
    parent = booted(make)
    parent.fakes.worker(0).send(ipc.Throttled("ws429", "authorize", ""))
    parent.step()
    idle(parent, LOCKOUT / 2)
    parent.fakes.worker(2).send(ipc.Throttled("quota", "user/syncrequest", "ConnectionQuotaReached"))
    parent.step()
    idle(parent, LOCKOUT / 2 + 1)
    assert permitted(parent, [0, 1]) == []
    idle(parent, LOCKOUT / 2)
    parent.step(4)
    assert all(any(isinstance(m, ipc.Permit) for m in parent.fakes.worker(r).received()) for r in (0, 1))


def test_live_shards_keep_streaming_through_a_pause(make: Any) -> None:
    """A pause touches only new handshakes: no live worker gets a signal or a Stop."""
    parent = booted(make)
    parent.fakes.worker(3).send(ipc.Throttled("ws429", "authorize", ""))
    parent.step(3)
    for worker in parent.fakes.running().values():
        assert not worker.signals and not any(isinstance(m, ipc.Stop) for m in worker.received())


def test_a_rest_lockout_pauses_handshakes_too(make: Any) -> None:
    """A 429 on the token renewal is the same API user's lock-out: handshakes wait lockout_backoff as well."""
    parent = booted(make, {"tradovate": {"renew_before": 60.0}})
    idle(parent, 3600.0 - 60.0)
    helper = parent.fakes.helpers[-1]
    assert helper.action is not None and not isinstance(helper.action, DoLogin)
    helper.answer(Locked(429))
    parent.step()
    assert status(parent)["budget"]["reason"] == "rest429"
    assert permitted(parent, [0, 2]) == []


# --- parked configuration errors -----------------------------------------------------------------------


def test_three_refusals_park_a_shard_with_the_servers_text_and_others_keep_their_permits(make: Any) -> None:
    """The third syncrequest refusal parks the shard: no more permits for it, its /status says parked with the
    server's text, a metric counts its refusals; the other shards are untouched."""
    parent = booted(make)
    for attempt in range(3):
        assert permitted(parent, [2]) == [2], f"attempt {attempt + 1} is allowed"
        with structlog.testing.capture_logs() as logs:
            refused(parent, 2)
    assert [line["shard"] for line in logs if line["event"] == "shard_parked"] == [2]
    assert permitted(parent, [2]) == []
    assert permitted(parent, [0, 1]) == [0, 1]
    line = shard(parent, 2)
    assert line["state"] == "parked" and line["parked"] is True and line["rejections"] == 3
    assert "user/syncrequest refused with 400" in line["parked_reason"] and TEXT in line["parked_reason"]
    assert TEXT in line["last_error"]
    assert status(parent)["summary"]["parked"] == 1
    assert "1 parked" in parent.arbiter.table.status_line()
    text = scrape(parent)
    assert 'shardsync_shard_rejections_total{shard="2"} 3.0' in text
    assert 'shardsync_shard_refused_parked{shard="2"} 1.0' in text
    assert 'shardsync_shard_refused_parked{shard="0"} 0.0' in text


def test_sixteen_shards_refused_alike_spend_three_attempts_only_on_the_first_two(make: Any) -> None:
    """With two shards parked for one refusal, every other shard refused the same way parks at its first."""
    parent = booted(make, {"sync": {"divisor": 16}})
    attempts = dict.fromkeys(range(16), 0)
    for _ in range(5):
        for remainder in permitted(parent, list(range(16))):
            attempts[remainder] += 1
            refused(parent, remainder)
        idle(parent, 1.0)
    assert sum(attempts.values()) == 3 + 3 + 14
    assert all(shard(parent, r)["parked"] for r in range(16))


def test_a_parked_shard_retries_once_per_lockout_backoff(make: Any) -> None:
    """After lockout_backoff a parked shard gets one permit; asking again soon after gets none."""
    parent = booted(make)
    for _ in range(3):
        permitted(parent, [1])
        refused(parent, 1)
    parent.fakes.worker(1).send(ipc.NeedPermit())
    idle(parent, LOCKOUT - 1.0)
    parent.step(2)
    assert not any(isinstance(m, ipc.Permit) for m in parent.fakes.worker(1).received())
    idle(parent, 1.0)
    parent.step(2)
    assert any(isinstance(m, ipc.Permit) for m in parent.fakes.worker(1).received())
    parent.fakes.worker(1).beat(ShardState.BACKOFF)  # a network error this time, no Rejected
    idle(parent, 5.0)
    assert permitted(parent, [1]) == []
    assert shard(parent, 1)["parked"] is True


def test_a_reload_releases_parked_shards(make: Any) -> None:
    """SIGHUP (an operator acted) lifts the park at once: the shard's waiting request gets its permit."""
    parent = booted(make)
    for _ in range(3):
        permitted(parent, [3])
        refused(parent, 3)
    parent.fakes.worker(3).send(ipc.NeedPermit())
    parent.step(2)
    assert not any(isinstance(m, ipc.Permit) for m in parent.fakes.worker(3).received())
    parent.reload({"tradovate": {"lockout_backoff": LOCKOUT}})
    parent.step(2)
    assert any(isinstance(m, ipc.Permit) for m in parent.fakes.worker(3).received())
    assert shard(parent, 3)["parked"] is False and shard(parent, 3)["rejections"] == 3


def test_a_parked_shard_that_gets_live_again_releases_the_others(make: Any) -> None:
    """A retried shard that reaches live (the server stopped refusing) frees the shards parked alike."""
    parent = booted(make)
    for _ in range(3):
        for remainder in permitted(parent, [0, 1, 2, 3]):
            refused(parent, remainder)
    assert all(shard(parent, r)["parked"] for r in range(4))
    parent.fakes.worker(0).send(ipc.NeedPermit())
    idle(parent, LOCKOUT)
    parent.step(2)
    assert any(isinstance(m, ipc.Permit) for m in parent.fakes.worker(0).received())
    parent.fakes.worker(0).beat(ShardState.LIVE)
    parent.step(4)
    assert not any(shard(parent, r)["parked"] for r in range(4))
    assert sorted(permitted(parent, [1, 2, 3])) == [1, 2, 3]


# --- eviction -------------------------------------------------------------------------------------------


def test_authorize_refused_by_two_shards_logs_in_again(make: Any) -> None:
    """authorize refused with 500 by two shards, with a token that worked before: a fresh login starts now."""
    parent = booted(make)
    assert len(parent.fakes.helpers) == 1
    with structlog.testing.capture_logs() as logs:
        for remainder in (0, 1):
            refused(parent, remainder, endpoint="authorize", status=500, text="session not found")
        parent.step(2)
    assert [line for line in logs if line["event"] == "session_evicted"]
    assert len(parent.fakes.helpers) == 2 and parent.fakes.helpers[1].action == DoLogin()
    parent.log_in("tok-2")
    for remainder in range(4):
        tokens = [m.value for m in parent.fakes.worker(remainder).received() if isinstance(m, ipc.Token)]
        assert tokens == ["tok-2"]
    assert not any(shard(parent, r)["parked"] for r in range(4))


def test_renewals_answered_408_three_times_log_in_again(make: Any) -> None:
    """An evicted session's renewal answers 408: after the third in a row a login is started, and its token
    reaches every worker."""
    parent = booted(make, {"tradovate": {"renew_before": 60.0}})
    idle(parent, 3600.0 - 60.0)
    for _ in range(3):
        helper = parent.fakes.helpers[-1]
        assert helper.action is not None and not isinstance(helper.action, DoLogin)
        helper.answer(Failed("HTTP 408", 408))
        parent.step()
        idle(parent, 10.0, chunk=1.0)
    assert parent.fakes.helpers[-1].action == DoLogin()
    parent.log_in("tok-fresh")
    for worker in parent.fakes.running().values():
        assert [m.value for m in worker.received() if isinstance(m, ipc.Token)] == ["tok-fresh"]


def test_an_eviction_found_by_renewal_ends_the_pause_its_quota_shutdowns_caused(make: Any) -> None:
    """The evicted sockets' ConnectionQuotaReached paused every handshake; once renewals answer 408 three times
    (eviction), the pause ends and the shards reconnect with the fresh login's token at once."""
    parent = booted(make, {"tradovate": {"renew_before": 60.0}})
    parent.fakes.worker(0).send(ipc.Throttled("quota", "user/syncrequest", "ConnectionQuotaReached"))
    parent.step()
    assert status(parent)["budget"]["state"] == "paused"
    idle(parent, 3600.0 - 60.0 - LOCKOUT + 10.0)  # renewal due while the (renewed) pause still runs
    parent.fakes.worker(1).send(ipc.Throttled("quota", "user/syncrequest", "ConnectionQuotaReached"))
    parent.step()
    idle(parent, LOCKOUT - 30.0)
    assert status(parent)["budget"]["state"] == "paused"
    for _ in range(3):
        for _ in range(100):  # the next renewal (or its retry) starts
            if not parent.fakes.helpers[-1].exited:
                break
            idle(parent, 1.0, chunk=1.0)
        helper = parent.fakes.helpers[-1]
        assert helper.action is not None and not isinstance(helper.action, DoLogin)
        helper.answer(Failed("HTTP 408", 408))
        parent.step()
    parent.step()
    assert parent.fakes.helpers[-1].action == DoLogin()
    assert status(parent)["budget"]["state"] == "ok"
    parent.log_in("tok-fresh")
    assert permitted(parent, [0, 1, 2, 3]) == [0, 1, 2, 3]


# --- tokens checked at the parent, carried whole -------------------------------------------------------


@pytest.mark.parametrize("token", ["tok\nen", "", "x" * (MAX_TOKEN + 1), "tok en"], ids=["newline", "empty",
                                                                                         "too long", "space"])
def test_an_unusable_token_never_reaches_a_worker_or_a_log(make: Any, token: str) -> None:
    """The login server answers a bad token: no worker is sent anything, the log never holds it, the shards wait
    for a token (not crash), and the login is retried."""
    parent: Parent = make()
    parent.step(8)
    with structlog.testing.capture_logs() as logs:
        parent.fakes.helpers[-1].answer(Grant(token, parent.wall() + 3600.0, 7))
        parent.step(2)
    for worker in parent.fakes.running().values():
        assert not [m for m in worker.received() if isinstance(m, ipc.Token)]
        assert not worker.signals
    backoff = [line for line in logs if line["event"] == "token_backoff"]
    assert backoff and "unusable answer" in backoff[0]["why"]
    if token.strip():
        assert token not in repr(logs)
    assert status(parent)["login"]["state"] == "failed"
    parent.advance(5.0)
    assert len(parent.fakes.helpers) == 2


def test_an_8_kib_token_reaches_every_worker_whole(make: Any) -> None:
    """A token of exactly 8 KiB travels the real pipes intact, to every worker."""
    parent: Parent = make()
    parent.step(8)
    token = ("AbC-_.~9" * 1024)[:MAX_TOKEN]
    parent.log_in(token)
    for worker in parent.fakes.running().values():
        assert [m.value for m in worker.received() if isinstance(m, ipc.Token)] == [token]


def test_a_large_frame_into_a_nearly_full_pipe_arrives_whole_once_the_worker_reads(make: Any) -> None:
    """A worker's pipe with less room than an 8 KiB token frame: the part that does not fit waits in the
    parent and goes when the worker speaks again; the worker reads every frame intact and in order."""
    parent: Parent = make({"sync": {"divisor": 1}})
    parent.step(4)
    worker = parent.fakes.worker(0)
    write_end = parent.arbiter.shards[0].inbox_w
    assert write_end is not None
    filler = ipc.encode(ipc.Permit())
    filled = 0
    while True:  # the worker is busy: its pipe fills up with whole frames
        try:
            written = os.write(write_end, filler)
        except BlockingIOError:
            break
        assert written == len(filler)
        filled += 1
    assert worker.inbox is not None
    freed = 200 * len(filler)  # the worker takes a few (whole) frames: some room, less than the token needs
    assert len(os.read(worker.inbox.fd, freed)) == freed
    token = "T" * MAX_TOKEN
    parent.log_in(token)
    assert parent.arbiter.shards[0]._outgoing, "the frame did not fit whole and waits"
    messages = worker.received()
    worker.beat(ShardState.WAITING_TOKEN)
    parent.step()
    messages += worker.received()
    assert sum(isinstance(m, ipc.Permit) for m in messages) == filled - 200
    assert [m.value for m in messages if isinstance(m, ipc.Token)] == [token]
    assert not parent.arbiter.shards[0]._outgoing


def test_a_sigstopped_worker_is_owed_at_most_a_bound(make: Any) -> None:
    """A worker that never reads: tell() refuses once OUTGOING_MAX bytes are owed, never blocks, never grows."""
    from shardsync.supervisor.shard import OUTGOING_MAX

    parent: Parent = make({"sync": {"divisor": 1}})
    parent.step(4)
    state = parent.arbiter.shards[0]
    sent = [state.tell(ipc.Token("T" * MAX_TOKEN, 1.0)) for _ in range(100)]
    assert not all(sent) and len(state._outgoing) <= OUTGOING_MAX
    parent.signal(signal.SIGTERM)
