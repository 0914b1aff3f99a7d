"""Run as a subprocess: a real worker against a hostile URL until it is live (or time runs out); report as JSON.

    python worker_probe.py URL STATE_DIR [--for S] [--max-snapshot-bytes N] [--max-snapshot-entities N]
                                         [--snapshot-timeout S]

Prints one JSON object: the process's peak RSS (VmHWM, KiB) once everything
is imported and at the end, the ``snapshot_incomplete`` bounds logged, the
reconnects, whether the worker went live and with how many entities: so a
test can state a memory bound for what a server that never ends a snapshot
made the worker do, in a process of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from typing import Any

import structlog
from probe import peak_rss_kib

from shardsync import ipc
from shardsync.worker.options import WorkerOptions
from shardsync.worker.session import run_in_process


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("state")
    parser.add_argument("--for", dest="duration", type=float, default=30.0)
    parser.add_argument("--max-snapshot-bytes", type=int, default=4 << 30)
    parser.add_argument("--max-snapshot-entities", type=int, default=10_000_000)
    parser.add_argument("--snapshot-timeout", type=float, default=600.0)
    args = parser.parse_args()
    options = WorkerOptions(
        ws_url=args.url, divisor=1, expression="modAccountId", entity_types=("order",), sink_path=args.state,
        permits=False, backoff_initial=0.05, backoff_max=0.2, snapshot_quiet=30.0, heartbeat_interval=0.2,
        idle_timeout=30.0, max_snapshot_bytes=args.max_snapshot_bytes,
        max_snapshot_entities=args.max_snapshot_entities, snapshot_timeout=args.snapshot_timeout,
    )
    beats: list[ipc.Heartbeat] = []
    inbox_r, inbox_w = os.pipe()
    ipc.send(inbox_w, ipc.Token("hostile-token", time.time() + 3600))

    def on_message(message: ipc.Message) -> None:
        if isinstance(message, ipc.Heartbeat):
            beats.append(message)

    before = peak_rss_kib()
    with structlog.testing.capture_logs() as logs:
        worker = threading.Thread(target=run_in_process, args=(options, 0, inbox_r, on_message), daemon=True)
        worker.start()
        deadline = time.monotonic() + args.duration
        while time.monotonic() < deadline and not (beats and beats[-1].state == "live"):
            time.sleep(0.05)
        ipc.send(inbox_w, ipc.Stop())
        worker.join(10)
    last = beats[-1] if beats else None
    report: dict[str, Any] = {
        "hwm_before_kib": before,
        "hwm_after_kib": peak_rss_kib(),
        "incomplete": [e["bound"] for e in logs if e["event"] == "snapshot_incomplete"],
        "live": bool(beats) and any(b.state == "live" for b in beats),
        "entities": 0 if last is None else last.entities,
        "reconnects": 0 if last is None else last.reconnects,
        "stopped": not worker.is_alive(),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
