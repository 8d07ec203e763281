"""`ftune serve` on a causal-lm run: OpenAI's chat completions API, started for real on a free loopback port and
called with the official openai client. A tiny decoder built here is fine-tuned for a few seconds to answer
"what is the opposite of X ?" with "the opposite of X is Y .", so its greedy answers are several words long."""

from __future__ import annotations

import copy
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import openai
import pytest
import torch
from transformers import StoppingCriteria
from typer.testing import CliRunner

import ftune
from ftune.generate import Generator
from ftune.serve import ServeSettings, build_server
from helpers import chat_run, instructions, running as serving

KEY = "chat-test-key"
CAP = 32  # the server's --max-new-tokens
QUESTION = "what is the opposite of hot ?"
SYSTEM = "answer in one short sentence ."
OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "old": "new", "light": "dark"}


@pytest.fixture(scope="module")
def run_path(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("chat")
    rows = instructions(200, opposites=OPPOSITES)
    return chat_run(root, rows, [f"{SYSTEM} {r['prompt']} {r['response']}" for r in rows], max_length=64, epochs=2,
                    batch_size=16, learning_rate=3e-3)


@pytest.fixture(scope="module")
def generator(run_path) -> Generator:
    return Generator(run_path, device="cpu")


@contextmanager
def running(model, settings: ServeSettings):
    """The service under uvicorn in a thread, as `ftune serve` runs it; yields its base URL."""
    with serving(model, settings) as (url, _):
        yield url


def client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def url(generator):
    with running(generator, ServeSettings(api_key=KEY, max_new_tokens=CAP, max_prompt_chars=2000)) as url:
        yield url


@pytest.fixture(scope="module")
def chat(url) -> openai.OpenAI:
    return client(url)


def ask(chat: openai.OpenAI, content=QUESTION, **kwargs):
    return chat.chat.completions.create(model="run", messages=[{"role": "user", "content": content}],
                                        **{"temperature": 0} | kwargs)


def streamed(chat: openai.OpenAI, **kwargs) -> tuple[list[str], str, list]:
    """The content pieces, the finish reason and all chunks of a streamed answer."""
    chunks = list(ask(chat, stream=True, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    [finish] = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return pieces, finish, chunks


def test_an_answer_has_openai_shape_and_is_what_ftune_generate_writes(chat, generator):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    answer = chat.chat.completions.create(model="run", messages=messages, temperature=0)
    expected = generator.generate(QUESTION, max_new_tokens=CAP, system=SYSTEM)
    assert len(expected.split()) >= 4  # the tests below cut it
    assert answer.id.startswith("chatcmpl-") and answer.object == "chat.completion" and answer.model == "run"
    [choice] = answer.choices
    assert choice.message.role == "assistant" and choice.message.content == expected
    assert choice.finish_reason == "stop"  # the model wrote its end-of-turn token
    ids = generator.prompt(messages)
    written = generator.complete(ids, CAP)
    assert written[-1] in generator.stop_ids
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(ids), len(written))
    assert answer.usage.total_tokens == len(ids) + len(written)
    # OpenAI's list-of-parts content and its newer "developer" role give the same prompt
    parts = [{"role": "developer", "content": [{"type": "text", "text": SYSTEM}]},
             {"role": "user", "content": [{"type": "text", "text": QUESTION}]}]
    again = chat.chat.completions.create(model="run", messages=parts, temperature=0, seed=3, user="someone",
                                         presence_penalty=0, metadata={"why": "ignored"})
    assert again.choices[0].message.content == expected and again.usage == answer.usage


def test_concurrent_requests_are_answered_one_at_a_time_each_its_own(chat, generator):
    questions = [f"what is the opposite of {w} ?" for w in ("hot", "big", "old", "dark")]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda q: ask(chat, q).choices[0].message.content, questions))
    assert answers == [generator.generate(q, max_new_tokens=CAP) for q in questions]


def test_a_streamed_answer_comes_piece_by_piece_and_equals_the_whole_one(chat):
    whole = ask(chat)
    pieces, finish, chunks = streamed(chat, stream_options={"include_usage": True})
    assert "".join(pieces) == whole.choices[0].message.content and finish == "stop"
    assert len(pieces) >= 4  # a piece per word as the words are written, not the answer at once
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    pieces, finish, chunks = streamed(chat)
    assert "".join(pieces) == whole.choices[0].message.content and all(c.usage is None for c in chunks)


def test_max_tokens_ends_the_answer_with_finish_reason_length(chat):
    whole = ask(chat).choices[0].message.content
    for field in ("max_tokens", "max_completion_tokens"):
        answer = ask(chat, **{field: 3})
        assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 3
        assert answer.choices[0].message.content == " ".join(whole.split()[:3])
    pieces, finish, _ = streamed(chat, max_tokens=3)
    assert "".join(pieces) == " ".join(whole.split()[:3]) and finish == "length"


def test_a_stop_string_cuts_the_answer_before_it_streamed_or_not(chat):
    whole = ask(chat)
    text = whole.choices[0].message.content
    stop = " ".join(text.split()[2:5])  # three words: their first ones are held back while they may begin it
    expected = text[:text.index(stop)].rstrip()
    for stops in (stop, ["never written", stop]):
        answer = ask(chat, stop=stops)
        assert answer.choices[0].message.content == expected and answer.choices[0].finish_reason == "stop"
        assert answer.usage.completion_tokens < whole.usage.completion_tokens  # generation ended there
        pieces, finish, _ = streamed(chat, stop=stops)
        assert "".join(pieces) == expected and finish == "stop"
    released = f"{text.split()[2]} never written"  # its first word is held back, then sent when the next differs
    assert ask(chat, stop=released).choices[0].message.content == text
    pieces, finish, _ = streamed(chat, stop=released)
    assert "".join(pieces) == text and finish == "stop"


def test_sampling_with_a_seed_gives_the_same_answer_again(chat):
    answers = [ask(chat, temperature=1.5, top_p=0.9, seed=7).choices[0].message.content for _ in range(2)]
    assert answers[0] == answers[1] and answers[0]


def test_the_served_model_is_listed_and_another_name_is_404(chat, url):
    [card] = chat.models.list().data
    assert (card.id, card.object, card.owned_by) == ("run", "model", "ftune") and card.created > 0
    assert chat.models.retrieve("run").id == "run"
    with pytest.raises(openai.NotFoundError, match="the served model: run"):
        chat.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": QUESTION}])
    with pytest.raises(openai.NotFoundError):
        chat.models.retrieve("gpt-4o")
    assert httpx.get(f"{url}/health").json()["status"] == "ok"  # no key needed
    assert "/v1/chat/completions" in httpx.get(f"{url}/openapi.json").json()["paths"]
    assert httpx.post(f"{url}/v1/predict", json={"texts": ["x"]}, headers={"Authorization": f"Bearer {KEY}"}
                      ).status_code == 404  # no labeling route on a causal-lm server


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 2}, "n=2: this server writes one answer per request"),
    ({"max_tokens": CAP + 1}, f"max_tokens={CAP + 1} is over this server's limit of {CAP}"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, 'messages[0].role is "tool"'),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content must be a string or a list of text parts"),
    ({"messages": []}, "messages: List should have at least 1 item"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop must be a non-empty string or a list of up to 4"),
    ({"stop": ["a", "q" * 257]}, "stop: a stop string of 257 characters is over this server's limit of 256"),
    ({"temperature": 3}, "temperature: Input should be less than or equal to 2"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools: this server's model cannot call tools"),
    ({"messages": [{"role": "user", "content": "hot " * 600}]}, "the messages hold 2400 characters; this server's "
                                                                "limit is 2000"),
    ({"messages": [{"role": "user", "content": "? " * 520}]}, "the prompt is 522 tokens, and the model reads 512"),
    ({"messages": [{"role": "user", "content": "? " * 490}], "max_tokens": 30},
     "the prompt is 492 tokens and max_tokens 30: 522 is over the model's 512 positions"),
])
def test_requests_it_cannot_answer_are_400_with_one_clear_message(chat, kwargs, message):
    request = {"model": "run", "messages": [{"role": "user", "content": QUESTION}]} | kwargs
    with pytest.raises(openai.BadRequestError) as refused:
        chat.chat.completions.create(**request)
    assert message in refused.value.message and refused.value.status_code == 400


def test_a_wrong_key_is_401_and_bad_json_is_400(url):
    with pytest.raises(openai.AuthenticationError):
        ask(client(url, key="wrong"))
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for body, message in [(b'{"model": "run", "messages": [], "temperature": NaN}', "the body is not JSON"),
                          (b'["run"]', "Input should be a valid dictionary"),
                          (b'{"messages": [{"role": "user", "content": "hi"}]}', "model: Field required")]:
        response = httpx.post(f"{url}/v1/chat/completions", content=body, headers=headers)
        assert response.status_code == 400 and message in response.json()["error"]["message"]


class _Slow(StoppingCriteria):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self, input_ids, scores, **kwargs):
        time.sleep(self.seconds)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


def slowed(generator: Generator, seconds: float) -> Generator:
    """The generator taking `seconds` more per token; `written` records how many tokens each generation wrote."""
    slow = copy.copy(generator)
    slow.written = []

    def complete(ids, max_new_tokens, temperature=0.0, top_p=None, seed=0, stopping_criteria=None):
        out = Generator.complete(slow, ids, max_new_tokens, temperature, top_p, seed,
                                 [_Slow(seconds)] + list(stopping_criteria or []))
        slow.written.append(len(out))
        return out

    slow.complete = complete
    return slow


def test_a_full_queue_is_503_a_client_that_leaves_stops_its_generation_and_a_late_answer_is_504(generator):
    slow = slowed(generator, 0.3)  # 0.3 s a token: the whole answer takes ~3 s
    full = len(generator.complete(generator.prompt([{"role": "user", "content": QUESTION}]), CAP))
    with running(slow, ServeSettings(api_key=KEY, max_new_tokens=CAP, max_waiting=1, timeout_s=1.0)) as url:
        chat = client(url)
        stream = ask(chat, stream=True)
        chunks = iter(stream)
        next(chunks)  # the role
        assert next(chunks).choices[0].delta.content  # the first word, while the rest is being written
        with pytest.raises(openai.InternalServerError) as busy:  # one generation running, the queue's limit
            ask(chat)
        assert busy.value.status_code == 503 and busy.value.response.headers["retry-after"] == "1"
        stream.close()  # the client leaves mid-answer

        def settled() -> bool:
            return httpx.get(f"{url}/health").json()["waiting"] == 0 and len(slow.written) == 1

        deadline = time.time() + 10
        while not settled() and time.time() < deadline:
            time.sleep(0.05)
        assert settled() and slow.written[0] < full  # stopped, not written to its end
        with pytest.raises(openai.InternalServerError) as late:  # started, but not done within the 1 s timeout
            ask(chat)
        assert late.value.status_code == 504 and "not answered within 1 s" in late.value.message
        deadline = time.time() + 10
        while len(slow.written) < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert slow.written[1] < full  # the timed-out generation was stopped too
        assert ask(chat, max_tokens=2).choices[0].finish_reason == "length"  # and the service goes on


def test_a_stream_is_cut_at_the_servers_timeout_so_it_cannot_hold_the_model(generator):
    slow = slowed(generator, 0.3)  # 0.3 s a token: the whole answer takes ~3 s
    full = generator.complete(generator.prompt([{"role": "user", "content": QUESTION}]), CAP)
    with running(slow, ServeSettings(api_key=KEY, max_new_tokens=CAP, timeout_s=1.0)) as url:
        chat = client(url)
        pieces, finish, chunks = streamed(chat, stream_options={"include_usage": True})
        assert finish == "length" and 1 <= chunks[-1].usage.completion_tokens == slow.written[0] < len(full)
        whole = generator.tokenizer.decode(full, skip_special_tokens=True).strip()
        assert whole.startswith("".join(pieces))  # what was written until then
        assert ask(chat, max_tokens=1).choices[0].finish_reason == "length"  # the model thread is free again


def test_ftune_serve_serves_a_causal_lm_run_and_refuses_it_beside_others(run_path, monkeypatch):
    from ftune.cli import app

    started = {}
    monkeypatch.setattr("ftune.serve.serve", lambda predictor, host, port, settings, cloud: started.update(
        predictor=predictor, settings=settings))
    result = CliRunner().invoke(app, ["serve", run_path, "--device", "cpu", "--max-new-tokens", "16",
                                      "--max-prompt-chars", "100"])
    assert result.exit_code == 0, result.output
    assert "/v1/chat/completions" in result.output
    assert isinstance(started["predictor"], Generator)
    assert (started["settings"].max_new_tokens, started["settings"].max_prompt_chars) == (16, 100)
    server = build_server(started["predictor"], settings=started["settings"])  # what serve() would run
    paths = {route.path for route in server.config.app.routes}
    assert {"/v1/chat/completions", "/v1/models", "/health"} <= paths and "/v1/predict" not in paths

    refused = CliRunner().invoke(app, ["serve", run_path, run_path])
    assert isinstance(refused.exception, ftune.RunError) and "serves alone" in str(refused.exception)
    refused = CliRunner().invoke(app, ["serve", run_path, "--precision", "bf16"])
    assert isinstance(refused.exception, ftune.ConfigError)
    refused = CliRunner().invoke(app, ["predict", run_path, "--text", "x"])  # labels: still `ftune generate`'s job
    assert "ftune generate" in str(refused.exception)
