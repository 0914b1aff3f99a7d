"""Tests for shardsync.logs: one JSON line per record, redacted, under PIPE_BUF."""

# ruff: noqa: S105, S106 - fake secrets are the point of these tests

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog

from shardsync import logrecord, logs, secrets


class CountingBuffer(io.BytesIO):
    """A binary stream without a file descriptor that counts write() calls."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: Any) -> int:
        self.writes.append(bytes(data))
        return super().write(data)


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    if logs._handler is not None:
        root.removeHandler(logs._handler)
        logs._handler = None
    root.setLevel(level)
    secrets.clear_secrets()
    logs._state.clear()
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def records(buf: io.BytesIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in buf.getvalue().splitlines()]


def json_buffer(**kw: Any) -> CountingBuffer:
    buf = CountingBuffer()
    logs.configure_logging(fmt="json", stream=buf, **kw)
    return buf


def test_json_line_has_core_fields() -> None:
    """A JSON record carries an ISO UTC timestamp, level, event and the current pid."""
    buf = json_buffer()
    logs.get_logger("t").info("hello", n=3)
    (rec,) = records(buf)
    assert rec["event"] == "hello" and rec["level"] == "info" and rec["n"] == 3
    assert rec["pid"] == os.getpid()
    assert rec["logger"] == "t"
    assert rec["timestamp"].endswith("Z") and "T" in rec["timestamp"]
    assert list(rec)[:3] == ["timestamp", "level", "event"]


def test_level_filtering() -> None:
    """Records below the configured level are dropped."""
    buf = json_buffer(level="warning")
    log = logs.get_logger()
    log.info("quiet")
    log.warning("loud")
    assert [r["event"] for r in records(buf)] == ["loud"]


def test_auto_is_json_off_a_tty() -> None:
    """fmt=auto renders JSON when the stream is not a terminal."""
    buf = CountingBuffer()
    logs.configure_logging(fmt="auto", stream=buf)
    logs.get_logger().info("x")
    assert records(buf)[0]["event"] == "x"


def test_logger_made_before_configure_follows_it() -> None:
    """A module-level logger created before configuration uses the later configuration."""
    log = logs.get_logger("early")
    buf = json_buffer()
    log.info("late")
    assert records(buf)[0]["logger"] == "early"


def test_reconfigure_after_fork_binds_shard_and_clears_context() -> None:
    """reconfigure_after_fork drops inherited context and binds shard (and divisor) into every record."""
    buf = json_buffer()
    structlog.contextvars.bind_contextvars(inherited="parent-only")
    logs.reconfigure_after_fork(3, 16)
    logs.get_logger().info("in worker")
    (rec,) = records(buf)
    assert rec["shard"] == 3 and rec["divisor"] == 16
    assert "inherited" not in rec


def test_redaction_by_key_nested() -> None:
    """Values under secret-looking keys are masked at any depth, other values kept."""
    buf = json_buffer()
    logs.get_logger().info(
        "login",
        password="pw1",
        request={"name": "u", "body": [{"accessToken": "t1", "p-ticket": "pt"}], "Authorization": "Bearer x"},
        db_password="pw2",
        dsn="postgresql://u:pw3@h/d",
        credentials={"username": "u"},
        sec="s1",
        seconds=5,
    )
    (rec,) = records(buf)
    assert rec["password"] == rec["db_password"] == rec["dsn"] == rec["credentials"] == rec["sec"] == "***"
    assert rec["request"]["body"][0] == {"accessToken": "***", "p-ticket": "***"}
    assert rec["request"]["Authorization"] == "***" and rec["request"]["name"] == "u"
    assert rec["seconds"] == 5


def test_redact_processor_directly() -> None:
    """The exported redact processor masks keys and registered values without a pipeline."""
    secrets.register_secret("tok-abcdef")
    out = logs.redact(None, "info", {"event": "got tok-abcdef", "mdAccessToken": "x", "items": ("a", {"token": 1})})
    assert out == {"event": "got ***", "mdAccessToken": "***", "items": ["a", {"token": "***"}]}


def test_registered_secret_redacted_in_exception_json() -> None:
    """A registered secret inside an exception message and its traceback never reaches JSON output."""
    buf = json_buffer(secrets=["hunter2-token"])
    log = logs.get_logger()
    try:
        try:
            raise KeyError("inner hunter2-token")
        except KeyError as inner:
            raise RuntimeError("authorize failed with hunter2-token") from inner
    except RuntimeError:
        log.exception("boom", detail="sent hunter2-token")
    raw = buf.getvalue()
    assert b"hunter2-token" not in raw
    (rec,) = records(buf)
    assert rec["detail"] == "sent ***"
    assert rec["exception"][0]["exc_type"] == "RuntimeError"
    assert rec["exception"][0]["exc_value"] == "authorize failed with ***"
    assert all("locals" not in frame for stack in rec["exception"] for frame in stack["frames"])


def test_secret_registered_at_runtime() -> None:
    """A secret registered after configuration (token renewal) is masked from then on."""
    buf = json_buffer()
    log = logs.get_logger()
    secrets.register_secret("renewed-token-123")
    log.info("token renewed-token-123 in use")
    secrets.register_secret("abc")  # shorter than 4 chars: ignored
    log.info("abc stays")
    assert [r["event"] for r in records(buf)] == ["token *** in use", "abc stays"]


def test_registered_secret_redacted_in_console_traceback() -> None:
    """Console output scrubs registered secrets from the rendered traceback."""
    buf = io.StringIO()
    logs.configure_logging(fmt="console", stream=buf, secrets=["hunter2-token"])
    try:
        raise RuntimeError("bad hunter2-token")
    except RuntimeError:
        logs.get_logger().exception("boom", token="t")
    text = buf.getvalue()
    assert "hunter2-token" not in text
    assert "RuntimeError: bad ***" in text and "Traceback (most recent call last)" in text
    assert "token=***" in text


def test_console_format() -> None:
    """fmt=console renders a human-readable line, not JSON."""
    buf = io.StringIO()
    logs.configure_logging(fmt="console", stream=buf)
    logs.get_logger("c").info("started", shards=4)
    text = buf.getvalue()
    assert "started" in text and "shards=4" in text and "[c]" in text
    assert not text.startswith("{")
    assert text.count("\n") == 1


def test_huge_record_truncated_below_pipe_buf() -> None:
    """A huge record (long strings, long lists, huge exception) stays valid JSON under 4096 bytes."""
    buf = json_buffer()
    try:
        raise ValueError("m" * 50_000)
    except ValueError:
        logs.get_logger().exception("big", blob="x" * 100_000, items=list(range(10_000)))
    (line,) = buf.getvalue().splitlines(keepends=True)
    assert len(line) < logrecord.MAX_RECORD_BYTES
    rec = orjson.loads(line)
    assert rec["truncated"] is True and rec["event"] == "big"
    assert rec["exception"][0]["exc_type"] == "ValueError"
    assert rec["exception"][0]["exc_value"].startswith("mmmm")
    assert "truncated" in rec["blob"]


def test_deep_traceback_truncated() -> None:
    """A deep recursion traceback is cut to fit, keeping the exception type and message."""
    buf = json_buffer()

    def recurse(n: int) -> None:
        if n == 0:
            raise OSError("deep failure")
        recurse(n - 1)

    try:
        recurse(200)
    except OSError:
        logs.get_logger().exception("deep")
    (line,) = buf.getvalue().splitlines(keepends=True)
    assert len(line) < logrecord.MAX_RECORD_BYTES
    rec = orjson.loads(line)
    assert rec["exception"][0]["exc_type"] == "OSError"
    assert rec["exception"][0]["exc_value"] == "deep failure"


def test_too_many_keys_falls_back_to_essentials() -> None:
    """A record with hundreds of keys keeps timestamp, level, event and pid under the limit."""
    buf = json_buffer()
    logs.get_logger().info("wide", **{f"k{i}": "v" * 40 for i in range(500)})
    (line,) = buf.getvalue().splitlines(keepends=True)
    assert len(line) < logrecord.MAX_RECORD_BYTES
    rec = orjson.loads(line)
    assert rec["event"] == "wide" and rec["truncated"] is True and rec["dropped_keys"] == 500
    assert {"timestamp", "level", "pid"} <= set(rec)


def test_one_record_is_one_write() -> None:
    """Every record, newline included, reaches the stream in exactly one write call."""
    buf = json_buffer()
    log = logs.get_logger()
    log.info("a")
    try:
        raise RuntimeError("x")
    except RuntimeError:
        log.exception("b")
    log.info("c", blob="y" * 10_000)
    logging.getLogger("websocket").warning("lib")
    assert len(buf.writes) == 4
    assert all(w.endswith(b"\n") and w.count(b"\n") == 1 for w in buf.writes)


def test_concurrent_processes_never_interleave_on_a_pipe() -> None:
    """Records from forked processes sharing one pipe arrive as whole lines."""
    r, w = os.pipe()
    with os.fdopen(w, "wb", buffering=0) as wstream:
        logs.configure_logging(fmt="json", stream=wstream)
        children = []
        for shard in range(3):
            pid = os.fork()
            if pid == 0:  # child
                try:
                    logs.reconfigure_after_fork(shard, 3)
                    log = logs.get_logger()
                    for i in range(200):
                        log.info("tick", i=i, pad="z" * 3000)
                finally:
                    os._exit(0)
            children.append(pid)
    chunks = []
    with os.fdopen(r, "rb") as rstream:
        while chunk := rstream.read(65536):
            chunks.append(chunk)
    for pid in children:
        os.waitpid(pid, 0)
    lines = b"".join(chunks).splitlines()
    assert len(lines) == 600
    recs = [orjson.loads(line) for line in lines]
    assert {r["shard"] for r in recs} == {0, 1, 2}
    assert len({r["pid"] for r in recs}) == 3


def test_stdlib_logging_same_shape() -> None:
    """Third-party stdlib loggers come out as the same JSON shape, redacted, at warning and above."""
    buf = json_buffer(secrets=["lib-secret-1"])
    structlog.contextvars.bind_contextvars(shard=2)
    lib = logging.getLogger("websocket")
    lib.info("not shown")
    lib.warning("reconnecting with %s", "lib-secret-1")
    try:
        raise ConnectionError("refused lib-secret-1")
    except ConnectionError:
        lib.exception("failed")
    recs = records(buf)
    assert [r["event"] for r in recs] == ["reconnecting with ***", "failed"]
    first, second = recs
    assert first["level"] == "warning" and first["logger"] == "websocket" and first["shard"] == 2
    assert first["pid"] == os.getpid() and first["timestamp"].endswith("Z")
    assert second["exception"][0]["exc_value"] == "refused ***"
    assert b"lib-secret-1" not in buf.getvalue()


def test_reconfigure_replaces_the_root_handler() -> None:
    """Configuring twice leaves exactly one shardsync handler on the root logger."""
    json_buffer()
    buf = json_buffer()
    ours = [h for h in logging.getLogger().handlers if isinstance(h, logs._LineHandler)]
    assert len(ours) == 1
    logging.getLogger("psycopg").error("once")
    assert [r["event"] for r in records(buf)] == ["once"]


def test_bad_arguments_rejected() -> None:
    """Unknown formats and levels raise ValueError."""
    with pytest.raises(ValueError, match="format"):
        logs.configure_logging(fmt="xml")
    with pytest.raises(ValueError, match="level"):
        logs.configure_logging(level="loud")
