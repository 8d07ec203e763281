"""One real run: the bundled MiniLM fine-tuned on a few hundred `mr` sentences."""

import pytest
from mlflow import MlflowClient
from transformers import pipeline

import ftune


@pytest.mark.slow
def test_real_default_model_learns_movie_review_polarity(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"  # the `make demo` set-up, with the store in tmp_path
    cfg = ftune.load_config(overrides={
        "data.train": "mr", "data.max_train_samples": 480, "data.max_eval_samples": 200, "tracking.uri": store,
        "train.epochs": 1, "train.learning_rate": 1e-4, "train.batch_size": 16, "output_dir": str(tmp_path / "run")})
    run = ftune.train(cfg, quiet=True)
    test = run.metrics["test"]
    assert test["finetuned"]["accuracy"] >= 0.70
    assert test["finetuned"]["accuracy"] > test["base_model"]["accuracy"] + 0.1
    texts = ["a gorgeous, moving film", "tedious and badly acted"]
    assert [r["label"] for r in run.predict(texts)] == ["positive", "negative"]
    assert [r["label"] for r in pipeline("text-classification", model=str(run.path / "model"))(texts)] == \
        ["positive", "negative"]

    tracked = MlflowClient(store).get_run(run.manifest["tracking"]["run_id"])
    assert tracked.info.status == "FINISHED" and tracked.data.params["data.train"] == "mr"
    assert tracked.data.metrics["test/accuracy"] == pytest.approx(test["finetuned"]["accuracy"])
    assert len(MlflowClient(store).get_metric_history(tracked.info.run_id, "train/loss")) == 3  # 30 steps, log every 10
