"""What a person watching `ftune train` sees: a live bar with loss, learning rate, samples/s and ETA; in a log file or
CI (not a terminal), where a bar cannot redraw, the same facts as a plain line every FTUNE_PROGRESS_SECONDS (30)."""

from __future__ import annotations

import os
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainProgress:
    def __init__(self, quiet: bool = False):
        self.console = Console(stderr=True, quiet=quiet)
        self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=self.console)
        self.task = None
        self.plain = not self.console.is_terminal
        self.every = float(os.environ.get("FTUNE_PROGRESS_SECONDS", 30))
        self.info, self.total, self.first, self.started, self.said = "", 0, 0, 0.0, 0.0

    def note(self, text: str) -> None:
        # texts may quote user data; one line however long (a log's lines are not cut at 80 columns)
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def start(self, total: int, done: int) -> None:
        self.total, self.first, self.started = total, done, time.monotonic()
        self.said = self.started
        if self.plain:
            self.note(f"train: {total} steps{f', from step {done}' if done else ''}; a line every {self.every:g} s")
            return
        self.task = self.bar.add_task("train", total=total, completed=done, info="")
        self.bar.start()

    def step(self, step: int, entry: dict | None = None) -> None:
        if entry is not None:
            self.info = f"loss {entry['loss']:.4f}  lr {entry['lr']:.2e}  {entry['samples_per_s']:.1f} samples/s"
        if not self.plain:
            self.bar.update(self.task, completed=step, info=self.info)
            return
        now = time.monotonic()
        if now - self.said >= self.every or step == self.total:
            self.said, elapsed = now, now - self.started
            eta = elapsed / (step - self.first) * (self.total - step) if step > self.first else 0.0
            parts = [f"train step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%)", self.info,
                     f"elapsed {_clock(elapsed)}", f"eta {_clock(eta)}"]
            self.note("  ".join(part for part in parts if part))  # no loss yet before the first logged step

    def evaluated(self, record: dict, metric: str) -> None:
        v = record["validation"]
        scores = " ".join(f"{name.replace('_', '-')} {value:.4f}" for name, value in v.items())
        self.console.print(f"epoch {record['epoch']:.2f} step {record['step']}: validation {scores}", highlight=False,
                           soft_wrap=True)

    def stop(self) -> None:
        self.bar.stop()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"
