"""One rich console and the progress-bar style every long command shares.

On a terminal, progress is rich's live bar. Anywhere else (`insilico train > train.log`, a
batch job's log) a live bar writes nothing until the end, so `progress()` gives a
`LineProgress` instead: one plain line per step (an epoch, a cell, a stage), or per 5% of a
long count such as frames, each with the elapsed time and an estimate of the time left.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console()
err_console = Console(stderr=True)

# A count up to this long gets a line per step; a longer one (frames) a line per 5%.
LINE_PER_STEP = 100
LINE_FRACTION = 0.05


def progress(on: Console | None = None) -> Progress:
    """A progress display for long work (training, extraction, design); use as a context manager.

    A live bar on a terminal (or in a notebook), a `LineProgress` when output goes to a file.
    """
    on = on or console
    if not (on.is_terminal or on.is_jupyter):
        return LineProgress(on)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=on,
        transient=False,
    )


def clock(seconds: float) -> str:
    """`H:MM:SS` of a duration."""
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class LineProgress(Progress):
    """Rich's `Progress` (same calls, same task records) printing lines a log can read.

    No live display: each `update`/`advance` that moves a task on by a step (or, for counts
    over `LINE_PER_STEP`, past the next 5%) prints
    `train 3/8 loss 0.2 val 0.3 | elapsed 0:01:02, left ~0:01:43`. The estimate is this
    run's pace so far (a resumed task counts only the steps done since it resumed).
    """

    def __init__(self, on: Console) -> None:
        super().__init__(console=on, disable=True)
        self._marks: dict[TaskID, tuple[float, float, int]] = {}  # start time, start count, last line's step

    def add_task(self, description: str, start: bool = True, total: float | None = 100.0,
                 completed: int = 0, visible: bool = True, **fields) -> TaskID:
        task_id = super().add_task(description, start=start, total=total, completed=completed,
                                   visible=visible, **fields)
        self._marks[task_id] = (time.monotonic(), float(completed), self._line_index(task_id))
        return task_id

    def update(self, task_id: TaskID, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._report(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._report(task_id)

    def _line_index(self, task_id: TaskID) -> int:
        task = self._tasks[task_id]
        if not task.total:
            return int(task.completed)
        if task.total <= LINE_PER_STEP:
            return int(task.completed)
        return int(task.completed / task.total / LINE_FRACTION)

    def _report(self, task_id: TaskID) -> None:
        task = self._tasks[task_id]
        started, first, last = self._marks[task_id]
        index = self._line_index(task_id)
        if index <= last:
            return
        self._marks[task_id] = (started, first, index)
        elapsed = time.monotonic() - started
        done = task.completed - first
        count = f"{task.completed:g}/{task.total:g}" if task.total is not None else f"{task.completed:g}"
        status = str(task.fields.get("status", "") or "")
        line = f"{task.description} {count}" + (f" {status}" if status else "") + f" | elapsed {clock(elapsed)}"
        if task.total is not None and task.completed < task.total and done > 0:
            line += f", left ~{clock(elapsed / done * (task.total - task.completed))}"
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)
