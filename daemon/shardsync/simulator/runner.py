"""Foreground entry point: serve until SIGINT/SIGTERM, announcing the bound port as one JSON line."""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys

import orjson

from shardsync.exitcodes import EX_CONFIG
from shardsync.simulator.options import from_args
from shardsync.simulator.server import SimServer


def run(args: argparse.Namespace) -> int:
    """Run the simulator from parsed :func:`add_arguments` options; 0 after a clean signal stop, 78 on bad
    options (a TLS certificate or key that does not load included)."""
    try:
        options = from_args(args)
    except ValueError as exc:
        print(f"shardsync simulate: {exc}", file=sys.stderr)
        return EX_CONFIG
    return asyncio.run(_serve(SimServer(options)))


async def _serve(server: SimServer) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        port = await server.start()
    except ssl.SSLError as exc:
        print(f"shardsync simulate: TLS certificate or key unusable: {exc}", file=sys.stderr)
        return EX_CONFIG
    host = server.options.host
    http, ws = ("https", "wss") if server.tls else ("http", "ws")
    announce = {
        "event": "simulator_listening",
        "port": port,
        "rest_url": f"{http}://{host}:{port}/v1",
        "ws_url": f"{ws}://{host}:{port}/v1/websocket",
        "admin_url": f"{http}://{host}:{port}/admin",
    }
    # A parent process reads this line to learn the port when --port 0 was asked for.
    sys.stdout.write(orjson.dumps(announce).decode() + "\n")
    sys.stdout.flush()
    await stop.wait()
    await server.stop()
    return 0
