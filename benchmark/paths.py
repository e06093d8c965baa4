"""Path checks shared by the CLI, the runner and the figures (kept free of heavy imports: the figures
package must not pull in torch)."""

from __future__ import annotations

from pathlib import Path


def file_in_the_way(directory: Path) -> Path | None:
    """The file (not a directory) at ``directory`` or at one of its parents, if any: what would make
    creating ``directory`` fail. A relative path is checked relative to the working directory."""
    return next((p for p in (directory, *directory.parents) if p.exists() and not p.is_dir()), None)
