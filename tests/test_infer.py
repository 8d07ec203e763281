"""The task read off the data when the config names none: what `ftune data validate FILE` says for each kind of file,
the rules of ftune.data.infer, and that a task the user names (YAML, --set, --task) always wins."""

import json
import random

import pytest
import yaml

from ftune.config import load_config
from ftune.data.infer import infer_task
from ftune.schema import DataConfig
from helpers import entity_sentences, ftune_cli, synthetic_reviews

SETS = ["sport", "politics", "sport|politics", "tech", "tech|politics"]


@pytest.fixture
def files(tmp_path):
    """The four files a user brings: two classes, label sets joined by '|', a number to predict, word/TAG lines."""
    rng = random.Random(0)
    reviews = synthetic_reviews(300).rename(columns={"review": "text", "stars": "label"})
    paths = {name: tmp_path / f"{name}.csv" for name in ("classes", "sets", "numbers")}
    reviews.to_csv(paths["classes"], index=False)
    reviews.assign(label=[SETS[i % len(SETS)] for i in range(300)]).to_csv(paths["sets"], index=False)
    reviews.assign(label=[round(rng.uniform(0, 10), 2) for _ in range(300)]).to_csv(paths["numbers"], index=False)
    paths["tagged"] = tmp_path / "tagged.txt"
    paths["tagged"].write_text("".join(" ".join(f"{w}/{t}" for w, t in zip(words, tags)) + "\n"
                                       for words, tags in entity_sentences(120)))
    return paths


@pytest.mark.parametrize("name, line, title", [
    ("sets", "task: multi-label (inferred: label column 'label' holds label sets like 'sport|politics'; override with "
             "--task NAME)", "multi-label, 3 classes"),
    ("numbers", "task: regression (inferred: label column 'label' holds numbers with fractions (", "regression"),
    ("tagged", "task: token-classification (inferred: tagged.txt has word/TAG lines, a tag per word; override with",
     "token-classification, 4 classes"),
    ("classes", None, "classification, 2 classes"),  # class names are what ftune always read: nothing new to say
])
def test_data_validate_reads_the_task_off_the_file(files, name, line, title, tiny_model, monkeypatch, capsys):
    monkeypatch.chdir(files[name].parent)
    code, out, err = ftune_cli(monkeypatch, capsys, "data", "validate", "--model", tiny_model,
                               "--data", files[name].name)
    assert code == 0, err
    assert unwrapped(f"{files[name].name}: {title}") in unwrapped(out)  # the table's title, however rich wraps it
    said = [text for text in err.splitlines() if text.startswith("task: ")]
    assert (said[0].startswith(line) and len(said) == 1) if line else not said, err
    assert "task: " not in out  # the note is stderr's: what a script reads from stdout is as before


def unwrapped(text: str) -> str:
    return "".join(text.split())


def test_the_task_flag_beats_the_data(files, tiny_model, monkeypatch, capsys):
    code, out, err = ftune_cli(monkeypatch, capsys, "data", "validate", "--model", tiny_model, "--data",
                               str(files["sets"]), "--task", "classification")
    assert code == 0 and unwrapped("sets.csv: classification, 5 classes") in unwrapped(out) and "task: " not in err


def test_a_bad_task_flag_is_one_line_naming_the_tasks(files, monkeypatch, capsys):
    code, _, err = ftune_cli(monkeypatch, capsys, "data", "validate", "--data", str(files["sets"]),
                             "--task", "multilabel")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "task.name must be one of classification, token-classification, causal-lm, regression, multi-label" in err


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_the_rules(tmp_path):
    def infer(rows, **data):
        return infer_task(DataConfig(train=write_jsonl(tmp_path / "d.jsonl", rows), **data))

    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert infer([{"messages": chat}] * 5).task == "causal-lm"
    assert infer([{"prompt": "hi", "response": "hello"}] * 5).task == "causal-lm"
    assert infer([{"tokens": ["john", "smith"], "tags": ["B-PER", "I-PER"]}] * 5).task == "token-classification"
    assert infer([{"text": "a", "label": ["x"]}, {"text": "b", "label": ["x", "y"]}]).task == "multi-label"
    stars = infer([{"text": "a", "label": 1 + i % 5} for i in range(50)])
    assert stars.task == "classification" and "5 whole numbers (1 to 5)" in stars.reason
    assert "regression" in stars.reason and not stars.plain  # the other reading is said
    assert infer([{"text": "a", "label": i} for i in range(50)]).task == "regression"  # more than 20 values
    assert infer([{"text": "a", "label": i % 2} for i in range(50)]).plain  # 0/1: classes, nothing to say
    # One '|' among hundreds of class names is a name with a bar in it; a label column the user named means labels.
    one_bar = [{"text": "a", "label": "a|b" if i == 0 else "ab"[i % 2]} for i in range(200)]
    assert infer(one_bar).task == "classification"
    assert infer([{"prompt": "p", "response": "r", "topic": "x"}] * 5, label_column="topic").task == "classification"
    conll = tmp_path / "d.conll"
    conll.write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in zip(*s)) for s in entity_sentences(20)) + "\n")
    assert infer_task(DataConfig(train=str(conll))).task == "token-classification"
    assert infer_task(DataConfig(train="mr")).task == "classification"  # a built-in knows its task: nothing read


def test_a_task_the_config_names_is_never_replaced(files):
    sets = str(files["sets"])
    for overrides in ({"task": "classification"}, {"task.name": "classification"}):
        cfg = load_config(overrides={"data.train": sets, **overrides}, infer_task=True)
        assert cfg.task.name == "classification" and cfg._task_inferred is None
    # Task options without a name: the name is inferred, and the options say how to read the data.
    files["sets"].write_text(files["sets"].read_text().replace("|", ";"))
    cfg = load_config(overrides={"data.train": sets, "task.label_separator": ";"}, infer_task=True)
    assert cfg.task.name == "multi-label" and cfg.task.label_separator == ";"
    # The Python API infers only when asked: a program's config means the same whatever data it is given.
    assert load_config(overrides={"data.train": sets}).task.name == "classification"


@pytest.mark.e2e
def test_a_run_saves_the_task_it_inferred(files, tiny_model, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    code, _, err = ftune_cli(monkeypatch, capsys, "train", "--model", tiny_model, "--data", str(files["sets"]),
                             "--epochs", "1", "--batch-size", "32", "--set", "data.max_length=32", "--set",
                             "train.baselines=false", "--tracking", "none", "--output-dir", str(run_dir), "--quiet")
    assert code == 0, err
    assert err.startswith("task: multi-label (inferred: ")
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["task"]["name"] == "multi-label"
