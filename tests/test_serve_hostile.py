"""Hostile and broken clients against the service, started for real on a loopback port: empty keys, bodies that are
not standard JSON, a request that breaks the model, huge, slow and unfinished requests, idle connections, foreign
Host headers. Each is refused cheaply, and a normal client is served afterwards. Traffic goes to 127.0.0.1 only."""

import asyncio
import logging
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
import pytest

from ftune.errors import ConfigError
from ftune.serve import LOOPBACK_HOSTS, ServeSettings, build_server, connection_limit
from helpers import (KEY, MarkerLabeler, exchange, ftune_cli, normal_request_works, port_of, post_head, read_response,
                     rss_mb, running, status_of)


@contextmanager
def hostile_server(labeler=None, **settings):
    defaults = dict(max_texts=4, max_chars=200, api_key=KEY, read_timeout_s=1.0, max_wait_ms=1)
    with running(labeler or MarkerLabeler(), ServeSettings(**defaults | settings)) as (url, app):
        yield url, app


@pytest.fixture(scope="module")
def server():
    with hostile_server() as started:
        yield started


# --- 9: the API key ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["", "   ", "two words", "naïve"])
def test_an_empty_or_unsendable_api_key_is_a_user_error(key):
    with pytest.raises(ConfigError, match=r"^--api-key / FTUNE_API_KEY (is empty|contains spaces)"):
        ServeSettings(api_key=key)


def test_the_cli_refuses_an_empty_api_key_from_the_option_or_the_environment(monkeypatch, capsys, tmp_path):
    code, _, err = ftune_cli(monkeypatch, capsys, "serve", str(tmp_path / "no-run"), "--api-key", "")
    assert code == 2 and "error: --api-key / FTUNE_API_KEY is empty; pass a key" in err and "Traceback" not in err
    monkeypatch.setenv("FTUNE_API_KEY", "")  # `export FTUNE_API_KEY="$KEY"` with KEY unset
    code, _, err = ftune_cli(monkeypatch, capsys, "serve", str(tmp_path / "no-run"), "--host", "0.0.0.0")
    assert code == 2 and "FTUNE_API_KEY is empty" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("headers, status", [
    ({"Authorization": f"Bearer {KEY}"}, 200),
    ({"Authorization": f"bearer {KEY}"}, 200),  # the scheme is case-insensitive (RFC 9110)
    ({"X-API-Key": KEY}, 401),
    ({"Authorization": KEY}, 401),
    ({"Authorization": f"Basic {KEY}"}, 401),
    ({"Authorization": f"Bearer {KEY}x"}, 401),
    ({}, 401),
])
def test_the_key_is_taken_only_as_a_bearer_token(server, headers, status):
    url, _ = server
    for response in (httpx.post(f"{url}/v1/predict", json={"texts": ["x"]}, headers=headers, timeout=30),
                     httpx.get(f"{url}/v1/model", headers=headers, timeout=30)):
        assert response.status_code == status, response.text
    if status == 401:
        assert response.json()["detail"] == "missing or wrong API key: send it as 'Authorization: Bearer KEY'"
        assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{url}/health").status_code == 200  # probes need no key


# --- 10: one request must not break the others ------------------------------------------------------------------

@pytest.mark.parametrize("body, reason", [
    (b'{"texts": ["\\ud800"]}', "unexpected end of hex escape"),  # a lone surrogate
    (b'{"texts": ["a\\udc00b"]}', "lone leading surrogate"),
    (b'{"\\ud800": 1}', "hex escape"),  # a key would have been echoed in the 422 and broken it (a 500)
    (b'{"texts": [NaN]}', "expected value"),
    (b'{"texts": ["a"], "x": Infinity}', "expected value"),
    (b'{"texts": ["a"], "x": -Infinity}', "invalid number"),
    (b'{"texts": ["caf\xe9"]}', "invalid unicode code point"),  # Latin-1, not UTF-8
])
def test_bodies_that_are_not_standard_json_get_422(server, body, reason):
    response = httpx.post(f"{server[0]}/v1/predict", content=body, timeout=30,
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["msg"] == "JSON decode error" and reason in error["ctx"]["error"]
    assert "without NaN, Infinity or lone surrogates" in error["ctx"]["error"]


def test_a_422_does_not_echo_the_input(server):
    """An input JSON cannot carry (1e400 parses as inf) made the 422 itself fail with a 500."""
    for body in (b'{"texts": [1e400]}', b'{"texts": ["a"], "x": 1e400}', b'{"texts": "' + b"x" * 60_000 + b'"}'):
        response = httpx.post(f"{server[0]}/v1/predict", content=body, timeout=30,
                              headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        assert response.status_code == 422 and "input" not in response.json()["detail"][0], response.text
        assert len(response.content) < 1000


def test_a_request_that_breaks_the_model_fails_alone():
    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as client:
            bodies = [{"texts": ["x" * (i + 1)]} for i in range(20)]
            bodies.insert(7, {"texts": ["ok", "POISON"]})
            return await asyncio.gather(*(client.post(f"{url}/v1/predict", json=body) for body in bodies))

    labeler = MarkerLabeler()
    with hostile_server(labeler, max_wait_ms=200, max_texts=64) as (url, _):
        responses = asyncio.run(burst(url))
        assert normal_request_works(url)
    poisoned = responses.pop(7)
    assert poisoned.status_code == 500
    assert poisoned.json() == {"detail": "internal error; the server log has the details"}
    assert [r.status_code for r in responses] == [200] * 20
    assert [r.json()["predictions"][0]["label"] for r in responses] == [str(i + 1) for i in range(20)]
    assert any("POISON" in call and len(call) > 2 for call in labeler.calls)  # it did share a batch with others


# --- 11: refused from the headers, before the body; bounded bodies and connections -------------------------------

def test_an_unauthenticated_body_is_refused_before_it_is_read(server):
    url, _ = server
    megabyte = b"x" * 2**20
    rss_before = rss_mb()
    with socket.create_connection(("127.0.0.1", port_of(url)), timeout=10) as sock:
        sock.sendall(post_head(100 * 2**20, key=False) + megabyte)
        answer = read_response(sock)  # arrives while 99 MB are still unsent: the server did not wait for the body
        assert status_of(answer) == 401 and b"missing or wrong API key" in answer
        try:
            for _ in range(99):  # the rest is drained and dropped, not kept
                sock.sendall(megabyte)
        except (BrokenPipeError, ConnectionResetError):
            pass  # or the connection was cut at the read deadline: fine too
    assert rss_mb() - rss_before < 30  # the server runs in this process; the old one kept the whole body (>100 MB)
    assert normal_request_works(url)


def test_a_declared_huge_body_gets_413_at_once_and_a_chunked_one_once_it_passes_the_limit(server):
    url, _ = server
    started = time.monotonic()
    answer = exchange(port_of(url), post_head(10**9))  # and no body at all
    assert status_of(answer) == 413 and b"request body over 70336 bytes: split the texts" in answer
    assert time.monotonic() - started < 10
    with socket.create_connection(("127.0.0.1", port_of(url)), timeout=10) as sock:
        sock.sendall(post_head(None))
        chunk = b"%x\r\n%s\r\n" % (16384, b"x" * 16384)
        for sent in range(1, 65):  # at most 1 MB; the answer comes after 70 KB
            sock.sendall(chunk)
            sock.settimeout(0.05)
            answer = read_response(sock)
            if answer:
                break
        sock.settimeout(10)
        answer += read_response(sock)
    assert status_of(answer) == 413 and sent < 20, (sent, answer)
    assert normal_request_works(url)


def test_slow_bodies_get_408_and_unfinished_or_idle_connections_are_cut_off(server):
    url, _ = server
    port = port_of(url)
    started = time.monotonic()
    answer = exchange(port, post_head(100) + b'{"texts": [')  # 11 of 100 bytes, then nothing
    assert status_of(answer) == 408 and b"request body not received within 1 s" in answer
    assert time.monotonic() - started < 10
    for opening in (b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n", b""):  # headers never finished; nothing
        started = time.monotonic()
        assert exchange(port, opening) == b""  # closed by the server, not by our 10 s timeout
        assert time.monotonic() - started < 10
    assert normal_request_works(url)


def test_idle_connections_cannot_exhaust_the_server(caplog):
    """Connections over --max-connections are closed at once, with one short line each in the log; idle ones are
    cut at the read deadline; then a normal client is served."""
    loggers, idle = [logging.getLogger(name) for name in ("uvicorn.error", "asyncio")], []
    try:
        with hostile_server(max_connections=20, read_timeout_s=2) as (url, _):
            for logger in loggers:  # after uvicorn has configured its loggers, which drops their handlers
                logger.addHandler(caplog.handler)
            idle += [socket.create_connection(("127.0.0.1", port_of(url)), timeout=10) for _ in range(60)]
            for sock in idle:
                sock.sendall(b"GET /health HTTP/1.1\r\n")  # and never the rest
            deadline = time.monotonic() + 10
            while len(caplog.records) < 40 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(caplog.records) == 40  # 60 less the 20 allowed
            assert all(read_response(sock) == b"" for sock in idle)  # all closed by the server, at most 2 s on
            assert normal_request_works(url)
    finally:
        for logger in loggers:
            logger.removeHandler(caplog.handler)
        for sock in idle:
            sock.close()
    refusal = "refused a connection: 20 are open, the limit (--max-connections)"
    assert {r.getMessage() for r in caplog.records} == {refusal}
    assert all(r.exc_info is None for r in caplog.records)


def test_the_connection_limit_leaves_room_under_the_open_file_limit():
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert connection_limit(None) <= min(512, (soft - 128) // 2)
    with pytest.raises(ConfigError, match=r"^--max-connections \d+: the open-file limit \(ulimit -n\) leaves room"):
        ServeSettings(max_connections=soft)


IDLE_FLOOD_SERVER = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from pydantic import BaseModel
from ftune.serve import ServeSettings, serve

class Answer(BaseModel):
    label: str
    score: float
    scores: dict

class Lengths:
    kind = "lengths"
    class task:  # what the service needs of a task: its name and the shape of an answer
        name, Prediction = "lengths", Answer
    def predict(self, texts):
        return [{"label": str(len(text)), "score": 1.0, "scores": {}} for text in texts]
    def describe(self):
        return {"kind": self.kind}

serve(Lengths(), "127.0.0.1", int(sys.argv[1]), ServeSettings(read_timeout_s=1), log_level="warning")
"""


@pytest.mark.e2e
def test_a_flood_of_idle_connections_past_the_open_file_limit_passes_without_tracebacks(tmp_path):
    """The reported case, scaled down: more idle connections than the server may open files (300 at 256), in a
    subprocess with that limit. It used to log thousands of accept() tracebacks a second and answer nobody."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url, log, idle = f"http://127.0.0.1:{port}", tmp_path / "server.log", []
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-c", IDLE_FLOOD_SERVER, str(port)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        for _ in range(300):  # at once, as an attacker would: the kernel finishes (and retries) them
            idle.append(socket.socket())
            idle[-1].setblocking(False)
            idle[-1].connect_ex(("127.0.0.1", port))
        time.sleep(2)  # past the 1 s read deadline of the first ones
        assert normal_request_works(url)
    finally:
        for sock in idle:
            sock.close()
        server.terminate()
        server.wait(timeout=10)
    lines = log.read_text().splitlines()
    assert "Traceback" not in log.read_text() and len(lines) <= 300
    assert all(line.startswith("WARNING:  refused a connection: 64 are open") for line in lines), lines[:3]


@pytest.mark.parametrize("host, status", [
    ("127.0.0.1:8000", 200), ("localhost", 200), ("[::1]:8000", 200), ("LOCALHOST:1", 200),
    ("attacker.example", 400), ("attacker.example:8000", 400), ("127.0.0.1.attacker.example", 400), ("", 400),
])
def test_on_loopback_only_loopback_host_names_are_accepted(server, host, status):
    """DNS rebinding: a web page on attacker.example, re-resolved to 127.0.0.1, must not reach the service."""
    answer = exchange(port_of(server[0]), b"GET /health HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n")
    assert status_of(answer) == status, answer
    if status == 400:
        assert answer.endswith(b"Invalid host header")


def test_allowed_hosts_replace_the_loopback_names_and_any_host_is_accepted_elsewhere():
    with hostile_server(allowed_hosts=["api.example.com", "*.internal"]) as (url, _):
        for host, status in [("api.example.com", 200), ("a.b.internal:443", 200), ("localhost", 400)]:
            answer = exchange(port_of(url), b"GET /health HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n")
            assert status_of(answer) == status, (host, answer)
    exposed = build_server(MarkerLabeler(), "0.0.0.0", 8000, ServeSettings())  # built, never started
    local = build_server(MarkerLabeler(), "127.0.0.1", 8000, ServeSettings())
    assert "TrustedHostMiddleware" not in str(exposed.config.app.user_middleware)
    assert f"allowed_hosts={LOOPBACK_HOSTS}" in str(local.config.app.user_middleware)
    with pytest.raises(ConfigError, match=r"^--allowed-hosts: 'api\.\*\.com' is neither"):
        ServeSettings(allowed_hosts=["api.*.com"])
