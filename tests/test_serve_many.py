"""Several runs from one process: LoRA runs of one tiny base share it, each answers with its own adapter and head."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

import ftune
from ftune.errors import ConfigError
from ftune.predictors import Predictor
from ftune.predictors.many import answer_items, load_many
from ftune.serve import ServeSettings, create_app
from helpers import KEY, ftune_cli, post, running, synthetic_reviews

TEXTS = ["a superb film", "dull and dreadful", "the plot was long", "great acting, boring story"]


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> dict:
    """Three LoRA runs of the tiny base (two label sets, two seeds) and a full-weight run beside them."""
    root = tmp_path_factory.mktemp("many")
    two = synthetic_reviews(160)
    three = two.assign(stars=[s if i % 3 else "mixed" for i, s in enumerate(two["stars"])])
    two.to_csv(root / "two.csv", index=False)
    three.to_csv(root / "three.csv", index=False)
    base = {"model.name": tiny_model, "data.text_column": "review", "data.label_column": "stars",
            "data.max_length": 32, "train.epochs": 1, "train.batch_size": 16, "train.learning_rate": 3e-3,
            "train.baselines": False, "tracking.backend": "none"}
    lora = {"method.name": "lora", "method.r": 4}
    plan = {"alpha": {"data.train": "two.csv", "train.seed": 0} | lora,
            "beta": {"data.train": "two.csv", "train.seed": 1} | lora,
            "gamma": {"data.train": "three.csv", "train.seed": 0} | lora,
            "full": {"data.train": "two.csv", "train.seed": 0, "method.name": "full"}}
    for name, overrides in plan.items():
        where = {"data.train": str(root / overrides["data.train"]), "output_dir": str(root / name)}
        ftune.train(ftune.load_config(overrides=base | overrides | where), quiet=True)
    return {name: root / name for name in plan}


@pytest.fixture(scope="module")
def served(runs) -> dict:
    return load_many(list(runs.values()), device="cpu")


@pytest.fixture(scope="module")
def own(runs) -> dict:
    """Each run's answers from its own Predictor, as `ftune predict` gives them."""
    return {name: Predictor(path, device="cpu").predict(TEXTS) for name, path in runs.items()}


def same(answer: dict, expected: dict) -> bool:
    return answer["label"] == expected["label"] and answer["scores"] == pytest.approx(expected["scores"], abs=1e-5)


def test_lora_runs_of_one_base_share_one_loaded_base_and_full_runs_keep_their_own(served):
    alpha, beta, gamma, full = served["alpha"], served["beta"], served["gamma"], served["full"]
    assert alpha.model is beta.model is gamma.model and full.model is not alpha.model
    embeddings = {id(m.get_input_embeddings().weight) for m in (alpha.model, full.model)}
    assert len(embeddings) == 2  # one base for the three adapters, one for the full run
    assert len({alpha.adapter, beta.adapter, gamma.adapter}) == 3
    assert alpha.labels == ["neg", "pos"] and gamma.labels == ["mixed", "neg", "pos"]


@pytest.mark.parametrize("mixed", [True, False])
def test_a_batch_that_mixes_adapters_gives_each_text_its_own_runs_answer(served, own, mixed):
    names = ["alpha", "gamma", "beta", "full", "gamma", "alpha", "beta", "full"] * 2
    items = [(name, TEXTS[i % len(TEXTS)]) for i, name in enumerate(names)]
    passes = []  # the shared base's forward passes, and the adapter of each of their rows
    hook = served["alpha"].model.register_forward_pre_hook(
        lambda module, args, kwargs: passes.append(kwargs.get("adapter_names")), with_kwargs=True)
    try:
        answers = answer_items(served, mixed)(items)  # what the service's model thread runs for one micro-batch
    finally:
        hook.remove()
    for (name, text), answer in zip(items, answers):
        assert same(answer, own[name][TEXTS.index(text)]), (name, text)
    if mixed:  # alpha and beta (two labels) in one pass, each row through its own adapter; gamma (three) apart
        assert len(passes) == 2 and sorted(set(passes[0])) == sorted([served["alpha"].adapter, served["beta"].adapter])
        assert len(passes[0]) == 8 and passes[1] is None
    else:
        assert passes == [None] * 3
    assert set(answers[1]["scores"]) == {"mixed", "neg", "pos"}  # gamma's own head and labels
    # the runs really differ: otherwise the test above could not tell one adapter from another
    assert own["alpha"][0]["scores"] != pytest.approx(own["beta"][0]["scores"], abs=1e-4)


def test_the_service_routes_concurrent_requests_to_their_models(served, own):
    with running(served, ServeSettings(max_wait_ms=50, api_key=KEY)) as (url, app):
        names = ["alpha", "beta", "gamma", "full"] * 4
        batches = app.state.batcher.batches

        def ask(i: int) -> httpx.Response:
            body = {"texts": [TEXTS[i % len(TEXTS)]]}
            if i % 2:  # both ways of naming the model
                return post(url, body | {"model": names[i]})
            return httpx.post(f"{url}/v1/models/{names[i]}/predict", json=body, timeout=30,
                              headers={"Authorization": f"Bearer {KEY}"})

        with ThreadPoolExecutor(len(names)) as pool:
            responses = list(pool.map(ask, range(len(names))))
        assert [r.status_code for r in responses] == [200] * len(names)
        for i, response in enumerate(responses):
            assert response.json()["model"] == names[i]
            assert same(response.json()["predictions"][0], own[names[i]][i % len(TEXTS)]), names[i]
        assert app.state.batcher.batches - batches < len(names)  # micro-batches held several models' texts


def test_models_are_listed_and_a_missing_or_unknown_model_is_named(served):
    with TestClient(create_app(served)) as client:
        listed = client.get("/v1/models").json()
        assert [m["name"] for m in listed["models"]] == ["alpha", "beta", "gamma", "full"]
        assert [m["method"] for m in listed["models"]] == ["lora", "lora", "lora", "full"]
        assert listed["models"][2]["labels"] == ["mixed", "neg", "pos"] and listed["limits"]["max_texts"] == 64
        response = client.post("/v1/predict", json={"texts": ["x"]})
        assert response.status_code == 400 and "one of alpha, beta, gamma, full" in response.text
        response = client.post("/v1/predict", json={"texts": ["x"], "model": "delta"})
        assert response.status_code == 404 and "no model 'delta'" in response.text and "alpha" in response.text
        assert client.post("/v1/models/delta/predict", json={"texts": ["x"]}).status_code == 404
        response = client.post("/v1/models/alpha/predict", json={"texts": ["x"], "model": "beta"})
        assert response.status_code == 400 and "name one" in response.text
        assert client.get("/v1/model").status_code == 400  # one model's description: which one?


def test_one_run_is_served_as_before_and_may_be_named(runs, served):
    with TestClient(create_app(served["full"])) as client:
        assert client.get("/v1/model").json()["method"] == "full"
        assert client.post("/v1/predict", json={"texts": ["x"]}).json()["model"] == "pytorch"
        assert client.post("/v1/predict", json={"texts": ["x"], "model": "full"}).status_code == 200
        assert client.post("/v1/models/full/predict", json={"texts": ["x"]}).status_code == 200
        assert client.post("/v1/predict", json={"texts": ["x"], "model": "alpha"}).status_code == 404


def test_two_runs_of_one_name_or_an_export_among_runs_are_user_errors(runs, tmp_path, monkeypatch, capsys):
    twin = tmp_path / "alpha"
    twin.mkdir()
    with pytest.raises(ConfigError, match="would both be served as 'alpha'.*rename one folder"):
        load_many([runs["alpha"], twin])
    export = tmp_path / "exported"
    export.mkdir()
    (export / "export.json").write_text("{}")
    with pytest.raises(ConfigError, match="is an ONNX export, which `ftune serve` serves alone"):
        load_many([runs["alpha"], export])
    code, _, err = ftune_cli(monkeypatch, capsys, "serve", str(runs["alpha"]), str(twin), "--port", "1")
    assert code == 2 and "would both be served as 'alpha'" in err and len(err.strip().splitlines()) == 1
    code, _, err = ftune_cli(monkeypatch, capsys, "serve", str(runs["alpha"]), str(runs["beta"]), "--variant", "int8")
    assert code == 2 and "--variant applies to an export" in err
