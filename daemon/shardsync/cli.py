"""The ``shardsync`` command: run, check-config, status, follow, query, simulate, demo."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

import orjson

from shardsync import __version__
from shardsync.exitcodes import EX_CONFIG, EX_ERROR, EX_NOPERM, EX_OK

if TYPE_CHECKING:
    from shardsync.config import Settings
    from shardsync.credentials import Credentials



def _load(path: str) -> Settings | None:
    """The validated settings, or None after printing every problem (the caller exits 78)."""
    from shardsync.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"shardsync: invalid configuration\n{exc}", file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    from shardsync.config import render_settings

    settings = _load(args.config)
    if settings is None:
        return EX_CONFIG
    print(render_settings(settings))
    return EX_OK


def _run(args: argparse.Namespace) -> int:
    from shardsync.credentials import CredentialsError, credential_env_names, load_credentials
    from shardsync.logs import configure_logging, get_logger
    from shardsync.secrets import register_secret

    settings = _load(args.config)
    if settings is None:
        return EX_CONFIG
    configure_logging(fmt=settings.log.format, level=settings.log.level, secrets=settings.secrets())
    log = get_logger("shardsync")
    if args.credentials_fd is not None:
        credentials = _read_credentials(args.credentials_fd)
    else:
        try:
            credentials = load_credentials(settings.credentials)
        except CredentialsError as exc:
            print(f"shardsync: {exc}", file=sys.stderr)
            log.error("credentials_unusable", error=str(exc))
            return EX_NOPERM
        if any(name in os.environ for name in credential_env_names()):
            _reexec_without_credentials(args.config, credentials)
    for value in (credentials.password, credentials.secret):
        register_secret(value)

    from shardsync.supervisor.arbiter import Arbiter

    try:
        return Arbiter(settings, args.config, credentials).run()
    except Exception:
        log.exception("supervisor_crashed")
        return EX_ERROR


def _reexec_without_credentials(config: str, credentials: Credentials) -> NoReturn:
    """Start over without SHARDSYNC_* in the environment, the values handed over a pipe.

    A forked worker's /proc/PID/environ is the environment block this process
    was started with, whatever os.environ says later; only a new exec drops it.
    """
    from shardsync.credentials import credential_env_names

    read_fd, write_fd = os.pipe()
    os.write(write_fd, orjson.dumps(
        {"username": credentials.username, "password": credentials.password, "secret": credentials.secret}
    ))
    os.close(write_fd)
    os.set_inheritable(read_fd, True)
    env = {k: v for k, v in os.environ.items() if k not in credential_env_names()}
    argv = [sys.executable, "-m", "shardsync", "run", "-c", config, "--credentials-fd", str(read_fd)]
    os.execve(sys.executable, argv, env)  # noqa: S606 - our own interpreter, fixed argv


def _read_credentials(fd: int) -> Credentials:
    from shardsync.credentials import Credentials

    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    data = orjson.loads(b"".join(chunks))
    return Credentials(data["username"], data["password"], data["secret"])


def _status(args: argparse.Namespace) -> int:
    from shardsync import statusclient

    return statusclient.main(args)


def _follow(args: argparse.Namespace) -> int:
    from shardsync import follow

    if args.config:
        settings = _load(args.config)
        if settings is None:
            return EX_CONFIG
        sink = settings.sink
        return follow.main(args, kind=sink.kind, path=sink.path, dsn=sink.dsn, from_argv=False)
    if args.dsn:
        return follow.main(args, kind="postgres", dsn=args.dsn)
    path = args.path or "./state"
    kind = args.kind or follow.detect_kind(path)
    if kind is None:
        print(f"shardsync follow: no sqlite or jsonl shard files in {path} (or both kinds); say which with --kind",
              file=sys.stderr)
        return EX_ERROR
    return follow.main(args, kind=kind, path=path)


def _query(args: argparse.Namespace) -> int:
    from shardsync import query

    path = args.path or "./state"
    if args.config:
        settings = _load(args.config)
        if settings is None:
            return EX_CONFIG
        if settings.sink.kind != "sqlite":
            print(f"shardsync query: reads sqlite shard files; {args.config} has sink.kind = "
                  f"{settings.sink.kind!r}", file=sys.stderr)
            return EX_CONFIG
        path = settings.sink.path
    return query.main(args, path=path)


def _simulate(args: argparse.Namespace) -> int:
    # The simulator (websockets, asyncio: ~150 modules) is imported only here, so
    # `shardsync run` and every worker it forks never carry the fake server.
    from shardsync import simulator

    parser = argparse.ArgumentParser(prog="shardsync simulate", description=_SIMULATE_HELP)
    simulator.add_arguments(parser)
    return simulator.run(parser.parse_args(args.extra))


def _demo(args: argparse.Namespace) -> int:
    from shardsync.demo import run_demo

    return run_demo(state_dir=args.state_dir, shards=args.shards, duration=args.duration, event_rate=args.event_rate)


_SIMULATE_HELP = "run the protocol-faithful fake Tradovate server"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardsync", description=__doc__)
    parser.add_argument("--version", action="version", version=f"shardsync {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the supervisor and its shard workers in the foreground")
    run.add_argument("-c", "--config", required=True, metavar="FILE")
    run.add_argument("--credentials-fd", type=int, default=None, help=argparse.SUPPRESS)
    run.set_defaults(handler=_run)

    check = commands.add_parser("check-config", help="validate a config file and print the effective settings")
    check.add_argument("-c", "--config", required=True, metavar="FILE")
    check.set_defaults(handler=_check_config)

    status = commands.add_parser("status", help="table of shards: state, pid, uptime, restarts, events/s")
    from shardsync import statusclient

    statusclient.add_arguments(status)
    status.set_defaults(handler=_status)

    follow_parser = commands.add_parser(
        "follow", help="stream committed changes of every shard as JSON lines (resumable with --cursor)"
    )
    from shardsync import follow

    follow.add_arguments(follow_parser)
    follow_parser.set_defaults(handler=_follow)

    query_parser = commands.add_parser("query", help="run one SELECT over every sqlite shard file, rows merged")
    from shardsync import query

    query.add_arguments(query_parser)
    query_parser.set_defaults(handler=_query)

    # Its own options are parsed by _simulate (``shardsync simulate --help`` lists them).
    simulate = commands.add_parser("simulate", help=_SIMULATE_HELP, add_help=False)
    simulate.set_defaults(handler=_simulate, passes_extra=True)

    demo = commands.add_parser("demo", help="simulator + a 4-shard sync into ./demo-state, with live status")
    demo.add_argument("--state-dir", default="./demo-state", help="where the shard files go (default ./demo-state)")
    demo.add_argument("--shards", type=int, default=4, help="number of shards (default 4)")
    demo.add_argument("--event-rate", type=float, default=50.0, help="simulated changes per second (default 50)")
    demo.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = until Ctrl-C)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
