"""`ftune train --budget`: the budget's text, the halving schedule and the plan as pure functions, the search's
decisions on a clock it cannot outrun (training replaced by a stand-in), and one search on the tiny model."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import ftune_cli, synthetic_reviews

import ftune
import ftune.training
from ftune import budget, recipe
from ftune.budget import Length, Rung, halving, parse_budget, plan, rung_length
from ftune.config import load_config
from ftune.errors import ConfigError
from ftune.schema import TrainConfig
from ftune.tasks import task_for


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("20m", 1200), ("1.5h", 5400), ("600", 600), (" 2M ", 120),
                                           (".5h", 1800), ("45.", 45)])
def test_a_budget_is_seconds_or_a_number_with_s_m_or_h(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("args, message", [
    (["--budget", "20x"], "--budget '20x' is not a time; pass seconds or a number with s, m or h, e.g. --budget 90s"),
    (["--budget", ""], "--budget '' is not a time"),
    (["--budget", "0"], "--budget '0' is not a time"),
    (["--budget", "-5m"], "--budget '-5m' is not a time"),
    (["--budget", "1e3"], "--budget '1e3' is not a time"),
    (["--budget", "9" * 400], "is not a time"),  # a number past a float's range
    (["--budget", "20m", "--resume"], "--budget starts a new search and cannot resume one; drop --resume"),
    (["--budget", "20m", "--seeds", "0,1"], "--budget and --seeds: use one at a time"),
    (["--budget", "20m", "--nproc", "2"], "--budget trains its candidates one after another in one process"),
])
def test_a_bad_budget_or_combination_is_one_line_and_exit_2(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = ftune_cli(monkeypatch, capsys, "train", "--tracking", "none", *args)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_a_decoder_task_is_refused_in_one_line():
    config = load_config(overrides={"task.name": "causal-lm", "model.name": "gpt2"})
    with pytest.raises(ConfigError, match="--budget searches recipes for encoder tasks; task causal-lm trains a "
                                          "decoder"):
        budget.check_config(config)


def test_halving_keeps_the_best_half_on_runs_twice_as_long():
    assert halving(4) == [Rung(0, 4, 2, 0.25), Rung(1, 2, 1, 0.5)]
    assert halving(5) == [Rung(0, 5, 2, 0.25), Rung(1, 2, 1, 0.5)]
    assert halving(2) == [Rung(0, 2, 1, 0.5)]
    assert halving(1) == []
    assert halving(9, eta=3) == [Rung(0, 9, 3, 1 / 9), Rung(1, 3, 1, 1 / 3)]
    # Fewer candidates in a schedule made for more keep its lengths: 3 of 4 run rung 0 at a quarter, then one is left.
    assert halving(3, rungs=2) == [Rung(0, 3, 1, 0.25)]


def test_a_rung_is_whole_passes_over_every_text_or_one_pass_over_a_share():
    train = TrainConfig(batch_size=32)
    assert rung_length(0.25, 10, 960, train) == Length(epochs=3, texts=960, steps=90)  # 2.5 passes, rounded
    assert rung_length(0.5, 10, 960, train) == Length(epochs=5, texts=960, steps=150)
    assert rung_length(1.0, 10, 960, train) == Length(epochs=10, texts=960, steps=300)
    assert rung_length(0.25, 3, 30000, train) == Length(epochs=1, texts=22500, steps=704)  # under a pass: a share


def test_the_plan_under_a_tiny_a_middling_and_a_large_budget():
    rungs = [75, 150]  # steps of one run in rung 0 and rung 1; a full run is 300 steps, a step takes 1 s
    tiny = plan(60, 1.0, 300, rungs, 4)
    assert tiny.candidates == 0 and tiny.note == ("a budget of 60 s is less than the ~300 s one run needs here; "
                                                  "training the config as given, without a search")
    one_run = plan(400, 1.0, 300, rungs, 4)  # a run fits, two candidates at 75 steps and the run do not (450 s)
    assert one_run.candidates == 0 and "fits one run (~300 s) but not a search of 2 candidates" in one_run.note
    some = plan(800, 1.0, 300, rungs, 4)  # all four need 300 + 4 x 75 + 2 x 150 = 900 s; three need 525
    assert (some.candidates, some.total_s, some.rungs) == (3, 525, [Rung(0, 3, 1, 0.25)])
    assert "the budget fits 3 of the 4 candidates" in some.note
    large = plan(10_000, 1.0, 300, rungs, 4)
    assert (large.candidates, large.total_s, large.rungs) == (4, 900, halving(4))
    assert large.note == "plan: 4 x 75 steps -> 2 x 150 steps, then the winner at 300 steps: ~900 s of the 10000 s budget"


def test_candidates_differ_in_method_and_rate_the_config_as_given_first(tiny_config):
    listed = budget.candidates(tiny_config())  # full at 3e-3, set in the config
    assert [(c.method["name"], c.learning_rate) for c in listed] == [
        ("full", 3e-3), ("full", 5e-5), ("full", 5e-5 * 3), ("lora", 1e-3), ("freeze", 1e-3)]
    default_lora = budget.candidates(tiny_config(**{"method.name": "lora", "method.r": 4, "train.learning_rate": None}))
    assert [(c.method["name"], c.learning_rate) for c in default_lora] == [
        ("lora", 1e-3), ("lora", 3e-3), ("freeze", 1e-3), ("full", 5e-5)]
    assert default_lora[1].method["r"] == 4  # the config's own method keeps its options


class FakeTraining:
    """ftune.training.train replaced: a run takes `rates[method]` seconds a step on a clock the search reads, and
    scores `scores[candidate]` on validation, whatever its length."""

    def __init__(self, monkeypatch, config, scores, rates):
        self.texts = len(task_for(config).load_splits(config.train.seed).train)
        self.listed = budget.candidates(config)
        self.scores, self.rates, self.clock, self.configs = scores, rates, 0.0, []
        monkeypatch.setattr(budget, "time", SimpleNamespace(monotonic=lambda: self.clock))
        monkeypatch.setattr(ftune.training, "train", self.train)

    def train(self, config, quiet=False):
        steps = config.train.epochs * recipe.steps_per_epoch(config.data.max_train_samples or self.texts, config.train)
        self.clock += steps * self.rates[config.method.name]
        self.configs.append(config)
        index = next(c.index for c in self.listed
                     if (c.method["name"], c.learning_rate) == (config.method.name, config.train.learning_rate))
        return SimpleNamespace(path=Path(config.output_dir),
                               metrics={"train": {"steps": steps}, "validation": {"best": self.scores[index]}})


SCORES = [0.7, 0.5, 0.9, 0.8, 0.6]  # full 3e-3, full 5e-5, full 1.5e-4, lora, freeze


def test_a_large_budget_runs_every_rung_and_trains_the_winner_in_full(tiny_config, tmp_path, monkeypatch):
    config = tiny_config(output_dir=str(tmp_path / "out"))
    fake = FakeTraining(monkeypatch, config, SCORES, {"full": 1.0, "lora": 1.0, "freeze": 1.0})
    result = budget.search(config, 10_000)
    rung0, rung1, final = fake.configs[:5], fake.configs[5:7], fake.configs[7]
    assert [(c.train.epochs, c.data.max_train_samples) for c in rung0] == [(1, 216)] * 5  # a quarter of 3 x 288
    assert [(c.method.name, c.train.epochs, c.data.max_train_samples) for c in rung1] == [
        ("full", 2, None), ("lora", 2, None)]  # the best two, at half the length
    assert all(not c.train.evaluate_test and c.tracking.backend == "none" for c in rung0 + rung1)
    assert (final.method.name, final.train.learning_rate, final.train.epochs) == ("full", 5e-5 * 3, 3)
    assert final.train.evaluate_test and final.output_dir == str(tmp_path / "out" / "final")
    record = json.loads((tmp_path / "out" / "budget.json").read_text())
    assert [(t["candidate"], t["rung"], t["kept"]) for t in record["trials"]] == [
        (0, 0, False), (1, 0, False), (2, 0, True), (3, 0, True), (4, 0, False), (2, 1, True), (3, 1, False)]
    assert record["winner"] == 2 and result.winner == 2 and record["final"]["steps"] == 54
    assert record["notes"][0].startswith("plan: 5 x 14 steps -> 2 x 36 steps, then the winner at 54 steps")


def test_a_budget_under_one_run_trains_the_config_as_given_and_says_so(tiny_config, tmp_path, monkeypatch):
    config = tiny_config(output_dir=str(tmp_path / "out"))
    fake = FakeTraining(monkeypatch, config, SCORES, {"full": 1.0, "lora": 1.0, "freeze": 1.0})
    lines = []
    result = budget.search(config, 30, say=lines.append)
    assert "a budget of 30 s is less than the ~54 s one run needs here; training the config as given, without a " \
           "search" in lines
    assert len(fake.configs) == 2 and fake.configs[1].train.learning_rate == 3e-3  # the timed run, then the config
    assert [(t.candidate, t.rung, t.outcome) for t in result.trials] == [
        (0, 0, "kept"), (1, None, "not trained"), (2, None, "not trained"), (3, None, "not trained"),
        (4, None, "not trained")]


def test_a_validation_split_too_small_to_choose_on_trains_the_config_as_given(tiny_config, tmp_path, monkeypatch):
    """With 3 validation texts, one text is 33 points: a search would pick its winner by chance (seen: --budget on 16
    spam messages a class chose freeze by 2 of 3 texts, 7 points below the plain run on test)."""
    synthetic_reviews(40).to_csv(tmp_path / "few.csv", index=False)
    config = tiny_config(**{"output_dir": str(tmp_path / "out"), "data.train": str(tmp_path / "few.csv"),
                            "method.name": "full"})
    fake = FakeTraining(monkeypatch, config, SCORES, {"full": 1.0, "lora": 1.0, "freeze": 1.0})
    lines = []
    budget.search(config, 10_000, say=lines.append)
    assert any(line.startswith("the validation split holds 3 texts, too few to choose between recipes on (30 or "
                               "more") for line in lines), lines
    assert [c.output_dir for c in fake.configs[:1]] == [str(tmp_path / "out" / "final")]


def test_a_rung_that_would_end_past_the_budget_is_not_started(tiny_config, tmp_path, monkeypatch):
    """Planned on the first run's pace (1 s a step: 196 s in all), the search learns in rung 0 that LoRA takes 3 s a
    step; rung 1 and the final run would then need 3 x (2 x 36 + 54) s, more than is left: the best of rung 0 wins."""
    config = tiny_config(output_dir=str(tmp_path / "out"))
    fake = FakeTraining(monkeypatch, config, SCORES, {"full": 1.0, "lora": 3.0, "freeze": 1.0})
    lines = []
    result = budget.search(config, 200, say=lines.append)
    assert len(fake.configs) == 6 and result.winner == 2 and fake.configs[-1].output_dir.endswith("final")
    assert "rung 1 and the final run need ~378 s, 102 s of the budget is left: the final run starts with the best " \
           "so far" in lines


def test_time_left_after_the_final_run_measures_the_spread_over_seeds(tiny_config, tmp_path, monkeypatch):
    config = tiny_config(output_dir=str(tmp_path / "out"))
    fake = FakeTraining(monkeypatch, config, SCORES, {"full": 1.0, "lora": 1.0, "freeze": 1.0})

    def scored(config, quiet=False):  # each seed's test score, beside a baseline inside their range
        run = fake.train(config, quiet)
        run.metrics["test"] = {"finetuned": {"accuracy": (80 + config.train.seed) / 100},
                               "tfidf": {"accuracy": 0.805}, "base_model": {"accuracy": 0.5}}
        return run

    monkeypatch.setattr(ftune.training, "train", scored)
    lines = []
    result = budget.search(config, 10_000, say=lines.append)
    seeds = fake.configs[-2:]
    assert [c.output_dir for c in seeds] == [str(tmp_path / "out" / f"seed-{n}") for n in (1, 2)]
    assert [(c.train.seed, c.data.split_seed, c.method.name) for c in seeds] == [(1, 0, "full"), (2, 0, "full")]
    assert result.spread == {"metric": "accuracy", "seeds": {0: 0.80, 1: 0.81, 2: 0.82}, "min": 0.80, "max": 0.82,
                             "baseline": "tfidf", "baseline_score": 0.805, "baseline_inside": True}
    assert "spread over 3 seeds: test accuracy 0.8000 to 0.8200; the tfidf baseline's 0.8050 is inside that range: " \
           "the gain over it is within run-to-run noise" in lines
    assert json.loads((tmp_path / "out" / "budget.json").read_text())["spread"]["seeds"] == {"0": 0.8, "1": 0.81,
                                                                                          "2": 0.82}
    lines.clear()
    fake.configs.clear()
    budget.search(tiny_config(output_dir=str(tmp_path / "short")), 300, say=lines.append)  # no time left for seeds
    assert not any("seed-" in c.output_dir for c in fake.configs)
    assert any(line.startswith("spread over seeds: not measured") for line in lines)


def test_an_output_folder_with_files_is_refused(tiny_config, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    with pytest.raises(ftune.RunError, match="already holds files; a search starts in a new folder"):
        budget.search(tiny_config(output_dir=str(tmp_path / "out")), 600)


@pytest.mark.e2e
def test_a_search_on_the_tiny_model_lists_every_candidate_and_ends_in_a_complete_run(
        tiny_model, reviews_csv, tmp_path, monkeypatch, capsys):
    """tiny_config's settings from the command line, on 96 training texts (6 steps an epoch) and 2 epochs for speed:
    5 candidates in rung 0 (3 steps each: half a pass), 2 in rung 1 (6 steps), then the winner (12 steps)."""
    out = tmp_path / "budget"
    code, stdout, err = ftune_cli(
        monkeypatch, capsys, "train", "--model", tiny_model, "--data", str(reviews_csv), "--text-column", "review",
        "--label-column", "stars", "--set", "data.max_length=32", "--epochs", "2", "--batch-size", "16",
        "--set", "data.max_train_samples=96",
        "--set", "train.learning_rate=3e-3", "--set", "train.warmup_ratio=0", "--tracking", "none",
        "--output-dir", str(out), "--budget", "20m", "--quiet")
    assert code == 0, err
    record = json.loads((out / "budget.json").read_text())
    trials = record["trials"]
    assert sorted({t["candidate"] for t in trials}) == [0, 1, 2, 3, 4] and len(record["candidates"]) == 5
    assert [(t["rung"], t["steps"]) for t in trials] == [(0, 3)] * 5 + [(1, 6)] * 2
    assert all(isinstance(t["validation"], float) and isinstance(t["kept"], bool) for t in trials)
    assert [t["kept"] for t in trials].count(True) == 3  # two of rung 0, the winner of rung 1
    for trial in trials:  # choosing never read the test split
        metrics = ftune.Run(trial["run_dir"]).metrics
        assert metrics["test"]["evaluated"] is False and "finetuned" not in metrics["test"]
    final = ftune.Run(out / "final")
    assert final.manifest["status"] == "complete" and final.metrics["train"]["steps"] == 12
    assert isinstance(final.metrics["test"]["finetuned"]["accuracy"], float) and "tfidf" in final.metrics["test"]
    assert record["final"]["run_dir"] == str(out / "final") and record["winner"] in {t["candidate"] for t in trials}
    assert "candidates: validation accuracy (higher is better)" in stdout and "test split scored" in stdout
    assert "test split, 80 examples" in stdout and f"run directory: {out / 'final'}" in stdout
    print(f"search: {record['elapsed_s']} s, final run {record['final']['seconds']} s")
