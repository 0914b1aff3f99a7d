"""The simulator package's shape: modules within their size and no import cycle among them."""

from __future__ import annotations

from test_layout import MAX_LINES, PACKAGE, imports_of, modules

SERVER_LIMIT = 450


def test_simulator_modules_are_small() -> None:
    """Every simulator module has at most 400 lines, server.py at most 450."""
    too_long = {}
    for path in modules().values():
        relative = path.relative_to(PACKAGE).as_posix()
        if not relative.startswith("simulator/"):
            continue
        limit = SERVER_LIMIT if relative == "simulator/server.py" else MAX_LINES
        lines = len(path.read_text().splitlines())
        if lines > limit:
            too_long[relative] = lines
    assert not too_long, too_long


def test_session_does_not_know_the_server() -> None:
    """session.py imports neither the server nor a module that imports it (it sees only the Hub)."""
    mods = modules()
    known = set(mods)
    graph = {name: imports_of(path, known) for name, path in mods.items() if name.startswith("shardsync.simulator")}
    reached: set[str] = set()
    todo = ["shardsync.simulator.session"]
    while todo:
        node = todo.pop()
        for nxt in graph.get(node, set()):
            if nxt not in reached and nxt.startswith("shardsync.simulator"):
                reached.add(nxt)
                todo.append(nxt)
    assert "shardsync.simulator.server" not in reached
    assert "shardsync.simulator" not in reached  # the package imports the server
    assert "shardsync.simulator.session" not in reached  # no cycle back to itself
