"""Where the login secrets come from: systemd credentials, environment, or a private TOML file.

Sources, in order; the first one that is set wins:

1. ``$CREDENTIALS_DIRECTORY/{username,password,secret}`` (systemd ``LoadCredential=``);
2. ``SHARDSYNC_USERNAME`` / ``SHARDSYNC_PASSWORD`` / ``SHARDSYNC_SECRET``;
3. ``[credentials] file``: a TOML file with exactly ``username``, ``password``
   and ``secret``, refused when group or others may read it.

A source that is only partly set is an error (not a silent fall-through): it
is almost always a typo or a missing unit line. Every error is a
:class:`CredentialsError` (exit code 77, EX_NOPERM) naming files, keys and
variables, never a value.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from shardsync.config import CredentialsSettings
from shardsync.exitcodes import EX_NOPERM
from shardsync.files import read_regular_file
from shardsync.secrets import masked_repr, register_secret

__all__ = [
    "FIELDS",
    "Credentials",
    "CredentialsError",
    "credential_env_names",
    "find_credentials",
    "load_credentials",
    "scrub_credential_env",
]

FIELDS: Final = ("username", "password", "secret")
#: A credentials file (or one systemd credential) is tiny; a bigger one is a mistake, not read into memory.
MAX_FILE_BYTES: Final = 64 * 1024
#: Longest accepted username, password or secret.
MAX_VALUE_BYTES: Final = 16 * 1024
ENV_PREFIX: Final = "SHARDSYNC_"
DIRECTORY_ENV: Final = "CREDENTIALS_DIRECTORY"


@masked_repr("password", "secret")
@dataclass(frozen=True, slots=True)
class Credentials:
    """Username, password and API secret; never printed."""

    username: str
    password: str
    secret: str


class CredentialsError(Exception):
    """Credentials missing, partial, unreadable or too open; the CLI exits with :data:`EX_NOPERM`."""

    exit_code: Final = EX_NOPERM


def credential_env_names() -> tuple[str, ...]:
    """The environment variables that may carry credentials (to scrub before forking)."""
    return tuple(ENV_PREFIX + name.upper() for name in FIELDS)


def scrub_credential_env(environ: MutableMapping[str, str]) -> None:
    """Remove every credential variable from *environ* (e.g. ``os.environ``)."""
    for name in credential_env_names():
        environ.pop(name, None)


def _missing(names: Sequence[str]) -> str:
    return ", ".join(names)


def _read(path: str, what: str) -> bytes:
    """A credential source's bytes: a regular file, at most :data:`MAX_FILE_BYTES`, never blocking."""
    try:
        return read_regular_file(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CredentialsError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CredentialsError(f"cannot read {what} {path}: {exc}") from None


def _checked(values: dict[str, str], where: str) -> Credentials:
    too_long = [name for name in FIELDS if len(values[name].encode()) > MAX_VALUE_BYTES]
    if too_long:
        raise CredentialsError(f"{where}: {_missing(too_long)} longer than {MAX_VALUE_BYTES} bytes")
    return Credentials(values["username"], values["password"], values["secret"])


def _from_directory(directory: str) -> Credentials | None:
    base = Path(directory)
    values: dict[str, str] = {}
    missing: list[str] = []
    for name in FIELDS:
        path = base / name
        try:
            raw = _read(str(path), "credential file")
        except FileNotFoundError:
            missing.append(name)
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CredentialsError(f"credential file {path} is not UTF-8 text") from None
        text = text.removesuffix("\n")
        if not text:
            raise CredentialsError(f"credential file {path} is empty")
        values[name] = text
    if not values:
        return None
    if missing:
        raise CredentialsError(
            f"${DIRECTORY_ENV} ({directory}) has {_missing(sorted(values))} but lacks {_missing(missing)}; "
            "add the missing LoadCredential= lines or remove the others"
        )
    return _checked(values, f"${DIRECTORY_ENV} ({directory})")


def _from_environment(environ: Mapping[str, str]) -> Credentials | None:
    names = dict(zip(FIELDS, credential_env_names(), strict=True))
    present = {field: environ[var] for field, var in names.items() if var in environ}
    if not present:
        return None
    missing = [names[field] for field in FIELDS if field not in present]
    if missing:
        set_names = [names[field] for field in FIELDS if field in present]
        raise CredentialsError(f"{_missing(set_names)} set but {_missing(missing)} missing; set all three or none")
    empty = [names[field] for field in FIELDS if not present[field]]
    if empty:
        raise CredentialsError(f"{_missing(empty)} set but empty")
    return _checked(present, "the SHARDSYNC_* environment variables")


def _from_file(file: str) -> Credentials:
    try:
        # Opened once and checked on the descriptor: no window to swap the file after the checks.
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise CredentialsError(f"[credentials] file {file}: cannot open: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CredentialsError(f"[credentials] file {file} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise CredentialsError(
                f"[credentials] file {file} has mode {mode:04o}: readable or writable by group or others; "
                f"refusing to use it. Run: chmod 600 {file}"
            )
    finally:
        os.close(fd)
    raw = _read(file, "[credentials] file")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise CredentialsError(f"[credentials] file {file} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message names the position and the kind of error, not the text
        raise CredentialsError(f"[credentials] file {file} is not valid TOML: {exc}") from None
    except RecursionError:
        raise CredentialsError(f"[credentials] file {file} is nested too deeply to be a credentials file") from None
    problems: list[str] = []
    unknown = sorted(key for key in data if key not in FIELDS)
    if unknown:
        problems.append(f"unknown keys {_missing(unknown)}")
    missing = [key for key in FIELDS if key not in data]
    if missing:
        problems.append(f"missing keys {_missing(missing)}")
    wrong = [key for key in FIELDS if key in data and not isinstance(data[key], str)]
    if wrong:
        problems.append(f"keys {_missing(wrong)} must be strings")
    empty = [key for key in FIELDS if isinstance(data.get(key), str) and not data[key]]
    if empty:
        problems.append(f"keys {_missing(empty)} are empty")
    if problems:
        raise CredentialsError(
            f"[credentials] file {file}: {'; '.join(problems)} (expected exactly {_missing(list(FIELDS))})"
        )
    return _checked(data, f"[credentials] file {file}")


def load_credentials(settings: CredentialsSettings, *, environ: Mapping[str, str] = os.environ) -> Credentials:
    """The login credentials from the first source that is set; :class:`CredentialsError` otherwise.

    The password and secret are registered with the log redactor.
    """
    return find_credentials(settings, environ=environ)[0]


def find_credentials(
    settings: CredentialsSettings, *, environ: Mapping[str, str] = os.environ
) -> tuple[Credentials, str]:
    """:func:`load_credentials` and which source they came from, named for an operator (no value shown)."""
    credentials: Credentials | None = None
    directory = environ.get(DIRECTORY_ENV, "")
    source = ""
    if directory:
        credentials = _from_directory(directory)
        source = f"${DIRECTORY_ENV} ({directory})"
    if credentials is None:
        credentials = _from_environment(environ)
        source = f"the environment variables {_missing(list(credential_env_names()))}"
    if credentials is None and settings.file:
        credentials = _from_file(settings.file)
        source = f"[credentials] file {settings.file}"
    if credentials is None:
        where_dir = f"${DIRECTORY_ENV} ({directory}: no username/password/secret files)" if directory \
            else f"${DIRECTORY_ENV} (unset)"
        raise CredentialsError(
            "no credentials found; looked at "
            f"{where_dir}, "
            f"the environment variables {_missing(list(credential_env_names()))} (unset), "
            f"and [credentials] file ({settings.file or 'empty'})"
        )
    register_secret(credentials.password)
    register_secret(credentials.secret)
    return credentials, source
