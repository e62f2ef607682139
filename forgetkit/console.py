"""Shared rich console and progress bars (on stderr, so stdout stays clean for scripts)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)
output = Console()  # what a listing command was asked for: stdout, so it can be piped


def quiet_libraries() -> None:
    """Keep our output readable: no per-load progress bars or deprecation chatter from the stack."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


def is_main_process() -> bool:
    """True on rank 0 (or when not distributed): only it draws progress bars and prints tables."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def progress_bar(description: str, total: int) -> Iterator["callable"]:
    """Yield an ``advance(n=1)`` function driving a rich progress bar on rank 0."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not is_main_process(),
    )
    with progress:
        task = progress.add_task(description, total=total)

        def advance(n: int = 1, **fields) -> None:
            progress.update(task, advance=n, **fields)

        yield advance
