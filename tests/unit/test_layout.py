"""The parent's package stays in small rooms: no module over 400 lines and no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "daemon" / "shardsync"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """shardsync modules imported when ``path`` is imported (not under TYPE_CHECKING, not inside functions)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shardsync"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("shardsync"))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    # A module's own parent packages are imported before it anyway: not an edge.
    return {name: {m for m in top_level_imports(path) if m in modules and m != name and not name.startswith(m + ".")}
            for name, path in modules.items()}


def test_no_supervisor_module_over_400_lines() -> None:
    """Every module of supervisor/ is at most 400 lines."""
    sizes = {p.name: len(p.read_text().splitlines()) for p in (PACKAGE / "supervisor").glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 400} == {}


def test_no_import_cycle() -> None:
    """No shardsync module imports itself back through others at import time (metrics <-> status was one)."""
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
