"""Secrets never in logs, argv, process environments, /status or /metrics (design §5 item 6), for the real daemon."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from harness import USERNAME, Daemon, children, wait_until, write_credentials

from shardsync.simulator import Simulator

SimFactory = Callable[..., Simulator]
DaemonFactory = Callable[..., Daemon]
DIVISOR = 4


@pytest.fixture(autouse=True)
def _no_outside_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemons see only the credential sources a test sets up."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


@contextmanager
def frozen(sim: Simulator) -> Iterator[None]:
    """Block the simulator's event loop (TCP connections queue in the kernel) until the block ends."""
    entered, release = threading.Event(), threading.Event()

    def block(_server: object) -> None:
        entered.set()
        release.wait(20)

    thread = threading.Thread(target=sim.call, args=(block,), daemon=True)
    thread.start()
    assert entered.wait(5), "simulator loop did not block"
    try:
        yield
    finally:
        release.set()
        thread.join(10)


def proc_blobs(pid: int) -> dict[str, bytes]:
    """The argv and environment block of ``pid`` as the kernel shows them to anyone allowed to look."""
    blobs = {}
    for name in ("cmdline", "environ"):
        with suppress(FileNotFoundError, ProcessLookupError):
            blobs[f"/proc/{pid}/{name}"] = Path(f"/proc/{pid}/{name}").read_bytes()
    return blobs


def descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def leaks(blobs: dict[str, bytes], needles: dict[str, str]) -> list[str]:
    """Every (where, what) pair where a secret value shows up."""
    return [f"{what} in {where}" for where, blob in blobs.items() for what, value in needles.items()
            if value.encode() in blob]


def tokens(sim: Simulator) -> dict[str, str]:
    """Every access token the simulator has issued so far."""
    values: list[str] = sim.call(lambda s: list(s.auth.tokens))
    assert values, "the simulator issued no token"
    return {f"token #{i}": value for i, value in enumerate(values)}


def everything(daemon: Daemon) -> dict[str, bytes]:
    """Output, the argv and environment of the parent and every descendant, /status, /metrics and /healthz."""
    blobs = {"daemon stderr+stdout": daemon.output()}
    for pid in [daemon.pid, *descendants(daemon.pid)]:
        blobs.update(proc_blobs(pid))
    for path in ("/status", "/metrics", "/healthz"):
        code, body = daemon.http(path)
        assert code == 200, (path, code)
        blobs[path] = body
    return blobs


@pytest.mark.parametrize("source", ["environment", "file"])
def test_no_secret_in_output_argv_environ_status_or_metrics(tmp_path: Path, sim_factory: SimFactory,
                                                           daemon_factory: DaemonFactory, source: str) -> None:
    """With credentials from SHARDSYNC_* (the re-exec path) or from a file, neither the password, the API secret
    nor any access token shows up in the daemon's output, any process's argv or environment (parent, login
    helper, workers), /status or /metrics, also after a revoked token and dropped sockets made it log errors."""
    password, secret = f"pw-{secrets.token_hex(12)}", f"sec-{secrets.token_hex(12)}"
    needles = {"password": password, "secret": secret}
    sim = sim_factory(password=password, secret=secret, event_rate=20)
    if source == "environment":
        env = {"SHARDSYNC_USERNAME": USERNAME, "SHARDSYNC_PASSWORD": password, "SHARDSYNC_SECRET": secret}
        daemon_kwargs: dict[str, object] = {"env": env, "credentials": False}
    else:
        daemon_kwargs = {"credentials": write_credentials(tmp_path / "credentials.toml", password=password,
                                                          secret=secret)}
    sections = {"log": {"level": "debug"}}

    # The login helper lives only for one HTTP call: hold the simulator so that it waits for its answer.
    with frozen(sim):
        daemon = daemon_factory(sim, divisor=DIVISOR, sections=sections, **daemon_kwargs)
        workers = set(wait_until(lambda: len(daemon.pids()) == DIVISOR and daemon.pids(), 15, "workers").values())

        def helper() -> list[int]:
            return [pid for pid in children(daemon.pid) if pid not in workers]

        helper_pid = wait_until(helper, 15, "the login helper")[0]
        helper_blobs = {f"helper {k}": v for k, v in proc_blobs(helper_pid).items()}
        assert set(helper_blobs) == {f"helper /proc/{helper_pid}/cmdline", f"helper /proc/{helper_pid}/environ"}
    daemon.wait_live()
    assert leaks(helper_blobs, needles) == []

    parent_cmdline = Path(f"/proc/{daemon.pid}/cmdline").read_bytes()
    parent_environ = Path(f"/proc/{daemon.pid}/environ").read_bytes()
    if source == "environment":
        assert b"--credentials-fd" in parent_cmdline  # the re-exec happened
        for blob in (parent_environ, *helper_blobs.values()):
            assert b"SHARDSYNC_PASSWORD" not in blob and b"SHARDSYNC_SECRET" not in blob
    blobs = everything(daemon)
    assert len([k for k in blobs if k.endswith("/environ")]) == 1 + DIVISOR
    assert leaks(blobs, {**needles, **tokens(sim)}) == []

    # Error paths: the token is revoked, every socket dropped; workers get 401, the parent renews and logs in.
    before = sim.stats()["ws_connections_total"]
    sim.revoke()
    sim.drop()
    wait_until(lambda: sim.stats()["ws_connections_total"] >= before + DIVISOR
               and all(s["state"] == "live" for s in daemon.shards().values()), 20, "shards back live")
    wait_until(lambda: len(daemon.events("token_updated")) == 2, 10, "a new token")
    assert daemon.events("session_ended"), "no error was logged"
    blobs = everything(daemon)
    assert leaks(blobs, {**needles, **tokens(sim)}) == []
    assert daemon.stop() == 0
    assert leaks({"daemon stderr+stdout": daemon.output()}, {**needles, **tokens(sim)}) == []
