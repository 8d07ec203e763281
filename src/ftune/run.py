"""The run directory: the only contract between training and everything after it.

    run.json        manifest: status, times, versions, seed, data hash, model source, git commit, and the
                    sha256 of every file a predictor loads (checked when it loads; see ftune.integrity)
    config.yaml     the resolved config
    labels.json     label names, index = class id
    task.json       what the task fixed after training for prediction (multi-label: thresholds), when it has any
    metrics.jsonl   one line per logging step and per evaluation
    metrics.json    final metrics: fine-tuned, base model and baseline on the test split; data summary
    test_predictions.csv   the fine-tuned model's label and score for every test text (tagging: every test word)
    report.html     the report, self-contained (plots embedded); report.md the same in Markdown
    plots/          the report's figures as PNG
    model/          transformers model + tokenizer (full, freeze; an adapter method with merge)
    adapter/        peft adapter + tokenizer + labels.json (methods that train one: LoRA, DoRA, prompt tuning); names
                    the base model by its hub id or given name
    checkpoints/    step-N/ folders for --resume; best/ holds the best weights so far

Reading a finished run's files is ftune.run_folder's (below the predictors); its names are re-exported here.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from ftune import integrity
from ftune.config import Config, to_yaml, validate
from ftune.errors import RunError
from ftune.recipe import left_to_data
from ftune.run_folder import LOCK_FILE, RUN_FILE, TASK_FILE, RunFolder, damaged_run_fix, live_status  # noqa: F401

MAX_HISTORY_BYTES = 512 << 20  # metrics.jsonl: a line per logging step, a few hundred bytes each


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically: readers see the old file or the new one, never half of one; a symlink at the name
    is replaced, not followed (see ftune.integrity)."""
    integrity.write_json(path, obj)


def read_json(path: Path) -> Any:
    """A JSON file ftune wrote; damaged or hand-edited into something else, it is one RunError naming the file."""
    return integrity.read_json_file(path, "it was damaged or edited: restore it from a whole copy, or train the run again")


def read_history(path: Path) -> list[dict]:
    """metrics.jsonl in step order; after a resume, the re-run entry for a step replaces the first one."""
    file = path / "metrics.jsonl"
    entries = {}
    if not file.is_file():
        return []
    if file.stat().st_size > MAX_HISTORY_BYTES:  # a run folder handed over may hold anything
        raise RunError(f"{file} is over {MAX_HISTORY_BYTES >> 20} MB, far more than training writes; "
                       f"{damaged_run_fix(path)}")
    with file.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, RecursionError):  # blank, or the half line of a process killed mid-write
                continue
            if isinstance(entry, dict) and isinstance(entry.get("type"), str) and type(entry.get("step")) is int:
                entries[(entry["type"], entry["step"])] = entry
    return sorted(entries.values(), key=lambda e: (e["step"], e["type"] == "eval"))


def default_output_dir(config: Config) -> Path:
    data = Path(config.data.train).stem or config.data.train
    return Path("runs") / f"{data}-{config.method.name}-{datetime.now():%Y%m%d-%H%M%S}"


def check_run_dir(config: Config, resume: bool, data_hash: str | None = None) -> Path | None:
    """Every check `open_run_dir` makes, writing nothing; the run's path when it is already known."""
    if resume and not config.output_dir:
        raise RunError("--resume needs the run to continue: pass --output-dir DIR (or set output_dir)")
    if not config.output_dir:
        return None
    path = Path(config.output_dir)
    if path.exists() and not path.is_dir():
        raise RunError(f"output_dir {path} is a file, not a folder; choose another --output-dir")
    if resume:
        _check_resumable(path, config, data_hash)
    elif path.exists() and any(path.iterdir()):
        raise RunError(f"{path} already holds files; pass --resume to continue that run or choose another --output-dir")
    return path


def open_run_dir(config: Config, resume: bool, data_hash: str | None = None) -> Path:
    """Create a fresh run directory, or reopen an interrupted one for --resume; either way held locked until
    `release_run_dir`. `data_hash` is the splits' fingerprint: a resume must find the data the run started with."""
    path = check_run_dir(config, resume, data_hash) or default_output_dir(config)
    if resume:
        _lock(path)
        update_manifest(path, status="running", resumed_at=_now())
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
        _lock(path)
        (path / "config.yaml").write_text(to_yaml(config.model_copy(update={"output_dir": str(path)})), encoding="utf-8")
    except OSError as e:
        raise RunError(f"cannot write to {path} ({e.strerror}); choose a writable --output-dir") from None
    paths = {name: _resolved(source) for name, source in (("train", config.data.train), ("validation", config.data.validation),
                                                          ("test", config.data.test)) if source}
    lr_source = f"default for {config.method.name}" if config._learning_rate_is_default else "config"
    write_json(path / RUN_FILE, {"status": "running", **_environment(), "seed": config.train.seed,
                                 "method": config.method.name, "data": config.data.train, "data_paths": paths,
                                 "data_hash": data_hash,
                                 "learning_rate": {"value": config.train.learning_rate, "source": lr_source},
                                 "chosen_from_data": config._chosen})
    return path


_LOCKS: dict[Path, IO] = {}  # run directories this process trains in, with their open lock files


def _lock(path: Path) -> None:
    """Hold RUN/.lock while training, so a second `--resume` of a run still training is refused, not interleaved.

    An flock belongs to the process: the OS drops it however the process ends (SIGKILL too), so a
    killed run never leaves a stale lock behind."""
    try:  # O_NOFOLLOW: a `.lock` symlink in a folder someone handed us must not create or touch its target
        handle = os.fdopen(os.open(path / LOCK_FILE, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644), "w")
    except OSError as e:
        raise RunError(f"cannot create {path / LOCK_FILE} ({e.strerror}); remove it if it is a link, or choose a "
                       f"writable --output-dir") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise RunError(f"{path} is being trained by another ftune process right now; wait for it to finish, or stop "
                       f"it (Ctrl-C saves a checkpoint) and then --resume") from None
    _LOCKS[path] = handle


def release_run_dir(path: Path) -> None:
    """Let the run directory go: the next `--resume` may open it."""
    handle = _LOCKS.pop(path, None)
    if handle is not None:
        handle.close()


def _check_resumable(path: Path, config: Config, data_hash: str | None) -> None:
    if not (path / RUN_FILE).is_file():
        raise RunError(f"{path} holds no ftune run to resume; drop --resume to start one there")
    manifest = read_json(path / RUN_FILE)
    status = manifest.get("status")
    if status == "complete":
        raise RunError(f"{path} is a complete run; nothing to resume (use another --output-dir for a new run)")
    saved = validate(integrity.read_yaml_file(path / "config.yaml", damaged_run_fix(path)), str(path / "config.yaml"))
    new = config.model_copy(update={"output_dir": saved.output_dir})
    diff = _first_difference(saved.model_dump(), new.model_dump(), skip=left_to_data(config))
    if diff:
        raise RunError(f"{path}: {diff} differs from the interrupted run's config; resume with the same settings")
    started_with = manifest.get("data_hash")
    if data_hash and started_with and data_hash != started_with:  # same file names, other contents
        raise RunError(f"{path}: the data ({config.data.train}) changed since the run started (data hash "
                       f"{data_hash[:12]}, was {started_with[:12]}); resume with the data it started with, or start "
                       f"a new run with another --output-dir")


def update_manifest(path: Path, **fields: Any) -> dict:
    manifest = read_json(path / RUN_FILE)
    manifest.update(fields)
    write_json(path / RUN_FILE, manifest)
    return manifest


def _first_difference(a: dict, b: dict, prefix: str = "", skip: tuple[str, ...] = ()) -> str | None:
    """The first setting of `a` that `b` has otherwise; `skip`: dotted prefixes `b` leaves to the data (a run of
    it chooses them as the saved run did, from the same data)."""
    for key in a:
        if f"{prefix}{key}.".startswith(skip):  # "train.epochs." and "method." alike
            continue
        if isinstance(a[key], dict) and isinstance(b.get(key), dict):
            found = _first_difference(a[key], b[key], f"{prefix}{key}.", skip)
            if found:
                return found
        elif a[key] != b.get(key):
            return f"{prefix}{key} ({b.get(key)!r}, was {a[key]!r})"
    return None


def _resolved(source: str) -> str:
    """A data file as an absolute path (what was really read); built-in names and hub ids as they are."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _environment() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("ftune", "torch", "transformers", "peft", "accelerate", "datasets", "scikit-learn", "tokenizers"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return {"started_at": _now(), "versions": versions, "python": platform.python_version(),
            "platform": platform.platform(), "git_commit": _git_commit(), "started_unix": time.time()}


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


class Run(RunFolder):
    """A finished run (ftune.Run): its files, read and checked (RunFolder), and its model, which `predict` loads on
    first use."""

    def __init__(self, path: str | Path, trust_remote_code: bool = False):
        """`trust_remote_code`: let `predict` run model code from the run's folder when its config asks to."""
        super().__init__(path)
        self.trust_remote_code = trust_remote_code
        self._predictor = None

    def predict(self, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
        """The task's answer for each text (classification: label, score and every class's score)."""
        if self._predictor is None:
            from ftune.predictors.pytorch import Predictor  # torch, seconds: only when asked to predict

            self._predictor = Predictor(self.path, trust_remote_code=self.trust_remote_code)
        return self._predictor.predict(texts, pairs)


def discard_run(run_dir: Path, keep_folder: bool) -> None:
    """Remove what this run wrote; a folder the user created beforehand stays, empty, as it was."""
    if not keep_folder:
        shutil.rmtree(run_dir)
        return
    for child in run_dir.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def last_step(run_dir: Path) -> int:
    """The last optimizer step in the run's log (0 before the first)."""
    steps = [e["step"] for e in read_history(run_dir) if e["type"] == "train"]
    return steps[-1] if steps else 0
