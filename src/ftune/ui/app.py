"""`ftune ui`: the whole workflow in a browser, over one folder of runs: look at a data file, configure a run from
the config schema, train it (queued, one at a time), watch its curves, read its report, compare runs, try it, export
it and serve it.

FastAPI with one page of plain HTML and JavaScript served from the package (ftune/ui/static): nothing from a CDN,
no build step. Gradio is what the LLM tools ship; it would add a large dependency and its own server for what is a
handful of forms over ftune's own functions, which the page calls as JSON endpoints here. Every endpoint is a thin
call into what the CLI uses (ftune.config, ftune.data, ftune.runs, ftune.predictors, ftune.export), so the browser
and the command line give the same answers and the same one-line errors.

The guards: a random token in the URL (as Jupyter's), kept in a same-site cookie; the Host header checked against
the names the server was started for (DNS rebinding); request bodies under a size limit; files read only under the
working folder; a run's model code never run without --trust-remote-code.
"""

from __future__ import annotations

import hmac
import json
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ftune.errors import FtuneError
from ftune.serve_guards import Guard
from ftune.ui.jobs import Queue, log_tail

STATIC = Path(__file__).parent / "static"
COOKIE = "ftune_ui_token"
BODY_LIMIT = 50 * 2**20  # an uploaded data file
PREVIEW_ROWS = 8


class Settings(BaseModel):
    """What the page sends to check, start or describe a run: config keys (`section.key`) and their values."""

    settings: dict[str, Any] = {}
    name: str | None = None


class Texts(BaseModel):
    source: str  # a run's name, or RUN/onnx: an export of it
    texts: list[str]


def create_app(root: Path, workdir: Path, token: str, allowed_hosts: list[str] | None,
               trust_remote_code: bool = False) -> FastAPI:
    """The app over `root` (the runs folder), reading data files under `workdir`."""
    root, workdir = root.resolve(), workdir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    queue = Queue()
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    predictors: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        queue.stop_all()  # the run training gets SIGTERM: a checkpoint, then `resume` continues it next time
        for process, _port in servers.values():
            process.terminate()

    app = FastAPI(title="ftune ui", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(Guard, api_key=None, body_limit=BODY_LIMIT, read_timeout_s=30.0)  # the service's body guard

    @app.middleware("http")
    async def check_token(request: Request, call_next):
        given = request.query_params.get("token") or request.cookies.get(COOKIE) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            return PlainTextResponse("open the URL `ftune ui` printed (it holds the token)", status_code=403)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    @app.exception_handler(FtuneError)
    async def user_error(request: Request, error: FtuneError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=400)  # the CLI's one line, shown as it is

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/static/{name}")
    def static(name: str) -> FileResponse:
        path = (STATIC / name).resolve()
        if path.parent != STATIC.resolve() or not path.is_file():
            raise HTTPException(404)
        return FileResponse(path)

    # --- data ---------------------------------------------------------------------------------------------------
    @app.get("/api/start")
    def start() -> dict:
        from ftune.data import CATALOG
        from ftune.methods import METHODS
        from ftune.tasks import TASKS

        return {"root": str(root), "workdir": str(workdir), "builtin": sorted(CATALOG),
                "tasks": {n: t.description for n, t in TASKS.items()}, "methods": sorted(METHODS),
                "files": _data_files(workdir, root)}

    @app.post("/api/upload")
    async def upload(request: Request, name: str) -> dict:
        safe = Path(name).name
        if not safe or safe.startswith("."):
            raise HTTPException(400, "a file name is needed")
        folder = workdir / "uploads"
        folder.mkdir(exist_ok=True)
        (folder / safe).write_bytes(await request.body())
        return {"path": str((folder / safe).relative_to(workdir))}

    @app.post("/api/data")
    def data(body: Settings) -> dict:
        """The first rows and columns of the training file, the task read off it, then what `ftune data validate`
        says: split sizes and warnings (or the one error)."""
        from ftune.data.sources import read_source

        config = _checked(body.settings, workdir)[1]
        table = read_source(config.data.train)
        frame = next(iter(table.values())) if isinstance(table, dict) else table
        preview = json.loads(frame.head(PREVIEW_ROWS).to_json(orient="records", default_handler=str))
        inferred = config._task_inferred
        answer = {"columns": [str(c) for c in frame.columns], "rows": preview, "total": len(frame),
                  "task": config.task.name, "task_reason": inferred.reason if inferred else "named in the settings"}
        try:
            answer.update(_validate(config))
        except FtuneError as e:
            answer["error"] = str(e)
        return answer

    # --- configure ----------------------------------------------------------------------------------------------
    @app.get("/api/schema")
    def schema(task: str = "classification", method: str = "full") -> dict:
        from ftune.config import describe_keys

        return {"keys": [{"key": k, "type": t, "default": d, "description": text}
                         for k, t, d, text in describe_keys(task, method)]}

    @app.post("/api/config")
    def config(body: Settings) -> dict:
        """The settings checked as `ftune train` checks them; the YAML, the command and the memory estimate."""
        settings, config = _checked(body.settings, workdir)
        name = _run_name(body.name)
        return {"yaml": _yaml(settings, config), "command": f"ftune train config.yaml --output-dir {root / name}",
                "memory": _memory(config), "task": config.task.name}

    # --- train --------------------------------------------------------------------------------------------------
    @app.post("/api/runs")
    def start_run(body: Settings) -> dict:
        settings, config = _checked(body.settings, workdir)  # refused here, in one line, as the CLI would
        name = _run_name(body.name)
        folder = root / name
        if folder.exists() or name in queue.jobs:
            raise HTTPException(409, f"{folder} exists; pick another run name")
        spec = root / f".{name}.yaml"
        spec.write_text(_yaml(settings, config))
        queue.add(name, folder, ["train", str(spec), "--output-dir", str(folder)])
        return {"name": name}

    @app.post("/api/runs/{name}/stop")
    def stop_run(name: str) -> dict:
        return {"said": queue.stop(name)}

    @app.post("/api/runs/{name}/resume")
    def resume_run(name: str) -> dict:
        folder = _run(root, name)
        queue.add(name, folder, ["train", "--output-dir", str(folder), "--resume"])
        return {"said": "queued to resume"}

    @app.get("/api/runs")
    def runs() -> dict:
        from ftune.runs import run_row

        rows = {p.name: run_row(p) for p in sorted(root.iterdir()) if (p / "run.json").is_file()}
        for name, job in queue.jobs.items():
            rows.setdefault(name, {"name": name, "status": job.state})
            rows[name]["queue"] = job.state
        exports = [f"{p.parent.name}/{p.name}" for p in sorted(root.glob("*/*")) if (p / "export.json").is_file()]
        return {"runs": list(rows.values()), "exports": exports}

    @app.get("/api/runs/{name}/progress")
    def progress(name: str) -> dict:
        """The logged training loss and every evaluation so far, the log's last lines, and the queue's state."""
        folder = root / _run_name(name)
        history = folder / "metrics.jsonl"
        entries = [json.loads(line) for line in history.read_text().splitlines() if line.strip()] \
            if history.is_file() else []
        job = queue.jobs.get(name)
        metrics = folder / "metrics.json"
        diagnosis = json.loads(metrics.read_text()).get("diagnosis") if metrics.is_file() else None
        return {"state": job.state if job else ("done" if metrics.is_file() else "unknown"),
                "train": [(e["step"], e["loss"]) for e in entries if e.get("type") == "train" and "loss" in e],
                "eval": [(e["step"], e["validation"]) for e in entries if e.get("type") == "eval"],
                "log": log_tail(folder), "diagnosis": diagnosis}

    @app.get("/runs/{name}/{path:path}")
    def run_file(name: str, path: str) -> FileResponse:
        """A run's report.html and its plots (nothing outside the run's folder)."""
        folder = _run(root, name)
        target = (folder / path).resolve()
        if folder not in target.parents or not target.is_file():
            raise HTTPException(404)
        return FileResponse(target)

    # --- try it and ship it -------------------------------------------------------------------------------------
    def model(source: str):
        """A run's model (or a decoder run's generator), or an export's, loaded once: `source` is a run's name or
        RUN/onnx under the runs folder."""
        folder = (root / source).resolve()
        if root not in folder.parents or not ((folder / "run.json").is_file() or (folder / "export.json").is_file()):
            raise HTTPException(404, f"no run or export {source} in {root}")
        if source not in predictors:  # what `ftune serve` would serve: a decoder's generator, or a predictor
            from ftune.serve import load

            predictors[source] = load([folder], None, trust_remote_code, "cpu")
        return predictors[source]

    @app.post("/api/predict")
    def predict(body: Texts) -> dict:
        """Answers to texts: a label with every class's score, the tags of each word, a value, a score."""
        found = model(body.source)
        if getattr(found, "writes_text", False):
            raise HTTPException(400, f"{body.source} writes text: use the chat box")
        return {"answers": found.predict(body.texts[:64])}

    @app.post("/api/chat")
    def chat(body: Texts) -> StreamingResponse:
        """A decoder run's answer to one message, streamed as plain text while it is written."""
        import queue
        import threading
        import time

        from ftune.chat_api import _Answer

        found = model(body.source)
        if not getattr(found, "writes_text", False):
            raise HTTPException(400, f"{body.source} labels texts: use the Answer button")
        ids = found.prompt([{"role": "user", "content": (body.texts or [""])[0]}])
        pieces: queue.Queue = queue.Queue()
        answer = _Answer(found.tokenizer, threading.Lock(), len(ids), [], threading.Event(), time.monotonic() + 120,
                         emit=pieces.put)

        def write() -> None:
            try:
                found.complete(ids, 128, stopping_criteria=[answer])
                answer.finish()
            finally:
                pieces.put(None)

        threading.Thread(target=write, daemon=True).start()
        return StreamingResponse(iter(pieces.get, None), media_type="text/plain; charset=utf-8")

    @app.post("/api/runs/{name}/export")
    def export(name: str) -> dict:
        from ftune.export import export_onnx

        folder = export_onnx(_run(root, name), quantize="int8", trust_remote_code=trust_remote_code)
        return {"folder": str(folder), "parity": json.loads((folder / "export.json").read_text())["parity"]}

    @app.post("/api/runs/{name}/serve")
    def serve(name: str) -> dict:
        folder = _run(root, name)
        if name in servers and servers[name][0].poll() is None:
            return {"url": f"http://127.0.0.1:{servers[name][1]}", "said": "already serving"}
        port = _free_port()
        process = subprocess.Popen([sys.executable, "-m", "ftune", "serve", str(folder), "--port", str(port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        servers[name] = (process, port)
        return {"url": f"http://127.0.0.1:{port}", "said": f"serving {name}: POST /v1/predict"}

    @app.post("/api/runs/{name}/unserve")
    def unserve(name: str) -> dict:
        process = servers.pop(name, (None, 0))[0]
        if process is not None:
            process.terminate()
        return {"said": "stopped" if process else "not serving"}

    app.state.queue, app.state.servers = queue, servers
    return app


def _inside(settings: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """The settings with data paths read under the working folder: a path elsewhere (or a built-in name) is kept
    only if it stays inside, so the page cannot read the machine's other files."""
    out = {k: v for k, v in settings.items() if v not in ("", None)}
    for key in ("data.train", "data.validation", "data.test"):
        value = out.get(key)
        if not isinstance(value, str):
            continue
        from ftune.data import CATALOG

        if value in CATALOG and not (workdir / value).exists():
            continue
        path = (workdir / value).resolve()
        if workdir != path and workdir not in path.parents:
            raise HTTPException(400, f"{key}: {value} is outside the working folder {workdir}")
        out[key] = str(path)
    return out


def _checked(settings: dict[str, Any], workdir: Path) -> tuple[dict[str, Any], Any]:
    """(the page's settings, data paths kept under the working folder; the config they make, checked as `ftune
    train` checks it, the task read off the data where they name none)."""
    from ftune.config import load_config

    settings = _inside(settings, workdir)
    return settings, load_config(overrides=settings, infer_task=True)


def _yaml(settings: dict[str, Any], config) -> str:
    """config.yaml of the settings the page gave (and the task), the file `ftune train` reads the same way."""
    return yaml.safe_dump(_nested({**settings, "task.name": config.task.name}), sort_keys=False)


def _validate(config) -> dict:
    """What `ftune data validate` reports: each split's size, class counts, and the warnings."""
    from ftune.train_setup import data_report

    _, splits, _, summary, warnings = data_report(config)
    sizes = {name: summary[name] for name in ("train", "validation", "test")}
    return {"splits": sizes, "classes": summary.get("classes", {}).get("train", {}), "warnings": warnings,
            "labels": splits.labels}


def _memory(config) -> str:
    """The peak memory one training step needs (ftune.memory's estimate), from the model's config alone: its weights
    are never loaded (meta tensors)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, \
        AutoModelForTokenClassification

    from ftune.memory import estimate
    from ftune.methods import method_for
    from ftune.models import resolve_model
    from ftune.tasks import task_for

    task = task_for(config)
    try:
        model_config = AutoConfig.from_pretrained(resolve_model(config.model.name))
    except (OSError, ValueError) as e:
        return f"not estimated: {str(e).splitlines()[0][:120]}"
    auto = {"CAUSAL_LM": AutoModelForCausalLM, "TOKEN_CLS": AutoModelForTokenClassification}.get(
        task.peft_type, AutoModelForSequenceClassification)
    with torch.device("meta"):
        model = auto.from_config(model_config)
    try:
        model = method_for(config).wrap(model, task.peft_type)
        what = config.method.name
    except Exception:  # noqa: BLE001 - a method that needs real weights (4-bit): full fine-tuning's figure
        what = "full fine-tuning (this method's wrapping needs the weights)"
    batch = config.train.batch_size if isinstance(config.train.batch_size, int) else 32
    need = estimate(model, batch, config.data.max_length, half_precision=False,
                    checkpointing=config.train.gradient_checkpointing)
    return f"{need.describe()} for a batch of {batch} x {config.data.max_length} tokens ({what})"


def _nested(settings: dict[str, Any]) -> dict:
    out: dict = {}
    for key, value in settings.items():
        *sections, last = key.split(".")
        node = out
        for part in sections:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _run_name(name: str | None) -> str:
    import re
    import time

    name = name or time.strftime("run-%Y%m%d-%H%M%S")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}", name):
        raise HTTPException(400, "a run name is letters, digits, '.', '_' and '-'")
    return name


def _run(root: Path, name: str) -> Path:
    folder = root / _run_name(name)
    if not (folder / "run.json").is_file():
        raise HTTPException(404, f"no run {name} in {root}")
    return folder


def _data_files(workdir: Path, root: Path, limit: int = 200, depth: int = 3) -> list[str]:
    """Data files under the working folder, a few levels down, outside hidden folders and the runs folder."""
    import os

    found = []
    for folder, subfolders, files in os.walk(workdir):
        here = Path(folder)
        level = len(here.relative_to(workdir).parts)
        subfolders[:] = [] if level >= depth else sorted(
            d for d in subfolders if not d.startswith((".", "__")) and here / d != root and d != "node_modules")
        found += [str((here / f).relative_to(workdir)) for f in sorted(files)
                  if Path(f).suffix in (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt") and not f.startswith(".")]
        if len(found) >= limit:
            break
    return sorted(found)[:limit]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
