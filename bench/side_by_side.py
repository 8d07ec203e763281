"""What the side-by-side benches (gpu_speed.py, llm_speed.py) share: each row runs as `python BENCH ... --one ROW` in
a process of its own (its own CUDA context, so its own peak memory), prints `RESULT {json}` as its last such line, and
a row that fails or hangs becomes a row with its error, not a crash of the whole table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys


def cli(argv: list[str]) -> None:
    """`ftune ARGV` in this process; its own error line (or click's usage error) is already on stderr when it fails."""
    from ftune.cli import main

    sys.argv = ["ftune", *argv]
    try:
        main()
    except SystemExit as e:  # click ends every command with SystemExit, 0 on success
        if e.code not in (0, None):
            sys.exit(e.code)


def last_line(text: str) -> str:
    """The last line that says something (rich draws errors in a box: strip its frame)."""
    lines = [line.strip(" \t│╭╮╰╯─") for line in text.splitlines()]
    return next((line for line in reversed(lines) if line), "no output")


def run_process(command: list[str], timeout: int, env: dict | None = None, hint: str = "") -> dict:
    """The row's RESULT, or {"error": ...}: its last error line, or the timeout (`hint` names the option)."""
    # its own process group: on a timeout (or after it ends) whatever it started goes too (a server, compile workers)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return {"error": f"timed out after {timeout} s{hint}"}
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # anything of the row's still running
        except (ProcessLookupError, PermissionError):
            pass
    result = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode or not result:
        return {"error": last_line(stderr or stdout)}
    return json.loads(result[-1].removeprefix("RESULT "))
