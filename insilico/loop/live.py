"""The runner's live view: round and step, the target cells, predicted vs measured so far.

One `rich.live.Live` holds a header, a table of responses and the progress bars that training
and design report to (a `Progress` rendered inside the Live, not started on its own, since
rich allows one live display at a time).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Group
from rich.live import Live
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from insilico.console import console, progress


@dataclass
class ResponseRow:
    """One presented clip of a target cell: mean rates over the objective's window."""

    round_index: int
    cell: int
    objective: str
    role: str  # "design", "natural", "parametric"
    predicted: float
    measured: float | None = None


@dataclass
class LiveView:
    title: str
    enabled: bool = True
    rows: list[ResponseRow] = field(default_factory=list)
    status: str = "starting"
    notes: list[str] = field(default_factory=list)
    bars: Progress = field(default_factory=progress)
    _live: Live | None = None

    def __enter__(self) -> LiveView:
        if self.enabled:
            self._live = Live(self._render(), console=console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._clear_bars()
            self._live.update(self._render(), refresh=True)
            self._live.__exit__(*exc)
            self._live = None
            if not console.is_terminal:
                console.print()  # a non-terminal Live leaves its last line open

    @property
    def progress(self) -> Progress | None:
        """The progress display to hand to long steps (None when the view is off)."""
        return self.bars if self.enabled else None

    def step(self, text: str) -> None:
        self.status = text
        self._clear_bars()
        self.refresh()
        if not self.enabled:
            console.print(f"[bold]{self.title}[/]: {text}")

    def note(self, text: str) -> None:
        self.notes = (self.notes + [text])[-6:]
        self.refresh()
        if not self.enabled:
            console.print(f"  {text}")

    def set_rows(self, rows: list[ResponseRow]) -> None:
        self.rows = rows
        self.refresh()

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _clear_bars(self) -> None:
        for task in list(self.bars.task_ids):
            self.bars.remove_task(task)

    def _render(self) -> Group:
        header = Text.assemble((self.title, "bold"), "  ", (self.status, "cyan"))
        parts: list = [header]
        if self.rows:
            table = Table(title="target cells: mean rate over the window (spikes / bin)", title_justify="left")
            for name, justify in (("round", "right"), ("cell", "right"), ("objective", "left"), ("stimulus", "left"),
                                  ("predicted", "right"), ("measured", "right")):
                table.add_column(name, justify=justify)
            for r in self.rows[-24:]:
                measured = "…" if r.measured is None else f"{r.measured:.3f}"
                table.add_row(str(r.round_index), str(r.cell), r.objective, r.role, f"{r.predicted:.3f}", measured)
            parts.append(table)
        parts.extend(Text(n, style="dim") for n in self.notes)
        if self.bars.task_ids:
            parts.append(self.bars)
        return Group(*parts)
