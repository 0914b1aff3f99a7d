"""``python -m tests.chaos --seed N`` replays one seed; ``--seeds 1-200`` runs a campaign and prints figures."""

from __future__ import annotations

import argparse
import sys
import time

from .catalogue import KINDS, default_kinds
from .figures import summary
from .launch import VARIANTS
from .runner import run
from .schedule import make


def _seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        seeds += range(int(first), int(last or first) + 1)
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--seed", type=int, help="run one seed (its schedule is printed as it runs)")
    which.add_argument("--seeds", type=_seeds, help="a campaign: 1-200, or 3,7,10-12")
    parser.add_argument("--kinds", help=f"comma-separated fault kinds (default: all); "
                                        f"known: {', '.join(KINDS)}")
    parser.add_argument("--variant", choices=VARIANTS, help="run a deliberately broken daemon (must fail)")
    parser.add_argument("--keep", action="store_true", help="keep every run's directory (failed ones always are)")
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",") if args.kinds else list(default_kinds())
    seeds = [args.seed] if args.seed is not None else args.seeds
    results = []
    began = time.monotonic()
    for seed in seeds:
        schedule = make(seed, kinds)
        say = print if args.seed is not None else None
        if say is not None:
            print(f"seed {seed}: setup {schedule.setup}")
        result = run(schedule, variant=args.variant, keep=args.keep, say=say)
        results.append(result)
        print(result.report(), flush=True)
    if len(results) > 1:
        print(summary(results, time.monotonic() - began))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
