"""``python -m scripts.perf``: see ``scripts/perf/__init__.py`` and ``--help``."""

import sys

from scripts.perf.cli import main

if __name__ == "__main__":
    sys.exit(main())
