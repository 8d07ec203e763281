"""Four LoRA runs of MiniLM from one `ftune serve` process against four processes and against one run.

    .venv/bin/python bench/serve_many.py                  # trains the 4 runs under runs/serve_many/ if missing
    .venv/bin/python bench/serve_many.py --requests 160 --clients 8
    .venv/bin/python bench/serve_many.py --threads 1      # servers on 1 thread: steadier beside a busy neighbour

The runs: LoRA (r=16) on MiniLM, 1 epoch on 600 training examples each (a few minutes in all on 2 cores, kept
for later runs): `mr` (2 labels) with seeds 0 and 1, `bbc-news` (5 labels) with seeds 0 and 1. What this
measures is serving, not their accuracy.

Each row is its own process (a server started for it, or the micro-batch row's own python), driven with a bounded
number of single-text requests (mr test sentences) from N concurrent clients on loopback:

    1 run, 1 process                    `ftune serve RUN_A`, every request to it
    4 runs, 4 processes                 `ftune serve RUN_X` four times, request i to run i % 4
    4 runs, 1 process, spread           `ftune serve A B C D`, request i to run i % 4 (one pass per run: the default)
    4 runs, 1 process, spread, mixed    the same with --mixed-adapters: runs with heads of one shape share passes
    4 runs, 1 process, one              `ftune serve A B C D`, every request to run A

Resident memory (VmRSS of the server processes, summed for four) after the load, and the peak (VmHWM). Every
response is compared with that run's own `ftune predict --output x.jsonl` on the same texts (label equal, largest
score difference shown). A last row times the service's answer to one micro-batch of 16 and of 64 texts spread
over the 4 runs, in one process without HTTP, on all cores and on 1 thread (a thread count that a neighbour's load
cannot stall at every barrier): one pass per run against mixed (the two mr runs share passes, and the two
bbc-news runs: peft mixes only heads of one shape). Prints a table with ratios and writes
bench/results/serve_many.{md,json} (serve_many_threads1.* with --threads 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import free_port, launch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
RUNS = {"mr_s0": ("mr", 0), "mr_s1": ("mr", 1), "bbc_s0": ("bbc-news", 0), "bbc_s1": ("bbc-news", 1)}
ENV = os.environ | {"HF_HUB_OFFLINE": "1"}
FTUNE = [sys.executable, "-m", "ftune"]


def train_missing(folder: Path) -> None:
    for name, (data, seed) in RUNS.items():
        if (folder / name / "run.json").is_file():
            continue
        print(f"training {folder / name} (LoRA on MiniLM, {data}, seed {seed}) ...", flush=True)
        subprocess.run(FTUNE + ["train", "--data", data, "--method", "lora", "--epochs", "1", "--tracking", "none",
                                "--output-dir", str(folder / name), "--set", f"train.seed={seed}",
                                "--set", "data.max_train_samples=600", "--set", "data.max_eval_samples=200",
                                "--set", "data.max_length=64", "--set", "train.baselines=false"],
                       check=True, env=ENV, stdout=subprocess.DEVNULL)


def start(runs: list[Path], *flags: str, threads: int | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = FTUNE + ["serve", *map(str, runs), "--port", str(port), "--max-waiting", "4096", "--device", "cpu",
                       *flags]
    env = ENV | ({"OMP_NUM_THREADS": str(threads)} if threads else {})  # torch's threads per process
    return launch(command, port, env, seconds=300)


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def drive(targets: list[tuple[str, str | None]], texts: list[str], clients: int, requests: int) -> dict:
    """Request i goes to targets[i % len(targets)] (a server URL, the model to name or None); answers kept."""
    import httpx

    answers: dict[tuple[str, int], dict] = {}
    failures, counter = 0, iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal failures
        for i in counter:
            url, model = targets[i % len(targets)]
            body = {"texts": [texts[i % len(texts)]]} | ({"model": model} if model else {})
            try:
                response = await http.post(f"{url}/v1/predict", json=body)
            except httpx.HTTPError:
                failures += 1
                continue
            if response.status_code != 200:
                failures += 1
                continue
            answers[(model or url, i % len(texts))] = response.json()["predictions"][0]

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(min(clients, 4))))  # warm-up: first-call costs
        counter = iter(range(requests))
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return {"requests": requests, "failed": failures, "rps": requests / elapsed, "answers": answers}


def reference(folder: Path, texts: list[str]) -> dict[str, list[dict]]:
    """Each run's own `ftune predict` of the texts (one process per run)."""
    inputs = RESULTS / "serve_many_texts.txt"
    inputs.write_text("\n".join(texts) + "\n")
    out = {}
    for name in RUNS:
        target = RESULTS / f"serve_many_{name}.jsonl"
        subprocess.run(FTUNE + ["predict", str(folder / name), "--input", str(inputs), "--output", str(target),
                                "--device", "cpu"], check=True, env=ENV, stdout=subprocess.DEVNULL)
        out[name] = [json.loads(line) for line in target.read_text().splitlines()]
        target.unlink()
    inputs.unlink()
    return out


def differences(answers: dict, names: dict[str, str], expected: dict[str, list[dict]]) -> tuple[int, int, float]:
    """(answers compared, labels that differ, largest score difference) against `ftune predict`."""
    wrong, worst = 0, 0.0
    for (key, i), answer in answers.items():
        own = expected[names[key]][i]
        wrong += answer["label"] != own["label"]
        worst = max(worst, max(abs(answer["scores"][k] - own["scores"][k]) for k in own["scores"]))
    return len(answers), wrong, worst


def serve_row(folder: Path, served: list[str], processes: int, spread: bool, flags: list[str], texts: list[str],
              args, expected: dict) -> dict:
    if processes > 1:
        servers = [start([folder / name], *flags, threads=args.threads) for name in served]
    else:
        servers = [start([folder / name for name in served], *flags, threads=args.threads)]
    try:
        if processes > 1:
            targets = [(url, None) for _, url in servers]
            names = {url: name for (_, url), name in zip(servers, served)}
        else:
            url = servers[0][1]
            chosen = served if spread else served[:1]
            targets = [(url, name if len(served) > 1 else None) for name in chosen]
            names = {name: name for name in served} | {url: served[0]}
        row = asyncio.run(drive(targets, texts, args.clients, args.requests))
        memory = [memory_mb(server.pid) for server, _ in servers]
    finally:
        for server, _ in servers:
            server.terminate()
        for server, _ in servers:
            server.wait(timeout=30)
    compared, wrong, worst = differences(row.pop("answers"), names, expected)
    return row | {"rss_mb": sum(m[0] for m in memory), "peak_rss_mb": sum(m[1] for m in memory),
                  "compared": compared, "labels_differ": wrong, "max_score_diff": worst}


def batch_row(folder: Path, texts: list[str], seconds: float) -> dict:
    """Texts/s of the service's answer to one micro-batch over the 4 runs, grouped against mixed, per size and
    thread count."""
    import torch

    from ftune.predictors.many import answer_items, load_many

    models = load_many([folder / name for name in RUNS], device="cpu")
    ways = {"grouped": answer_items(models, mixed=False), "mixed": answer_items(models, mixed=True)}
    out: dict[str, dict] = {}
    for threads in dict.fromkeys([torch.get_num_threads(), 1]):
        torch.set_num_threads(threads)
        for size in (16, 64):
            items = [(list(RUNS)[i % len(RUNS)], texts[i % len(texts)]) for i in range(size)]
            answers = {way: predict(items) for way, predict in ways.items()}  # and a warm-up
            worst = max(abs(a["scores"][k] - b["scores"][k]) for a, b in zip(answers["mixed"], answers["grouped"])
                        for k in a["scores"])
            rates: dict[str, list[float]] = {}
            for way in ["grouped", "mixed"] * 3:  # alternated: a neighbour's load falls on both
                start, n = time.perf_counter(), 0
                while time.perf_counter() - start < seconds:
                    ways[way](items)
                    n += 1
                rates.setdefault(way, []).append(size * n / (time.perf_counter() - start))
            out[f"{threads} threads, {size} texts"] = {f"{way}_texts_per_s": float(np.median(r))
                                                       for way, r in rates.items()} | {"max_score_diff": worst}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "serve_many", help="where the 4 runs are (or go)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=320, help="requests per row")
    p.add_argument("--threads", type=int, help="torch threads of each server (default: torch's, one a core)")
    p.add_argument("--skip-batch-row", action="store_true", help="only the served rows")
    p.add_argument("--seconds", type=float, default=2.0, help="per timing of the micro-batch rows")
    p.add_argument("--batch-row", action="store_true", help=argparse.SUPPRESS)  # the row's own process
    args = p.parse_args()

    from ftune.config import DataConfig
    from ftune.data import load_splits

    texts = load_splits(DataConfig(train="mr"), seed=0).test["text"].tolist()[:80]
    if args.batch_row:
        print(json.dumps(batch_row(args.runs, texts, args.seconds)))
        return
    train_missing(args.runs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    expected = reference(args.runs, texts)
    names = list(RUNS)
    plan = {"1 run, 1 process": (names[:1], 1, False, [], "run A"),
            "4 runs, 4 processes": (names, 4, True, [], "4 runs, i % 4"),
            "4 runs, 1 process, spread": (names, 1, True, [], "4 runs, i % 4"),
            "4 runs, 1 process, spread, mixed": (names, 1, True, ["--mixed-adapters"], "4 runs, i % 4"),
            "4 runs, 1 process, one": (names, 1, False, [], "run A only")}
    rows = {}
    for label, (served, processes, spread, flags, to) in plan.items():
        rows[label] = serve_row(args.runs, served, processes, spread, flags, texts, args, expected) | {"to": to}
        print(f"{label}: {rows[label]['rps']:.1f} requests/s, {rows[label]['rss_mb']:.0f} MB", flush=True)
    if not args.skip_batch_row:
        batch = subprocess.run([sys.executable, __file__, "--batch-row", "--runs", str(args.runs),
                                "--seconds", str(args.seconds)], check=True, env=ENV, capture_output=True, text=True)
        rows["batch"] = json.loads(batch.stdout.strip().splitlines()[-1])

    one, four = rows["1 run, 1 process"], rows["4 runs, 4 processes"]
    lines = ["| served | requests to | failed | requests/s | vs 1 run | RSS MB | vs 1 run | vs 4 processes | peak MB | "
             "answers = `ftune predict` |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, row in rows.items():
        if label == "batch":
            continue
        same = f"{row['compared'] - row['labels_differ']}/{row['compared']} labels, scores within " \
               f"{row['max_score_diff']:.1g}"
        lines.append(f"| {label} | {row['to']} | {row['failed']} | {row['rps']:.1f} | "
                     f"{row['rps'] / one['rps']:.2f}x | {row['rss_mb']:.0f} | {row['rss_mb'] / one['rss_mb']:.2f}x | "
                     f"{row['rss_mb'] / four['rss_mb']:.2f}x | {row['peak_rss_mb']:.0f} | {same} |")
    if "batch" in rows:
        lines += ["", "| one micro-batch over the 4 runs, no HTTP | one pass per run, texts/s | mixed (peft "
                  "adapter_names), texts/s | mixed vs one pass per run | largest score difference |",
                  "|---|---|---|---|---|"]
    for label, b in rows.get("batch", {}).items():
        lines.append(f"| {label} | {b['grouped_texts_per_s']:.1f} | {b['mixed_texts_per_s']:.1f} | "
                     f"{b['mixed_texts_per_s'] / b['grouped_texts_per_s']:.2f}x | {b['max_score_diff']:.1g} |")
    setup = (f"4 LoRA runs of MiniLM ({', '.join(RUNS)}), {args.requests} single-text requests per row from "
             f"{args.clients} clients, {os.cpu_count()} CPU cores, loopback, "
             f"{args.threads or 'default'} torch thread(s) per server")
    print(setup + "\n" + "\n".join(lines))
    stem = "serve_many" + (f"_threads{args.threads}" if args.threads else "")
    (RESULTS / f"{stem}.md").write_text(setup + "\n\n" + "\n".join(lines) + "\n")
    (RESULTS / f"{stem}.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
