"""How long ftune's commands take to answer, next to `python -c "import torch"`, on this machine, in one run.

Each row is a fresh process (as a user's shell starts it), run --repeat times in turn with the other rows; the table
gives the median wall time and its ratio to importing torch.

    python bench/cli_start.py            # 7 rounds
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FTUNE = [sys.executable, "-m", "ftune"]
ROWS = {
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
    "ftune --help": [*FTUNE, "--help"],
    "ftune train --help": [*FTUNE, "train", "--help"],
    "ftune train --set train.epoch=2 (config error)": [*FTUNE, "train", "--set", "train.epoch=2"],
    "ftune train --data reviews.csv --label-column stars (data error)":
        [*FTUNE, "train", "--data", "reviews.csv", "--label-column", "stars"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in ROWS}
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "reviews.csv").write_text("text,label\ngood film,pos\ndull film,neg\n")
        for _ in range(args.repeat):
            for name, command in ROWS.items():
                start = time.perf_counter()
                subprocess.run(command, cwd=folder, capture_output=True)
                times[name].append(time.perf_counter() - start)
    torch_s = statistics.median(times['python -c "import torch"'])
    width = max(map(len, ROWS))
    print(f"{'command':<{width}}  median s  / import torch   ({args.repeat} runs each, fresh processes)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<{width}}  {median:8.2f}  {median / torch_s:8.2f}x")


if __name__ == "__main__":
    main()
