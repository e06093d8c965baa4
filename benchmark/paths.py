"""Path checks shared by the CLI, the runner and the figures (kept free of heavy imports: the figures
package must not pull in torch)."""

from __future__ import annotations

from pathlib import Path


def file_in_the_way(directory: Path) -> Path | None:
    """The file or broken symbolic link (anything but a directory) at ``directory`` or at one of its
    parents, if any: what would make creating ``directory`` fail. A relative path is checked relative to
    the working directory. ``what_is`` names it for a message."""
    there = (p for p in (directory, *directory.parents) if p.exists() or p.is_symlink())
    return next((p for p in there if not p.is_dir()), None)


def what_is(path: Path) -> str:
    """``a broken symbolic link`` or ``a file``: what ``file_in_the_way`` found, for a message."""
    return "a broken symbolic link" if path.is_symlink() and not path.exists() else "a file"
