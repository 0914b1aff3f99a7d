"""``python -m shardsync``: the same as the ``shardsync`` command."""

import sys

from shardsync.cli import main

sys.exit(main())
