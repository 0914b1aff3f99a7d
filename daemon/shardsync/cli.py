"""The ``shardsync`` command: check-config, simulate, demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shardsync import __version__

EX_OK = 0
EX_ERROR = 1
EX_BREAKER = 3
EX_NOPERM = 77
EX_CONFIG = 78


def _check_config(args: argparse.Namespace) -> int:
    from shardsync.config import ConfigError, load_config, render_settings

    try:
        settings = load_config(args.config)
    except ConfigError as exc:
        print(f"shardsync: invalid configuration\n{exc}", file=sys.stderr)
        return EX_CONFIG
    print(render_settings(settings))
    return EX_OK


def _simulate(args: argparse.Namespace) -> int:
    from shardsync import simulator

    return simulator.run(args)


def _demo(args: argparse.Namespace) -> int:
    from shardsync.demo import run_demo

    return run_demo(state_dir=args.state_dir, shards=args.shards, duration=args.duration, event_rate=args.event_rate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardsync", description=__doc__)
    parser.add_argument("--version", action="version", version=f"shardsync {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check-config", help="validate a config file and print the effective settings")
    check.add_argument("-c", "--config", required=True, metavar="FILE")
    check.set_defaults(handler=_check_config)

    simulate = commands.add_parser("simulate", help="run the protocol-faithful fake Tradovate server")
    from shardsync import simulator

    simulator.add_arguments(simulate)
    simulate.set_defaults(handler=_simulate)

    demo = commands.add_parser("demo", help="simulator + a 4-shard sync into ./demo-state, with live status")
    demo.add_argument("--state-dir", default="./demo-state", help="where the shard files go (default ./demo-state)")
    demo.add_argument("--shards", type=int, default=4, help="number of shards (default 4)")
    demo.add_argument("--event-rate", type=float, default=50.0, help="simulated changes per second (default 50)")
    demo.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = until Ctrl-C)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
