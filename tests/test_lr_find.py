"""train.learning_rate: auto: the range test's choice, its files, the model put back exactly, resume, config."""

import json
import math
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

import ftune
from ftune import lr_find
from ftune.config import load_config, to_yaml
from ftune.errors import ConfigError

pytestmark = pytest.mark.e2e  # trains whole runs: make test-quick leaves this module out


def test_auto_picks_a_rate_writes_the_curve_and_the_run_starts_as_with_that_rate(tiny_config, tmp_path):
    common = {"train.epochs": 2, "train.baselines": False}
    auto = ftune.train(tiny_config(**common, **{"train.learning_rate": "auto", "output_dir": str(tmp_path / "auto")}),
                       quiet=True)
    curve = json.loads((auto.path / "lr_find.json").read_text())
    chosen = curve["chosen"]
    assert math.isfinite(chosen) and lr_find.LOWEST <= chosen <= lr_find.HIGHEST
    assert len(curve["rates"]) == len(curve["losses"]) == len(curve["smoothed"]) >= 2
    assert curve["rates"][0] == pytest.approx(lr_find.START) and curve["rates"] == sorted(curve["rates"])
    assert (auto.path / "plots" / "lr_find.png").stat().st_size > 0
    manifest = json.loads((auto.path / "run.json").read_text())
    assert manifest["learning_rate"]["value"] == chosen
    assert manifest["learning_rate"]["source"].startswith("auto (range test: ")
    assert "learning_rate: auto" in (auto.path / "config.yaml").read_text()  # the run's config stays as written
    report = (auto.path / "report.md").read_text()
    assert "## Learning rate: range test" in report and "plots/lr_find.png" in report and f"{chosen:.1e}" in report
    assert auto.metrics["test"]["finetuned"]["accuracy"] > 0.8
    # Weights, random state and mode were put back: the same run with the chosen rate written in is identical.
    fixed = ftune.train(tiny_config(**common, **{"train.learning_rate": chosen, "output_dir": str(tmp_path / "fixed")}),
                        quiet=True)
    assert auto.metrics["test"]["finetuned"]["loss"] == fixed.metrics["test"]["finetuned"]["loss"]


def test_the_range_test_puts_back_lora_weights_head_mode_and_random_state(tiny_model, reviews_csv):
    from ftune.methods import METHODS
    from ftune.models import load_classifier, load_tokenizer
    from ftune.config import load_config
    from ftune.tasks import task_for
    from ftune.optim import param_groups

    lora = METHODS["lora"](METHODS["lora"].Options(r=4))
    model = lora.wrap(load_classifier(tiny_model, ["neg", "pos"]), "SEQ_CLS").eval()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    rng = torch.get_rng_state()
    tokenizer = load_tokenizer(tiny_model)
    texts = ["a great film", "an awful plot", "superb acting", "dull and boring"]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"), labels=torch.tensor([1, 0, 1, 0]))
    batches = iter(lambda: [dict(batch)], None)  # the same batch every step, forever
    task = task_for(load_config(overrides={"data.train": str(reviews_csv)}))
    curve = lr_find.range_test(model, batches, 20, param_groups(model, 0.01), Accelerator(cpu=True),
                               max_grad_norm=1.0, task=task)
    assert len(set(curve["losses"])) > 1  # the weights did move during the test
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert [n for n in before if not torch.equal(before[n], after[n])] == []
    assert any("lora_" in n for n in before) and any("classifier" in n and "modules_to_save" in n for n in before)
    assert not any(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_resume_reuses_the_chosen_rate_without_a_second_range_test(tiny_config, monkeypatch, capsys):
    import ftune.training as train_module

    cfg = tiny_config(**{"train.learning_rate": "auto", "train.epochs": 1, "train.baselines": False})
    real_finish = train_module.write_run

    def explode(*args, **kwargs):
        raise RuntimeError("power cut")

    monkeypatch.setattr(train_module, "write_run", explode)
    with pytest.raises(RuntimeError):
        ftune.train(cfg, quiet=True)
    chosen = json.loads((Path(cfg.output_dir) / "lr_find.json").read_text())["chosen"]
    monkeypatch.setattr(train_module, "write_run", real_finish)

    def again(*args, **kwargs):
        raise AssertionError("the range test ran again on --resume")

    monkeypatch.setattr(lr_find, "range_test", again)
    run = ftune.train(cfg, resume=True)
    assert run.manifest["learning_rate"]["value"] == chosen and run.manifest["status"] == "complete"
    assert f"learning rate {chosen:.1e}: chosen by this run's range test" in capsys.readouterr().err


def test_auto_round_trips_through_config_yaml_and_bad_rates_are_one_line(tmp_path):
    cfg = load_config(overrides=["train.learning_rate=auto"])
    assert cfg.train.learning_rate == "auto" and not cfg._learning_rate_is_default
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    assert load_config(tmp_path / "config.yaml").train.learning_rate == "auto"
    assert load_config(overrides=["train.learning_rate=2e-4"]).train.learning_rate == 2e-4  # YAML reads 2e-4 as text
    for value, message in (("fast", "train.learning_rate: Input should be a valid number or auto (got 'fast')"),
                           ("0", "train.learning_rate: Input should be greater than 0")):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(overrides=[f"train.learning_rate={value}"])
    with pytest.raises(ConfigError, match="distributed.strategy=fsdp shards; set a number"):
        load_config(overrides=["train.learning_rate=auto", "distributed.strategy=fsdp"])


def test_the_choice_is_a_third_of_the_rate_at_the_smoothed_minimum_within_the_clamp():
    rates = [10 ** -k for k in range(7, -1, -1)]  # 1e-7 .. 1
    assert lr_find.suggest(rates, [0.7, 0.7, 0.69, 0.6, 0.4, 0.3, 0.5, 2.0]) == (pytest.approx(1e-2 / 3), 1e-2)
    assert lr_find.suggest(rates, [0.7, 0.69, 0.6, 0.8, 0.9, 1.0, 1.5, 3.0])[0] == pytest.approx(1e-5 / 3)
    assert lr_find.suggest(rates, [0.7, 0.69, 0.6, 0.5, 0.9, 1.0, 1.5, 3.0])[0] == pytest.approx(1e-4 / 3)
    # No descent to read a rate from: the minimum among the first rates. The run takes the method's default.
    assert lr_find.suggest(rates, [0.7, 0.6, 0.7, 0.8, 0.9, 1.0, 1.5, 3.0])[0] is None
    assert lr_find.suggest(rates, [0.6, 0.7, 0.7, 0.8, 0.9, 1.0, 1.5, 3.0])[0] is None
    assert lr_find.suggest(rates, [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])[0] == lr_find.HIGHEST  # never turned up
    clamp = [10 ** -k for k in range(9, 1, -1)]  # 1e-9 .. 1e-2: a minimum at 1e-6 would give 3.3e-7
    assert lr_find.suggest(clamp, [0.7, 0.7, 0.69, 0.6, 0.9, 1.0, 1.5, 3.0])[0] == lr_find.LOWEST
