"""`ftune serve`: a run or an ONNX export behind FastAPI on uvicorn, with micro-batching.

POST /v1/predict {"texts": [...]} -> label, score and all class scores per text (token classification: a tag per word)
GET  /health, GET /v1/model, and the OpenAPI spec at /openapi.json (docs at /docs)

A causal-lm run (ftune.generate.Generator) is served alone, with OpenAI's chat completions API instead of
/v1/predict (ftune.chat_api: POST /v1/chat/completions, GET /v1/models), behind the same guards.

Several runs (`ftune serve RUN_A RUN_B`, ftune.predictors.many) are served from one app, one queue and one model
thread: a request names its model, {"model": "RUN_B", "texts": [...]} or POST /v1/models/RUN_B/predict, and
GET /v1/models lists them. A micro-batch may hold texts for several models: each model answers its own in one
forward pass (with mixed_adapters, LoRA runs of one base model share passes, each text through its own adapter).
The answer's "model" is the model's name then (one model: its kind, pytorch or onnx, as before).

A hostile or broken client costs little: the Host header and the API key are checked from the headers before
any body is read, the body is read under a size limit and a deadline, bodies must be standard JSON, open
connections are capped below the open-file limit, and one that never finishes its request headers is closed.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import json
import resource
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Union

import pydantic_core
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi_offline import FastAPIOffline
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from ftune.batching_queue import MicroBatcher, Overloaded
from ftune.errors import ConfigError

if TYPE_CHECKING:  # ftune.predictors imports torch, seconds that only these annotations would need
    from ftune.generate import Generator
    from ftune.predictors import Labeler

LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "[::1]"]  # the Host names a server bound to loopback accepts by default
PUBLIC_PATHS = {"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}  # no key needed
DOCS_ASSETS = "/static-offline-docs/"  # Swagger UI's and ReDoc's scripts, served from the package (no CDN): public too


@dataclass
class ServeSettings:
    max_texts: int = 64  # per request (413 above)
    max_chars: int = 10_000  # per text (413 above)
    max_batch: int = 64  # texts per forward pass
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_waiting: int = 1024  # texts queued before new requests get 503
    batching: bool = True
    mixed_adapters: bool = False  # LoRA runs of one base model share forward passes (peft's per-example adapters)
    api_key: str | None = None
    timeout_s: float = 30.0  # a request not answered by then gets 504 (its texts are dropped if not yet started)
    max_body_bytes: int | None = None  # 413 above; None: room for max_texts texts of max_chars characters
    read_timeout_s: float = 10.0  # for a request's headers (else the connection is closed), then for its body (408)
    max_connections: int | None = None  # open at once; None: 512, or fewer where the open-file limit is low
    allowed_hosts: list[str] | None = None  # Host header names (400 others); None: any, or LOOPBACK_HOSTS under `serve`
    max_new_tokens: int = 512  # causal-lm: tokens an answer may have (a larger max_tokens is a 400)
    max_prompt_chars: int = 50_000  # causal-lm: characters in a request's messages, all together (400 above)

    def __post_init__(self) -> None:
        if self.api_key is not None:
            check_api_key(self.api_key)
        self.max_connections = connection_limit(self.max_connections)
        for pattern in self.allowed_hosts or []:
            if "*" in pattern[1:] or pattern.startswith("*") and pattern != "*" and not pattern.startswith("*."):
                raise ConfigError(f"--allowed-hosts: '{pattern}' is neither a host name nor a pattern like "
                                  f"*.example.com; fix or remove it")

    def body_limit(self, chat: bool = False) -> int:
        """Bytes a request body may have: --max-body-bytes, else room for max_texts texts of max_chars characters
        (the chat API: for max_prompt_chars characters of messages)."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        # 6 bytes a character: json.dumps (and most clients) escape every non-ASCII character as \uXXXX
        return (self.max_prompt_chars if chat else self.max_texts * self.max_chars) * 6 + 65_536


def check_api_key(key: str) -> None:
    if not key.strip():  # e.g. --api-key "$KEY" with KEY unset: it would look protected and let anyone in
        raise ConfigError("--api-key / FTUNE_API_KEY is empty; pass a key (e.g. from `openssl rand -hex 32`), "
                          "or drop --api-key and unset FTUNE_API_KEY to serve without one")
    if not (key.isascii() and key.isprintable()) or " " in key:
        raise ConfigError("--api-key / FTUNE_API_KEY contains spaces or characters outside printable ASCII, which an "
                          "'Authorization: Bearer' header cannot carry; use letters, digits and punctuation")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    texts: list[str] = Field(min_length=1, description="the texts to label")
    model: str | None = Field(None, description="the served model to ask (GET /v1/models); needed when several are")


class _Guard:
    """Refuses what the headers give away (a missing or wrong key, a declared body over the limit) before any of
    the body is read, then reads the body under the size limit and a deadline and hands it on. Left to Starlette,
    an unauthenticated client could make the server hold a body of any size, and a slow one for ever."""

    def __init__(self, app: ASGIApp, api_key: str | None, body_limit: int, read_timeout_s: float):
        self.app, self.body_limit, self.read_timeout_s = app, body_limit, read_timeout_s
        self.key = api_key.encode() if api_key is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def refuse(status: int, detail: str, headers: dict | None = None) -> None:
            await JSONResponse({"detail": detail}, status, headers)(scope, receive, send)

        headers = Headers(scope=scope)
        if self.key is not None and not _public(scope["path"]) and not self.authorized(headers):
            return await refuse(401, "missing or wrong API key: send it as 'Authorization: Bearer KEY'",
                                {"WWW-Authenticate": "Bearer"})
        too_large = f"request body over {self.body_limit} bytes: split the texts over several requests"
        if int(headers.get("content-length") or 0) > self.body_limit:  # h11 has checked that it is a number
            return await refuse(413, too_large)
        chunks, size, more, deadline = [], 0, True, time.monotonic() + self.read_timeout_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                return await refuse(408, f"request body not received within {self.read_timeout_s:g} s; send it at once")
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.body_limit:  # a chunked body declares no length
                return await refuse(413, too_large)
        body: dict | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> dict:
            nonlocal body
            if body is None:
                return await receive()  # the disconnect, when it comes
            message, body = body, None
            return message

        await self.app(scope, replay, send)

    def authorized(self, headers: Headers) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        matches = hmac.compare_digest(token.strip().encode("latin-1"), self.key)  # constant time
        return matches and scheme.lower() == "bearer"


class _StrictJSONRequest(Request):
    """JSON as RFC 8259 defines it. Python's json module also takes NaN, Infinity and lone surrogates ("\\ud800"),
    which then fail far from the request: a lone surrogate broke the tokenizer for a whole micro-batch."""

    async def json(self):
        try:
            return pydantic_core.from_json(await self.body(), allow_inf_nan=False)
        except ValueError as e:  # FastAPI answers a JSONDecodeError with 422 "JSON decode error" and this reason
            raise json.JSONDecodeError(f"{e} (the body must be UTF-8 JSON without NaN, Infinity or lone surrogates)",
                                       "", 0) from None


class _StrictJSONRoute(APIRoute):
    def get_route_handler(self):
        handler = super().get_route_handler()

        async def strict(request: Request):
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return strict


def model_name(predictor: Labeler) -> str:
    """A model's name in requests: its run or export folder's name."""
    source = predictor.describe().get("source")
    return Path(source).name if source else predictor.kind


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(DOCS_ASSETS)


def create_app(predictor: Labeler | dict[str, Labeler] | Generator, settings: ServeSettings | None = None) -> FastAPI:
    """The service of one model, or of several ({name: predictor}) that requests choose by name; a causal-lm run's
    Generator gets the chat API (ftune.chat_api) instead of /v1/predict."""
    settings = settings or ServeSettings()
    several = isinstance(predictor, dict)
    models = predictor if several else {model_name(predictor): predictor}
    if getattr(predictor, "writes_text", False):
        from ftune.chat_api import ChatService

        chat = ChatService(predictor, model_name(predictor), settings)
        batcher, description = chat.batcher, chat.description
    else:
        from ftune.predictors.many import answer_items  # loaded with the models by now

        chat = None
        batcher = MicroBatcher(answer_items(models, settings.mixed_adapters), settings.max_batch,
                               settings.max_wait_ms / 1000, settings.max_waiting, settings.batching)
        tasks = sorted({model.task.name for model in models.values()})
        description = f"Answers texts with {len(models)} fine-tuned model(s) (task: {', '.join(tasks)})."
    limits = asdict(settings) | {"api_key": settings.api_key is not None, "max_body_bytes": settings.body_limit(chat is not None)}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    # FastAPIOffline: /docs and /redoc load their scripts from this server, so they work on a machine with no internet
    app = FastAPIOffline(title="ftune", version="1", lifespan=lifespan, description=description,
                         static_url=DOCS_ASSETS.rstrip("/"))
    app.router.route_class = _StrictJSONRoute
    app.state.batcher = batcher
    app.add_middleware(_Guard, api_key=settings.api_key, body_limit=settings.body_limit(chat is not None),
                       read_timeout_s=settings.read_timeout_s)
    if settings.allowed_hosts is not None:  # added last, so it runs first: a Host check against DNS rebinding
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "waiting": batcher.waiting}

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # without the input FastAPI echoes: it can be megabytes, or a float JSON cannot carry (1e400 parses as inf)
        errors = [{key: value for key, value in e.items() if key != "input"} for e in jsonable_encoder(error.errors())]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)

    if chat is not None:
        chat.add_routes(app)
        return app

    @app.get("/v1/model", responses={400: {"description": "several models are served: GET /v1/models"},
                                     401: {"description": "API key missing or wrong"}})
    async def model_info() -> dict:
        if several:
            raise HTTPException(400, f"{len(models)} models are served ({', '.join(models)}); GET /v1/models "
                                     f"describes each")
        return predictor.describe() | {"limits": limits}

    @app.get("/v1/models", responses={401: {"description": "API key missing or wrong"}})
    async def models_info() -> dict:
        return {"models": [{"name": name} | model.describe() for name, model in models.items()], "limits": limits}

    # The answers have the shape of the served tasks' Prediction (a label, tags per word, a label set, a number).
    shapes = tuple(dict.fromkeys(model.task.Prediction for model in models.values()))
    response = create_model("PredictResponse", predictions=(list[Union[shapes]], ...), model=(str, ...))
    errors = {401: {"description": "API key missing or wrong"}, 408: {"description": "body sent too slowly"},
              413: {"description": "too many texts, a text too long, or a body too large"},
              503: {"description": "too many texts waiting; retry after the Retry-After seconds"},
              504: {"description": "not answered within the server's timeout"}}

    def chosen(asked: str | None) -> str:
        if asked is None and len(models) > 1:
            raise HTTPException(400, f"name the model: \"model\": one of {', '.join(models)} in the body, or POST "
                                     f"/v1/models/NAME/predict")
        if asked is not None and asked not in models:
            raise HTTPException(404, f"no model '{asked}' is served here; the served models: {', '.join(models)}")
        return asked if asked is not None else next(iter(models))

    @app.post("/v1/predict", response_model=response,
              responses=errors | {400: {"description": "several models are served and the body names none"},
                                  404: {"description": "the body names a model that is not served"}})
    async def predict(body: PredictRequest) -> dict:
        return await answer(chosen(body.model), body.texts)

    @app.post("/v1/models/{name}/predict", response_model=response,
              responses=errors | {400: {"description": "the body names another model than the path"},
                                  404: {"description": "no such model is served"}})
    async def predict_with(name: str, body: PredictRequest) -> dict:
        if body.model is not None and body.model != name:
            raise HTTPException(400, f"the path names model '{name}' and the body '{body.model}'; name one")
        return await answer(chosen(name), body.texts)

    async def answer(name: str, texts: list[str]) -> dict:
        if len(texts) > settings.max_texts:
            raise HTTPException(413, f"{len(texts)} texts in one request; the limit is {settings.max_texts}: "
                                     f"split them over several requests")
        for i, text in enumerate(texts):
            if len(text) > settings.max_chars:
                raise HTTPException(413, f"texts[{i}] has {len(text)} characters; the limit is {settings.max_chars}")
        try:
            results = await asyncio.wait_for(batcher.submit([(name, text) for text in texts]), settings.timeout_s)
        except Overloaded as e:
            raise HTTPException(503, f"busy: {e}", headers={"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise HTTPException(504, f"not answered within {settings.timeout_s:g} s; retry later") from None
        return {"predictions": results, "model": name if several else predictor.kind}

    return app


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class _H11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with two guards it lacks. Its limit_concurrency answers 503 but keeps every
    socket open, so idle connections used up the open-file limit (and asyncio then logged a traceback per accept
    attempt, thousands a second): here a connection over the limit is closed at once. It times out only idle
    keep-alive connections, so a client that never finished its request headers held its socket for ever: here
    the headers must be complete within `header_timeout_s`."""

    def __init__(self, *args, header_timeout_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limit_concurrency:
            self.logger.warning("refused a connection: %d are open, the limit (--max-connections)",
                                self.limit_concurrency)
            transport.close()
        else:
            self.await_headers()

    def on_response_complete(self) -> None:
        self.await_headers()  # the next request on this keep-alive connection
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
        super().connection_lost(exc)

    def await_headers(self) -> None:
        cycle = self.cycle  # uvicorn starts a new one when a request's headers are complete

        def expire() -> None:
            if self.cycle is cycle:
                self.transport.close()

        if self.header_timer is not None:
            self.header_timer.cancel()
        self.header_timer = self.loop.call_later(self.header_timeout_s, expire)


def _room_for_connections() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return (1 << 20 if soft == resource.RLIM_INFINITY else soft) - 128  # the model, its libraries and the log


def connection_limit(asked: int | None) -> int:
    # Every connection holds a file descriptor, and asyncio accepts a whole backlog of connections before any of
    # them can be refused: half the open-file limit for open connections, the other half for that backlog.
    room = _room_for_connections() // 2
    if asked is None:
        return max(1, min(512, room))
    if asked > room:
        raise ConfigError(f"--max-connections {asked}: the open-file limit (ulimit -n) leaves room for {room}; "
                          f"lower --max-connections or raise `ulimit -n`")
    return asked


def build_server(predictor: Labeler | dict[str, Labeler] | Generator, host: str = "127.0.0.1", port: int = 8000,
                 settings: ServeSettings | None = None, log_level: str = "info") -> uvicorn.Server:
    """The app under uvicorn with its connection limits, as `ftune serve` runs it."""
    settings = settings or ServeSettings()
    if settings.allowed_hosts is None and is_loopback(host):
        settings = replace(settings, allowed_hosts=LOOPBACK_HOSTS)
    # asyncio accepts up to `backlog` connections in one pass of its loop, and refusing them takes two more passes:
    # three backlogs must fit in what the open connections leave of the open-file limit
    backlog = max(1, min(2048, (_room_for_connections() - settings.max_connections) // 3))
    config = uvicorn.Config(create_app(predictor, settings), host=host, port=port, log_level=log_level,
                            limit_concurrency=settings.max_connections, backlog=backlog,
                            http=functools.partial(_H11Protocol, header_timeout_s=settings.read_timeout_s))
    return uvicorn.Server(config)


def serve(predictor: Labeler | dict[str, Labeler] | Generator, host: str = "127.0.0.1", port: int = 8000,
          settings: ServeSettings | None = None, log_level: str = "info") -> None:
    build_server(predictor, host, port, settings, log_level).run()
