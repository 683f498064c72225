"""Progress for long loops: a rich bar on a terminal, plain periodic lines in logs and scripts."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(highlight=False)


def format_metrics(metrics: dict) -> str:
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


class Reporter:
    """report.update(step, loss=..., **more) at every step; report.print(line) for events.

    On a terminal: a live bar with step, metrics, items/s and ETA. Elsewhere (not a TTY, e.g.
    ``vd train-ldm ... > log``): one line every ``every`` steps, so logs stay readable.
    """

    def __init__(self, total: int, start: int = 0, title: str = "train", unit: str = "img", every: int = 50, quiet: bool = False):
        self.total, self.start, self.every, self.quiet, self.unit = total, start, every, quiet, unit
        self.live = console.is_terminal and sys.stdout.isatty() and not quiet
        self.t0 = time.perf_counter()
        self.items = 0
        self.bar = None
        if self.live:
            self.bar = Progress(
                TextColumn(f"[bold]{title}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console,
            )
            self.task = self.bar.add_task(title, total=total, completed=start, info="")

    def __enter__(self) -> Reporter:
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()

    @property
    def rate(self) -> float:
        return self.items / max(time.perf_counter() - self.t0, 1e-9)

    def update(self, step: int, items: int = 0, **metrics) -> None:
        """Step ``step`` (1-based) is done; it processed ``items`` images."""
        self.items += items
        info = format_metrics(metrics) + f"  {self.rate:.0f} {self.unit}/s"
        if self.bar:
            self.bar.update(self.task, completed=step, info=info)
        elif not self.quiet and (step % self.every == 0 or step == self.total):
            done = step - self.start
            eta = (self.total - step) * (time.perf_counter() - self.t0) / max(done, 1)
            print(f"step {step}/{self.total}  {info}  eta {eta:.0f}s", flush=True)

    def print(self, line: str) -> None:
        if not self.quiet:
            console.print(line) if self.bar else print(line, flush=True)
