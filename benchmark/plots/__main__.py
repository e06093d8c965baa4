"""``python -m benchmark.plots RESULTS_DIR [--out OUT]``."""

from .report import main

if __name__ == "__main__":
    raise SystemExit(main())
