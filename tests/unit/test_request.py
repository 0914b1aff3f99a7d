"""Unit tests for what a session awaits: the answer's deadline, a time penalty's wait and resend."""

from __future__ import annotations

import math

from shardsync.protocol import Penalty
from shardsync.worker.request import MAX_PENALTY_WAIT, Awaiting


def test_an_answer_is_due_response_timeout_after_the_request() -> None:
    """Before the deadline nothing is due; at it, a timeout."""
    a = Awaiting.sent("authorize", 0, 100.0, 30.0)
    assert a.deadline() == 130.0
    assert a.due(129.9) is None and a.due(130.0) == "timeout"


def test_a_penalty_waits_p_time_then_resends_and_the_answer_is_due_again() -> None:
    """p-time later a resend is due (no timeout meanwhile); after it, the answer's deadline starts over."""
    a = Awaiting.sent("user/syncrequest", 1, 100.0, 30.0)
    assert a.penalised(Penalty("T", 45.0, False), 110.0) == 45.0
    assert a.ticket == "T" and a.penalties == 1 and a.deadline() == 155.0
    assert a.due(140.0) is None  # past the original answer deadline: the penalty suspends it
    assert a.due(155.0) == "resend"
    a.resent(2, 156.0, 30.0)
    assert a.request_id == 2 and a.deadline() == 186.0 and a.due(185.0) is None and a.due(186.0) == "timeout"


def test_absurd_penalty_times_are_bounded() -> None:
    """A negative p-time waits 0, an infinite or huge one at most MAX_PENALTY_WAIT."""
    cases = ((-5.0, 0.0), (math.inf, MAX_PENALTY_WAIT), (1e12, MAX_PENALTY_WAIT), (math.nan, MAX_PENALTY_WAIT))
    for p_time, wait in cases:
        a = Awaiting.sent("authorize", 0, 0.0, 30.0)
        assert a.penalised(Penalty("T", p_time, False), 0.0) == wait
