"""Cache entries built once, however many processes ask for them at the same time.

Two shells running the quickstart, or two pytest-xdist workers sharing one cache folder, would otherwise both
train the same model. The builder holds a file lock beside the entry; a process that waited on it finds the
entry finished and reuses it. The entry itself is written through ``atomic_folder``, so a killed build
leaves nothing that looks finished (its staging folder is removed by the next build).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from forgetkit.artifacts import atomic_folder


def cached_folder(folder: Path, finished: Callable[[Path], bool], build: Callable[[Path], None]) -> bool:
    """Make sure ``folder`` holds a finished entry, calling ``build(staging)`` if it does not.

    Returns True when this call built it."""
    if finished(folder):
        return False
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if finished(folder):  # another process built it while this one waited
            return False
        for leftover in folder.parent.glob(f".{folder.name}.*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)  # a killed build's staging folder
        with atomic_folder(folder) as staging:
            build(staging)
    return True


def has_model(folder: Path) -> bool:
    return (folder / "model" / "config.json").is_file()
