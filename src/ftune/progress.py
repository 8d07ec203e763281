"""What a person watching `ftune train` sees: a live bar with loss, learning rate, samples/s and ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainProgress:
    def __init__(self, quiet: bool = False):
        self.console = Console(stderr=True, quiet=quiet)
        self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=self.console)
        self.task = None

    def note(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)  # texts may quote user data

    def start(self, total: int, done: int) -> None:
        self.task = self.bar.add_task("train", total=total, completed=done, info="")
        self.bar.start()

    def step(self, step: int, entry: dict | None = None) -> None:
        info = {} if entry is None else {
            "info": f"loss {entry['loss']:.4f}  lr {entry['lr']:.2e}  {entry['samples_per_s']:.1f} samples/s"}
        self.bar.update(self.task, completed=step, **info)

    def evaluated(self, record: dict, metric: str) -> None:
        v = record["validation"]
        scores = " ".join(f"{name.replace('_', '-')} {value:.4f}" for name, value in v.items())
        self.bar.console.print(f"epoch {record['epoch']:.2f} step {record['step']}: validation {scores}", highlight=False)

    def stop(self) -> None:
        self.bar.stop()
