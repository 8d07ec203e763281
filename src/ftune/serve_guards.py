"""What keeps a hostile or broken client cheap, whatever is served (ftune.serve puts these around every app):

- the Host header (against DNS rebinding) and the API key are checked from the headers before any body is read;
- the body is read under a size limit and a deadline, and must be standard JSON;
- an invalid request is answered without echoing its input, an internal error without its details;
- open connections are capped below the open-file limit, and one that never finishes its headers is closed.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import time

import pydantic_core
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from ftune.serve_settings import ServeSettings

LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "[::1]"]  # the Host names a server bound to loopback accepts by default
PUBLIC_PATHS = {"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}  # no key needed
DOCS_ASSETS = "/static-offline-docs/"  # Swagger UI's and ReDoc's scripts, served from the package (no CDN): public too


def guard(app: FastAPI, settings: ServeSettings, body_limit: int, public: set[str] = frozenset()) -> None:
    """Put the guards around `app`: strict JSON on its routes (add them after this), the key and body guard, the
    Host check, and answers to bad requests and errors that give nothing away. `public`: more paths that need no
    key (a platform's health route)."""
    app.router.route_class = StrictJSONRoute
    app.add_middleware(Guard, api_key=settings.api_key, body_limit=body_limit, read_timeout_s=settings.read_timeout_s,
                       public=PUBLIC_PATHS | public)
    if settings.allowed_hosts is not None:  # added last, so it runs first: a Host check against DNS rebinding
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # without the input FastAPI echoes: it can be megabytes, or a float JSON cannot carry (1e400 parses as inf)
        errors = [{key: value for key, value in e.items() if key != "input"} for e in jsonable_encoder(error.errors())]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)


class Guard:
    """Refuses what the headers give away (a missing or wrong key, a declared body over the limit) before any of
    the body is read, then reads the body under the size limit and a deadline and hands it on. Left to Starlette,
    an unauthenticated client could make the server hold a body of any size, and a slow one for ever."""

    def __init__(self, app: ASGIApp, api_key: str | None, body_limit: int, read_timeout_s: float,
                 public: set[str] = PUBLIC_PATHS):
        self.app, self.body_limit, self.read_timeout_s, self.public = app, body_limit, read_timeout_s, public
        self.key = api_key.encode() if api_key is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def refuse(status: int, detail: str, headers: dict | None = None) -> None:
            await JSONResponse({"detail": detail}, status, headers)(scope, receive, send)

        headers = Headers(scope=scope)
        if self.key is not None and not self.is_public(scope["path"]) and not self.authorized(headers):
            return await refuse(401, "missing or wrong API key: send it as 'Authorization: Bearer KEY'",
                                {"WWW-Authenticate": "Bearer"})
        too_large = f"request body over {self.body_limit} bytes: split the texts over several requests"
        if int(headers.get("content-length") or 0) > self.body_limit:  # h11 has checked that it is a number
            return await refuse(413, too_large)
        chunks, size, more, deadline = [], 0, True, time.monotonic() + self.read_timeout_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:  # asyncio.wait_for's, since Python 3.11
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

    def is_public(self, path: str) -> bool:
        return path in self.public or path.startswith(DOCS_ASSETS)

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


class StrictJSONRoute(APIRoute):
    def get_route_handler(self):
        handler = super().get_route_handler()

        async def strict(request: Request):
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return strict


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class GuardedH11Protocol(H11Protocol):
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
