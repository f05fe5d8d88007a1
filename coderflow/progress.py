"""Stage progress on the console: a rich bar on a terminal (rate and ETA), else one line when the stage ends."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@dataclass
class StageProgress:
    """Counts of one stage: `done` of `total` steps (shards, requests) and `items` (images, tokens) moved so far."""

    label: str
    total: int
    unit: str
    item_unit: str
    done: int = 0
    items: int = 0
    failed: int = 0
    cached: int = 0  # steps found done already (nothing computed)
    start: float = field(default_factory=time.perf_counter)
    _bar: Progress | None = None
    _task: int | None = None

    def advance(self, steps: int = 1, items: int = 0, failed: int = 0, cached: int = 0) -> None:
        self.done, self.items, self.failed = self.done + steps, self.items + items, self.failed + failed
        self.cached += cached
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=steps, detail=self.detail())

    def rate(self) -> float:
        return self.items / max(time.perf_counter() - self.start, 1e-9)

    def detail(self) -> str:
        if self.done and self.cached == self.done:  # nothing computed: no "0 images, 0.0 images/s"
            return "cached" + (f", {self.failed} failed" if self.failed else "")
        text = f"{self.items} {self.item_unit}, {self.rate():.1f} {self.item_unit}/s" if self.item_unit else ""
        text += f", {self.cached} cached" if self.cached else ""
        return text.removeprefix(", ") + (f", {self.failed} failed" if self.failed else "")

    def summary(self) -> str:
        seconds = time.perf_counter() - self.start
        return f"{self.label}: {self.done} of {self.total} {self.unit} in {seconds:.1f} s" + (
            f" ({self.detail()})" if self.detail() else ""
        )


@contextmanager
def stage_progress(label: str, total: int, unit: str = "shards", item_unit: str = "") -> Iterator[StageProgress]:
    """A progress bar on a terminal (steps, items and items/s, ETA), else one summary line on stderr at the end."""
    progress = StageProgress(label, total, unit, item_unit)
    console = Console(stderr=True)
    if not sys.stderr.isatty() or total <= 0:
        yield progress
        if total > 0:
            console.print(progress.summary(), highlight=False, soft_wrap=True)
        return
    bar = Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(unit), TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )  # fmt: skip
    with bar:
        progress._bar, progress._task = bar, bar.add_task(label, total=total, detail="")
        yield progress
