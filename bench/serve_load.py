"""Load on `ftune serve`, side by side in one run: micro-batching on vs off, 1/8/32 concurrent clients.

    .venv/bin/python bench/serve_load.py --model runs/mr_full            # a run, or an export folder
    .venv/bin/python bench/serve_load.py --model runs/mr_full/onnx --requests 200

Starts the real server (`ftune serve`, uvicorn) on a free loopback port, once with micro-batching
and once without, and drives each with a bounded number of single-text requests (`mr` test
sentences) from N concurrent clients. Prints requests/s, p50/p95/p99 latency and failures, the
ratio batched/unbatched per N, and writes bench/results/serve_load.{md,json}. Stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, batching: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "ftune", "serve", model, "--port", str(port), "--max-waiting", "4096",
               "--batching" if batching else "--no-batching"]
    return launch(command, port, os.environ | {"HF_HUB_OFFLINE": "1"}, seconds=120)


def launch(command: list[str], port: int, env: dict, seconds: float) -> tuple[subprocess.Popen, str]:
    """Start a server command and wait until its /health answers (or it exits, or `seconds` pass)."""
    import httpx

    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + seconds
    while time.time() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.3)
    server.kill()
    raise SystemExit(f"the server did not start: {' '.join(command)}")


async def drive(url: str, texts: list[str], clients: int, requests: int) -> dict:
    """`clients` loops sharing `requests` single-text requests; latencies in ms."""
    import httpx

    latencies, failures = [], 0
    counter = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal failures
        for i in counter:
            start = time.perf_counter()
            try:
                response = await http.post(f"{url}/v1/predict", json={"texts": [texts[i % len(texts)]]})
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append((time.perf_counter() - start) * 1000)
            failures += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(min(clients, 4))))  # warm-up: first-call costs
        counter = iter(range(requests))
        latencies.clear()
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return {"requests": requests, "failed": failures, "rps": requests / elapsed, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="runs/mr_full", help="run directory or export folder")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=320, help="requests per client count")
    args = p.parse_args()

    from ftune.config import DataConfig
    from ftune.data import load_splits

    texts = load_splits(DataConfig(train="mr"), seed=0).test["text"].tolist()
    rows: dict[str, dict] = {}
    for batching in (True, False):
        server, url = start_server(args.model, batching)
        try:
            for clients in args.clients:
                rows[f"{'on' if batching else 'off'}/{clients}"] = asyncio.run(drive(url, texts, clients, args.requests))
        finally:
            server.terminate()
            server.wait(timeout=30)
    lines = ["| micro-batching | clients | requests | failed | requests/s | p50 ms | p95 ms | p99 ms | on/off |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, row in rows.items():
        mode, clients = key.split("/")
        ratio = f"{row['rps'] / rows[f'off/{clients}']['rps']:.2f}x" if mode == "on" else ""
        lines.append(f"| {mode} | {clients} | {row['requests']} | {row['failed']} | {row['rps']:.1f} | {row['p50_ms']:.0f} | "
                     f"{row['p95_ms']:.0f} | {row['p99_ms']:.0f} | {ratio} |")
    setup = f"model {args.model}, single-text requests of mr test sentences, {os.cpu_count()} CPU cores, loopback"
    print(setup + "\n" + "\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_load.md").write_text(setup + "\n\n" + "\n".join(lines) + "\n")
    (RESULTS / "serve_load.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
