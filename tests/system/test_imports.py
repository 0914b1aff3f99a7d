"""Production never loads the fake: `shardsync run` and its workers import neither the simulator nor websockets."""

from __future__ import annotations

import re
from collections.abc import Callable

from harness import Daemon

from shardsync.simulator import Simulator

FORBIDDEN = re.compile(r"\|\s*(websockets(\.|$)|shardsync\.simulator(\.|$))")


def test_run_and_its_workers_never_import_the_simulator(
    sim_factory: Callable[..., Simulator], daemon_factory: Callable[..., Daemon]
) -> None:
    """Every module the parent and its forked workers import (-X importtime) is listed; none is the fake server."""
    sim = sim_factory()
    daemon = daemon_factory(sim, divisor=2, env={"PYTHONPROFILEIMPORTTIME": "1"})
    daemon.wait_live()
    assert daemon.stop() == 0
    imported = [line for line in daemon.log_path.read_text(errors="replace").splitlines()
                if line.startswith("import time:")]
    modules = {line.rsplit("|", 1)[1].strip() for line in imported}
    # The listing is real and covers the workers: the session module is imported only after fork.
    assert "shardsync.supervisor.arbiter" in modules
    assert "shardsync.worker.session" in modules
    assert "websocket" in modules  # websocket-client, the worker's transport
    offenders = [line for line in imported if FORBIDDEN.search(line)]
    assert not offenders, offenders[:10]
