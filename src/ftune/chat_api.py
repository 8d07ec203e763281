"""OpenAI's chat completions API for a causal-lm run, as `ftune serve RUN` serves it. ftune.serve builds the app
(with ftune.serve_guards: the API key, Host, body-size and deadline guards, strict JSON; GET /health); this module
adds:

POST /v1/chat/completions   OpenAI's request and answer; with "stream": true, server-sent events as tokens come
GET  /v1/models             the served model in OpenAI's list form (GET /v1/models/NAME: the one)

Any OpenAI client works with base_url http://HOST:PORT/v1 and the --api-key as its key. Answers are written one at
a time in the model thread: a MicroBatcher with batching off, whose waiting requests are the bounded queue (503
beyond --max-waiting). A stopping criterion sees every new token, before generation decides whether to go on: it
decodes the answer so far and sends on the part more tokens can no longer change, holding back a tail that could be
the start of a stop string (and trailing space), so a streamed answer is cut where the whole answer is. It also
ends the generation at a stop string, when a streaming client has gone, when a request has timed out, and once a
generation has run for the server's timeout (a stream is cut there: finish_reason "length").

What one request may cost is bounded beyond the body limit: at most MAX_STOPS stop strings of MAX_STOP_CHARS
characters (the stop check on every token looks only at the text's tail), a prompt of at most --max-prompt-chars
tokens (as well as characters) that fits the model, and the server's timeout of generation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import pydantic
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from jinja2.exceptions import TemplateError
from pydantic import BaseModel, ConfigDict, Field
from transformers import StoppingCriteria

from ftune.batching_queue import MicroBatcher, Overloaded
from ftune.errors import FtuneError
from ftune.run import RUN_FILE
from ftune.tasks.causal_lm import ROLES

if TYPE_CHECKING:
    from ftune.generate import Generator
    from ftune.serve_settings import ServeSettings

MAX_STOPS = 4  # stop strings per request, as OpenAI allows
# Characters per stop string. OpenAI sets no limit, but the stop check on every token costs up to a stop string's
# length squared (which of its beginnings the answer ends with): 350,000 characters took 44 s for 10 tokens.
MAX_STOP_CHARS = 256
log = logging.getLogger("uvicorn.error")  # where the server's other errors go


class ChatRequest(BaseModel):
    """OpenAI's chat completion request: the fields read here. Other fields OpenAI defines (user, metadata,
    presence_penalty...) are accepted and ignored, as clients send them unasked; those asking for what this server
    cannot give (tools, logprobs, a JSON response format, several answers) are refused."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())
    model: str = Field(description="the served model's name (GET /v1/models)")
    messages: list[Any] = Field(min_length=1, description="{role: system|user|assistant, content} objects; content "
                                                          "a string or a list of text parts")
    max_tokens: int | None = Field(None, ge=1, description="tokens to write at most (default: the server's limit)")
    max_completion_tokens: int | None = Field(None, ge=1, description="the same as max_tokens (OpenAI's newer name)")
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False,
                                      description="0 (or below 1e-5): greedy; default 1, as OpenAI's")
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False,
                                description="nucleus sampling (with temperature > 0)")
    stop: Any = Field(None, description=f"a string or up to {MAX_STOPS}, each of up to {MAX_STOP_CHARS} characters: "
                                        f"the answer ends before the first one")
    seed: int | None = Field(None, ge=-2 ** 63, le=2 ** 64 - 1,
                             description="sampling seed (default: a fresh random one per request)")
    n: int | None = Field(None, description="answers per request: only 1")
    stream: bool | None = Field(False, description="server-sent events as the answer is written")
    stream_options: dict | None = Field(None, description='{"include_usage": true}: a last event with the usage')
    tools: list | None = None
    functions: list | None = None
    logprobs: bool | None = None
    response_format: dict | None = None


class _Refused(Exception):
    """A request this server will not answer, as OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.param, self.code, self.headers = status, param, code, headers

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return JSONResponse({"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}},
                            self.status, self.headers)


def chat_messages(raw: list) -> list[dict]:
    """OpenAI's messages as the chat template reads them ({role, content: str}); a list of text parts is joined
    with newlines. "developer" is OpenAI's newer name for a system message."""
    messages = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _Refused(400, f"{where} must be an object with a role and a content", where)
        role = "system" if message.get("role") == "developer" else message.get("role")
        if role not in ROLES:
            raise _Refused(400, f"{where}.role is {json.dumps(role)}; this server takes system, user and assistant "
                                f"messages (no tool messages)", f"{where}.role")
        content = message.get("content")
        if isinstance(content, list) and all(isinstance(part, dict) and part.get("type") == "text"
                                             and isinstance(part.get("text"), str) for part in content):
            content = "\n".join(part["text"] for part in content)
        if not isinstance(content, str):
            raise _Refused(400, f"{where}.content must be a string or a list of text parts "
                                f'({{"type": "text", "text": "..."}}); this model reads text only', f"{where}.content")
        messages.append({"role": role, "content": content})
    return messages


def stop_strings(stop: Any) -> list[str]:
    stops = [stop] if isinstance(stop, str) else [] if stop is None else stop
    if not (isinstance(stops, list) and len(stops) <= MAX_STOPS and all(isinstance(s, str) and s for s in stops)):
        raise _Refused(400, f"stop must be a non-empty string or a list of up to {MAX_STOPS} of them", "stop")
    if (longest := max(map(len, stops), default=0)) > MAX_STOP_CHARS:
        raise _Refused(400, f"stop: a stop string of {longest} characters is over this server's limit of "
                            f"{MAX_STOP_CHARS}; send shorter ones", "stop")
    return stops


class _Answer(StoppingCriteria):
    """Called by generate after every new token, in the model thread: decodes the answer so far (stripped, as
    `ftune generate` strips it), cuts it before the first stop string, and sends on (`emit`) what more tokens can no
    longer change. Ends the generation at a stop string, once `cancel` is set, or at `deadline` (time.monotonic();
    then `out_of_time`). `content`: all that was sent."""

    def __init__(self, tokenizer, lock: threading.Lock, prompt_length: int, stops: list[str], cancel: threading.Event,
                 deadline: float, emit: Callable[[str], None] | None = None):
        self.tokenizer, self.lock, self.prompt_length, self.stops = tokenizer, lock, prompt_length, stops
        self.cancel, self.deadline, self.emit = cancel, deadline, emit
        self.text, self.content, self.stopped, self.out_of_time = "", "", False, False
        self.longest = max(map(len, stops), default=0)
        self.searched = 0  # characters of the answer already searched for stop strings

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        with self.lock:  # the event loop tokenizes prompts meanwhile: a Rust tokenizer is not to be shared unguarded
            text = self.tokenizer.decode(input_ids[0, self.prompt_length:].tolist(), skip_special_tokens=True)
        text = text.lstrip()
        # A stop string new to this token ends in its text: search from a stop string's length before that (and a
        # few characters more: a multi-byte character's U+FFFD becomes the character once its last byte comes).
        # Searching the whole answer on every token would cost its length squared.
        start, self.searched = max(0, self.searched - self.longest - 4), len(text)
        found = [at for stop in self.stops if (at := text.find(stop, start)) >= 0]
        if found:
            text, self.stopped = text[:min(found)], True
        self.text = text
        if not self.stopped:
            self._send(self._settled(text))
        self.out_of_time = time.monotonic() > self.deadline
        done = self.stopped or self.cancel.is_set() or self.out_of_time
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    def finish(self) -> None:
        self._send(self.text.rstrip())

    def _settled(self, text: str) -> str:
        """The text without what the next tokens may still change: a tail that begins a stop string, trailing space
        (the whole answer is stripped) and a character whose bytes are not all written yet (U+FFFD). (Up to
        MAX_STOPS * MAX_STOP_CHARS comparisons of at most MAX_STOP_CHARS characters a token.)"""
        held = max((k for stop in self.stops for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0)
        text = text[:len(text) - held]
        while text != (shorter := text.rstrip().rstrip("\ufffd")):
            text = shorter
        return text

    def _send(self, text: str) -> None:
        # Decoding more tokens extends the text decoded before; what was sent is never taken back.
        if len(text) > len(self.content):
            piece = text[len(self.content):]
            self.content += piece
            if self.emit is not None:
                self.emit(piece)


@dataclass
class _Job:
    """One request's generation, handed to the model thread."""

    ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float | None
    seed: int | None
    stops: list[str]
    loop: asyncio.AbstractEventLoop
    started: asyncio.Future  # set when the model thread takes it up
    pieces: asyncio.Queue  # the answer's text as it settles, then None
    cancel: threading.Event  # set: stop generating (the client left, or the request timed out)
    deadline: float  # loop time by which the answer (streaming: its start) is due


@dataclass
class _Written:
    content: str
    prompt_tokens: int
    completion_tokens: int  # generated, the end-of-turn token included (it was computed)
    finish_reason: str  # stop: the model ended its answer or wrote a stop string; length: max_tokens reached

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


def _set(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class ChatService:
    """The chat routes of one causal-lm run and the queue in front of its model (ftune.serve.create_app starts and
    stops `batcher` with the app)."""

    def __init__(self, generator: Generator, name: str, settings: ServeSettings):
        self.generator, self.name, self.settings = generator, name, settings
        self.body_limit = settings.body_limit(chat=True)  # room for max_prompt_chars of messages, not for texts
        self.created = int((generator.path / RUN_FILE).stat().st_mtime)  # when the run finished
        self.lock = threading.Lock()
        self.batcher = MicroBatcher(lambda jobs: [self._write(job) for job in jobs], max_batch=1, max_wait_s=0,
                                    max_waiting=settings.max_waiting, enabled=False)
        self.description = (f"Answers OpenAI-style chat completion requests with the causal-lm run {name} "
                            f"(base model {generator.base_model}), one generation at a time.")

    def _write(self, job: _Job) -> _Written:
        """In the model thread: one answer, its text put on job.pieces as it settles."""
        job.loop.call_soon_threadsafe(_set, job.started)
        # No generation holds the model thread past the timeout: a stream has no other deadline once it started
        deadline = time.monotonic() + self.settings.timeout_s
        answer = _Answer(self.generator.tokenizer, self.lock, len(job.ids), job.stops, job.cancel, deadline,
                         lambda piece: job.loop.call_soon_threadsafe(job.pieces.put_nowait, piece))
        try:
            written = self.generator.complete(job.ids, job.max_tokens, job.temperature, job.top_p, job.seed, [answer])
            answer.finish()
        finally:
            job.loop.call_soon_threadsafe(job.pieces.put_nowait, None)
        if answer.out_of_time:
            log.warning("an answer was cut after %d tokens at the %g s timeout", len(written), self.settings.timeout_s)
        ended = answer.stopped or (written and written[-1] in self.generator.stop_ids)
        return _Written(answer.content, len(job.ids), len(written), "stop" if ended else "length")

    def job(self, body: ChatRequest) -> _Job:
        """The request checked and its prompt tokenized, or a _Refused saying what to change."""
        settings, positions = self.settings, self.generator.max_positions
        if body.model != self.name:
            raise _Refused(404, f"no model '{body.model}' is served here; the served model: {self.name}", "model",
                           "model_not_found")
        if body.n not in (None, 1):
            raise _Refused(400, f"n={body.n}: this server writes one answer per request; send n=1", "n")
        for field in ("tools", "functions"):
            if getattr(body, field):
                raise _Refused(400, f"{field}: this server's model cannot call tools; send the request without them",
                               field)
        if body.logprobs:
            raise _Refused(400, "logprobs: this server does not return log probabilities", "logprobs")
        if body.response_format and body.response_format.get("type", "text") != "text":
            raise _Refused(400, "response_format: this server writes plain text only", "response_format")
        asked = body.max_completion_tokens or body.max_tokens
        if asked is not None and asked > settings.max_new_tokens:
            raise _Refused(400, f"max_tokens={asked} is over this server's limit of {settings.max_new_tokens} "
                                f"(ftune serve --max-new-tokens)", "max_tokens")
        stops = stop_strings(body.stop)
        messages = chat_messages(body.messages)
        chars = sum(len(message["content"]) for message in messages)
        if chars > settings.max_prompt_chars:
            raise _Refused(400, f"the messages hold {chars} characters; this server's limit is "
                                f"{settings.max_prompt_chars} (ftune serve --max-prompt-chars)", "messages")
        try:
            with self.lock:
                ids = self.generator.prompt(messages)
        except (FtuneError, TemplateError) as e:  # e.g. several turns for a model without a chat template
            raise _Refused(400, f"the model's prompt layout refused these messages: {e}", "messages") from None
        # A token per character: a prompt's tokens bound its first forward pass, which no deadline can interrupt
        if len(ids) > settings.max_prompt_chars:
            raise _Refused(400, f"the prompt is {len(ids)} tokens; this server's limit is {settings.max_prompt_chars} "
                                f"(ftune serve --max-prompt-chars limits tokens as well as characters)", "messages")
        room = positions - len(ids) if positions else settings.max_new_tokens  # positions left for the answer
        max_tokens = asked or min(settings.max_new_tokens, room)  # unasked: as many as fit, as OpenAI does
        if room < 1:
            raise _Refused(400, f"the prompt is {len(ids)} tokens, and the model reads {positions}: no room is left "
                                f"for an answer; shorten the messages", "messages", "context_length_exceeded")
        if max_tokens > room:
            raise _Refused(400, f"the prompt is {len(ids)} tokens and max_tokens {max_tokens}: {len(ids) + max_tokens} "
                                f"is over the model's {positions} positions; shorten the messages or lower max_tokens",
                           "messages", "context_length_exceeded")
        temperature = 1.0 if body.temperature is None else body.temperature  # OpenAI's default
        loop = asyncio.get_running_loop()
        return _Job(ids, max_tokens, temperature, body.top_p, body.seed, stops, loop, loop.create_future(),
                    asyncio.Queue(), threading.Event(), loop.time() + settings.timeout_s)

    def add_routes(self, app: FastAPI) -> None:
        card = {"id": self.name, "object": "model", "created": self.created, "owned_by": "ftune"}
        errors = {400: {"description": "a request this server cannot answer (OpenAI's error object says why)"},
                  401: {"description": "API key missing or wrong"}, 404: {"description": "no such model is served"},
                  408: {"description": "body sent too slowly"}, 413: {"description": "body too large"},
                  503: {"description": "too many requests waiting; retry after the Retry-After seconds"},
                  504: {"description": "not answered (streaming: not started) within the server's timeout"}}

        @app.get("/v1/models", responses={401: errors[401]})
        async def models() -> dict:
            return {"object": "list", "data": [card]}

        @app.get("/v1/models/{model}", responses={401: errors[401], 404: errors[404]})
        async def model_card(model: str):
            if model != self.name:
                return _Refused(404, f"no model '{model}' is served here; the served model: {self.name}", "model",
                                "model_not_found").response()
            return card

        # the platforms' predict route (ftune.serve_cloud) takes the same requests: self.respond
        app.post("/v1/chat/completions", responses=errors, openapi_extra={"requestBody": {
            "required": True, "content": {"application/json": {"schema": ChatRequest.model_json_schema()}}}})(
            self.respond)

    async def respond(self, request: Request):
        """OpenAI's chat completion: the answer, or server-sent events of chat.completion.chunk objects."""
        try:
            try:
                body = ChatRequest.model_validate(await request.json())
            except json.JSONDecodeError as e:
                raise _Refused(400, f"the body is not JSON: {e.msg}") from None
            except pydantic.ValidationError as e:
                first = e.errors(include_input=False)[0]
                where = ".".join(map(str, first["loc"]))
                raise _Refused(400, f"{where}: {first['msg']}" if where else first["msg"], where or None) from None
            job = self.job(body)
            done = await self._started(job)
        except _Refused as refused:
            return refused.response()
        answer_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            head = {"id": answer_id, "object": "chat.completion.chunk", "created": created, "model": self.name}
            usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(self._events(job, done, head, usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            [written] = await asyncio.wait_for(done, max(0.0, job.deadline - job.loop.time()))
        except asyncio.TimeoutError:
            job.cancel.set()  # it may be generating already: free the model thread
            return _timed_out(self.settings.timeout_s).response()
        return {"id": answer_id, "object": "chat.completion", "created": created, "model": self.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": written.content},
                             "finish_reason": written.finish_reason}], "usage": written.usage()}

    async def _started(self, job: _Job) -> asyncio.Task:
        """Queues the job and waits for the model thread to take it up: a full queue is a 503, no start within
        the timeout a 504. The task it returns gives the _Written once the generation is over."""
        done = asyncio.ensure_future(self.batcher.submit([job]))
        done.add_done_callback(lambda task: task.cancelled() or task.exception())  # a stream left early never reads it
        await asyncio.wait([done, job.started], timeout=job.deadline - job.loop.time(),
                           return_when=asyncio.FIRST_COMPLETED)
        if done.done() and isinstance(done.exception(), Overloaded):
            raise _Refused(503, f"busy: {done.exception()}", headers={"Retry-After": "1"})
        if not done.done() and not job.started.done():
            done.cancel()  # the batcher skips a job whose caller has gone
            job.cancel.set()
            raise _timed_out(self.settings.timeout_s)
        return done

    async def _events(self, job: _Job, done: asyncio.Task, head: dict, usage: bool):
        """Server-sent events: a chunk with the role, one per settled piece of text, one with the finish reason,
        the usage when asked for, then [DONE]. Closed early (the client left), the generation is stopped."""

        def event(payload: dict) -> str:
            return f"data: {json.dumps(payload)}\n\n"

        def chunk(delta: dict, finish_reason: str | None = None) -> str:
            return event(head | {"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})

        try:
            yield chunk({"role": "assistant", "content": ""})
            while (piece := await job.pieces.get()) is not None:
                yield chunk({"content": piece})
            try:
                [written] = await done
            except Exception:
                log.exception("generation failed mid-stream")
                yield event({"error": {"message": "internal error; the server log has the details",
                                       "type": "server_error", "param": None, "code": None}})
                return
            yield chunk({}, written.finish_reason)
            if usage:
                yield event(head | {"choices": [], "usage": written.usage()})
            yield "data: [DONE]\n\n"
        finally:
            job.cancel.set()


def _timed_out(timeout_s: float) -> _Refused:
    return _Refused(504, f"not answered within {timeout_s:g} s; retry later, or ask for fewer tokens")
