"""Live event throughput of one worker into each sink, against references measured in the same run.

All runs read the same kind of stream from one simulator process: after the
snapshot, the simulator is asked (admin API) for a burst of generated
changes.  Each reader runs in its own forked process (as workers do under the
supervisor) and is stopped (SIGSTOP) while the simulator generates and frames
the burst, then let go (SIGCONT): timed from that moment to the last event
received (bare loop) or committed (everything else), so only the reader sets
the pace.

    .venv/bin/python bench/throughput.py [--steps 15000] [--batch 1] [--repeat 3] [--no-postgres]

Readers:

* ``bare``: websocket-client's own ``recv_data()`` counting props, no sink:
  the library's limit and the jsonl target (issue 16: jsonl >= bare);
* ``reference``: a minimal correct mirror written by hand (bench/reference.py:
  raw socket frames, orjson, a dict mirror, the same schema and the reference
  pragmas): the sqlite target (sqlite >= reference);
* ``sqlite``, ``jsonl``, ``postgres``: the real worker into that sink;
  postgres into a throwaway server (tests/pgserver.py, fsync off), target
  30,000 events/s.

Each reader first drains an untimed warm-up burst (a worker runs for hours;
its first burst also pays for growing its heap).  Prints, per reader, the
median events/s over the repeats, and the medians of its paired ratios to the
bare run and to the reference run of the same repeat; the same per CPU-second
of the reader (every thread's scheduler run time over the timed part), which
is blind to waiting for a core on a shared machine.

The worker reads frames with its own bounded reader (worker/frames.py;
websocket-client only frames what it sends) and takes whole, final, unmasked
text frames straight from its read-ahead buffer, about 1 us a frame instead of
about 10: so its receive path is faster than the bare loop's, and the ratio
to bare measures what the rest of the worker (decode, mirror, sink) costs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import websocket

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference
from forked import DEFAULT_TYPES, ForkedWorker, SimProcess, process_cpu, quiet_logs
from machine import header, info, save
from shardsync import protocol

TARGETS = {"sqlite": ("reference", 1.0), "jsonl": ("bare", 1.0)}
POSTGRES_TARGET = 30_000


@dataclass
class Run:
    events: int
    wall: float
    cpu: float


def burst(sim: SimProcess, steps: int) -> int:
    """Ask the simulator for ``steps`` generator steps at once; returns how many changes a shard receives."""
    changes = sim.admin("step", {"count": steps})["result"]
    return sum(1 for change in changes if change["entityType"] in DEFAULT_TYPES)


def held_burst(pid: int, sim: SimProcess, steps: int) -> tuple[int, float, float]:
    """Stop reader ``pid``, queue a burst for it, let it go; returns (events, perf_counter and CPU time at release).

    The simulator frames the whole burst before its admin reply, and the reader
    is stopped meanwhile, so the timed part is the reader alone draining a
    full socket: neither the generator nor the encoder sets the pace.
    """
    os.kill(pid, signal.SIGSTOP)
    os.waitpid(pid, os.WUNTRACED)
    events = burst(sim, steps)
    cpu = process_cpu(pid)
    released = time.perf_counter()
    os.kill(pid, signal.SIGCONT)
    return events, released, cpu


def bare_loop(sim: SimProcess, steps: int, warmup: int) -> Run:
    """A websocket-client receive loop doing the minimum (count props events), in a child process."""
    ready_r, ready_w = os.pipe()  # child -> parent: synced
    go_r, go_w = os.pipe()  # parent -> child: how many events the burst holds
    done_r, done_w = os.pipe()
    token = sim.token()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ws = websocket.WebSocket(skip_utf8_validation=True)
            ws.connect(sim.ws_url, timeout=10)
            assert ws.recv() == "o"
            ws.send(protocol.encode_authorize(0, token))
            body = protocol.sync_request_body(divisor=1, remainder=0, entity_types=DEFAULT_TYPES)
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
        os.write(go_w, str(burst(sim, warmup)).encode())
        assert os.read(done_r, 1) == b"d"
    events, released, cpu = held_burst(pid, sim, steps)
    os.write(go_w, str(events).encode())
    assert os.read(done_r, 1) == b"d"
    run = Run(events, time.perf_counter() - released, process_cpu(pid) - cpu)
    os.waitpid(pid, 0)
    for fd in (ready_r, ready_w, go_r, go_w, done_r, done_w):
        os.close(fd)
    return run


def live_rows(kind: str, where: str) -> int:
    """How many live changes the sink holds (committed, as any reader sees them)."""
    if kind == "postgres":
        import psycopg

        with psycopg.connect(where, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM events WHERE origin = 'live'").fetchone()
            return int(row[0]) if row else 0
    if kind == "jsonl":
        file = Path(where) / "shard-000-of-001.jsonl"
        return file.read_bytes().count(b'"origin":"live"') if file.exists() else 0
    file = Path(where) / "shard-000-of-001.sqlite3"
    if not file.exists():
        return 0
    conn = sqlite3.connect(f"file:{file}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM events WHERE origin = 'live'").fetchone()[0])
    finally:
        conn.close()


def wait_rows(kind: str, where: str, count: int) -> None:
    deadline = time.monotonic() + 300
    while live_rows(kind, where) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{kind}: the sink never held {count} live changes")
        time.sleep(0.002)


def timed(pid: int, sim: SimProcess, steps: int, warmup: int, *, kind: str, where: str,
          applied: Callable[[int], None]) -> Run:
    """Warm up, then time one held burst until ``kind`` at ``where`` holds it; ``applied(n)`` waits for the
    reader's own account of n more events first (heartbeats), or does nothing."""
    base = live_rows(kind, where)
    if warmup:
        warm = burst(sim, warmup)
        applied(warm)
        wait_rows(kind, where, base + warm)
        base += warm
    events, released, cpu = held_burst(pid, sim, steps)
    applied(events)
    wait_rows(kind, where, base + events)
    return Run(events, time.perf_counter() - released, process_cpu(pid) - cpu)


def worker_run(sim: SimProcess, steps: int, kind: str, warmup: int, dsn: str) -> Run:
    """One worker into ``kind``, in a child process as under the supervisor.

    Timed from the release of the burst to the moment the sink holds every
    event: the worker's heartbeats (read all along, as the supervisor does)
    say when it has applied them all, then the sink is checked.
    """
    state = tempfile.mkdtemp(prefix=f"bench-{kind}-")
    where = dsn if kind == "postgres" else state
    # The simulator's loop is busy (no frame, not even "h") while it generates a
    # burst, seconds on a loaded machine: that must not look like a dead socket.
    worker = ForkedWorker(sim, kind=kind, path=state, dsn=dsn, heartbeat_interval=0.01, snapshot_quiet=0.2,
                          idle_timeout=120.0)
    beat = worker.wait(lambda b: b.state == "live", 60, "live")
    seen = [beat.events]

    def applied(count: int) -> None:
        target = seen[0] + count
        seen[0] = worker.wait(lambda b: b.events >= target, 300, f"{count} events").events

    try:
        return timed(worker.pid, sim, steps, warmup, kind=kind, where=where, applied=applied)
    finally:
        worker.stop()
        shutil.rmtree(state, ignore_errors=True)


def reference_run(sim: SimProcess, steps: int, warmup: int) -> Run:
    """The hand-written mirror into a sqlite file of its own."""
    state = tempfile.mkdtemp(prefix="bench-reference-")
    pid = reference.fork(sim.port, sim.token(), os.path.join(state, "shard-000-of-001.sqlite3"), DEFAULT_TYPES)
    try:
        return timed(pid, sim, steps, warmup, kind="sqlite", where=state, applied=lambda _: None)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def postgres(enabled: bool) -> Iterator[str]:
    """A throwaway server's DSN for the postgres runs ("" when they are off)."""
    if not enabled:
        yield ""
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from pgserver import throwaway_server

    with throwaway_server() as dsn:
        yield dsn


def fresh_database(server: str, n: int) -> str:
    import psycopg

    name = f"bench_{os.getpid()}_{n}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.replace("dbname=postgres", f"dbname={name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15_000, help="generator steps per run (3-5 changes each)")
    parser.add_argument("--warmup", type=int, default=5_000, help="untimed generator steps read first by each reader")
    parser.add_argument("--batch", type=int, default=1, help="props messages per a[...] frame")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-postgres", dest="postgres", action="store_false")
    parser.add_argument("--label", default="", help="a word for the results file name (before, after)")
    args = parser.parse_args()
    quiet_logs()
    machine = info()
    names = ["bare", "reference", "sqlite", "jsonl"] + (["postgres"] if args.postgres else [])
    results: dict[str, list[Run]] = {name: [] for name in names}
    with postgres(args.postgres) as server, SimProcess("--accounts", "200", "--users", "20", "--batch",
                                                       str(args.batch)) as sim:
        for repeat in range(args.repeat):
            for name, runs in results.items():
                if name == "bare":
                    runs.append(bare_loop(sim, args.steps, args.warmup))
                elif name == "reference":
                    runs.append(reference_run(sim, args.steps, args.warmup))
                else:
                    dsn = fresh_database(server, repeat) if name == "postgres" else ""
                    runs.append(worker_run(sim, args.steps, name, args.warmup, dsn))
    machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    counts = [run.events for runs in results.values() for run in runs]
    print(f"throughput ({header(machine)}): {min(counts)}-{max(counts)} live events per run after {args.warmup} "
          f"warm-up steps, {args.batch} per frame, medians of {args.repeat}")
    print("| reader | events/s | / bare | / reference | events per CPU-s | / bare | / reference | target | runs |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for name, runs in results.items():
        wall = [r.events / r.wall for r in runs]
        cpu = [r.events / r.cpu for r in runs]

        # Each repeat's run is divided by its reference's run of the same
        # repeat: this machine's speed drifts over minutes, and adjacent runs share it.
        def paired(values: list[float], base: str, per_cpu: bool) -> float:
            return statistics.median(
                v / (b.events / (b.cpu if per_cpu else b.wall)) for v, b in zip(values, results[base], strict=True)
            )

        row = {"events_s": statistics.median(wall), "to_bare": paired(wall, "bare", False),
               "to_reference": paired(wall, "reference", False), "cpu_events_s": statistics.median(cpu),
               "cpu_to_bare": paired(cpu, "bare", True), "cpu_to_reference": paired(cpu, "reference", True)}
        summary[name] = row
        if name in TARGETS:
            base, ratio = TARGETS[name]
            target = f">= {ratio:g} x {base}: {'met' if row['to_' + base] >= ratio else 'not met'}"
        elif name == "postgres":
            target = f">= {POSTGRES_TARGET:,}/s: {'met' if row['events_s'] >= POSTGRES_TARGET else 'not met'}"
        else:
            target = ""
        print(f"| {name} | {row['events_s']:,.0f} | {row['to_bare']:.2f} | {row['to_reference']:.2f} "
              f"| {row['cpu_events_s']:,.0f} | {row['cpu_to_bare']:.2f} | {row['cpu_to_reference']:.2f} "
              f"| {target} | {', '.join(f'{w:,.0f}' for w in wall)} |")
    payload = {"steps": args.steps, "warmup": args.warmup, "batch": args.batch, "repeat": args.repeat,
               "summary": summary, "runs": {name: [asdict(r) for r in runs] for name, runs in results.items()}}
    print(f"results: {save('throughput', machine, payload, args.label)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
