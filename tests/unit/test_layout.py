"""The code base's shape: small modules and imports that only point one way (no cycles)."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "daemon" / "shardsync"
MAX_LINES = 400
#: The simulator's server is allowed a little more (its knobs are one flat list).
ALLOWANCE = {"simulator/server.py": 450}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports anywhere (top level, functions, TYPE_CHECKING blocks)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from a.b import c`` imports module a.b.c when c is a module, else a name of a.b.
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        out.update(name for name in names if name in known)
    return out


def test_no_module_is_over_400_lines() -> None:
    """No module of daemon/shardsync has more than 400 lines (simulator/server.py: 450)."""
    too_long = {}
    for path in modules().values():
        relative = path.relative_to(PACKAGE).as_posix()
        lines = len(path.read_text().splitlines())
        if lines > ALLOWANCE.get(relative, MAX_LINES):
            too_long[relative] = lines
    assert not too_long, too_long


def test_no_import_cycles() -> None:
    """The import graph of the package (every import, lazy and type-only ones included) has no cycle."""
    mods = modules()
    graph = {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_sees_cycles(tmp_path: Path) -> None:
    """imports_of resolves ``from pkg import module`` and ``import pkg.module`` edges (the check is not blind)."""
    source = tmp_path / "m.py"
    source.write_text("from shardsync.a import b\nimport shardsync.c\nfrom shardsync.a import name\n"
                      "def f():\n    from shardsync import d\n")
    known = {"shardsync.a", "shardsync.a.b", "shardsync.c", "shardsync.d", "shardsync"}
    assert imports_of(source, known) == {"shardsync.a.b", "shardsync.c", "shardsync.a", "shardsync.d"}


def area(module: str) -> str:
    """A module's part of the house: its subpackage, or its own name for a top-level module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else module


#: (part, parts it must never import) -- ARCHITECTURE.md's forbidden arrows, enforced.
FORBIDDEN = [
    ("worker", {"supervisor", "config", "auth", "credentials", "cli", "simulator", "follow", "query", "demo"}),
    ("supervisor", {"simulator", "protocol", "syncmessage", "mirror", "follow", "query", "demo", "cli"}),
    ("sinks", {"worker", "supervisor", "config", "protocol", "simulator", "follow", "cli"}),
    ("config", {"worker", "supervisor", "auth", "simulator", "cli"}),
    ("simulator", {"worker", "supervisor", "config", "sinks", "auth", "credentials", "cli", "logs"}),
    ("follow", {"worker", "supervisor", "simulator", "config"}),
]
#: The pure core: decisions and codecs that do no I/O and import nothing that does.
PURE = {"protocol", "syncmessage", "mirror", "attribution", "entitytext", "change", "changeseq", "backoff", "partition",
        "ordinal", "clip", "secrets", "quarantine", "salvage", "requests"}
PURE_MAY_IMPORT = PURE
#: The only way into the fake server from production code: `shardsync simulate` (cli, imported lazily).
SIMULATOR_IMPORTERS = {"cli"}


def edges() -> list[tuple[str, str, str, str]]:
    """(importing module, imported module, their parts) for every import inside the package."""
    mods = modules()
    out = []
    for name, path in mods.items():
        for target in imports_of(path, set(mods)):
            out.append((name, target, area(name), area(target)))
    return out


def test_forbidden_arrows_are_absent() -> None:
    """No part imports what ARCHITECTURE.md forbids it (e.g. the worker never imports the parent or the config)."""
    bad = [f"{a} -> {b}" for a, b, pa, pb in edges() for part, banned in FORBIDDEN if pa == part and pb in banned]
    assert not bad, bad


def test_supervisor_reaches_the_worker_only_through_its_options_and_boot() -> None:
    """The parent knows a worker only as WorkerOptions and the post-fork entry point (worker.boot)."""
    bad = [f"{a} -> {b}" for a, b, pa, pb in edges()
           if pa == "supervisor" and pb == "worker" and b not in {"shardsync.worker.options", "shardsync.worker.boot"}]
    assert not bad, bad


def test_the_pure_core_imports_only_the_pure_core() -> None:
    """Codec, mirror and decisions import no I/O module of the package (their tests need no sockets or files)."""
    bad = [f"{a} -> {b}" for a, b, pa, pb in edges() if pa in PURE and pb not in PURE_MAY_IMPORT and pb != "shardsync"]
    assert not bad, bad


def test_only_the_cli_imports_the_simulator() -> None:
    """Production code never loads the fake server; `shardsync simulate` imports it lazily from the CLI."""
    allowed = {"simulator", *SIMULATOR_IMPORTERS}
    bad = [f"{a} -> {b}" for a, b, pa, pb in edges() if pb == "simulator" and pa not in allowed]
    assert not bad, bad


def test_test_modules_have_unique_names() -> None:
    """No two test modules share a file name: pytest (rootdir imports, no packages) refuses to collect the second."""
    tests = Path(__file__).resolve().parents[1]
    names = Counter(path.name for path in tests.rglob("test_*.py"))
    assert not [name for name, count in names.items() if count > 1]
