"""`ftune serve`: what was given, behind FastAPI on uvicorn, inside the guards. The wiring only; each part is a module:

    serve_settings.py   ServeSettings: every limit and switch, with its default, bounds and description (the flags)
    serve_guards.py     API key, Host, body size and read deadlines, strict JSON, connection limits
    serve_labels.py     the labeling API of a run or export, or of several runs: POST /v1/predict, GET /v1/models
    chat_api.py         OpenAI's chat completions API of a causal-lm run (ftune.generate.Generator)
    serve_cloud.py      SageMaker's and Vertex AI's health and predict routes on top of either (ftune.cloud.Serving)

Every app also has GET /health and the OpenAPI spec at /openapi.json (docs at /docs). Which API an app gets is
chosen in one place, `_service`, by what the served model declares it does; a new serving mode is a module with a
service (batcher, description, body_limit, add_routes) and a branch there.
"""

from __future__ import annotations

import functools
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from ftune.errors import ConfigError, RunError
from ftune.serve_guards import DOCS_ASSETS, LOOPBACK_HOSTS, GuardedH11Protocol, guard, is_loopback
from ftune.serve_settings import ServeSettings, connection_limit, room_for_connections  # noqa: F401 (ftune.serve's)

if TYPE_CHECKING:  # ftune.predictors imports torch, seconds that only these annotations would need
    from ftune.cloud import Serving
    from ftune.generate import Generator
    from ftune.predictors import Labeler


def load(sources: list[Path], variant: str | None = None, trust_remote_code: bool = False, device: str = "auto",
         precision: str = "fp32") -> Labeler | dict[str, Labeler] | Generator:
    """What `ftune serve SOURCES` serves: a causal-lm run's Generator (alone), a run's or an export's predictor,
    or {name: predictor} of several runs. A combination that cannot be served is refused before any model loads."""
    from ftune.generate import Generator, is_causal_lm_run
    from ftune.predictors import load_predictor
    from ftune.predictors.many import load_many

    if len(sources) > 1 and variant is not None:
        raise ConfigError("--variant applies to an export, which `ftune serve` serves alone; drop --variant to serve "
                          "several runs")
    writers = [source for source in sources if is_causal_lm_run(source)]
    if writers and len(sources) > 1:
        raise RunError(f"{writers[0]} is a causal-lm run, which `ftune serve` serves alone (with the chat API); "
                       f"serve it in a process of its own")
    if writers and (variant is not None or precision != "fp32"):
        raise ConfigError(f"{writers[0]} is a causal-lm run: its model is served in fp32, from the run; drop "
                          f"--variant and --precision")
    if writers:
        return Generator(sources[0], trust_remote_code, device)
    if len(sources) == 1:
        return load_predictor(sources[0], variant, trust_remote_code, device, precision)
    return load_many(sources, trust_remote_code, device, precision)


def model_name(model: Labeler | Generator) -> str:
    """A model's name in requests: its run or export folder's name."""
    source = model.describe().get("source")
    return Path(source).name if source else model.kind


def _service(served: Labeler | dict[str, Labeler] | Generator, settings: ServeSettings):
    """The API for what is served, chosen by what it declares: a model that writes text (a causal-lm run's
    Generator) gets OpenAI's chat API; labelers, one or {name: labeler}, the labeling API."""
    if getattr(served, "writes_text", False):
        from ftune.chat_api import ChatService  # torch: loaded with the model by now

        return ChatService(served, model_name(served), settings)
    from ftune.serve_labels import LabelService

    several = isinstance(served, dict)
    return LabelService(served if several else {model_name(served): served}, several, settings)


def create_app(served: Labeler | dict[str, Labeler] | Generator, settings: ServeSettings | None = None,
               cloud: Serving | None = None) -> FastAPI:
    """The service of one model, or of several ({name: predictor}) that requests choose by name; a causal-lm run's
    Generator gets the chat API (ftune.chat_api) instead of /v1/predict. `cloud`: a platform's routes as well."""
    settings = settings or ServeSettings()
    service = _service(served, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        yield
        await service.batcher.stop()

    # FastAPIOffline: /docs and /redoc load their scripts from this server, so they work on a machine with no internet
    app = FastAPIOffline(title="ftune", version="1", lifespan=lifespan, description=service.description,
                         static_url=DOCS_ASSETS.rstrip("/"))
    app.state.batcher = service.batcher
    guard(app, settings, service.body_limit, public={cloud.health_route} if cloud else set())  # probed keyless

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "waiting": service.batcher.waiting}

    service.add_routes(app)
    if cloud is not None:
        from ftune.serve_cloud import add_routes

        add_routes(app, service, cloud)
    return app


def build_server(served: Labeler | dict[str, Labeler] | Generator, host: str = "127.0.0.1", port: int = 8000,
                 settings: ServeSettings | None = None, log_level: str = "info",
                 cloud: Serving | None = None) -> uvicorn.Server:
    """The app under uvicorn with its connection limits, as `ftune serve` runs it."""
    settings = settings or ServeSettings()
    if settings.allowed_hosts is None and is_loopback(host):
        settings = settings.model_copy(update={"allowed_hosts": LOOPBACK_HOSTS})
    # asyncio accepts up to `backlog` connections in one pass of its loop, and refusing them takes two more passes:
    # three backlogs must fit in what the open connections leave of the open-file limit
    backlog = max(1, min(2048, (room_for_connections() - settings.max_connections) // 3))
    config = uvicorn.Config(create_app(served, settings, cloud), host=host, port=port, log_level=log_level,
                            limit_concurrency=settings.max_connections, backlog=backlog,
                            http=functools.partial(GuardedH11Protocol, header_timeout_s=settings.read_timeout_s))
    return uvicorn.Server(config)


def serve(served: Labeler | dict[str, Labeler] | Generator, host: str = "127.0.0.1", port: int = 8000,
          settings: ServeSettings | None = None, log_level: str = "info", cloud: Serving | None = None) -> None:
    build_server(served, host, port, settings, log_level, cloud).run()
