from pathlib import Path

import pytest

from ftune.config import Config, load_config
from ftune.errors import ConfigError

CONFIGS = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))


def test_defaults_are_the_documented_ones():
    cfg = load_config()
    assert cfg.model.name == "minilm" and cfg.data.train == "mr" and cfg.method.name == "full"
    assert cfg.train.epochs is None and cfg.data.test_size == 0.2  # chosen from the data by each run (ftune.recipe)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    assert isinstance(load_config(path), Config)


def test_overrides_reach_any_key_and_parse_yaml_scalars():
    cfg = load_config(CONFIGS[0], ["train.epochs=2", "method.name=lora", "method.r=8", "data.max_train_samples=100",
                                   "method.target_modules=[query, value]"])
    assert cfg.train.epochs == 2 and cfg.method.r == 8 and cfg.data.max_train_samples == 100
    assert cfg.method.target_modules == ["query", "value"]


def test_method_without_name_is_full():
    assert load_config(overrides={"method": {}}).method.name == "full"


@pytest.mark.parametrize("overrides, message", [
    (["train.epoch=2"], "unknown key 'train.epoch'; did you mean 'train.epochs'?"),
    (["trian.epochs=2"], "unknown key 'trian'; did you mean 'train'?"),
    (["method.r=8"], "'method.r' is not an option of method 'full'; it belongs to method 'lora'"),
    (["method.name=lora", "method.rank=4"], "did you mean 'method.r'?"),
    (["method.name=adapters"], "method.name must be one of full, freeze, lora, dora, prompt-tuning, contrastive (got 'adapters')"),
    (["train.learning_rate=fast"], "train.learning_rate: Input should be a valid number"),
    (["train.epochs=0"], "train.epochs: Input should be greater than or equal to 1"),
    (["epochs"], "must look like section.key=value"),
])
def test_config_mistakes_are_one_clear_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_yaml_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML at line \d"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_a_mistake_names_its_place_the_file_or_the_command_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  epoch: 2\n")
    with pytest.raises(ConfigError, match=r"^.*run\.yaml: unknown key 'train\.epoch'"):
        load_config(config, ["train.epochs=1"])
    config.write_text("train:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"^command line: unknown key 'train\.epoch'; did you mean 'train\.epochs'"):
        load_config(config, ["train.epoch=1"])
    with pytest.raises(ConfigError, match=r"^command line: train\.metric=rmse is not a score"):
        load_config(overrides=["train.metric=rmse"])


def test_model_and_method_may_be_named_alone_as_task_is(tmp_path):
    config = tmp_path / "short.yaml"
    config.write_text("task: regression\nmodel: minilm\nmethod: lora\n")
    loaded = load_config(config)
    assert (loaded.task.name, loaded.model.name, loaded.method.name, loaded.method.r) == ("regression", "minilm", "lora", 16)
