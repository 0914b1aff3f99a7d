"""``shardsync run``: from the command line to the Arbiter.

Order matters: the process is hardened first (no core dumps, no same-user
memory reads, the sd_notify variables blanked in the environment block
workers inherit), then the config is loaded, logging configured, the
credentials found; when they came from SHARDSYNC_* variables the process
re-executes itself without them (a forked worker's /proc/PID/environ would
show them), handing them over in a memfd.  Then the Arbiter runs the loop.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, NoReturn

import orjson

from shardsync.checkconfig import load, log_config_error
from shardsync.exitcodes import EX_CONFIG, EX_ERROR, EX_NOPERM

if TYPE_CHECKING:
    from shardsync.credentials import Credentials
    from shardsync.ordinal import HostSlot

__all__ = ["host_slot", "main"]


def main(args: argparse.Namespace) -> int:
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

    settings = load(args.config, report=log_config_error, host=host_slot(args))
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
            _reexec_without_credentials(args.config, credentials, host_slot(args))
    for value in (credentials.password, credentials.secret):
        register_secret(value)

    from shardsync.supervisor.arbiter import Arbiter

    try:
        return Arbiter(settings, args.config, credentials, host=host_slot(args)).run()
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


def host_slot(args: argparse.Namespace) -> HostSlot | None:
    from shardsync.ordinal import HostSlot

    if args.host_index is None:
        return None
    return HostSlot(args.host_index, args.host_count)


def _read_credentials(fd: int) -> Credentials:
    from shardsync.credentials import Credentials

    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    data = orjson.loads(b"".join(chunks))
    return Credentials(data["username"], data["password"], data["secret"])
