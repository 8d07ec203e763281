"""Stop training cleanly on SIGINT / SIGTERM: the loop finishes its optimizer step, saves a checkpoint and exits.

A second signal stops at once (KeyboardInterrupt), as a user pressing Ctrl-C twice expects.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class StopFlag:
    """Which signal asked to stop, if any."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None

    def __bool__(self) -> bool:
        return self.signal is not None


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """While inside, SIGINT and SIGTERM set the flag instead of interrupting (main thread only)."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():  # signal handlers can only be set there
        yield flag
        return

    def handler(signum, frame) -> None:
        if flag:
            raise KeyboardInterrupt  # the second signal: do not wait for the checkpoint
        flag.signal = signal.Signals(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
