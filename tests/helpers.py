"""Helpers the test modules share: synthetic data, running the CLI in-process, and serving on a loopback port.

Test modules import from here, never from each other (pytest's conftest.py holds only fixtures)."""

from __future__ import annotations

import json
import random
import re
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx
import pandas as pd

import ftune
from ftune.cli import main
from ftune.serve import build_server
from ftune.tasks.classification import Classification


POSITIVE = ["great", "excellent", "wonderful", "superb", "delightful", "brilliant"]
NEGATIVE = ["awful", "terrible", "boring", "dreadful", "bad", "dull"]
FILLER = "the movie was really quite a film with story acting plot and it felt long short new old".split()


def synthetic_reviews(n: int, seed: int = 0) -> pd.DataFrame:
    """Sentences whose label is given by the one sentiment word they contain."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = rng.sample(FILLER, rng.randint(3, 10)) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"review": " ".join(words), "stars": label})
    return pd.DataFrame(rows)


def ftune_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["ftune", *args])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


FIRST = ["john", "mary", "paul", "anna"]
LAST = ["smith", "jones", "brown"]
CITIES = ["paris", "london", "berlin", "rome"]
OTHER = "the a visited saw met in at from yesterday today and with".split()


def entity_sentences(n: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """Sentences with person names (B-PER I-PER) and cities (B-LOC) among other words (O)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(3, 8)):
            kind = rng.random()
            if kind < 0.25:
                words += [rng.choice(FIRST), rng.choice(LAST)]
                tags += ["B-PER", "I-PER"]
            elif kind < 0.45:
                words.append(rng.choice(CITIES))
                tags.append("B-LOC")
            else:
                words.append(rng.choice(OTHER))
                tags.append("O")
        rows.append((words, tags))
    return rows


from ftune.tiny import OPPOSITES  # noqa: E402 (beside the helpers that use it)


def chat_run(root: Path, rows: list[dict], texts: list[str], **train: float) -> str:
    """A finished causal-lm run of a tiny decoder (its vocabulary from `texts`) trained on the instruction `rows`;
    `train` sets train.* keys (epochs, batch_size, learning_rate) and data.max_length (`max_length`)."""
    import ftune
    from ftune.tiny import build_tiny_decoder

    decoder = build_tiny_decoder(root / "decoder", texts)
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {"max_length": 32, "epochs": 1, "batch_size": 32, "learning_rate": 1e-3} | train
    cfg = ftune.load_config(overrides={
        "task": "causal-lm", "model.name": str(decoder), "data.train": str(root / "data.jsonl"),
        "data.max_length": settings.pop("max_length"), **{f"train.{k}": v for k, v in settings.items()},
        "method.name": "full", "train.baselines": False, "tracking.backend": "none", "output_dir": str(root / "run")})
    return str(ftune.train(cfg, quiet=True).path)


def instructions(n: int, seed: int = 0, opposites: dict[str, str] = OPPOSITES) -> list[dict]:
    rng = random.Random(seed)
    words = list(opposites.items()) + [(b, a) for a, b in opposites.items()]
    return [{"prompt": f"what is the opposite of {w} ?", "response": f"the opposite of {w} is {o} ."}
            for w, o in (rng.choice(words) for _ in range(n))]


# --- every task's tiny data: tests/test_task_contract.py runs its checks over every task in ftune.tasks.TASKS -----

@dataclass(frozen=True)
class TinyData:
    """A task's tiny dataset, written under a folder, that a tiny model learns something of in one short epoch."""

    keys: dict  # the config keys that read it: data.train and its columns (task.* options where the task needs them)
    texts: list[str]  # every text in it: a tiny decoder's vocabulary is learned from them


def _csv(folder: Path, frame: pd.DataFrame) -> str:
    frame.to_csv(folder / "data.csv", index=False)
    return str(folder / "data.csv")


def _jsonl(folder: Path, rows: list[dict]) -> str:
    (folder / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(folder / "data.jsonl")


def _reviews(folder: Path) -> TinyData:
    frame = synthetic_reviews(120)
    return TinyData({"data.train": _csv(folder, frame), "data.text_column": "review", "data.label_column": "stars"},
                    frame["review"].tolist())


def _tagged(folder: Path) -> TinyData:
    sentences = entity_sentences(80)
    return TinyData({"data.train": _jsonl(folder, [{"tokens": w, "tags": t} for w, t in sentences])},
                    [" ".join(words) for words, _ in sentences])


def _instructions(folder: Path) -> TinyData:
    rows = instructions(80)
    return TinyData({"data.train": _jsonl(folder, rows)}, [text for row in rows for text in row.values()])


def preference_pairs(n: int, seed: int = 0) -> list[dict]:
    """Prompts with the right opposite chosen and a wrong one rejected (ftune.tiny's, which the bench shares)."""
    from ftune.tiny import opposite_pairs

    return opposite_pairs(n, seed)


def unpaired_answers(n: int, seed: int = 0) -> list[dict]:
    """KTO's data from the same prompts: each answer alone, right (label true) or wrong (false)."""
    rows = []
    for i, pair in enumerate(preference_pairs(n, seed)):
        good = i % 2 == 0
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen" if good else "rejected"], "label": good})
    return rows


def _unpaired(folder: Path) -> TinyData:
    rows = unpaired_answers(80)
    return TinyData({"data.train": _jsonl(folder, rows)}, [row["prompt"] + " " + row["completion"] for row in rows])


def _pairs(folder: Path) -> TinyData:
    rows = preference_pairs(80)
    return TinyData({"data.train": _jsonl(folder, rows)}, [text for row in rows for text in row.values()])


def counted_reviews(n: int, seed: int = 0) -> pd.DataFrame:
    """Texts whose target is how many praise words they hold (0-3): a number a model can read off the words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        stars = i % 4
        words = rng.sample(FILLER, rng.randint(3, 8)) + rng.sample(POSITIVE, stars)
        rng.shuffle(words)
        rows.append({"review": " ".join(words), "stars": stars})
    return pd.DataFrame(rows)


def _praise_counts(folder: Path) -> TinyData:
    """A number (or ordered class) per text: how many praise words it holds (0-3)."""
    frame = counted_reviews(120)
    return TinyData({"data.train": _csv(folder, frame), "data.text_column": "review", "data.label_column": "stars"},
                    frame["review"].tolist())


TOPICS = {"sport": ["football", "tennis", "goal"], "food": ["pasta", "bread", "cheese"], "tech": ["laptop", "chip"]}


def _topics(folder: Path) -> TinyData:
    """One or two topics per text, from its keywords; the label cell joins them with '|'."""
    rng = random.Random(0)
    rows = []
    for _ in range(120):
        topics = sorted(rng.sample(sorted(TOPICS), rng.choice([1, 1, 2])))
        words = rng.sample(FILLER, 4) + [rng.choice(TOPICS[t]) for t in topics]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "|".join(topics)})
    frame = pd.DataFrame(rows)
    return TinyData({"data.train": _csv(folder, frame)}, frame["text"].tolist())


# A task registered in TASKS gets the contract suite's checks once it has an entry here.
TINY_DATA: dict[str, Callable[[Path], TinyData]] = {
    "classification": _reviews, "token-classification": _tagged, "causal-lm": _instructions,
    "regression": _praise_counts, "multi-label": _topics, "ordinal": _praise_counts, "preference": _pairs,
    "reward-model": _pairs, "kto": _unpaired}


KEY = "test-key"


@contextmanager
def running(predictor, settings=None):
    """The service under uvicorn in a thread, as `ftune serve` runs it; yields its base URL and the app."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = build_server(predictor, "127.0.0.1", port, settings, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", server.config.app
    server.should_exit = True
    thread.join(timeout=10)


class SlowLabeler:
    """A stand-in model that takes `seconds` per forward pass, to overload and time out the service."""


    kind = "slow"
    task = Classification  # its answers have classification's shape


    def __init__(self, seconds: float):
        self.seconds = seconds


    def predict(self, texts: list[str]) -> list[dict]:
        time.sleep(self.seconds)
        return [{"label": "pos", "score": 1.0, "scores": {"pos": 1.0}} for _ in texts]


    def describe(self) -> dict:
        return {"kind": self.kind}


def post(url: str, body=None, key: str | None = KEY, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/v1/predict", json=body, headers=headers, timeout=30, **kwargs)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


AUTH = f"Authorization: Bearer {KEY}\r\n".encode()


class MarkerLabeler:
    """A stand-in model: the label is the text's length; a text containing POISON breaks the whole forward pass."""


    kind = "marker"
    task = Classification  # its answers have classification's shape


    def __init__(self):
        self.calls: list[list[str]] = []


    def predict(self, texts: list[str]) -> list[dict]:
        self.calls.append(texts)
        time.sleep(0.02)
        if any("POISON" in text for text in texts):
            raise RuntimeError("this text breaks the model")
        return [{"label": str(len(text)), "score": 1.0, "scores": {str(len(text)): 1.0}} for text in texts]


    def describe(self) -> dict:
        return {"kind": self.kind}


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def status_of(response: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", response)
    return int(match[1]) if match else None


def read_response(sock: socket.socket) -> bytes:
    """What the server sends until it has answered (headers and Content-Length bytes), closed, or gone quiet."""
    data, deadline = b"", time.monotonic() + 15
    try:
        while time.monotonic() < deadline:
            head, blank_line, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: (\d+)", head)
            if blank_line and length and len(body) >= int(length[1]):
                return data
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def exchange(port: int, data: bytes, wait_s: float = 10) -> bytes:
    """Sends `data` on a new connection and returns the answer (b"" when the server closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(data)
        return read_response(sock)


def post_head(length: int | None, key: bool = True) -> bytes:
    """A request's headers for a body of `length` bytes (None: chunked)."""
    size = b"Transfer-Encoding: chunked\r\n" if length is None else b"Content-Length: %d\r\n" % length
    return (b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + size
            + (AUTH if key else b"") + b"\r\n")


def normal_request_works(url: str) -> bool:
    response = httpx.post(f"{url}/v1/predict", json={"texts": ["fine"]}, headers={"Authorization": f"Bearer {KEY}"},
                          timeout=30)
    return response.status_code == 200 and response.json()["predictions"][0]["label"] == "4"


def ftune_message(stderr: str) -> str:
    """ftune's own closing line (`error: ...` or `stopped: ...`) in a process's stderr; a library may log before it,
    and whether ftune prints anything else is tested once, in test_cli's LoRA-run test."""
    lines = [line for line in stderr.splitlines() if line.startswith(("error: ", "stopped: "))]
    assert lines, f"ftune printed no error or stopped line:\n{stderr[-2000:]}"
    return lines[-1]


def full_and_lora_runs(tiny_model: str, reviews_csv, root: Path, **settings):
    """A full and a LoRA (r 4) run of the tiny model on the reviews, in root/full and root/lora."""
    base = {"model.name": tiny_model, "data.train": str(reviews_csv), "data.text_column": "review",
            "data.label_column": "stars", "data.max_length": 32, "train.batch_size": 16, "tracking.backend": "none",
            **settings}
    full = ftune.train(ftune.load_config(overrides=base | {"output_dir": str(root / "full")}), quiet=True)
    lora = ftune.train(ftune.load_config(overrides=base | {"method.name": "lora", "method.r": 4,
                                                           "output_dir": str(root / "lora")}), quiet=True)
    return full, lora
