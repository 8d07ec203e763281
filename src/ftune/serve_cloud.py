"""SageMaker's and Vertex AI's prediction routes on a served model (ftune.serve adds them for `--platform`, behind
the same guards, limits and queue as the other routes; ftune.cloud.Serving says where):

SageMaker   GET /ping, POST /invocations (port 8080)
Vertex AI   GET $AIP_HEALTH_ROUTE, POST $AIP_PREDICT_ROUTE (port $AIP_HTTP_PORT)

The health route answers 200 once the model is loaded (the server listens only then) and needs no key, as GET
/health. A label run's predict route takes what POST /v1/predict takes ({"texts": [...]}, answered the same), the
platforms' {"instances": [...]} (each a text or {"text": ...}; answered {"predictions": [...]}), or a text/csv or
text/plain body (a text per row or line, answered as /v1/predict). A causal-lm run's takes OpenAI's chat completion
request, as POST /v1/chat/completions does (on Vertex AI through rawPredict, which passes any JSON).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Union

import pydantic
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from ftune.cloud import Serving
from ftune.serve_labels import LabelService, PredictRequest

TEXT_TYPES = ("text/csv", "text/plain")


class TextInstance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


class InstancesRequest(BaseModel):
    """The platforms' prediction request: instances, and parameters this server has none of."""

    model_config = ConfigDict(extra="forbid")
    instances: list[Union[str, TextInstance]] = Field(min_length=1, description="texts, or {\"text\": ...} objects")
    parameters: dict | None = Field(None, description="none are taken: leave it out or empty")


def add_routes(app: FastAPI, service, cloud: Serving) -> None:
    """The platform's health and predict routes on `app`, answered by `service` (serve_labels' or chat_api's)."""
    if cloud.health_route != "/health":  # Vertex AI's default is the app's own GET /health
        @app.get(cloud.health_route)
        async def ready() -> dict:
            return {"status": "ok"}

    # a chat service (it has `respond`) answers OpenAI's requests here too; labels take texts in several forms
    respond = _chat(service) if hasattr(service, "respond") else _labels(service)
    app.post(cloud.predict_route, responses={400: {"description": "a body this route cannot read"},
                                             401: {"description": "API key missing or wrong"}})(respond)


def _chat(service):
    async def invocations(request: Request):
        """OpenAI's chat completion request, as POST /v1/chat/completions takes it."""
        try:
            data = await request.json()
        except json.JSONDecodeError:
            data = None  # respond says so, in OpenAI's error form
        if isinstance(data, dict) and "instances" in data:
            raise HTTPException(400, f"a causal-lm run takes OpenAI's chat completion request here ({{\"model\": "
                                     f"\"{service.name}\", \"messages\": [...]}}; on Vertex AI through rawPredict), "
                                     f"not instances")
        return await service.respond(request)

    return invocations


def _labels(service: LabelService):
    async def invocations(request: Request) -> dict:
        """Texts in the body (JSON {"texts": [...]} or {"instances": [...]}, or text/csv, text/plain): their answers."""
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if kind in TEXT_TYPES:
            return await service.answer(service.chosen(None), _body_texts(await request.body(), kind))
        try:
            data = await request.json()
        except json.JSONDecodeError as e:  # the strict parser's reason (ftune.serve_guards), as FastAPI gives it
            raise RequestValidationError([{"type": "json_invalid", "loc": ("body", e.pos), "msg": "JSON decode error",
                                           "ctx": {"error": e.msg}}]) from None
        try:
            if isinstance(data, dict) and "instances" in data:
                body = InstancesRequest.model_validate(data)
                if body.parameters:
                    raise HTTPException(400, "parameters: this model takes none; send the instances alone")
                texts = [i if isinstance(i, str) else i.text for i in body.instances]
                return {"predictions": (await service.answer(service.chosen(None), texts))["predictions"]}
            body = PredictRequest.model_validate(data)
        except pydantic.ValidationError as e:
            raise RequestValidationError(e.errors(include_input=False)) from None
        return await service.answer(service.chosen(body.model), body.texts)

    return invocations


def _body_texts(body: bytes, kind: str) -> list[str]:
    """The texts of a text/plain body (a line each) or a text/csv one (a row each, one column: no header)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, f"the {kind} body is not UTF-8; send UTF-8 text") from None
    if kind == "text/plain":
        texts = [line for line in text.splitlines() if line.strip()]
    else:
        rows = [row for row in csv.reader(io.StringIO(text)) if row]
        wide = next((i for i, row in enumerate(rows) if len(row) != 1), None)
        if wide is not None:
            raise HTTPException(400, f"text/csv row {wide + 1} has {len(rows[wide])} fields; send one column, the "
                                     f"text (quote texts that hold commas)")
        texts = [row[0] for row in rows]
    if not texts:
        raise HTTPException(400, f"the {kind} body holds no text; send a text per line")
    return texts

