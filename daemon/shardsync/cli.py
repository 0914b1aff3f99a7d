"""The ``shardsync`` command: run, check-config, status, follow, query, simulate, demo."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

import orjson

from shardsync import __version__
from shardsync.exitcodes import EX_CONFIG, EX_ERROR, EX_NOPERM, EX_OK

if TYPE_CHECKING:
    from shardsync.config import ConfigError, Settings
    from shardsync.credentials import Credentials
    from shardsync.ordinal import HostSlot



def _load(
    path: str, report: Callable[[ConfigError], None] | None = None, host: HostSlot | None = None
) -> Settings | None:
    """The validated settings, or None after reporting every problem (the caller exits 78)."""
    from shardsync.config import ConfigError, load_config

    try:
        return load_config(path, host=host)
    except ConfigError as exc:
        (report or _print_config_error)(exc)
        return None


def _print_config_error(exc: ConfigError) -> None:
    from shardsync import journal

    text = f"shardsync: invalid configuration\n{exc}\n"
    if journal.is_journal_stream(sys.stderr):
        # so the reason of a failed `systemctl reload` is filed at priority err
        text = journal.mark(text.encode(), journal.ERR).decode()
    sys.stderr.write(text)


def _log_config_error(exc: ConfigError) -> None:
    """`run`'s report of a refused file: one error record per problem when the file's format is JSON."""
    from shardsync.logs import configure_logging, get_logger, renders_json

    fmt = _early_log_format(exc.path)
    if not renders_json(fmt):
        _print_config_error(exc)
        return
    configure_logging(fmt=fmt, level="info")
    log = get_logger("shardsync")
    for line in exc.lines:
        log.error("config_invalid", error=line)


def _early_log_format(path: str) -> str:
    """``[log] format`` of a file that failed validation, read leniently; ``auto`` when it cannot be told."""
    import tomllib

    from shardsync.config.load import MAX_CONFIG_BYTES
    from shardsync.files import read_regular_file

    try:
        # The same guarded read as the config itself: the file may be a FIFO, huge or nested too deep.
        data = tomllib.loads(read_regular_file(path, MAX_CONFIG_BYTES).decode())
    except (OSError, ValueError, RecursionError):  # unreadable, not regular, not UTF-8 or not TOML
        return "auto"
    section = data.get("log")
    fmt = section.get("format") if isinstance(section, dict) else None
    if isinstance(fmt, str) and fmt.lower() in ("json", "console", "auto"):
        return fmt.lower()
    return "auto"


def _check_config(args: argparse.Namespace) -> int:
    from shardsync.config import render_settings

    if len(args.config) > 1:
        return _check_hosts(args.config, quiet=args.quiet)
    settings = _load(args.config[0])
    if settings is None:
        return EX_CONFIG
    if not args.quiet:
        print(render_settings(settings))
        for warning in _config_warnings(settings):
            print(f"shardsync: warning: {warning}", file=sys.stderr)
    return EX_OK


def _config_warnings(settings: Settings) -> list[str]:
    """What a valid file may still get wrong: shipped placeholders, credentials this machine cannot find."""
    from shardsync.config.models import PLACEHOLDERS
    from shardsync.credentials import CredentialsError, find_credentials

    warnings = [
        f"{section}.{key} is still the shipped placeholder {value!r}; set your own"
        for (section, key), value in PLACEHOLDERS.items()
        if getattr(getattr(settings, section), key) == value
    ]
    try:
        _, source = find_credentials(settings.credentials)
    except CredentialsError as exc:
        warnings.append(f"credentials are not usable here (run would exit 77): {exc}")
    else:
        print(f"credentials: from {source}", file=sys.stderr)
    return warnings


def _check_hosts(paths: list[str], *, quiet: bool) -> int:
    """check-config over several hosts' files: each valid, together one partition of 0..divisor-1."""
    from shardsync.partition import HostShards, check_partition, compress

    loaded = [(path, _load(path)) for path in paths]
    hosts = [
        HostShards(path, s.sync.divisor, s.sync.expression, s.sync.entity_types, s.sync.remainders)
        for path, s in loaded
        if s is not None
    ]
    if len(hosts) < len(loaded):
        return EX_CONFIG
    problems = check_partition(hosts)
    for problem in problems:
        print(f"shardsync: {problem}", file=sys.stderr)
    if problems:
        return EX_CONFIG
    if not quiet:
        for host in hosts:
            print(f"{host.source}: remainders {compress(host.remainders)}")
        first = hosts[0]
        print(f"ok: {len(hosts)} files partition 0-{first.divisor - 1} "
              f"(divisor {first.divisor}, {first.expression}, {len(first.entity_types)} entity types)")
    return EX_OK


def _run(args: argparse.Namespace) -> int:
    from shardsync.environ import NOTIFY_VARIABLES, blank_environ_block
    from shardsync.prctl import forbid_dumps

    # Workers fork from this process, and /proc/PID/environ shows the block it was
    # started with; once dumps are forbidden (first, before any secret is read) a
    # non-root process can no longer rewrite that block, so it is blanked now.
    blank_environ_block(NOTIFY_VARIABLES)
    forbid_dumps()
    from shardsync.credentials import CredentialsError, credential_env_names, load_credentials
    from shardsync.logs import configure_logging, get_logger
    from shardsync.secrets import register_secret

    settings = _load(args.config, report=_log_config_error, host=_host_slot(args))
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
            log.error("credentials_unusable", error=str(exc))
            return EX_NOPERM
        if any(name in os.environ for name in credential_env_names()):
            _reexec_without_credentials(args.config, credentials, _host_slot(args))
    for value in (credentials.password, credentials.secret):
        register_secret(value)

    from shardsync.supervisor.arbiter import Arbiter

    try:
        return Arbiter(settings, args.config, credentials, host=_host_slot(args)).run()
    except Exception:
        log.exception("supervisor_crashed")
        return EX_ERROR


def _reexec_without_credentials(config: str, credentials: Credentials, host: HostSlot | None) -> NoReturn:
    """Start over without SHARDSYNC_* in the environment, the values handed over in a memfd.

    A forked worker's /proc/PID/environ is the environment block this process
    was started with, whatever os.environ says later; only a new exec drops it.
    """
    from shardsync.credentials import credential_env_names

    # A memfd, not a pipe: a pipe holds 64 KiB, and writing more before exec
    # (nobody reads yet) would block forever.  The memfd has no name on disk.
    fd = os.memfd_create("shardsync-credentials", 0)  # not inheritable by default: set below, for exec only
    payload = orjson.dumps(
        {"username": credentials.username, "password": credentials.password, "secret": credentials.secret}
    )
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    env = {k: v for k, v in os.environ.items() if k not in credential_env_names()}
    argv = [sys.executable, "-m", "shardsync", "run", "-c", config, "--credentials-fd", str(fd)]
    if host is not None:
        argv += ["--host-index", str(host.index), "--host-count", str(host.count)]
    os.execve(sys.executable, argv, env)  # noqa: S606 - our own interpreter, fixed argv


def _host_slot(args: argparse.Namespace) -> HostSlot | None:
    from shardsync.ordinal import HostSlot

    if args.host_index is None:
        return None
    return HostSlot(args.host_index, args.host_count)


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
