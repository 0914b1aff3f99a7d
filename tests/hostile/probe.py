"""Run as a subprocess: open a Connection to a hostile URL, receive until it fails, report as JSON with memory.

    python probe.py URL --handshake-timeout S [--max-message-bytes N] [--for S]

Prints one JSON object: whether the handshake succeeded, the exception that
ended it (class and text), the seconds taken, messages received, and the
process's peak RSS (VmHWM, KiB) before connecting and at the end: so a test
can state a memory bound for what a hostile server made the client do.
"""

from __future__ import annotations

import argparse
import json
import time

from shardsync.worker.connection import Connection, ConnectionLost


def peak_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--handshake-timeout", type=float, default=10.0)
    parser.add_argument("--max-message-bytes", type=int, default=64 << 20)
    parser.add_argument("--for", dest="duration", type=float, default=10.0)
    args = parser.parse_args()
    report: dict[str, object] = {"opened": False, "error": None, "message": "", "messages": 0}
    before = peak_rss_kib()
    started = time.monotonic()
    try:
        conn = Connection.open(args.url, handshake_timeout=args.handshake_timeout,
                               max_message_bytes=args.max_message_bytes)
        report["opened"] = True
        try:
            deadline = started + args.duration
            while (left := deadline - time.monotonic()) > 0:
                if conn.recv(left) is not None:
                    report["messages"] = int(report["messages"]) + 1  # type: ignore[call-overload]
        finally:
            conn.close(timeout=0.5)
    except ConnectionLost as exc:
        report["error"], report["message"] = type(exc).__name__, str(exc)
    report["elapsed"] = time.monotonic() - started
    report["hwm_before_kib"], report["hwm_after_kib"] = before, peak_rss_kib()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
