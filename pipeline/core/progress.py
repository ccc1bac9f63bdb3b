"""A progress bar with throughput (rich), silenced by --quiet."""
from __future__ import annotations

import contextlib
import sys


def rich_progress(label: str, field: str):
    """A rich Progress on stderr: label, bar, done/total, the task's text ``field``, elapsed, time left."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn(f"[cyan]{{task.fields[{field}]}}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(file=sys.stderr))


@contextlib.contextmanager
def progress_bar(label: str, total: int, quiet: bool = False, unit: str = "items"):
    """Yields ``tick(n)`` that advances the bar by n items; shows items/s and time left on stderr."""
    if quiet:
        yield lambda n=1: None
        return
    with rich_progress(label, "rate") as bar:
        task = bar.add_task(label, total=total, rate="")

        def tick(n: int = 1) -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:,.1f} {unit}/s" if speed else "")

        yield tick
