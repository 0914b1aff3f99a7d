"""``shardsync demo``: the simulator plus one worker per shard, with a live status table.

Until the supervisor lands, the demo runs each shard's worker on a thread of
this process (the same Worker class the supervisor forks); the simulator runs
as a child process on a random loopback port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from shardsync import ipc
from shardsync.auth import Credentials, login
from shardsync.logs import configure_logging
from shardsync.prctl import set_pdeathsig
from shardsync.worker.options import WorkerOptions
from shardsync.worker.session import run_in_process

DEMO_CREDENTIALS = Credentials("demo", "demo-password", "demo-secret")


def start_simulator(event_rate: float, extra: list[str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``shardsync simulate`` on a random port; return the process and its port."""
    argv = [sys.executable, "-m", "shardsync.simulator", "--port", "0", "--event-rate", str(event_rate)]
    # The simulator must not outlive us, even when we are SIGKILLed.
    proc = subprocess.Popen(
        argv + (extra or []), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, preexec_fn=set_pdeathsig  # noqa: PLW1509
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        info = orjson.loads(line)
        return proc, int(info["port"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        proc.kill()
        raise RuntimeError(f"simulator did not report its port: {line[:200]!r}") from None


class _Shard:
    def __init__(self, remainder: int) -> None:
        self.remainder = remainder
        self.beat: ipc.Heartbeat | None = None
        self.beat_at = 0.0
        self.inbox_r, self.inbox_w = os.pipe()
        self.thread: threading.Thread | None = None

    def on_message(self, message: ipc.Message) -> None:
        if isinstance(message, ipc.Heartbeat):
            self.beat, self.beat_at = message, time.monotonic()


def _table(shards: list[_Shard], started: float) -> str:
    rows = [f"shardsync demo — {len(shards)} shards, up {time.monotonic() - started:5.1f} s (Ctrl-C stops)",
            f"{'shard':>5}  {'state':<14}{'entities':>9}{'events':>8}{'frames':>8}{'reconn':>7}  last error"]
    for shard in shards:
        b = shard.beat
        if b is None:
            rows.append(f"{shard.remainder:>5}  {'starting':<14}")
            continue
        rows.append(f"{shard.remainder:>5}  {b.state:<14}{b.entities:>9}{b.events:>8}{b.frames:>8}"
                    f"{b.reconnects:>7}  {(b.last_error or '')[:50]}")
    return "\n".join(rows)


def run_demo(*, state_dir: str, shards: int, duration: float, event_rate: float) -> int:
    """Run until Ctrl-C (or ``duration``); returns the exit code."""
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    log_file = open(state / "demo.log", "ab")  # noqa: SIM115 - lives as long as the demo
    configure_logging(fmt="json", level="info", stream=log_file)
    sim, port = start_simulator(event_rate)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    table: list[_Shard] = [_Shard(r) for r in range(shards)]
    try:
        grant = login(f"http://127.0.0.1:{port}/v1", DEMO_CREDENTIALS, app_id="shardsync-demo", app_version="1.0",
                      cid=1, device_id="shardsync-demo")
        options = WorkerOptions(
            ws_url=f"ws://127.0.0.1:{port}/v1/websocket",
            divisor=shards,
            expression="modAccountId",
            entity_types=("user", "account", "accountRiskStatus", "cashBalance", "position", "order", "fill"),
            sink_path=str(state),
            permits=False,
        )
        for shard in table:
            ipc.send(shard.inbox_w, ipc.Token(grant.token, grant.expires_at))
            shard.thread = threading.Thread(
                target=run_in_process, args=(options, shard.remainder, shard.inbox_r, shard.on_message),
                name=f"shard-{shard.remainder}", daemon=True,
            )
            shard.thread.start()
        started = time.monotonic()
        tty = sys.stdout.isatty()
        while not stop.wait(1.0):
            text = _table(table, started)
            sys.stdout.write(("\x1b[H\x1b[J" if tty else "") + text + "\n")
            sys.stdout.flush()
            if duration and time.monotonic() - started >= duration:
                break
        print(f"stopping; shard files are in {state.resolve()}")
        return 0
    finally:
        for shard in table:
            ipc.send(shard.inbox_w, ipc.Stop())
        for shard in table:
            if shard.thread is not None:
                shard.thread.join(timeout=5)
        sim.terminate()
        try:
            sim.wait(timeout=5)
        except subprocess.TimeoutExpired:
            sim.kill()
        log_file.close()


__all__: list[Any] = ["run_demo", "start_simulator"]
