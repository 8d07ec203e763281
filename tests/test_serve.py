"""The HTTP service, started for real on a free loopback port, and the micro-batcher on its own."""

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

import ftune
from ftune.batching_queue import MicroBatcher, Overloaded
from ftune.predictors import Predictor
from ftune.serve import ServeSettings, create_app
from helpers import KEY, SlowLabeler, post, rss_mb, running


@pytest.fixture(scope="module")
def predictor(tiny_model, reviews_csv, tmp_path_factory):
    overrides = {"model.name": tiny_model, "data.train": str(reviews_csv), "data.text_column": "review",
                 "data.label_column": "stars", "data.max_length": 32, "train.epochs": 1, "train.batch_size": 16,
                 "train.learning_rate": 3e-3, "train.baselines": False, "tracking.backend": "none",
                 "output_dir": str(tmp_path_factory.mktemp("serve") / "run")}
    return Predictor(ftune.train(ftune.load_config(overrides=overrides), quiet=True).path)


@pytest.fixture(scope="module")
def server(predictor):
    with running(predictor, ServeSettings(max_texts=4, max_chars=200, max_wait_ms=20, api_key=KEY)) as (url, app):
        yield url, app


def test_health_model_and_openapi(server, predictor):
    url, _ = server
    assert httpx.get(f"{url}/health").json()["status"] == "ok"  # no key needed: load balancers probe it
    info = httpx.get(f"{url}/v1/model", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert info["labels"] == ["neg", "pos"] and info["kind"] == "pytorch" and info["limits"]["max_texts"] == 4
    assert KEY not in str(info)
    spec = httpx.get(f"{url}/openapi.json").json()
    assert "/v1/predict" in spec["paths"] and "/health" in spec["paths"]
    # /docs works offline: its page loads Swagger UI from this server (no key needed), never from a CDN
    page = httpx.get(f"{url}/docs").text
    assert "/static-offline-docs/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    script = httpx.get(f"{url}/static-offline-docs/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000
    assert httpx.get(f"{url}/redoc").status_code == 200


def test_predict_returns_label_score_and_all_scores(server, predictor):
    url, _ = server
    texts = ["a superb film", "dull and dreadful"]
    response = post(url, {"texts": texts})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "pytorch"
    assert [p["label"] for p in body["predictions"]] == [r["label"] for r in predictor.predict(texts)]
    for p in body["predictions"]:
        assert set(p["scores"]) == {"neg", "pos"} and abs(sum(p["scores"].values()) - 1) < 1e-5


@pytest.mark.parametrize("body, key, status, detail", [
    ({"texts": ["x"]}, None, 401, "missing or wrong API key"),
    ({"texts": ["x"]}, "wrong", 401, "missing or wrong API key"),
    ({"texts": ["x"] * 5}, KEY, 413, "5 texts in one request; the limit is 4"),
    ({"texts": ["x" * 201]}, KEY, 413, "texts[0] has 201 characters; the limit is 200"),
    ({"texts": []}, KEY, 422, "at least 1 item"),
    ({"text": ["x"]}, KEY, 422, "Field required"),
    ({"texts": [1, 2]}, KEY, 422, "valid string"),
])
def test_limits_validation_and_auth(server, body, key, status, detail):
    response = post(server[0], body, key=key)
    assert response.status_code == status and detail in response.text, response.text


def test_malformed_json_is_422_without_a_stack_trace(server):
    response = httpx.post(f"{server[0]}/v1/predict", content=b'{"texts": ["unclosed', timeout=30,
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert response.status_code == 422 and "JSON decode error" in response.text and "Traceback" not in response.text


def test_concurrent_requests_share_forward_passes(server, predictor):
    url, app = server
    batcher = app.state.batcher
    before = batcher.batches
    texts = [f"the movie was {w}" for w in ("great", "awful", "superb", "dull")] * 6
    with ThreadPoolExecutor(len(texts)) as pool:
        responses = list(pool.map(lambda t: post(url, {"texts": [t]}), texts))
    assert all(r.status_code == 200 for r in responses)
    assert [r.json()["predictions"][0]["label"] for r in responses] == [r["label"] for r in predictor.predict(texts)]
    assert batcher.batches - before < len(texts)  # some requests were answered by one shared forward pass


def test_a_lone_surrogate_is_422_and_does_not_fail_the_batch_it_arrives_with(server, predictor):
    """The tokenizer cannot encode "\\ud800": it used to fail the whole micro-batch (15 of 20 requests got 500)."""
    url, _ = server
    texts = [f"the movie was {w}" for w in ("great", "awful", "superb", "dull")] * 5
    bodies = [json.dumps({"texts": [t]}).encode() for t in texts] + [b'{"texts": ["great \\ud800"]}']
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda body: httpx.post(
            f"{url}/v1/predict", content=body, timeout=30,
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}), bodies))
    assert responses[-1].status_code == 422 and "lone surrogates" in responses[-1].text
    assert [r.status_code for r in responses[:-1]] == [200] * len(texts)
    labels = [r.json()["predictions"][0]["label"] for r in responses[:-1]]
    assert labels == [r["label"] for r in predictor.predict(texts)]


def slow_predict(texts):
    time.sleep(0.05)
    return [t.upper() for t in texts]


def test_batcher_merges_waiting_requests_and_answers_each_its_own():
    async def scenario(enabled):
        batcher = MicroBatcher(slow_predict, max_batch=8, max_wait_s=0.01, enabled=enabled)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([f"t{i}", f"u{i}"]) for i in range(8)))
        await batcher.stop()
        return results, batcher.batches

    results, batches = asyncio.run(scenario(True))
    assert results == [[f"T{i}", f"U{i}"] for i in range(8)] and batches == 2  # 16 texts, 8 per pass
    results, batches = asyncio.run(scenario(False))
    assert results == [[f"T{i}", f"U{i}"] for i in range(8)] and batches == 8  # off: one request per pass


def test_batcher_refuses_beyond_its_queue_and_recovers():
    async def scenario():
        batcher = MicroBatcher(slow_predict, max_batch=2, max_wait_s=0.0, max_waiting=4)
        batcher.start()
        outcomes = await asyncio.gather(*(batcher.submit([str(i)]) for i in range(10)), return_exceptions=True)
        after = await batcher.submit(["again"])
        await batcher.stop()
        return outcomes, after, batcher.waiting

    outcomes, after, waiting = asyncio.run(scenario())
    assert sum(isinstance(o, Overloaded) for o in outcomes) == 6 and outcomes[:4] == [["0"], ["1"], ["2"], ["3"]]
    assert after == ["AGAIN"] and waiting == 0


def test_model_errors_reach_every_caller_of_the_batch():
    def broken(texts):
        raise RuntimeError("boom")

    async def scenario():
        batcher = MicroBatcher(broken, max_wait_s=0.01)
        batcher.start()
        outcomes = await asyncio.gather(*(batcher.submit(["x"]) for _ in range(3)), return_exceptions=True)
        await batcher.stop()
        return outcomes

    assert all(isinstance(o, RuntimeError) for o in asyncio.run(scenario()))


def test_when_a_shared_forward_pass_fails_each_request_is_run_on_its_own():
    calls = []

    def fragile(texts):
        calls.append(list(texts))
        if "bad" in texts:
            raise ValueError("cannot encode")
        return [t.upper() for t in texts]

    async def scenario():
        batcher = MicroBatcher(fragile, max_wait_s=0.01)
        batcher.start()
        outcomes = await asyncio.gather(batcher.submit(["a"]), batcher.submit(["b", "bad"]), batcher.submit(["c"]),
                                        return_exceptions=True)
        await batcher.stop()
        return outcomes, batcher.waiting

    (a, bad, c), waiting = asyncio.run(scenario())
    assert a == ["A"] and c == ["C"] and isinstance(bad, ValueError) and waiting == 0
    assert calls == [["a", "b", "bad", "c"], ["a"], ["b", "bad"], ["c"]]


def test_a_model_failure_is_a_500_without_details(predictor, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setattr(predictor, "predict", lambda texts: 1 / 0)
    with TestClient(create_app(predictor), raise_server_exceptions=False) as client:
        response = client.post("/v1/predict", json={"texts": ["x"]})
    assert response.status_code == 500 and response.json() == {"detail": "internal error; the server log has the details"}


def test_a_request_not_answered_in_time_gets_504_and_the_service_goes_on():
    with running(SlowLabeler(1.0), ServeSettings(timeout_s=0.3, max_wait_ms=1)) as (url, _):
        response = httpx.post(f"{url}/v1/predict", json={"texts": ["x"]}, timeout=30)
        assert response.status_code == 504 and response.json()["detail"] == "not answered within 0.3 s; retry later"
        time.sleep(1.2)
        assert httpx.get(f"{url}/health").json() == {"status": "ok", "waiting": 0}


def test_under_bounded_overload_every_request_gets_a_result_or_503_and_memory_stays_bounded():
    import asyncio

    max_waiting = 8
    seen, stop = [], threading.Event()

    def watch_queue(batcher) -> None:
        while not stop.is_set():
            seen.append(batcher.waiting)
            time.sleep(0.002)

    async def burst(url: str, n: int) -> list[int]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            responses = await asyncio.gather(*(client.post(f"{url}/v1/predict", json={"texts": [f"t{i}"]})
                                               for i in range(n)))
        return [r.status_code for r in responses]

    with running(SlowLabeler(0.05), ServeSettings(max_batch=4, max_waiting=max_waiting, max_wait_ms=1)) as (url, app):
        threading.Thread(target=watch_queue, args=(app.state.batcher,), daemon=True).start()
        first = asyncio.run(burst(url, 200))  # 25x what the queue holds
        rss_after_first = rss_mb()
        second = asyncio.run(burst(url, 200))
        stop.set()
        assert set(first) | set(second) <= {200, 503}  # an answer or a clear refusal, nothing else
        assert first.count(503) > 0 and first.count(200) > 0 and second.count(200) > 0
        assert max(seen) <= max_waiting  # the backlog never grows past the bound
        assert rss_mb() - rss_after_first < 30  # a second burst does not grow memory
        assert httpx.get(f"{url}/health").json()["waiting"] == 0
        assert httpx.post(f"{url}/v1/predict", json={"texts": ["after"]}, timeout=30).status_code == 200


