"""Secrets stay out of reach of other processes of the daemon's own user: no /proc/PID/mem, no core dumps."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from harness import Daemon, children, write_credentials

from shardsync.simulator import Simulator

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
REPO = Path(__file__).resolve().parents[2]
DROP = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

READER = """
import json, os, sys
out = {}
for pid in map(int, sys.argv[1:]):
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except OSError as exc:
        out[pid] = f"refused: {exc.strerror}"
        continue
    with open(f"/proc/{pid}/maps") as maps:
        start = int(maps.readline().split("-")[0], 16)
    out[pid] = f"read {len(os.pread(fd, 64, start))} bytes"
    os.close(fd)
print(json.dumps(out))
"""


def _system_python_matches() -> bool:
    # The venv's packages are put on the system interpreter's path (the venv's own
    # interpreter lives under /root, which the unprivileged user cannot reach).
    if not (os.path.exists(SYSTEM_PYTHON) and shutil.which("setpriv") and os.geteuid() == 0):
        return False
    version = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    return version == str(tuple(sys.version_info[:2]))


pytestmark = pytest.mark.skipif(not _system_python_matches(),
                                reason="needs root, setpriv and /usr/bin/python3 of the venv's version")


@pytest.fixture
def home() -> Iterator[Path]:
    """A directory the unprivileged user owns (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="shardsync-nobody-"))
    os.chmod(path, 0o755)  # noqa: S103 - the unprivileged daemon must enter it
    os.chown(path, NOBODY, NOBODY)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _as_nobody_env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO / "daemon"), sysconfig.get_paths()["purelib"]])
    return {"PYTHONPATH": path, "HOME": "/nonexistent"}


def _read_mem(pids: list[int]) -> dict[str, str]:
    result = subprocess.run([*DROP, SYSTEM_PYTHON, "-c", READER, *map(str, pids)],
                            capture_output=True, text=True, check=True, timeout=30)
    return orjson.loads(result.stdout)  # type: ignore[no-any-return]


def test_a_process_of_the_same_user_cannot_read_parent_or_worker_memory(
    home: Path, sim_factory: Callable[..., Simulator]
) -> None:
    """The daemon runs as nobody; another nobody process is refused /proc/PID/mem of parent and workers (while
    it can read a plain nobody process's), and every daemon process has a core limit of 0."""
    sim = sim_factory()
    credentials = write_credentials(home / "credentials.toml")
    os.chown(credentials, NOBODY, NOBODY)
    daemon = Daemon(home, sim, divisor=2, credentials=credentials, env=_as_nobody_env(),
                    launcher=[*DROP, SYSTEM_PYTHON])
    daemon.start()
    control = subprocess.Popen([*DROP, SYSTEM_PYTHON, "-c", "import sys; sys.stdin.read()"],
                               stdin=subprocess.PIPE)
    try:
        daemon.wait_live()
        parent = daemon.pid  # setpriv execs python in place: the daemon parent is that process
        workers = children(parent)
        assert len(workers) == 2
        seen = _read_mem([parent, *workers, control.pid])
        assert seen[str(control.pid)].startswith("read 64 bytes"), seen  # the probe itself works
        for pid in (parent, *workers):
            assert seen[str(pid)].startswith("refused"), seen
            limits = Path(f"/proc/{pid}/limits").read_text()
            core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
            assert core.split()[4:6] == ["0", "0"], core
    finally:
        control.communicate(b"", timeout=10)
        assert daemon.stop() == 0
