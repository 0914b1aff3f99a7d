"""``shardsync check-config``, and how a refused config file is reported (also by ``run``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from shardsync.exitcodes import EX_CONFIG, EX_OK

if TYPE_CHECKING:
    from shardsync.config import ConfigError, Settings
    from shardsync.ordinal import HostSlot

__all__ = ["load", "log_config_error", "main", "print_config_error"]


def load(
    path: str, report: Callable[[ConfigError], None] | None = None, host: HostSlot | None = None
) -> Settings | None:
    """The validated settings, or None after reporting every problem (the caller exits 78)."""
    from shardsync.config import ConfigError, load_config

    try:
        return load_config(path, host=host)
    except ConfigError as exc:
        (report or print_config_error)(exc)
        return None


def print_config_error(exc: ConfigError) -> None:
    from shardsync import journal

    text = f"shardsync: invalid configuration\n{exc}\n"
    if journal.is_journal_stream(sys.stderr):
        # so the reason of a failed `systemctl reload` is filed at priority err
        text = journal.mark(text.encode(), journal.ERR).decode()
    sys.stderr.write(text)


def log_config_error(exc: ConfigError) -> None:
    """`run`'s report of a refused file: one error record per problem when the file's format is JSON."""
    from shardsync.logs import configure_logging, get_logger, renders_json

    fmt = _early_log_format(exc.path)
    if not renders_json(fmt):
        print_config_error(exc)
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


def main(args: argparse.Namespace) -> int:
    from shardsync.config import render_settings

    if len(args.config) > 1:
        return _check_hosts(args.config, quiet=args.quiet, resharding=getattr(args, "resharding", False))
    settings = load(args.config[0])
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


def _check_hosts(paths: list[str], *, quiet: bool, resharding: bool = False) -> int:
    """check-config over several hosts' files: each valid, together one partition of 0..divisor-1."""
    from shardsync.partition import HostShards, check_partition, compress

    loaded = [(path, load(path)) for path in paths]
    hosts = [
        HostShards(path, s.sync.divisor, s.sync.expression, s.sync.entity_types, s.sync.remainders)
        for path, s in loaded
        if s is not None
    ]
    if len(hosts) < len(loaded):
        return EX_CONFIG
    problems = check_partition(hosts, resharding=resharding)
    for problem in problems:
        print(f"shardsync: {problem}", file=sys.stderr)
    if problems:
        return EX_CONFIG
    if not quiet:
        for host in hosts:
            print(f"{host.source}: remainders {compress(host.remainders)}")
        first = hosts[0]
        divisors = sorted({h.divisor for h in hosts})
        if len(divisors) > 1:
            print(f"ok: {len(hosts)} files of divisors {', '.join(map(str, divisors))} cover every account once "
                  f"(a resharding in progress)")
            return EX_OK
        print(f"ok: {len(hosts)} files partition 0-{first.divisor - 1} "
              f"(divisor {first.divisor}, {first.expression}, {len(first.entity_types)} entity types)")
    return EX_OK
