"""A rich progress bar for training: step, loss, tokens/s and ETA; silent when there is no console."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainProgress:
    def __init__(self, console, total_steps: int, start_step: int = 0):
        self.console = console
        self.progress = None
        if console is not None:
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[rate]} tok/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
            )
            self.task = self.progress.add_task(
                "train", total=total_steps, completed=start_step, loss="-", rate="-"
            )

    def __enter__(self):
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress:
            self.progress.stop()

    def update(self, step: int, loss: float, tokens_per_s: float, total: int) -> None:
        if self.progress:
            self.progress.update(
                self.task, completed=step, total=total, loss=f"{loss:.4f}", rate=f"{tokens_per_s:,.0f}"
            )

    def note(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message)
