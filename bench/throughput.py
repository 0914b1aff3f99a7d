"""Live event throughput of one worker into each sink vs a bare websocket-client receive loop.

All runs read the same kind of stream from one simulator process: after the
snapshot, the simulator is asked (admin API) for a burst of generated
changes, which it writes into the socket at once, so the reader is the
bottleneck.  Each reader runs in its own forked process (as workers do under
the supervisor), timed from its first burst event to the moment the last one
is received (bare loop) or committed to the sink (worker).

    .venv/bin/python bench/throughput.py [--steps 15000] [--batch 1] [--repeat 3]

Prints events/s per run and the ratio of each sink to the bare loop (median
of the repeats).  Targets (issue 3): jsonl >= 0.6, sqlite >= 0.4.
"""

from __future__ import annotations

import argparse
import os
import select
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import websocket

from shardsync import ipc, protocol
from shardsync.auth import login
from shardsync.demo import DEMO_CREDENTIALS, start_simulator
from shardsync.worker.options import WorkerOptions
from shardsync.worker.session import run_in_process

ENTITY_TYPES = ("user", "account", "accountRiskStatus", "cashBalance", "position", "order", "fill")


def admin(port: int, knob: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/admin/{knob}", data=orjson.dumps(body),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - loopback simulator
        return orjson.loads(response.read())


def burst(port: int, steps: int) -> int:
    """Ask the simulator for ``steps`` generator steps at once; returns how many changes a shard receives."""
    changes = admin(port, "step", {"count": steps})["result"]
    return sum(1 for change in changes if change["entityType"] in ENTITY_TYPES)


def token_for(port: int) -> str:
    return login(f"http://127.0.0.1:{port}/v1", DEMO_CREDENTIALS, app_id="bench", app_version="1", cid=1,
                 device_id="bench").token


def bare_loop(port: int, steps: int) -> tuple[int, float]:
    """A websocket-client receive loop doing the minimum (count props events), in a child process."""
    ready_r, ready_w = os.pipe()  # child -> parent: synced
    go_r, go_w = os.pipe()  # parent -> child: how many events the burst holds
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ws = websocket.WebSocket(skip_utf8_validation=True)
            ws.connect(f"ws://127.0.0.1:{port}/v1/websocket", timeout=10)
            assert ws.recv() == "o"
            ws.send(protocol.encode_authorize(0, token_for(port)))
            body = protocol.sync_request_body(divisor=1, remainder=0, entity_types=ENTITY_TYPES)
            ws.send(protocol.encode_request("user/syncrequest", 1, "", body))
            while b'"i":1' not in ws.recv_data()[1]:  # the authorize reply, then the snapshot
                pass
            os.write(ready_w, b"r")
            events = int(os.read(go_r, 64))
            seen, first = 0, 0.0
            ws.settimeout(60)
            while seen < events:
                n = ws.recv_data()[1].count(b'"e":"props"')
                if n and not seen:
                    first = time.perf_counter()
                seen += n
            os.write(result_w, orjson.dumps(events / (time.perf_counter() - first)))
            ws.close()
            code = 0
        finally:
            os._exit(code)
    assert os.read(ready_r, 1) == b"r"
    events = burst(port, steps)
    os.write(go_w, str(events).encode())
    rate = float(orjson.loads(os.read(result_r, 64)))
    os.waitpid(pid, 0)
    for fd in (ready_r, ready_w, go_r, go_w, result_r, result_w):
        os.close(fd)
    return events, rate


def sink_rows(kind: str, path: Path) -> int:
    if kind == "sqlite":
        file = path / "shard-000-of-001.sqlite3"
        if not file.exists():
            return 0
        conn = sqlite3.connect(f"file:{file}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT count(*) FROM events WHERE origin = 'live'").fetchone()[0])
        finally:
            conn.close()
    file = path / "shard-000-of-001.jsonl"
    if not file.exists():
        return 0
    return file.read_bytes().count(b'"origin":"live"')


def worker_run(port: int, steps: int, kind: str) -> tuple[int, float]:
    """One worker into ``kind``, in a child process as under the supervisor; returns events/s.

    Timed from the first heartbeat that shows burst events to the moment the
    sink holds every one of them; the bench only reads the worker's pipe.
    """
    state = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
    options = WorkerOptions(
        ws_url=f"ws://127.0.0.1:{port}/v1/websocket", divisor=1, expression="modAccountId",
        entity_types=ENTITY_TYPES, sink_kind=kind, sink_path=str(state), permits=False,
        heartbeat_interval=0.01, snapshot_quiet=0.2,
    )
    inbox_r, inbox_w = os.pipe()
    out_r, out_w = os.pipe()
    ipc.send(inbox_w, ipc.Token(token_for(port), time.time() + 3600))
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.set_blocking(out_w, False)
            code = run_in_process(options, 0, inbox_r, lambda m: ipc.send(out_w, m) and None)
        finally:
            os._exit(code)
    reader = ipc.Reader(out_r)
    os.set_blocking(out_r, False)
    beat: list[ipc.Heartbeat] = []

    def latest() -> ipc.Heartbeat | None:
        select.select([out_r], [], [], 0.002)
        beat.extend(m for m in reader.read() if isinstance(m, ipc.Heartbeat))
        return beat[-1] if beat else None

    deadline = time.monotonic() + 30
    while not ((b := latest()) and b.state == "live"):
        if time.monotonic() > deadline:
            raise RuntimeError("worker did not reach live")
    base = beat[-1].events
    events = burst(port, steps)
    first = 0.0
    while True:
        last = latest()
        assert last is not None
        if not first and last.events > base:
            first = time.perf_counter() - options.heartbeat_interval / 2
        if last.events - base >= events:
            break
    while sink_rows(kind, state) < events:
        time.sleep(0.002)
    elapsed = time.perf_counter() - first
    ipc.send(inbox_w, ipc.Stop())
    os.waitpid(pid, 0)
    for fd in (inbox_r, inbox_w, out_r, out_w):
        os.close(fd)
    return events, events / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15_000, help="generator steps per run (3-5 changes each)")
    parser.add_argument("--batch", type=int, default=1, help="props messages per a[...] frame")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sim, port = start_simulator(0.0, ["--accounts", "200", "--users", "20", "--batch", str(args.batch),
                                      "--session-cap", "0", "--client-idle-timeout", "0"])
    try:
        results: dict[str, list[float]] = {"bare": [], "jsonl": [], "sqlite": []}
        counts: list[int] = []
        for _ in range(args.repeat):
            for name, rates in results.items():
                count, rate = bare_loop(port, args.steps) if name == "bare" else worker_run(port, args.steps, name)
                counts.append(count)
                rates.append(rate)
        bare = statistics.median(results["bare"])
        print(f"throughput: {min(counts)}-{max(counts)} live events per run, {args.batch} per frame, "
              f"{args.repeat} repeats")
        for name, runs in results.items():
            median = statistics.median(runs)
            runs_text = ", ".join(f"{r:,.0f}" for r in runs)
            print(f"  {name:<7} median {median:>9,.0f} events/s  ratio {median / bare:4.2f}  runs [{runs_text}]")
    finally:
        sim.terminate()
        sim.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
