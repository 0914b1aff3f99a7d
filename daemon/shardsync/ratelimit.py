"""Log lines a server can cause at will, limited to one per kind per interval, with a count of the rest.

A flood of unknown events, or of entities the codec refuses, is kept whole
in the change log; its log lines are not.  :class:`LineLimiter` is the pure
decision (the clock is injected): the first line of a kind in an interval is
written, later ones are counted, and the count goes out with the next line
of that kind or, when none comes, in one summary line once the interval is
over (:meth:`LineLimiter.expired`).  Kinds are the server's words (an event
name), so the table is bounded: past ``kinds`` distinct kinds in one
interval they share one overflow kind.  :class:`Throttled` applies it to a
structlog logger.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

__all__ = ["INTERVAL", "OVERFLOW", "LineLimiter", "Throttled"]

#: Seconds between two lines of one kind.
INTERVAL: Final = 10.0
#: Distinct kinds tracked at once; later ones are counted together under OVERFLOW.
KINDS: Final = 64
OVERFLOW: Final = "(other kinds)"


class _Window:
    __slots__ = ("held", "opened")

    def __init__(self, opened: float) -> None:
        self.opened = opened
        self.held = 0


class LineLimiter:
    """Decides which lines of each kind are written (pure: ``clock`` is injected)."""

    def __init__(self, clock: Callable[[], float], interval: float = INTERVAL, kinds: int = KINDS) -> None:
        if interval <= 0 or kinds < 1:
            raise ValueError("interval must be positive and kinds at least 1")
        self._clock = clock
        self.interval = interval
        self._kinds = kinds
        self._windows: dict[str, _Window] = {}
        self._next_sweep = float("inf")
        #: Closed windows that held lines back, not reported yet.
        self._due: list[tuple[str, int]] = []

    def allow(self, kind: str) -> tuple[str, int] | None:
        """None: hold this line back (it is counted).  Else write it, as ``(kind, held)``.

        ``kind`` comes back as OVERFLOW when the table is full; ``held`` is
        how many lines of that kind were held back since its last line.
        """
        now = self._clock()
        window = self._windows.get(kind)
        if window is None and len(self._windows) >= self._kinds:
            self._drop_closed(now)
            if len(self._windows) >= self._kinds:
                kind = OVERFLOW
                window = self._windows.get(kind)
        if window is not None and now - window.opened < self.interval:
            window.held += 1
            return None
        held = window.held if window is not None else 0
        self._windows[kind] = _Window(now)
        self._next_sweep = min(self._next_sweep, now + self.interval)
        return kind, held

    def expired(self) -> list[tuple[str, int]]:
        """Kinds whose interval is over with lines held back, and how many: the summaries due now.

        Cheap to call often: it looks at the table only once an interval can have ended.
        """
        now = self._clock()
        if now >= self._next_sweep:
            self._drop_closed(now)
        due, self._due = self._due, []
        return due

    def _drop_closed(self, now: float) -> None:
        """Forget every window whose interval is over; those that held lines back become due."""
        interval, kept = self.interval, {}
        for kind, window in self._windows.items():
            if now - window.opened < interval:
                kept[kind] = window
            elif window.held:
                self._due.append((kind, window.held))
        self._windows = kept
        self._next_sweep = min(w.opened for w in kept.values()) + interval if kept else float("inf")


class Throttled:
    """A structlog logger's info/warning for lines of a kind the server controls, through a LineLimiter."""

    def __init__(self, log: Any, limiter: LineLimiter) -> None:
        self.log = log
        self.limiter = limiter

    def info(self, kind: str, event: str, **fields: Any) -> None:
        self._line("info", kind, event, fields)

    def warning(self, kind: str, event: str, **fields: Any) -> None:
        self._line("warning", kind, event, fields)

    def flush(self) -> None:
        """Write the summaries due: ``log_lines_held`` with the kind and how many of its lines were held back."""
        for kind, held in self.limiter.expired():
            self.log.info("log_lines_held", kind=kind, held=held, interval=self.limiter.interval)

    def _line(self, level: str, kind: str, event: str, fields: dict[str, Any]) -> None:
        allowed = self.limiter.allow(kind)
        if allowed is not None:
            written_kind, held = allowed
            if held:
                fields["held"] = held  # lines of this kind held back since its last one
            if written_kind != kind:
                fields["limited_as"] = written_kind
            getattr(self.log, level)(event, **fields)
        # After allow(): a kind written now carries its own count instead of a summary.
        self.flush()
