"""Errors the CLI turns into one line and exit code 2 (kept free of heavy imports)."""


class ResultsError(ValueError):
    """A results file is missing, malformed or corrupted. ``str(err)`` is one line naming the file."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class UsageError(ValueError):
    """Bad command-line input."""


class SuiteError(ValueError):
    """A suite breaks the suite contract (``benchmark.suites.checks``). ``str(err)`` is one line naming
    the suite and what is wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
