"""Unit tests for credential loading: sources, precedence, file permissions and clear errors without values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shardsync.config import CredentialsSettings
from shardsync.credentials import (
    Credentials,
    CredentialsError,
    credential_env_names,
    load_credentials,
    scrub_credential_env,
)
from shardsync.exitcodes import EX_NOPERM

ENV = {"SHARDSYNC_USERNAME": "env-user", "SHARDSYNC_PASSWORD": "env-pass-1234", "SHARDSYNC_SECRET": "env-sec-1234"}
NO_FILE = CredentialsSettings()


def cred_dir(tmp_path: Path, values: dict[str, str] | None = None) -> Path:
    directory = tmp_path / "creds"
    directory.mkdir()
    for name, value in (values or {}).items():
        (directory / name).write_text(value)
    return directory


def cred_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "credentials.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


GOOD_TOML = 'username = "file-user"\npassword = "file-pass-1234"\nsecret = "file-sec-1234"\n'


def test_credentials_directory_is_read_and_one_trailing_newline_stripped(tmp_path: Path) -> None:
    """systemd LoadCredential files are read, losing exactly one trailing newline."""
    directory = cred_dir(tmp_path, {"username": "dir-user\n", "password": "dir-pass\n\n", "secret": "dir-sec"})
    got = load_credentials(NO_FILE, environ={"CREDENTIALS_DIRECTORY": str(directory)})
    assert got == Credentials("dir-user", "dir-pass\n", "dir-sec")


def test_environment_variables_are_read() -> None:
    """The three SHARDSYNC_* variables give the credentials."""
    assert load_credentials(NO_FILE, environ=ENV) == Credentials("env-user", "env-pass-1234", "env-sec-1234")


def test_private_file_is_read(tmp_path: Path) -> None:
    """A 0600 TOML file with the three keys is accepted."""
    path = cred_file(tmp_path, GOOD_TOML)
    got = load_credentials(CredentialsSettings(file=str(path)), environ={})
    assert got == Credentials("file-user", "file-pass-1234", "file-sec-1234")


def test_directory_beats_environment_beats_file(tmp_path: Path) -> None:
    """With every source set, the credentials directory wins, then the environment, then the file."""
    directory = cred_dir(tmp_path, {"username": "dir-user", "password": "dir-pass", "secret": "dir-sec"})
    settings = CredentialsSettings(file=str(cred_file(tmp_path, GOOD_TOML)))
    assert load_credentials(settings, environ={**ENV, "CREDENTIALS_DIRECTORY": str(directory)}).username == "dir-user"
    assert load_credentials(settings, environ=ENV).username == "env-user"
    assert load_credentials(settings, environ={}).username == "file-user"


def test_directory_without_our_files_falls_through(tmp_path: Path) -> None:
    """A credentials directory holding none of our three files (other units' credentials) is skipped."""
    directory = cred_dir(tmp_path, {"other": "x"})
    assert load_credentials(NO_FILE, environ={**ENV, "CREDENTIALS_DIRECTORY": str(directory)}).username == "env-user"


def test_partial_directory_names_what_is_missing(tmp_path: Path) -> None:
    """A credentials directory with only some files is an error naming the missing ones."""
    directory = cred_dir(tmp_path, {"username": "u", "password": "p-hidden-value"})
    with pytest.raises(CredentialsError) as err:
        load_credentials(NO_FILE, environ={"CREDENTIALS_DIRECTORY": str(directory)})
    assert "lacks secret" in str(err.value)
    assert "p-hidden-value" not in str(err.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_file_readable_by_others_is_refused_with_chmod_hint(tmp_path: Path, mode: int) -> None:
    """A credentials file group/other may read is refused; the message names the file, its mode and the fix."""
    path = cred_file(tmp_path, GOOD_TOML, mode)
    with pytest.raises(CredentialsError) as err:
        load_credentials(CredentialsSettings(file=str(path)), environ={})
    text = str(err.value)
    assert str(path) in text
    assert f"{mode:04o}" in text
    assert f"chmod 600 {path}" in text
    assert "file-pass-1234" not in text
    assert err.value.exit_code == EX_NOPERM == 77


def test_partial_environment_names_missing_variables() -> None:
    """Only SHARDSYNC_USERNAME set is an error that names the two missing variables."""
    with pytest.raises(CredentialsError) as err:
        load_credentials(NO_FILE, environ={"SHARDSYNC_USERNAME": "someone"})
    text = str(err.value)
    assert "SHARDSYNC_PASSWORD" in text
    assert "SHARDSYNC_SECRET" in text
    assert "someone" not in text


def test_empty_environment_variable_is_an_error() -> None:
    """A credential variable set to the empty string is named as empty, not silently used."""
    with pytest.raises(CredentialsError, match="SHARDSYNC_SECRET set but empty"):
        load_credentials(NO_FILE, environ={**ENV, "SHARDSYNC_SECRET": ""})


def test_nothing_found_names_every_place(tmp_path: Path) -> None:
    """With no source set, one message lists the directory variable, the three env vars and the file setting."""
    with pytest.raises(CredentialsError) as err:
        load_credentials(NO_FILE, environ={})
    text = str(err.value)
    assert "$CREDENTIALS_DIRECTORY (unset)" in text
    for name in credential_env_names():
        assert name in text
    assert "[credentials] file (empty)" in text

    directory = cred_dir(tmp_path)
    with pytest.raises(CredentialsError) as err:
        load_credentials(NO_FILE, environ={"CREDENTIALS_DIRECTORY": str(directory)})
    assert str(directory) in str(err.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    """A configured credentials file that does not exist is an error naming it."""
    path = tmp_path / "nope.toml"
    with pytest.raises(CredentialsError, match=r"nope\.toml: cannot open"):
        load_credentials(CredentialsSettings(file=str(path)), environ={})


def test_bad_toml_is_named_without_values(tmp_path: Path) -> None:
    """Invalid TOML is reported with the file name and position, never the content."""
    path = cred_file(tmp_path, 'username = "u"\npassword = hunter2-secret\n')
    with pytest.raises(CredentialsError) as err:
        load_credentials(CredentialsSettings(file=str(path)), environ={})
    text = str(err.value)
    assert "not valid TOML" in text
    assert str(path) in text
    assert "hunter2" not in text


def test_unknown_and_missing_keys_are_named_without_values(tmp_path: Path) -> None:
    """Unknown and missing keys are listed by name; no value appears."""
    path = cred_file(tmp_path, 'username = "u-x"\npasword = "typo-pass-1234"\nsecret = 5\n')
    with pytest.raises(CredentialsError) as err:
        load_credentials(CredentialsSettings(file=str(path)), environ={})
    text = str(err.value)
    assert "unknown keys pasword" in text
    assert "missing keys password" in text
    assert "secret must be strings" in text
    assert "typo-pass-1234" not in text
    assert "u-x" not in text


def test_repr_hides_password_and_secret() -> None:
    """Neither repr nor str of Credentials shows the password or the secret."""
    creds = Credentials("alice", "pw-visible?", "sec-visible?")
    for text in (repr(creds), str(creds), f"{creds}"):
        assert "pw-visible" not in text
        assert "sec-visible" not in text
        assert "alice" in text


def test_scrub_removes_only_credential_variables() -> None:
    """scrub_credential_env drops the three SHARDSYNC_* credential variables and nothing else."""
    environ = {**ENV, "PATH": "/bin", "SHARDSYNC_OTHER": "keep"}
    scrub_credential_env(environ)
    assert environ == {"PATH": "/bin", "SHARDSYNC_OTHER": "keep"}
    assert credential_env_names() == ("SHARDSYNC_USERNAME", "SHARDSYNC_PASSWORD", "SHARDSYNC_SECRET")


def test_default_environ_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping, the process environment is read."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    assert load_credentials(NO_FILE).username == "env-user"
    assert os.environ["SHARDSYNC_USERNAME"] == "env-user"


# --- hostile sources: never hang, never a traceback, always exit 77 with the reason ------------------


def test_fifo_credentials_file_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO as [credentials] file is 'not a regular file' at once (opening it must not wait for a writer)."""
    fifo = tmp_path / "credentials.toml"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(CredentialsError, match="not a regular file"):
        load_credentials(CredentialsSettings(file=str(fifo)), environ={})


def test_directory_as_credentials_file_is_refused(tmp_path: Path) -> None:
    """A directory as [credentials] file gives CredentialsError (exit 77), not IsADirectoryError."""
    directory = tmp_path / "creds.d"
    directory.mkdir(mode=0o700)
    with pytest.raises(CredentialsError, match="not a regular file"):
        load_credentials(CredentialsSettings(file=str(directory)), environ={})


def test_huge_credentials_file_is_refused_unread(tmp_path: Path) -> None:
    """A credentials file over 64 KiB is refused by its size."""
    path = cred_file(tmp_path, GOOD_TOML + "#" * (70 * 1024) + "\n")
    with pytest.raises(CredentialsError, match="too large"):
        load_credentials(CredentialsSettings(file=str(path)), environ={})


def test_deeply_nested_credentials_file_is_refused(tmp_path: Path) -> None:
    """TOML nested thousands deep is a CredentialsError, not a RecursionError traceback."""
    path = cred_file(tmp_path, "username = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(CredentialsError) as err:
        load_credentials(CredentialsSettings(file=str(path)), environ={})
    assert err.value.exit_code == EX_NOPERM


def test_fifo_in_credentials_directory_is_refused(tmp_path: Path) -> None:
    """$CREDENTIALS_DIRECTORY/password as a FIFO is refused at once, naming the file."""
    directory = cred_dir(tmp_path, {"username": "u", "secret": "s3cret-1234"})
    os.mkfifo(directory / "password", 0o600)
    with pytest.raises(CredentialsError, match=r"password.*not a regular file"):
        load_credentials(NO_FILE, environ={"CREDENTIALS_DIRECTORY": str(directory)})


@pytest.mark.parametrize("source", ["environment", "file", "directory"])
def test_overlong_values_are_refused_from_every_source(tmp_path: Path, source: str) -> None:
    """A password over 16 KiB is refused (named, not shown) whichever source it comes from."""
    long = "p" * (16 * 1024 + 1)
    environ: dict[str, str] = {}
    settings = NO_FILE
    if source == "environment":
        environ = {**ENV, "SHARDSYNC_PASSWORD": long}
    elif source == "file":
        text = f'username = "u"\npassword = "{long}"\nsecret = "s"\n'
        settings = CredentialsSettings(file=str(cred_file(tmp_path, text)))
    else:
        environ = {"CREDENTIALS_DIRECTORY": str(cred_dir(tmp_path, {"username": "u", "password": long, "secret": "s"}))}
    with pytest.raises(CredentialsError, match="password longer than 16384 bytes") as err:
        load_credentials(settings, environ=environ)
    assert long not in str(err.value)
