"""Live event throughput of one worker into each sink vs a bare websocket-client receive loop.

All runs read the same kind of stream from one simulator process: after the
snapshot, the simulator is asked (admin API) for a burst of generated
changes.  Each reader runs in its own forked process (as workers do under the
supervisor) and is stopped (SIGSTOP) while the simulator generates and frames
the burst, then let go (SIGCONT): timed from that moment to the last event
received (bare loop) or committed to the sink (worker), so only the reader
sets the pace.

    .venv/bin/python bench/throughput.py [--steps 15000] [--batch 1] [--repeat 3]

Each reader first drains an untimed warm-up burst (a worker runs for hours;
its first burst also pays for growing its heap).  Prints, per reader, the
median events/s over the repeats and the median of its ratio to the bare run
of the same repeat, and the same per CPU-second of the reader (its scheduler
run time in /proc/PID/sched over the timed part), which is blind to waiting
for a core on a shared machine.  Targets (issue 3): jsonl >= 0.6,
sqlite >= 0.4.

The bare loop is websocket-client's own ``recv_data()``, the library's
limit.  The worker reads frames with its own bounded reader
(worker/frames.py; websocket-client only frames what it sends) and takes
whole, final, unmasked text frames (nearly all of the stream) straight from
its read-ahead buffer, about 1 us a frame instead of about 10: so its
receive path is faster than the baseline's and the ratio measures what the
rest of the worker (decode, mirror, sink) costs on top.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import websocket

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from logins import login
from shardsync import ipc, protocol
from shardsync.demo import DEMO_CREDENTIALS, start_simulator
from shardsync.worker.allocator import keep_freed_memory
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


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid``'s main thread so far (the scheduler's figure, microsecond resolution)."""
    with open(f"/proc/{pid}/sched") as sched:
        for line in sched:
            if line.startswith("se.sum_exec_runtime"):
                return float(line.split(":")[1]) / 1000
    raise RuntimeError(f"no se.sum_exec_runtime in /proc/{pid}/sched")


@dataclass
class Run:
    events: int
    wall: float
    cpu: float


def held_burst(pid: int, port: int, steps: int) -> tuple[int, float, float]:
    """Stop reader ``pid``, queue a burst for it, let it go; returns (events, perf_counter and CPU time at release).

    The simulator frames the whole burst before its admin reply, and the reader
    is stopped meanwhile, so the timed part is the reader alone draining a
    full socket: neither the generator nor the encoder sets the pace.
    """
    os.kill(pid, signal.SIGSTOP)
    os.waitpid(pid, os.WUNTRACED)
    events = burst(port, steps)
    cpu = cpu_seconds(pid)
    released = time.perf_counter()
    os.kill(pid, signal.SIGCONT)
    return events, released, cpu


def bare_loop(port: int, steps: int, warmup: int) -> Run:
    """A websocket-client receive loop doing the minimum (count props events), in a child process."""
    ready_r, ready_w = os.pipe()  # child -> parent: synced
    go_r, go_w = os.pipe()  # parent -> child: how many events the burst holds
    done_r, done_w = os.pipe()
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
            ws.settimeout(60)
            os.write(ready_w, b"r")
            for _ in range(2 if warmup else 1):
                events = int(os.read(go_r, 64))
                seen = 0
                while seen < events:
                    seen += ws.recv_data()[1].count(b'"e":"props"')
                os.write(done_w, b"d")
            ws.close()
            code = 0
        finally:
            os._exit(code)
    assert os.read(ready_r, 1) == b"r"
    if warmup:
        os.write(go_w, str(burst(port, warmup)).encode())
        assert os.read(done_r, 1) == b"d"
    events, released, cpu = held_burst(pid, port, steps)
    os.write(go_w, str(events).encode())
    assert os.read(done_r, 1) == b"d"
    run = Run(events, time.perf_counter() - released, cpu_seconds(pid) - cpu)
    os.waitpid(pid, 0)
    for fd in (ready_r, ready_w, go_r, go_w, done_r, done_w):
        os.close(fd)
    return run


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


def worker_run(port: int, steps: int, kind: str, warmup: int) -> Run:
    """One worker into ``kind``, in a child process as under the supervisor.

    Timed from the release of the burst to the moment the sink holds every
    event: the worker's heartbeats (read all along, as the supervisor does)
    say when it has applied them all, then the sink is checked.
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
            keep_freed_memory()  # as worker/boot.py does for every worker
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
    if warmup:
        warm = burst(port, warmup)
        while (last := latest()) is None or last.events - base < warm:
            pass
        base = last.events
    events, released, cpu = held_burst(pid, port, steps)
    while (last := latest()) is None or last.events - base < events:
        pass
    while sink_rows(kind, state) < events:
        time.sleep(0.002)
    run = Run(events, time.perf_counter() - released, cpu_seconds(pid) - cpu)
    ipc.send(inbox_w, ipc.Stop())
    os.waitpid(pid, 0)
    for fd in (inbox_r, inbox_w, out_r, out_w):
        os.close(fd)
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15_000, help="generator steps per run (3-5 changes each)")
    parser.add_argument("--warmup", type=int, default=5_000, help="untimed generator steps read first by each reader")
    parser.add_argument("--batch", type=int, default=1, help="props messages per a[...] frame")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sim, port = start_simulator(0.0, ["--accounts", "200", "--users", "20", "--batch", str(args.batch),
                                      "--session-cap", "0", "--client-idle-timeout", "0"])
    try:
        results: dict[str, list[Run]] = {"bare": [], "jsonl": [], "sqlite": []}
        for _ in range(args.repeat):
            for name, runs in results.items():
                if name == "bare":
                    runs.append(bare_loop(port, args.steps, args.warmup))
                else:
                    runs.append(worker_run(port, args.steps, name, args.warmup))
    finally:
        sim.terminate()
        sim.wait(10)
    counts = [run.events for runs in results.values() for run in runs]
    print(f"throughput: {min(counts)}-{max(counts)} live events per run after {args.warmup} warm-up steps, "
          f"{args.batch} per frame, {args.repeat} repeats")
    print("  reader   median events/s  paired ratio   per CPU-second  paired ratio   runs (events/s)")
    for name, runs in results.items():
        wall = [r.events / r.wall for r in runs]
        cpu = [r.events / r.cpu for r in runs]
        # Each repeat's worker run is divided by the bare run just before it:
        # this machine's speed drifts over minutes, and adjacent runs share it.
        wall_ratio = statistics.median(w / b.events * b.wall for w, b in zip(wall, results["bare"], strict=True))
        cpu_ratio = statistics.median(c / b.events * b.cpu for c, b in zip(cpu, results["bare"], strict=True))
        runs_text = ", ".join(f"{w:,.0f}" for w in wall)
        print(f"  {name:<7} {statistics.median(wall):>10,.0f}       {wall_ratio:4.2f}      "
              f"{statistics.median(cpu):>10,.0f}       {cpu_ratio:4.2f}     [{runs_text}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
