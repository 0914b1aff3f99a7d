"""structlog setup: JSON lines (journald, files, pipes) or console (a tty).

One pure structlog pipeline, no stdlib handler for our own records:

    contextvars -> level -> UTC timestamp -> pid -> stack/exception (no locals)
    -> redaction -> JSON (orjson) or console

Every record reaches the stream with **one** ``write`` (newline included) and
a JSON record is kept below ``PIPE_BUF`` (:mod:`shardsync.logrecord`), so lines
from the parent and many forked workers sharing one pipe never interleave.

When stderr is the journal (``$JOURNAL_STREAM`` names it), each line starts
with the syslog priority of its level (``<3>`` for error, see
:mod:`shardsync.journal`), which journald strips and files as ``PRIORITY``.

Third-party stdlib loggers (websocket-client, websockets, psycopg) are routed
through :class:`structlog.stdlib.ProcessorFormatter` into the same shape.

Secrets: values under secret-looking keys are replaced by ``***`` anywhere in
the record; every registered secret string (:func:`shardsync.secrets.register_secret`) is
replaced inside any string, after exceptions were rendered to text.

Loggers are never cached (``cache_logger_on_first_use=False``): a worker calls
:func:`reconfigure_after_fork` right after fork.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from typing import IO, Any, Final

import structlog
from structlog.dev import ConsoleRenderer, plain_traceback
from structlog.processors import ExceptionRenderer, JSONRenderer, StackInfoRenderer, TimeStamper
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

from shardsync import journal
from shardsync.logrecord import serialize
from shardsync.secrets import MASK, is_secret_key, redact_text, register_secret

__all__ = [
    "add_pid",
    "configure_logging",
    "get_logger",
    "reconfigure_after_fork",
    "redact",
    "renders_json",
]

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# --------------------------------------------------------------------------
# redaction (the registry itself lives in shardsync.secrets)

# structlog/logging internals that must reach the renderers untouched
_PASSTHROUGH_KEYS: Final = frozenset({"exc_info", "_record", "_from_structlog"})


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return _redact_mapping(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_redact_value(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return redact_text(bytes(value).decode("utf-8", "backslashreplace"))
    # anything else is rendered to text here, so the text is scrubbed too
    return redact_text(str(value))


def _redact_mapping(mapping: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        skey = redact_text(key if isinstance(key, str) else str(key))
        if key in _PASSTHROUGH_KEYS:
            out[skey] = value
        elif is_secret_key(skey):
            out[skey] = MASK
        else:
            out[skey] = _redact_value(value)
    return out


def redact(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Processor: mask secret-keyed values (recursively) and registered secret strings."""
    return _redact_mapping(event_dict)


def add_pid(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Processor: the pid at call time (workers fork; never cached)."""
    event_dict["pid"] = os.getpid()
    return event_dict


# --------------------------------------------------------------------------
# output: one write per record


class _Writer:
    """Writes one record with one ``os.write`` (or one ``stream.write``), ``<N>``-prefixed on the journal."""

    def __init__(self, stream: IO[Any]) -> None:
        self.stream = stream
        self.fd: int | None = None
        self.text = isinstance(stream, io.TextIOBase)
        try:
            self.fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self.fd = None
        if self.fd is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.flush()  # nothing of the stream's own buffer may follow our lines
        self.journal = self.fd is not None and journal.is_journal_fd(self.fd, os.environ.get("JOURNAL_STREAM"))

    def write(self, line: bytes, priority: int = journal.INFO) -> None:
        if self.journal:
            line = journal.mark(line, priority)
        try:
            if self.fd is not None:
                view = memoryview(line)
                while view:  # one call unless a regular file takes a short write
                    written = os.write(self.fd, view)
                    view = view[written:]
            elif self.text:
                self.stream.write(line.decode("utf-8", "replace"))
                self.stream.flush()
            else:
                self.stream.write(line)
                self.stream.flush()
        except (OSError, ValueError):
            pass  # nowhere left to report it; a logger must not crash the daemon


def _at(priority: int) -> Any:
    def write(self: LineLogger, message: str | bytes) -> None:
        self._write(message, priority)

    return write


class LineLogger:
    """The wrapped logger: every method writes its message plus ``\\n`` at once.

    structlog calls the method named after the record's level, which is how
    the line gets its journald priority.
    """

    def __init__(self, writer: _Writer) -> None:
        self._writer = writer

    def _write(self, message: str | bytes, priority: int) -> None:
        data = message if isinstance(message, bytes) else message.encode("utf-8", "replace")
        self._writer.write(data + b"\n", priority)

    def msg(self, message: str | bytes) -> None:
        """Write *message* as one line."""
        self._write(message, journal.INFO)

    log = msg
    debug = _at(journal.DEBUG)
    info = _at(journal.INFO)
    warn = warning = _at(journal.WARNING)
    err = error = exception = failure = _at(journal.ERR)
    critical = fatal = _at(journal.CRIT)


class _LineHandler(logging.Handler):
    """Root handler for third-party stdlib loggers, writing through the same writer."""

    def __init__(self, writer: _Writer) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # never raise out of logging
            self.handleError(record)
            return
        self._writer.write(text.encode("utf-8", "replace") + b"\n", journal.priority_of_levelno(record.levelno))


class _ScrubbedConsole:
    """ConsoleRenderer without locals; registered secrets scrubbed from the final text."""

    def __init__(self, colors: bool) -> None:
        self._renderer = ConsoleRenderer(colors=colors, exception_formatter=plain_traceback)

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        return redact_text(self._renderer(logger, name, event_dict))


# --------------------------------------------------------------------------
# configuration

_state: dict[str, Any] = {}
_handler: logging.Handler | None = None


def _isatty(stream: IO[Any]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def configure_logging(
    *,
    fmt: str = "auto",
    level: str = "info",
    stream: IO[Any] | None = None,
    secrets: Iterable[str] = (),
    lib_level: str = "warning",
) -> None:
    """Configure structlog and route stdlib logging into it.

    *fmt* is ``json``, ``console`` or ``auto`` (console on a tty); *stream*
    defaults to ``sys.stderr`` at call time. Third-party stdlib loggers pass
    at *lib_level* or above (never below *level*). Safe to call again.
    """
    global _handler  # noqa: PLW0603 - the one root handler we own
    out = sys.stderr if stream is None else stream
    fmt = fmt.lower()
    if fmt not in ("json", "console", "auto"):
        raise ValueError(f"unknown log format {fmt!r}")
    try:
        min_level = _LEVELS[level.lower()]
        min_lib_level = max(_LEVELS[lib_level.lower()], min_level)
    except KeyError as exc:
        raise ValueError(f"unknown log level {exc.args[0]!r}") from None
    for secret in secrets:
        register_secret(secret)
    _state.update(fmt=fmt, level=level, stream=stream, lib_level=lib_level)

    console = not renders_json(fmt, out)
    writer = _Writer(out)
    line_logger = LineLogger(writer)
    stamp = TimeStamper(fmt="iso", utc=True)

    exc_renderer: Processor
    renderer: Processor
    lib_renderer: Processor
    if console:
        # ConsoleRenderer formats exc_info itself (plain traceback, no locals)
        exc_renderer = _identity
        renderer = lib_renderer = _ScrubbedConsole(colors=_isatty(out))
    else:
        exc_renderer = ExceptionRenderer(ExceptionDictTransformer(show_locals=False, use_rich=False))
        renderer = JSONRenderer(serializer=serialize)
        lib_renderer = JSONRenderer(serializer=_serialize_text)

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            add_pid,
            StackInfoRenderer(),
            exc_renderer,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=lambda *_args: line_logger,
        context_class=dict,
        cache_logger_on_first_use=False,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            stamp,
            add_pid,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            StackInfoRenderer(),
            exc_renderer,
            redact,
            lib_renderer,
        ],
    )
    handler = _LineHandler(writer)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(min_lib_level)
    _handler = handler
    logging.captureWarnings(True)


def renders_json(fmt: str, stream: IO[Any] | None = None) -> bool:
    """Whether :func:`configure_logging` with *fmt* writes JSON to *stream* (default ``sys.stderr``)."""
    out = sys.stderr if stream is None else stream
    return fmt.lower() == "json" or (fmt.lower() == "auto" and not _isatty(out))


def _identity(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    return event_dict


def _serialize_text(event_dict: Mapping[str, Any], **_: Any) -> str:
    return serialize(event_dict).decode("utf-8")


def reconfigure_after_fork(shard: int, divisor: int) -> None:
    """In a freshly forked worker: drop the inherited context, re-apply the config, bind the shard."""
    structlog.contextvars.clear_contextvars()
    if _state:
        configure_logging(
            fmt=_state["fmt"], level=_state["level"], stream=_state["stream"], lib_level=_state["lib_level"]
        )
    structlog.contextvars.bind_contextvars(shard=shard, divisor=divisor)


def get_logger(name: str | None = None) -> Any:
    """A structlog logger that follows later reconfiguration (a worker reconfigures after fork), optionally named."""
    if name is None:
        return structlog.get_logger()
    return _NamedLogger(name)


class _NamedLogger:
    """A logger carrying ``logger=name``, bound afresh on every call.

    ``structlog.get_logger().bind(...)`` would freeze today's configuration in the
    returned logger, and ``logger`` cannot be an initial value of
    ``structlog.get_logger`` (it is the name of its first parameter); binding per
    call keeps the public API and costs a few microseconds only where we log.
    """

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def bind(self, **values: Any) -> Any:
        return structlog.get_logger().bind(logger=self._name, **values)

    def __getattr__(self, method: str) -> Any:
        return getattr(structlog.get_logger().bind(logger=self._name), method)
