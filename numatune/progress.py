"""Progress of long work (bandwidth matrix, model synthesis, tuning) on the terminal.

A bar on stderr, drawn only when stderr is a terminal and the output is not `--json`: a pipe,
a log file or a CI job gets no progress lines at all, and stdout stays what the command prints.
"""
from __future__ import annotations

import sys
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def wanted(quiet: bool = False) -> bool:
    """Progress is drawn for a person: stderr is a terminal and the command is not in --json mode."""
    return not quiet and sys.stderr.isatty()


class Steps:
    """A bar over a known number of steps; every method does nothing when not `enabled`.

    Use as a context manager: the bar is removed from the terminal when the work is done.
    """

    def __init__(self, label: str, enabled: bool, counter: bool = True) -> None:
        self.label, self.enabled = label, enabled
        self._progress: Optional[Progress] = None
        self._task = None
        if enabled:
            columns = [TextColumn(f"[bold]{label}[/]"), BarColumn()]
            if counter:
                columns.append(MofNCompleteColumn())
            columns += [TextColumn("{task.description}"), TimeElapsedColumn()]
            self._progress = Progress(*columns, console=Console(stderr=True), transient=True)

    def __enter__(self) -> "Steps":
        if self._progress is not None:
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start(self, total: float, description: str = "") -> None:
        if self._progress is not None:
            self._task = self._progress.add_task(description, total=total)

    def advance(self, description: Optional[str] = None, amount: float = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=amount,
                                  **({"description": description} if description is not None else {}))

    def update(self, completed: float, description: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=completed, description=description)
