"""Unit tests for the worker's link to its parent: token, permits, stop, heartbeats, SIGTERM; over real pipes."""

from __future__ import annotations

import contextlib
import os
import selectors
import time
from collections.abc import Iterator

import pytest
import structlog

from shardsync import ipc
from shardsync.ipc import ShardState
from shardsync.secrets import fingerprint
from shardsync.worker import parent
from shardsync.worker.parent import ParentLink, Stopping, Vitals, process_figures


class Link:
    """A ParentLink on a real inbox pipe and selector, with everything it sent."""

    def __init__(self, *, permits: bool = True, interval: float = 60.0, wake: bool = False) -> None:
        self.inbox_r, self.inbox_w = os.pipe()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK) if wake else (-1, -1)
        self.selector = selectors.DefaultSelector()
        self.sent: list[ipc.Message] = []
        self.alive = True
        self.now = 1000.0
        self.clock_is_real = False
        self.vitals = Vitals()
        self.link = ParentLink(
            self.inbox_r,
            self._send,
            self.selector,
            vitals=self.vitals,
            heartbeat_interval=interval,
            permits=permits,
            clock=self._clock,
            log=structlog.get_logger(),
            wake_fd=self.wake_r if wake else None,
        )

    def _send(self, message: ipc.Message) -> bool:
        self.sent.append(message)
        return self.alive

    def _clock(self) -> float:
        return time.monotonic() if self.clock_is_real else self.now

    def give(self, message: ipc.Message) -> None:
        assert ipc.send(self.inbox_w, message)

    def of(self, kind: type[ipc.Message]) -> list[ipc.Message]:
        return [m for m in self.sent if isinstance(m, kind)]

    def beats(self) -> list[ipc.Heartbeat]:
        return [m for m in self.sent if isinstance(m, ipc.Heartbeat)]

    def close(self) -> None:
        self.selector.close()
        for fd in (self.inbox_r, self.inbox_w, self.wake_r, self.wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


@pytest.fixture
def pair() -> Iterator[Link]:
    link = Link()
    yield link
    link.close()


def test_await_token_waits_for_the_parent_s_token(pair: Link) -> None:
    """await_token reports waiting_token and returns the token the parent sent."""
    pair.give(ipc.Token("tok-1", 0.0))
    assert pair.link.await_token() == "tok-1"
    assert pair.vitals.state is ShardState.WAITING_TOKEN
    assert [m.state for m in pair.beats()] == [ShardState.WAITING_TOKEN]


def test_a_rejected_token_is_reported_by_fingerprint_and_ignored_if_sent_again(pair: Link) -> None:
    """After reject_token the parent gets NeedToken with a fingerprint only, and the same token is not taken again."""
    pair.give(ipc.Token("tok-1", 0.0))
    pair.link.await_token()
    pair.link.reject_token("tok-1")
    assert pair.link.token is None
    [need] = pair.of(ipc.NeedToken)
    assert need == ipc.NeedToken(rejected=fingerprint("tok-1")) and "tok-1" not in repr(need)
    pair.give(ipc.Token("tok-1", 0.0))
    pair.clock_is_real = True
    pair.link.wait(time.monotonic() + 0.05, state=ShardState.WAITING_TOKEN, until=lambda: pair.link.token is not None)
    assert pair.link.token is None
    pair.give(ipc.Token("tok-2", 0.0))
    assert pair.link.await_token() == "tok-2"


def test_take_permit_asks_waits_and_uses_the_permit_up(pair: Link) -> None:
    """Each connect asks for a permit (NeedPermit), waits in waiting_permit until one comes, and consumes it."""
    pair.give(ipc.Permit())
    pair.link.take_permit()
    assert len(pair.of(ipc.NeedPermit)) == 1 and pair.vitals.state is ShardState.WAITING_PERMIT
    pair.give(ipc.Permit())
    pair.link.take_permit()
    assert len(pair.of(ipc.NeedPermit)) == 2


def test_a_permit_that_came_early_is_used_without_asking() -> None:
    """A permit already received when the worker wants to connect is used at once, without NeedPermit."""
    pair = Link()
    try:
        pair.give(ipc.Permit())
        pair.give(ipc.Token("tok", 0.0))
        pair.link.await_token()  # reads both
        pair.link.take_permit()
        assert pair.of(ipc.NeedPermit) == []
    finally:
        pair.close()


def test_without_permits_nothing_is_asked() -> None:
    """With permits off, take_permit returns at once and sends nothing."""
    pair = Link(permits=False)
    try:
        pair.link.take_permit()
        pair.link.take_permit()
        assert pair.sent == []
    finally:
        pair.close()


def test_stop_from_the_parent_raises_stopping(pair: Link) -> None:
    """A Stop message in the inbox ends any wait with Stopping."""
    pair.give(ipc.Stop())
    with pytest.raises(Stopping):
        pair.link.await_token()


def test_the_parent_gone_raises_stopping(pair: Link) -> None:
    """The inbox's writer closing (the parent died) ends any wait with Stopping."""
    os.close(pair.inbox_w)
    pair.inbox_w = -1
    with pytest.raises(Stopping):
        pair.link.wait(None, state=ShardState.BACKOFF)


def test_a_corrupt_inbox_raises_stopping(pair: Link) -> None:
    """Bytes that are not a frame of messages end the worker rather than being guessed at."""
    os.write(pair.inbox_w, b"\x00\x00\x00\x02{}")
    with pytest.raises(Stopping):
        pair.link.await_token()


def test_sigterm_through_the_wakeup_fd_raises_stopping() -> None:
    """A byte on the signal wakeup fd (SIGTERM arrived) ends any wait with Stopping."""
    pair = Link(wake=True)
    try:
        os.write(pair.wake_w, b"\x0f")
        with pytest.raises(Stopping):
            pair.link.wait(None, state=ShardState.BACKOFF)
    finally:
        pair.close()


def test_heartbeat_reports_the_vitals(pair: Link) -> None:
    """A heartbeat carries state and counters from the Vitals, the frame age by the clock, and the mirror's size."""
    v = pair.vitals
    v.state, v.connected_since, v.last_frame_at = ShardState.LIVE, 1.5, 999.75
    v.frames, v.events, v.reconnects, v.last_error, v.mirror = 10, 7, 2, "boom", [1, 2, 3]
    v.last_event_at, v.snapshot_seconds, v.quarantined = 1234.5, 2.5, 4
    v.committed(0.02, at=1240.0)
    pair.link.beat(busy_for=4.0)
    [sent] = pair.sent
    assert sent.rss_bytes > 0 and sent.cpu_seconds > 0 and sent.open_fds > 0  # this process's own, from /proc
    expected = ipc.Heartbeat(
        state=ShardState.LIVE,
        connected_since=1.5,
        last_frame_age=0.25,
        frames=10,
        events=7,
        entities=3,
        reconnects=2,
        last_error="boom",
        busy_for=4.0,
        rss_bytes=sent.rss_bytes,
        cpu_seconds=sent.cpu_seconds,
        open_fds=sent.open_fds,
        last_event_at=1234.5,
        last_commit_at=1240.0,
        snapshot_seconds=2.5,
        commits=(*(int(bound >= 0.02) for bound in ipc.COMMIT_BUCKETS), 1),
        commit_seconds=0.02,
        quarantined=4,
    )
    assert sent == expected
    assert pair.link.next_beat == 1000.0 + 60.0


def test_heartbeat_while_disconnected_has_no_ages(pair: Link) -> None:
    """Without a connection (and before the sink is open) the heartbeat has no frame age and zero entities."""
    pair.link.beat()
    [beat] = pair.beats()
    assert (beat.connected_since, beat.last_frame_age, beat.entities) == (None, None, 0)


def test_state_changes_are_told_at_once_and_repeats_are_not(pair: Link) -> None:
    """set_state sends a heartbeat when the state changes or a busy time is announced, not for the same state."""
    pair.link.set_state(ShardState.CONNECTING, busy_for=10.0)
    pair.link.set_state(ShardState.CONNECTING)
    pair.link.set_state(ShardState.AUTHORIZING)
    pair.link.set_state(ShardState.AUTHORIZING, busy_for=3.0)
    pair.link.busy(5.0)
    beats = pair.beats()
    assert [(b.state, b.busy_for) for b in beats] == [
        (ShardState.CONNECTING, 10.0),
        (ShardState.AUTHORIZING, 0.0),
        (ShardState.AUTHORIZING, 3.0),
        (ShardState.AUTHORIZING, 5.0),
    ]


def test_a_parent_that_no_longer_reads_raises_stopping(pair: Link) -> None:
    """When a heartbeat cannot be delivered (the pipe is broken), the worker stops."""
    pair.alive = False
    with pytest.raises(Stopping):
        pair.link.beat()


def test_wait_returns_at_its_deadline_sending_heartbeats_meanwhile() -> None:
    """wait(until_time) returns once the clock reaches it, having sent heartbeats on their interval."""
    pair = Link(interval=0.02)
    pair.clock_is_real = True
    try:
        start = time.monotonic()
        pair.link.wait(start + 0.1, state=ShardState.BACKOFF)
        assert time.monotonic() >= start + 0.1
        beats = pair.beats()
        assert len(beats) >= 2 and all(b.state is ShardState.BACKOFF for b in beats)
    finally:
        pair.close()


def test_wait_returns_at_once_when_its_deadline_has_come(pair: Link) -> None:
    """A wait whose deadline is now returns without sleeping, having only told the parent the state."""
    pair.link.next_beat = pair.now + 60.0
    pair.link.wait(pair.now, state=ShardState.BACKOFF)
    assert [b.state for b in pair.beats()] == [ShardState.BACKOFF]


def test_sigterm_interrupts_only_inside_interruptible() -> None:
    """The SIGTERM handler does nothing normally and raises Stopping inside an interruptible() block."""
    parent.on_terminate(15, None)
    with pytest.raises(Stopping), parent.interruptible():
        parent.on_terminate(15, None)
    parent.on_terminate(15, None)  # reset on the way out, even by an exception


def test_commit_latencies_land_in_cumulative_buckets() -> None:
    """A 3 ms commit counts in every bucket from 5 ms up and in +Inf; the sum and the last commit time follow."""
    vitals = Vitals()
    vitals.committed(0.003, at=100.0)
    vitals.committed(20.0, at=101.0)
    bounds = ipc.COMMIT_BUCKETS
    assert vitals.commits == [int(b >= 0.003) for b in bounds] + [2]
    assert vitals.commit_seconds == pytest.approx(20.003)
    assert vitals.last_commit_at == 101.0


def test_process_figures_are_this_process_s_own() -> None:
    """RSS, CPU seconds and open descriptors come from /proc/self and are plausible for a Python process."""
    rss, cpu, fds = process_figures()
    assert 5 << 20 < rss < 4 << 30
    assert cpu > 0
    before = fds
    r, w = os.pipe()
    try:
        assert process_figures()[2] == before + 2
    finally:
        os.close(r)
        os.close(w)
