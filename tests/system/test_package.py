"""The source distribution INSTALL.md tells operators to install: built offline, it carries config/, systemd/ and
deploy/, installs, and the files its steps use work from it."""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from shardsync import __version__

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("config", "systemd", "deploy")
#: Local state a working tree may hold that the sdist must not be built from.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv*", "*.egg-info", "__pycache__", "*.pyc", "build", "dist",
                                    ".*_cache", ".hypothesis", "demo-state", "state")
NAME = f"shardsync-{__version__}"


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m build --sdist` of a copy of the source tree, offline (no isolated build environment)."""
    work = tmp_path_factory.mktemp("sdist")
    tree = work / "tree"
    shutil.copytree(ROOT, tree, ignore=NOT_SOURCE)
    result = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(work),
                             str(tree)], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (archive,) = work.glob("*.tar.gz")
    assert archive.name == f"{NAME}.tar.gz"
    return archive


def members(archive: Path) -> set[str]:
    with tarfile.open(archive) as tar:
        return {m.name.removeprefix(f"{NAME}/") for m in tar.getmembers() if m.isfile()}


def test_the_sdist_carries_every_deployment_file(sdist: Path) -> None:
    """Every file under config/, systemd/ and deploy/ is in the sdist, as are the README, py.typed and every module;
    no bytecode or virtualenv is."""
    inside = members(sdist)
    wanted = {p.relative_to(ROOT).as_posix() for d in SHIPPED for p in (ROOT / d).rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    assert wanted and wanted <= inside, sorted(wanted - inside)
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "daemon" / "shardsync").rglob("*.py")}
    assert modules <= inside, sorted(modules - inside)
    assert {"README.md", "setup.cfg", "pyproject.toml", "daemon/shardsync/py.typed"} <= inside
    assert not [m for m in inside if m.endswith(".pyc") or "__pycache__" in m or m.startswith(".venv")]


def test_every_file_the_docs_name_is_in_the_sdist(sdist: Path) -> None:
    """Each config/, systemd/ or deploy/ path that INSTALL.md, the README or the Kubernetes notes mention exists
    in the sdist, so their steps run from the unpacked archive."""
    inside = members(sdist)
    named: set[str] = set()
    for doc in (ROOT / "deploy" / "INSTALL.md", ROOT / "README.md", ROOT / "deploy" / "kubernetes" / "README.md"):
        named |= set(re.findall(r"(?<![\w/])((?:config|systemd|deploy)/[\w@.-]+(?:/[\w@.-]+)*\.\w+)", doc.read_text()))
    assert "deploy/supervisor/shardsync.conf" in named and "systemd/shardsync.service" in named
    assert named <= inside, sorted(named - inside)


def test_the_metadata_names_the_supported_pythons(sdist: Path) -> None:
    """PKG-INFO requires Python >= 3.11 and lists 3.11, 3.12 and 3.13 as classifiers."""
    with tarfile.open(sdist) as tar:
        handle = tar.extractfile(f"{NAME}/PKG-INFO")
        assert handle is not None
        info = email.message_from_bytes(handle.read())
    assert info["Requires-Python"] == ">=3.11"
    versions = {c.rsplit(" :: ", 1)[1] for c in info.get_all("Classifier") or []
                if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)}
    assert versions == {"3.11", "3.12", "3.13"}


def test_install_md_steps_work_from_the_sdist(sdist: Path, tmp_path: Path) -> None:
    """Unpacked as INSTALL.md says, the archive installs (wheel built from it, offline) and the installed command
    validates the unpacked config/shardsync.toml and config/demo.toml."""
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    top = tmp_path / NAME
    assert (top / "config" / "shardsync.toml").is_file()
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                              "--no-build-isolation", "--target", str(target), str(sdist)],
                             capture_output=True, text=True, timeout=300, check=False)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    assert (target / "shardsync" / "py.typed").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import shardsync; print(shardsync.__file__)"], env=env,
                           capture_output=True, text=True, timeout=60, check=True, cwd=tmp_path)
    assert where.stdout.strip() == str(target / "shardsync" / "__init__.py")
    for config in ("shardsync.toml", "demo.toml"):
        check = subprocess.run([sys.executable, "-m", "shardsync", "check-config", "-c", f"config/{config}"],
                               env=env, capture_output=True, text=True, timeout=60, check=False, cwd=top)
        assert check.returncode == 0, check.stderr
