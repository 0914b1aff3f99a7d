"""``python -m tests.chaos --seed N`` replays one seed; ``--seeds 1-200`` runs a campaign and prints figures."""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from .catalogue import KINDS, default_kinds
from .figures import summary
from .launch import VARIANTS
from .runner import Result, run, run_seed
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
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, each in its own process")
    parser.add_argument("--minutes", type=float,
                        help="start no seed after this many minutes (the figures say which seeds ran)")
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",") if args.kinds else list(default_kinds())
    if args.seed is not None:
        schedule = make(args.seed, kinds)
        print(f"seed {args.seed}: setup {schedule.setup}")
        result = run(schedule, variant=args.variant, keep=args.keep, say=print)
        print(result.report(), flush=True)
        return 0 if result.ok else 1
    began = time.monotonic()
    stop_at = None if args.minutes is None else began + 60.0 * args.minutes
    results: list[Result] = []
    pending = list(args.seeds)
    # spawn: each seed's process starts clean (no threads or sockets of the driver's inherited).
    with ProcessPoolExecutor(max(1, args.jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        running: set[Future[Result]] = set()
        while pending or running:
            while pending and len(running) < max(1, args.jobs) and (stop_at is None or time.monotonic() < stop_at):
                running.add(pool.submit(run_seed, pending.pop(0), kinds, args.variant, args.keep))
            if not running:
                break
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                results.append(future.result())
                print(results[-1].report(), flush=True)
    if pending:
        print(f"not started (--minutes {args.minutes:g} over): seeds {pending[0]}..{pending[-1]} ({len(pending)})")
    results.sort(key=lambda r: r.schedule.seed)
    print(f"seeds run: {_ranges([r.schedule.seed for r in results])}, {max(1, args.jobs)} at a time")
    print(summary(results, time.monotonic() - began))
    return 0 if all(r.ok for r in results) else 1


def _ranges(seeds: list[int]) -> str:
    """1,2,3,5 -> 1-3,5"""
    out: list[str] = []
    for seed in sorted(seeds):
        if out and out[-1].split("-")[-1] == str(seed - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{seed}"
        else:
            out.append(str(seed))
    return ",".join(out)


if __name__ == "__main__":
    sys.exit(main())
