"""The training queue behind `ftune ui`: runs wait in order and one trains at a time (a CPU machine has no room for
two), each as the CLI itself in a process of its own (`ftune train CONFIG --output-dir RUN`), so a run started from
the browser is the run the same config gives on the command line, with the same run directory, log and --resume.

Stopping sends SIGTERM, which ftune turns into a checkpoint and a resumable state (ftune.stopping); resuming queues
`ftune train --output-dir RUN --resume`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

LOG = "ui.log"  # each run's output (the CLI's lines) in its run directory


@dataclass
class Job:
    name: str
    folder: Path
    command: list[str]
    state: str = "queued"  # queued, training, done, failed, stopped
    exit_code: int | None = None
    started: float | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    def describe(self) -> dict:
        return {"name": self.name, "state": self.state, "exit_code": self.exit_code, "started": self.started}


class Queue:
    """Jobs in order, one process at a time, run by a daemon thread."""

    def __init__(self):
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        threading.Thread(target=self._work, daemon=True, name="ftune-ui-queue").start()

    def add(self, name: str, folder: Path, args: list[str]) -> Job:
        with self.lock:
            job = self.jobs[name] = Job(name, folder, [sys.executable, "-m", "ftune", *args])
        self.wake.set()
        return job

    def stop(self, name: str) -> str:
        """A queued job leaves the queue; a training one gets SIGTERM (a checkpoint, then it ends as stopped)."""
        with self.lock:
            job = self.jobs.get(name)
            if job is None or job.state not in ("queued", "training"):
                return "not running"
            if job.state == "queued":
                job.state = "stopped"
                return "removed from the queue"
            job.process.send_signal(signal.SIGTERM)
            return "stopping: a checkpoint is saved, then `resume` continues it"

    def stop_all(self) -> None:
        """When the app shuts down: nothing more starts, and the run training gets SIGTERM (a checkpoint)."""
        for name in list(self.jobs):
            self.stop(name)

    def _next(self) -> Job | None:
        with self.lock:
            if any(j.state == "training" for j in self.jobs.values()):
                return None
            job = next((j for j in self.jobs.values() if j.state == "queued"), None)
            if job is not None:
                job.state, job.started = "training", time.time()
            return job

    def _work(self) -> None:
        while True:
            job = self._next()
            if job is None:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            job.folder.parent.mkdir(parents=True, exist_ok=True)
            log = job.folder.parent / f".{job.folder.name}.{LOG}"  # the run folder is the CLI's to create
            with log.open("w", encoding="utf-8") as out:
                job.process = subprocess.Popen(job.command, stdout=out, stderr=subprocess.STDOUT)
                job.exit_code = job.process.wait()
            if job.folder.is_dir():  # the log beside the run's own files
                log.replace(job.folder / LOG)
            job.state = {0: "done", 130: "stopped", 143: "stopped"}.get(job.exit_code, "failed")


def log_tail(job_folder: Path, lines: int = 40) -> str:
    """The last lines a run's process printed (while it trains, from beside its folder)."""
    for path in (job_folder / LOG, job_folder.parent / f".{job_folder.name}.{LOG}"):
        if path.is_file():
            return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    return ""
