"""The machine identity behind the derived ``device_id`` (Tradovate wants one stable id per device)."""

from __future__ import annotations

import getpass
import hashlib
import os
import socket

__all__ = ["current_user", "derive_device_id", "read_machine_id"]


def read_machine_id() -> str:
    """The machine id (systemd, then D-Bus), or the host name as a last resort."""
    for candidate in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(candidate, encoding="ascii", errors="replace") as f:
                value = f.read().strip()
        except OSError:
            continue
        if value:
            return value
    return socket.gethostname()


def current_user() -> str:
    """The OS user name of this process (numeric uid if it has no name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.geteuid())


def derive_device_id(machine_id: str, user: str) -> str:
    """A stable 32-hex-digit device id from the machine id and the OS user."""
    digest = hashlib.sha256(f"shardsync\0{machine_id}\0{user}".encode()).hexdigest()
    return digest[:32]
