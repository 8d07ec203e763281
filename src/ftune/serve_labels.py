"""The labeling API of one run or export, or of several runs side by side (ftune.serve puts it behind the guards):

POST /v1/predict {"texts": [...]} -> label, score and all class scores per text (token classification: a tag per word)
POST /v1/models/NAME/predict, GET /v1/model (one model), GET /v1/models

Several runs (`ftune serve RUN_A RUN_B`, ftune.predictors.many) share one queue and one model thread: a request
names its model, {"model": "RUN_B", "texts": [...]} or POST /v1/models/RUN_B/predict. A micro-batch may hold texts
for several models: each model answers its own in one forward pass (with mixed_adapters, LoRA runs of one base
model share passes, each text through its own adapter). The answer's "model" is the model's name then (one model:
its kind, pytorch or onnx, as before).
"""

from __future__ import annotations

import asyncio
from typing import Union

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, create_model

from ftune.batching_queue import MicroBatcher, Overloaded
from ftune.predictors import Labeler
from ftune.predictors.many import answer_items
from ftune.serve_settings import ServeSettings


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    texts: list[str] = Field(min_length=1, description="the texts to label")
    model: str | None = Field(None, description="the served model to ask (GET /v1/models); needed when several are")


class LabelService:
    """The labeling routes of {name: labeler} and the micro-batching queue in front of them (ftune.serve starts
    and stops `batcher` with the app). `several`: requests name their model (else the one model answers as its
    kind, and GET /v1/model describes it)."""

    def __init__(self, models: dict[str, Labeler], several: bool, settings: ServeSettings):
        self.models, self.several, self.settings = models, several, settings
        self.batcher = MicroBatcher(answer_items(models, settings.mixed_adapters), settings.max_batch,
                                    settings.max_wait_ms / 1000, settings.max_waiting, settings.batching)
        self.body_limit = settings.body_limit()
        tasks = sorted({model.task.name for model in models.values()})
        self.description = f"Answers texts with {len(models)} fine-tuned model(s) (task: {', '.join(tasks)})."

    def add_routes(self, app: FastAPI) -> None:
        models, several, settings = self.models, self.several, self.settings
        limits = settings.model_dump() | {"api_key": settings.api_key is not None, "max_body_bytes": self.body_limit}

        @app.get("/v1/model", responses={400: {"description": "several models are served: GET /v1/models"},
                                         401: {"description": "API key missing or wrong"}})
        async def model_info() -> dict:
            if several:
                raise HTTPException(400, f"{len(models)} models are served ({', '.join(models)}); GET /v1/models "
                                         f"describes each")
            return next(iter(models.values())).describe() | {"limits": limits}

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

        @app.post("/v1/predict", response_model=response,
                  responses=errors | {400: {"description": "several models are served and the body names none"},
                                      404: {"description": "the body names a model that is not served"}})
        async def predict(body: PredictRequest) -> dict:
            return await self.answer(self.chosen(body.model), body.texts)

        @app.post("/v1/models/{name}/predict", response_model=response,
                  responses=errors | {400: {"description": "the body names another model than the path"},
                                      404: {"description": "no such model is served"}})
        async def predict_with(name: str, body: PredictRequest) -> dict:
            if body.model is not None and body.model != name:
                raise HTTPException(400, f"the path names model '{name}' and the body '{body.model}'; name one")
            return await self.answer(self.chosen(name), body.texts)

    def chosen(self, asked: str | None) -> str:
        """The served model a request names (or the one model), else the HTTP error saying what to send."""
        if asked is None and len(self.models) > 1:
            raise HTTPException(400, f"name the model: \"model\": one of {', '.join(self.models)} in the body, or "
                                     f"POST /v1/models/NAME/predict")
        if asked is not None and asked not in self.models:
            raise HTTPException(404, f"no model '{asked}' is served here; the served models: {', '.join(self.models)}")
        return asked if asked is not None else next(iter(self.models))

    async def answer(self, name: str, texts: list[str]) -> dict:
        """Model `name`'s answers to `texts` through the queue, within the limits: {predictions, model}."""
        settings = self.settings
        if len(texts) > settings.max_texts:
            raise HTTPException(413, f"{len(texts)} texts in one request; the limit is {settings.max_texts}: "
                                     f"split them over several requests")
        for i, text in enumerate(texts):
            if len(text) > settings.max_chars:
                raise HTTPException(413, f"texts[{i}] has {len(text)} characters; the limit is {settings.max_chars}")
        try:
            results = await asyncio.wait_for(self.batcher.submit([(name, text) for text in texts]), settings.timeout_s)
        except Overloaded as e:
            raise HTTPException(503, f"busy: {e}", headers={"Retry-After": "1"}) from None
        except TimeoutError:  # asyncio.wait_for's, since Python 3.11
            raise HTTPException(504, f"not answered within {settings.timeout_s:g} s; retry later") from None
        return {"predictions": results, "model": name if self.several else self.models[name].kind}
