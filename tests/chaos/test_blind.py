"""The oracle is not blind: the campaign, against deliberately broken daemons, fails each of them.

Each variant (``launch.py``) replaces one function the way a plausible bug
would; the daemon runs it for real (forked workers inherit the patch).  The
schedules are the campaign's own, narrowed to the kinds that reach the bug;
the CI seeds (``test_campaign.py``), which carry out the same kinds against
the real daemon, are the control.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .runner import run
from .schedule import make

CASES = {
    # variant: (kinds, the checks that must report it)
    "no_deletions": (["mutate_down"], {"convergence"}),
    "props_early": (["split_spaced"], {"convergence", "phantom_deletions"}),
    "forget_readd": (["hup_readd_fast"], {"convergence"}),
}


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("variant", sorted(CASES))
def test_broken_variant_fails_the_campaign(variant: str, tmp_path: Path) -> None:
    """The campaign's oracle reports the broken variant in the check that its bug breaks."""
    kinds, checks = CASES[variant]
    result = run(make(1, kinds, count=(1, 1)), variant=variant, base=tmp_path)
    assert not result.ok, result.report()
    caught = {check for check, found in result.verdict.items() if found}
    assert caught & checks, result.report()
    assert "run" not in caught, result.report()  # failed on its data, not on a crash of the runner
