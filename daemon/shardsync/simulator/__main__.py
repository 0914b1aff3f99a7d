"""``python -m shardsync.simulator``: the same as ``shardsync simulate``."""

import argparse
import sys

from shardsync.simulator import add_arguments, run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m shardsync.simulator", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
