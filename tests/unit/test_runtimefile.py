"""The runtime file (where the status listener is bound) and the listener's lifetime across start and reload."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from arbiter_fakes import Parent, config_text

from shardsync.config import load_config
from shardsync.runtimefile import read_runtime, remove_runtime, runtime_path, write_runtime
from shardsync.statusclient import fetch_status


def settings_for(tmp_path: Path, sink: dict[str, Any], name: str = "host.toml") -> tuple[Any, str]:
    path = tmp_path / name
    path.write_text(config_text({"sink": sink}))
    return load_config(str(path)), str(path)


def test_the_path_rule_runtime_directory_then_sink_directory_then_beside_the_config(tmp_path: Path) -> None:
    """$RUNTIME_DIRECTORY/status.json first; else in the sqlite/jsonl state directory; else beside the config."""
    sqlite, config = settings_for(tmp_path, {"kind": "sqlite", "path": str(tmp_path / "state")})
    assert runtime_path(sqlite, config, {"RUNTIME_DIRECTORY": "/run/shardsync:/run/other"}) == \
        "/run/shardsync/status.json"
    assert runtime_path(sqlite, config, {}) == str(tmp_path / "state" / "daemon-status.json")
    jsonl, config = settings_for(tmp_path, {"kind": "jsonl", "path": "rel/state"})
    assert runtime_path(jsonl, config, {}) == os.path.join("rel/state", "daemon-status.json")
    pg, config = settings_for(tmp_path, {"kind": "postgres", "dsn": "dbname=x"}, "host-2.toml")
    assert runtime_path(pg, config, {}) == str(tmp_path / "host-2.status.json")


def test_a_runtime_file_naming_a_dead_process_is_stale(tmp_path: Path) -> None:
    """read_runtime returns the document while its pid lives, None once it is gone or the file is garbage."""
    path = str(tmp_path / "d" / "status.json")
    write_runtime(path, pid=os.getpid(), host="127.0.0.1", port=4321, url="http://127.0.0.1:4321/status",
                  config="x.toml", started_at=1.0)
    doc = read_runtime(path)
    assert doc is not None and doc["port"] == 4321 and doc["config"] == os.path.abspath("x.toml")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    write_runtime(path, pid=int(dead.stdout), host="127.0.0.1", port=1, url="http://127.0.0.1:1/status",
                  config="x.toml", started_at=1.0)
    assert read_runtime(path) is None
    Path(path).write_bytes(b"{not json")
    assert read_runtime(path) is None
    assert read_runtime(str(tmp_path / "missing.json")) is None


def test_remove_runtime_leaves_a_newer_daemons_file(tmp_path: Path) -> None:
    """Only the process named in the file removes it."""
    path = str(tmp_path / "status.json")
    write_runtime(path, pid=os.getpid(), host="h", port=1, url="u", config="c", started_at=0.0)
    remove_runtime(path, os.getpid() + 1)
    assert os.path.exists(path)
    remove_runtime(path, os.getpid())
    assert not os.path.exists(path)


# --- the listener in the real Arbiter (in-process) -------------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something else listens on."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    yield holder.getsockname()[1]
    holder.close()


def test_the_runtime_file_finds_a_daemon_on_port_0_and_leaves_with_it(tmp_path: Path) -> None:
    """Listening on port 0, the parent writes its bound address to the runtime file; `status -c` reads it
    from there and gets the parent's own /status; at exit the file is gone."""
    state = tmp_path / "state"
    parent = Parent(tmp_path / "shardsync.toml", {"status": {"listen": "127.0.0.1:0"},
                                                  "sink": {"path": str(state)}})
    try:
        path = state / "daemon-status.json"
        doc = orjson.loads(path.read_bytes())
        assert doc["pid"] == os.getpid() and doc["port"] == parent.arbiter.status_server.port  # type: ignore[union-attr]
        from shardsync.statusclient import _resolve_url

        args = type("Args", (), {"url": None, "config": str(tmp_path / "shardsync.toml")})()
        url = _resolve_url(args)
        assert url == f"http://127.0.0.1:{doc['port']}/status"
    finally:
        parent.close()
    assert not path.exists()


def test_status_client_says_why_it_cannot_find_a_port_0_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               ) -> None:
    """Port 0 and no runtime file: exit 1, naming where it looked."""
    from shardsync.statusclient import _resolve_url

    config = tmp_path / "shardsync.toml"
    config.write_text(config_text({"status": {"listen": "127.0.0.1:0"}, "sink": {"path": str(tmp_path / "s")}}))
    args = type("Args", (), {"url": None, "config": str(config)})()
    assert _resolve_url(args) == 1
    assert "daemon-status.json" in capsys.readouterr().err


def test_an_unbindable_status_address_stops_the_start_with_exit_1(tmp_path: Path, busy_port: int) -> None:
    """The configured port is taken: run() returns 1 before forking anything, the log names the address."""
    from arbiter_fakes import FakeProcesses, FakeSelector, RecordingNotifier

    from shardsync.credentials import Credentials
    from shardsync.supervisor.arbiter import Arbiter

    config = tmp_path / "shardsync.toml"
    config.write_text(config_text({"status": {"listen": f"127.0.0.1:{busy_port}"}}))
    fakes = FakeProcesses()
    arbiter = Arbiter(load_config(str(config)), str(config), Credentials("u", "p", "s"),
                      notifier=RecordingNotifier(), processes=fakes.processes(), selector=FakeSelector(),
                      os_signals=False)
    with structlog.testing.capture_logs() as logs:
        assert arbiter.run() == 1
    failed = [line for line in logs if line["event"] == "status_listen_failed"]
    assert failed and f"127.0.0.1:{busy_port}" in failed[0]["message"] and failed[0]["log_level"] == "critical"
    assert fakes.workers == [] and fakes.helpers == []


def test_a_reload_to_an_unbindable_address_keeps_the_old_listener(tmp_path: Path, busy_port: int) -> None:
    """SIGHUP moving the listener to a taken port: logged, the old listener keeps answering; a free port then
    moves it and the runtime file follows."""
    state = tmp_path / "state"
    sections: dict[str, dict[str, Any]] = {"status": {"listen": "127.0.0.1:0"}, "sink": {"path": str(state)}}
    parent = Parent(tmp_path / "shardsync.toml", sections)
    try:
        server = parent.arbiter.status_server
        assert server is not None
        with structlog.testing.capture_logs() as logs:
            parent.reload({**sections, "status": {"listen": f"127.0.0.1:{busy_port}"}})
        assert [line for line in logs if line["event"] == "status_listen_failed"]
        assert parent.arbiter.status_server is server
        assert orjson.loads((state / "daemon-status.json").read_bytes())["port"] == server.port
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
        free.close()
        parent.reload({**sections, "status": {"listen": f"127.0.0.1:{port}"}})
        assert parent.arbiter.status_server is not server and parent.arbiter.status_server is not None
        assert orjson.loads((state / "daemon-status.json").read_bytes())["port"] == port
    finally:
        parent.close()


def test_fetch_from_the_runtime_files_url_reaches_the_parent(tmp_path: Path) -> None:
    """The URL in the runtime file is the parent's /status (served from its own loop)."""
    import threading

    state = tmp_path / "state"
    parent = Parent(tmp_path / "shardsync.toml", {"status": {"listen": "127.0.0.1:0"},
                                                  "sink": {"path": str(state)}})
    try:
        url = orjson.loads((state / "daemon-status.json").read_bytes())["url"]
        result: list[dict[str, Any]] = []
        client = threading.Thread(target=lambda: result.append(fetch_status(url, timeout=5)))
        client.start()
        while client.is_alive():
            parent.step()
            client.join(0.01)
        assert result and result[0]["pid"] == os.getpid()
    finally:
        parent.close()
