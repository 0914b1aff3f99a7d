"""journald priorities without systemd: the ``<N>`` prefix only on the stream $JOURNAL_STREAM names."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import pytest
import structlog

from shardsync import journal, logrecord, logs


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    if logs._handler is not None:
        root.removeHandler(logs._handler)
        logs._handler = None
    root.setLevel(level)
    logs._state.clear()
    structlog.reset_defaults()


def stream_id(f: IO[Any]) -> str:
    """What systemd puts in $JOURNAL_STREAM for *f*: ``device:inode`` of its fd."""
    info = os.fstat(f.fileno())
    return f"{info.st_dev}:{info.st_ino}"


@pytest.fixture
def out(tmp_path: Path) -> Iterator[IO[bytes]]:
    with open(tmp_path / "stderr", "w+b", buffering=0) as f:
        yield f


def lines(f: IO[bytes]) -> list[bytes]:
    f.seek(0)
    return f.read().splitlines()


def test_fd_matches_only_its_own_device_and_inode(out: IO[bytes], tmp_path: Path) -> None:
    """An fd is the journal only when $JOURNAL_STREAM names its exact device:inode."""
    assert journal.is_journal_fd(out.fileno(), stream_id(out))
    with open(tmp_path / "other", "wb") as other:
        assert not journal.is_journal_fd(out.fileno(), stream_id(other))
    device, inode = stream_id(out).split(":")
    assert not journal.is_journal_fd(out.fileno(), f"{device}:{int(inode) + 1}")
    for junk in (None, "", "12", "a:b", f"{device}:", f":{inode}", f"{device}:{inode}:0"):
        assert not journal.is_journal_fd(out.fileno(), junk), junk


def test_closed_fd_is_not_the_journal(tmp_path: Path) -> None:
    """A closed descriptor never counts as the journal (fstat fails, no exception)."""
    f = open(tmp_path / "x", "wb")  # noqa: SIM115 - closed on purpose before the check
    ident, fd = stream_id(f), f.fileno()
    f.close()
    assert not journal.is_journal_fd(fd, ident)


def test_each_level_gets_its_syslog_priority(out: IO[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    """On the journal stream every record starts with <N> of its level (debug 7 ... critical 2), then pure JSON."""
    monkeypatch.setenv("JOURNAL_STREAM", stream_id(out))
    logs.configure_logging(fmt="json", level="debug", stream=out)
    log = logs.get_logger("t")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("x")
    got = [(line[:3], orjson.loads(line[3:])["event"]) for line in lines(out)]
    assert got == [(b"<7>", "d"), (b"<6>", "i"), (b"<4>", "w"), (b"<3>", "e"), (b"<2>", "c"), (b"<3>", "x")]


def test_stdlib_records_get_their_priority(out: IO[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    """Third-party stdlib loggers routed through the same writer are prefixed by their level too."""
    monkeypatch.setenv("JOURNAL_STREAM", stream_id(out))
    logs.configure_logging(fmt="json", stream=out)
    logging.getLogger("websocket").warning("lib warning")
    logging.getLogger("websocket").error("lib error")
    assert [line[:3] for line in lines(out)] == [b"<4>", b"<3>"]
    assert orjson.loads(lines(out)[0][3:])["event"] == "lib warning"


def test_other_stream_gets_no_prefix(out: IO[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An inherited $JOURNAL_STREAM naming another file (stderr redirected) leaves the lines plain JSON."""
    with open(tmp_path / "journal", "wb") as elsewhere:
        monkeypatch.setenv("JOURNAL_STREAM", stream_id(elsewhere))
    logs.configure_logging(fmt="json", stream=out)
    logs.get_logger().error("plain")
    (line,) = lines(out)
    assert orjson.loads(line)["event"] == "plain"


def test_no_journal_stream_no_prefix(out: IO[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without $JOURNAL_STREAM (a terminal, supervisord, a pipe) nothing is prefixed."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    logs.configure_logging(fmt="json", stream=out)
    logs.get_logger().warning("plain")
    (line,) = lines(out)
    assert line.startswith(b"{")


def test_console_lines_each_prefixed(out: IO[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    """A multi-line console record (traceback) carries the priority on every line, each its own journal entry."""
    monkeypatch.setenv("JOURNAL_STREAM", stream_id(out))
    logs.configure_logging(fmt="console", stream=out)
    try:
        raise RuntimeError("deep")
    except RuntimeError:
        logs.get_logger().exception("failed")
    got = lines(out)
    assert len(got) > 3
    assert all(line.startswith(b"<3>") for line in got), got


def test_prefixed_record_stays_below_pipe_buf(out: IO[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The <N> prefix is reserved in the size limit: a record that just fits unprefixed still fits with "<6>"."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    with open(tmp_path / "probe", "w+b", buffering=0) as probe:
        logs.configure_logging(fmt="json", stream=probe)
        logs.get_logger().info("big", blob="x" * 1000)
        (line,) = lines(probe)
    # a blob that makes the bare JSON record one byte shorter than the limit without the reserve
    blob = "x" * (1000 + logrecord.MAX_RECORD_BYTES - 3 - len(line))
    monkeypatch.setenv("JOURNAL_STREAM", stream_id(out))
    logs.configure_logging(fmt="json", stream=out)
    logs.get_logger().info("big", blob=blob)
    logs.get_logger().info("huge", blob="x" * 100_000, many=list(range(5000)), **{f"k{i}": i for i in range(500)})
    out.seek(0)
    for record in out.read().splitlines(keepends=True):
        assert record.startswith(b"<6>") and record.endswith(b"\n")
        assert len(record) < logrecord.MAX_RECORD_BYTES, len(record)


def test_mark_prefixes_every_line() -> None:
    """mark() puts the tag before each line and keeps the final newline."""
    assert journal.mark(b"a\nb\n", journal.ERR) == b"<3>a\n<3>b\n"
    assert journal.mark(b"one", journal.WARNING) == b"<4>one"


def run_with_journal_stderr(tmp_path: Path, *args: str, matching: bool) -> list[bytes]:
    """Run the CLI with stderr a file that $JOURNAL_STREAM names (or names another file); its stderr lines."""
    path = tmp_path / "stderr.log"
    with open(path, "wb") as err, open(tmp_path / "unrelated", "wb") as unrelated:
        env = {**os.environ, "JOURNAL_STREAM": stream_id(err if matching else unrelated)}
        subprocess.run([sys.executable, "-m", "shardsync", *args], stderr=err, stdout=subprocess.DEVNULL,
                       env=env, check=False, timeout=60)
    return path.read_bytes().splitlines()


def test_check_config_errors_filed_as_err_on_the_journal(tmp_path: Path) -> None:
    """check-config (ExecReload) prefixes its error lines with <3> on the journal: a failed reload shows in -p err."""
    config = tmp_path / "broken.toml"
    config.write_text("[tradovate]\ncid = 1\n")
    got = run_with_journal_stderr(tmp_path, "check-config", "-q", "-c", str(config), matching=True)
    assert got and all(line.startswith(b"<3>") for line in got), got
    plain = run_with_journal_stderr(tmp_path, "check-config", "-q", "-c", str(config), matching=False)
    assert plain and not any(line.startswith(b"<") for line in plain), plain


def test_run_early_error_on_the_journal_is_prefixed_json(tmp_path: Path) -> None:
    """`run` refusing its config under journald writes <3> followed by one JSON record."""
    config = tmp_path / "broken.toml"
    config.write_text('[tradovate]\ncid = 1\n[log]\nformat = "json"\n')
    (line,) = run_with_journal_stderr(tmp_path, "run", "-c", str(config), matching=True)
    assert line.startswith(b"<3>")
    assert orjson.loads(line[3:])["event"] == "config_invalid"
