"""`ftune serve`: a run or an ONNX export behind FastAPI on uvicorn, with micro-batching.

POST /v1/predict {"texts": [...]} -> label, score and all class scores per text (token classification: a tag per word)
GET  /health, GET /v1/model, and the OpenAPI spec at /openapi.json (docs at /docs)
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ftune.batching_queue import MicroBatcher, Overloaded
from ftune.predict import Labeler


@dataclass
class ServeSettings:
    max_texts: int = 64  # per request (413 above)
    max_chars: int = 10_000  # per text (413 above)
    max_batch: int = 64  # texts per forward pass
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_waiting: int = 1024  # texts queued before new requests get 503
    batching: bool = True
    api_key: str | None = None
    timeout_s: float = 30.0  # a request not answered by then gets 504 (its texts are dropped if not yet started)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(min_length=1, description="the texts to label")


class Prediction(BaseModel):
    label: str
    score: float
    scores: dict[str, float]


class TaggedWord(BaseModel):
    word: str
    tag: str | None = Field(description="null for a word beyond the model's window")
    score: float | None


class TaggedText(BaseModel):
    """A token-classification model's answer: the text's words (split at whitespace), each with its tag."""
    tokens: list[TaggedWord]
    tagged: str = Field(description="word/TAG pairs joined by spaces")


class PredictResponse(BaseModel):
    predictions: list[Prediction | TaggedText]
    model: str


def create_app(predictor: Labeler, settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    batcher = MicroBatcher(predictor.predict, settings.max_batch, settings.max_wait_ms / 1000,
                           settings.max_waiting, settings.batching)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="ftune", version="1", lifespan=lifespan,
                  description="Labels texts with a fine-tuned classifier.")
    app.state.batcher = batcher

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), settings.api_key.encode()):  # constant time
            raise HTTPException(401, "missing or wrong API key: send it as 'Authorization: Bearer KEY' or 'X-API-Key'",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "waiting": batcher.waiting}

    @app.get("/v1/model", dependencies=[Depends(check_key)])
    async def model_info() -> dict:
        return predictor.describe() | {"limits": asdict(settings) | {"api_key": settings.api_key is not None}}

    @app.post("/v1/predict", response_model=PredictResponse, dependencies=[Depends(check_key)],
              responses={401: {"description": "API key missing or wrong"}, 413: {"description": "too many texts, or a text too long"},
                         503: {"description": "too many texts waiting; retry after the Retry-After seconds"},
                         504: {"description": "not answered within the server's timeout"}})
    async def predict(body: PredictRequest) -> dict:
        if len(body.texts) > settings.max_texts:
            raise HTTPException(413, f"{len(body.texts)} texts in one request; the limit is {settings.max_texts}: "
                                     f"split them over several requests")
        for i, text in enumerate(body.texts):
            if len(text) > settings.max_chars:
                raise HTTPException(413, f"texts[{i}] has {len(text)} characters; the limit is {settings.max_chars}")
        try:
            results = await asyncio.wait_for(batcher.submit(body.texts), settings.timeout_s)
        except Overloaded as e:
            raise HTTPException(503, f"busy: {e}", headers={"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise HTTPException(504, f"not answered within {settings.timeout_s:g} s; retry later") from None
        return {"predictions": results, "model": predictor.kind}

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)

    return app


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(predictor: Labeler, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None,
          log_level: str = "info") -> None:
    import uvicorn

    uvicorn.run(create_app(predictor, settings), host=host, port=port, log_level=log_level)
