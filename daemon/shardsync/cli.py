"""The ``shardsync`` command: run, check-config, status, follow, query, simulate, demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shardsync import __version__
from shardsync.exitcodes import EX_CONFIG, EX_ERROR


def _check_config(args: argparse.Namespace) -> int:
    from shardsync import checkconfig

    return checkconfig.main(args)


def _run(args: argparse.Namespace) -> int:
    from shardsync import launch

    return launch.main(args)


def _host_index(text: str) -> int:
    from shardsync.ordinal import parse_host_index

    try:
        return parse_host_index(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _host_count(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hosts (1 .. 65536)")
    return int(text)


def _status(args: argparse.Namespace) -> int:
    from shardsync import statusclient

    return statusclient.main(args)


def _follow(args: argparse.Namespace) -> int:
    from shardsync import follow
    from shardsync.checkconfig import load

    if args.config:
        settings = load(args.config)
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
    from shardsync.checkconfig import load

    path = args.path or "./state"
    if args.config:
        settings = load(args.config)
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

_RUN_HELP = """\
Runs the supervisor and one worker process per shard in the foreground until
SIGTERM or SIGINT (a second one SIGKILLs the workers at once). Logs go to stderr.

signals:
  SIGHUP           re-read FILE: an invalid file is refused (the old settings
                   stay, the reason is logged); otherwise added shards start,
                   removed ones stop, and only shards whose settings changed
                   restart. systemd: `systemctl reload`. --host-index/--host-count
                   apply to the re-read file too.
  SIGTERM, SIGINT  stop: the workers get [supervisor] shutdown_timeout, then SIGKILL.

credentials (username, password, API secret), first source found wins:
  1. $CREDENTIALS_DIRECTORY/{username,password,secret}  (systemd LoadCredential=,
     a Kubernetes Secret mounted as files)
  2. SHARDSYNC_USERNAME, SHARDSYNC_PASSWORD, SHARDSYNC_SECRET  (the daemon then
     re-executes itself without them, so no worker inherits them)
  3. [credentials] file in FILE: a TOML file, refused if group/other-readable

several hosts, one FILE:
  with [sync] remainders = "all", --host-index I --host-count N runs host I's
  contiguous block of 0..divisor-1 (divisor 16, N 4: host 1 runs 4-7); I may be
  a StatefulSet pod name (shardsync-1). Any other remainders value: exit 78.

exit codes:
  0   clean stop (SIGTERM/SIGINT)
  1   unexpected error
  3   global breaker: most shards failing together
  77  credentials missing, unreadable, too open, or refused by the server
  78  invalid configuration (FILE and key named on stderr)
  systemd units do not restart 77 and 78 (RestartPreventExitStatus=77 78).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardsync", description=__doc__)
    parser.add_argument("--version", action="version", version=f"shardsync {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the supervisor and its shard workers in the foreground",
                              description=_RUN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("-c", "--config", required=True, metavar="FILE")
    run.add_argument("--host-index", type=_host_index, metavar="I",
                     help="this host's ordinal, 0 .. N-1, or a pod name ending in -I (needs --host-count)")
    run.add_argument("--host-count", type=_host_count, metavar="N", help="number of hosts sharing FILE")
    run.add_argument("--credentials-fd", type=int, default=None, help=argparse.SUPPRESS)
    run.set_defaults(handler=_run)

    check = commands.add_parser(
        "check-config", help="validate a config file and print the effective settings",
        description="Validate config files (exit 78 naming file and key on any problem). One file: print its "
                    "effective settings, secrets masked. Several files (-c A -c B ...), one per host: also check "
                    "that they share divisor, expression and entity types and that their remainders cover "
                    "0..divisor-1 exactly once, naming every gap and overlap.")
    check.add_argument("-c", "--config", required=True, metavar="FILE", action="append",
                       help="a config file; repeat for the files of several hosts")
    check.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid (systemd ExecReload)")
    check.add_argument("--resharding", action="store_true",
                       help="several files may have different divisors (hosts resharded one by one): check that "
                            "they cover every account (id modulo the largest divisor) exactly once")
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
    if args.command == "run" and (args.host_index is None) != (args.host_count is None):
        parser.error("run: --host-index and --host-count go together")
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
