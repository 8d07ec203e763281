"""Preference tuning (task preference: DPO, ORPO, SimPO) and --init-from: the loss equals TRL's DPOTrainer's on the
same batch, SFT then DPO from the CLI lifts held-out reward accuracy from chance, and bad pairs are one line each.
The contract checks every task gets are in test_task_contract.py."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import ftune
from ftune.data import collate
from ftune.tasks import task_for
from ftune.tasks.preference import encode_pairs, select_pairs
from ftune.tiny import build_tiny_decoder
from helpers import ftune_cli, instructions, preference_pairs, unpaired_answers


def _jsonl(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    root = tmp_path_factory.mktemp("preference")
    texts = [t for row in preference_pairs(200) + instructions(200) for t in row.values()]
    return build_tiny_decoder(root / "decoder", texts)


def test_dpo_loss_and_gradients_equal_trls_at_step_0(decoder, tmp_path):
    """On the same 8 pairs, a policy and a different reference: TRL's DPOTrainer.compute_loss and ftune's, fp32."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = preference_pairs(8, seed=3)
    tokenizer = AutoTokenizer.from_pretrained(decoder)
    policy = AutoModelForCausalLM.from_pretrained(decoder, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(decoder, dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():  # a reference unlike the policy, so the loss is not log 2 by construction
        for weight in reference.parameters():
            weight.add_(0.05 * torch.randn_like(weight))
    chats = [{"prompt": [{"role": "user", "content": r["prompt"]}],
              "chosen": [{"role": "assistant", "content": r["chosen"]}],
              "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=8, report_to="none", beta=0.1,
                         max_length=64, use_cpu=True, bf16=False)  # bf16 would put TRL's reference under autocast
    trainer = trl.DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(chats),
                             processing_class=tokenizer)
    policy.train()
    theirs = trainer.compute_loss(policy, next(iter(trainer.get_train_dataloader())))  # all 8: a mean over pairs
    theirs.backward()
    their_grads = {name: w.grad.clone() for name, w in policy.named_parameters()}
    policy.zero_grad()

    config = ftune.load_config(overrides={"task": "preference", "model.name": str(decoder), "data.max_length": 64})
    task = task_for(config)
    data = encode_pairs(select_pairs(pd.DataFrame(rows), config.task, "pairs"), tokenizer, 64, "train")
    batch = collate(data, list(range(8)), tokenizer.pad_token_id)
    with torch.no_grad():
        batch["reference"] = task.forward(reference.eval(), batch).logp
    total, count = task.loss(task.forward(policy, batch), batch)
    ours = total / count
    ours.backward()
    assert abs(float(ours) - float(theirs)) < 1e-5 and abs(float(ours) - 0.6931) > 0.01
    for name, weight in policy.named_parameters():
        assert torch.allclose(weight.grad, their_grads[name], atol=1e-6), name


def test_sft_then_dpo_from_the_cli_lifts_held_out_reward_accuracy(decoder, tmp_path, monkeypatch, capsys):
    """SFT with LoRA, then DPO from that run (its adapter merged as the start): reward accuracy on held-out pairs
    goes from chance (the run's start is its own reference) to well above it, and the report shows both."""
    sft_data = _jsonl(tmp_path / "sft.jsonl", instructions(200, seed=2))
    pairs = _jsonl(tmp_path / "pairs.jsonl", preference_pairs(320, seed=1))
    common = ["--model", str(decoder), "--tracking", "none", "--epochs", "2", "--learning-rate", "0.001", "--method",
              "lora", "--set", "data.max_length=48"]
    code, _, err = ftune_cli(monkeypatch, capsys, "train", "--task", "causal-lm", "--data", sft_data, "--output-dir",
                             str(tmp_path / "sft"), *common)
    assert code == 0, err
    code, out, err = ftune_cli(monkeypatch, capsys, "train", "--task", "preference", "--init-from",
                               str(tmp_path / "sft"), "--data", pairs, "--output-dir", str(tmp_path / "dpo"), *common)
    assert code == 0, err
    metrics = json.loads((tmp_path / "dpo" / "metrics.json").read_text())["test"]
    assert metrics["base_model"]["reward_accuracy"] == pytest.approx(0.5, abs=0.05)
    assert metrics["finetuned"]["reward_accuracy"] >= 0.7
    assert metrics["finetuned"]["reward_margin"] > 0 and "longer_answer" in metrics
    manifest = json.loads((tmp_path / "dpo" / "run.json").read_text())
    assert "init" in manifest["model_source"]  # the merged SFT model, in the cache
    assert "reward accuracy" in (tmp_path / "dpo" / "report.md").read_text()


@pytest.mark.parametrize("loss", ["orpo", "simpo"])
def test_reference_free_losses_learn(decoder, tmp_path, loss):
    rows = preference_pairs(320, seed=4)
    config = ftune.load_config(overrides={
        "task": {"name": "preference", "loss": loss}, "model.name": str(decoder),
        "data.train": _jsonl(tmp_path / "pairs.jsonl", rows), "data.max_length": 48, "train.epochs": 2,
        "train.learning_rate": 1e-3, "method.name": "full", "tracking.backend": "none",
        "output_dir": str(tmp_path / "run")})
    run = ftune.train(config, quiet=True)
    test = json.loads((run.path / "metrics.json").read_text())["test"]["finetuned"]
    assert test["reward_accuracy"] >= 0.7


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r.update(rejected=r["chosen"]), "row 3: the chosen and rejected answers are the same text"),
    (lambda r: r.update(chosen="  "), "row 3: the chosen answer is empty"),
    (lambda r: r.update(prompt=" ".join(["hot"] * 80)), "its prompt fills data.max_length"),
])
def test_a_bad_pair_is_one_line(decoder, tmp_path, monkeypatch, capsys, change, message):
    rows = preference_pairs(40, seed=5)
    change(rows[2])
    data = _jsonl(tmp_path / "pairs.jsonl", rows)
    code, _, err = ftune_cli(monkeypatch, capsys, "train", "--task", "preference", "--model", str(decoder), "--data",
                             data, "--set", "data.max_length=48", "--output-dir", str(tmp_path / "run"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_init_from_a_run_of_another_kind_is_one_line(decoder, tiny_config, tmp_path, monkeypatch, capsys):
    classifier = ftune.train(tiny_config(**{"train.epochs": 1, "method.name": "full",
                                            "output_dir": str(tmp_path / "classifier")}), quiet=True)
    data = _jsonl(tmp_path / "pairs.jsonl", preference_pairs(40))
    code, _, err = ftune_cli(monkeypatch, capsys, "train", "--task", "preference", "--model", str(decoder),
                             "--init-from", str(classifier.path), "--data", data, "--output-dir", str(tmp_path / "x"))
    assert code == 2 and "is a classification run" in err, err
    code, _, err = ftune_cli(monkeypatch, capsys, "train", "--task", "preference", "--model", str(decoder),
                             "--init-from", str(tmp_path / "nothing"), "--data", data, "--output-dir",
                             str(tmp_path / "y"))
    assert code == 2 and "not an ftune run directory" in err, err


def test_conversational_pairs_share_the_prompt(decoder):
    """chosen and rejected as chats (TRL's conversational format, no prompt column): the prompt is their messages
    before the answer."""
    prompt = [{"role": "user", "content": "what is the opposite of hot ?"}]
    frame = pd.DataFrame({"chosen": [prompt + [{"role": "assistant", "content": "cold"}]],
                          "rejected": [prompt + [{"role": "assistant", "content": "hot"}]]})
    config = ftune.load_config(overrides={"task": "preference"})
    pairs = select_pairs(frame, config.task, "pairs.jsonl")
    assert pairs["chosen"][0][:-1] == pairs["rejected"][0][:-1] == prompt


def test_the_diagnosis_names_both_answers_falling():
    """DPO's known failure: the margin grows while the chosen answers' likelihood falls too; the fix offered is ORPO,
    which keeps learning the chosen answers. A run whose reward accuracy is clearly above its start and whose chosen
    answers held gets no diagnosis, however little its loss fell (DPO's loss starts at log 2 and moves slowly)."""
    from ftune.diagnosis import diagnose

    def metrics(chosen_shift):
        return {"test": {"finetuned": {"reward_accuracy": 0.9, "reward_accuracy_ci95": [0.85, 0.95],
                                       "chosen_shift": chosen_shift, "rejected_shift": -0.6},
                         "base_model": {"reward_accuracy": 0.5}},
                "validation": {"metric": "reward_accuracy", "history": [], "base_model": {"loss": 0.693}},
                "train": {"steps": 300}, "scores": {"metrics": ["reward_accuracy"], "lower_is_better": ["loss"]}}

    config = {"train": {"learning_rate": 5e-5, "warmup_ratio": 0.1, "epochs": 3}, "method": {"name": "full"},
              "task": {"name": "preference", "loss": "dpo"}}
    history = [{"type": "train", "step": i, "loss": v} for i, v in enumerate([0.693, 0.69, 0.685])]
    assert diagnose(metrics(0.05), history, config, "runs/x") is None
    found = diagnose(metrics(-0.3), history, config, "runs/x")
    assert found["verdict"] == "learned little"
    assert found["findings"] == ["the chosen answers' log-probability fell (-0.300 a token) along with the rejected "
                                 "ones' (-0.600) on test"]
    assert found["causes"][0].startswith("the margin grew by pushing both answers down")
    assert found["try"] == "ftune train runs/x/config.yaml --set task.loss=orpo --output-dir runs/x-retry"


def test_a_reward_model_learns_the_preference_and_predict_scores_prompt_and_answer(decoder, tmp_path, monkeypatch,
                                                                                   capsys):
    """A tiny decoder with a one-output head, Bradley-Terry on 320 pairs: held-out accuracy far above the untrained
    head's and the length heuristic's; `ftune predict --text-pair-column` scores a right answer above a wrong one."""
    pairs = _jsonl(tmp_path / "pairs.jsonl", preference_pairs(320, seed=1))
    code, _, err = ftune_cli(monkeypatch, capsys, "train", "--task", "reward-model", "--model", str(decoder), "--data",
                             pairs, "--output-dir", str(tmp_path / "rm"), "--tracking", "none", "--epochs", "3",
                             "--learning-rate", "0.001", "--method", "full")
    assert code == 0, err
    test = json.loads((tmp_path / "rm" / "metrics.json").read_text())["test"]
    assert test["finetuned"]["accuracy"] >= 0.9 and test["finetuned"]["accuracy"] > test["longer_answer"]["accuracy"]
    assert test["finetuned"]["margin"] > 1
    written = pd.read_csv(tmp_path / "rm" / "test_predictions.csv")
    assert {"chosen_score", "rejected_score", "predicted"} <= set(written.columns)
    question = "what is the opposite of hot ?"
    _jsonl(tmp_path / "ask.jsonl", [{"text": question, "answer": "the opposite of hot is cold ."},
                                    {"text": question, "answer": "the opposite of hot is up ."}])
    code, out, err = ftune_cli(monkeypatch, capsys, "predict", str(tmp_path / "rm"), "--input",
                               str(tmp_path / "ask.jsonl"), "--text-pair-column", "answer")
    assert code == 0, err
    right, wrong = (json.loads(line)["score"] for line in out.strip().splitlines())
    assert right > wrong


def test_kto_learns_from_answers_marked_good_or_bad(decoder, tmp_path):
    """Unpaired answers (no pair shares a prompt's two answers): held-out reward accuracy above the labels' balance."""
    rows = unpaired_answers(400, seed=1)
    config = ftune.load_config(overrides={
        "task": "kto", "model.name": str(decoder), "data.train": _jsonl(tmp_path / "answers.jsonl", rows),
        "data.max_length": 48, "train.epochs": 3, "train.learning_rate": 1e-3, "method.name": "full",
        "tracking.backend": "none", "output_dir": str(tmp_path / "run")}, infer_task=True)
    run = ftune.train(config, quiet=True)
    test = json.loads((run.path / "metrics.json").read_text())["test"]
    assert test["base_model"]["reward_accuracy"] == pytest.approx(0.5, abs=0.05)
    assert test["finetuned"]["reward_accuracy"] >= max(0.65, test["all_good"]["reward_accuracy"] + 0.05)
    assert test["finetuned"]["chosen_shift"] > test["finetuned"]["rejected_shift"]


@pytest.mark.parametrize("task", ["preference", "kto"])
def test_prompt_tuning_is_refused_where_a_row_holds_two_answers(task):
    from ftune.errors import ConfigError

    with pytest.raises(ConfigError, match="peft drops the position ids that keep a row's two answers apart"):
        ftune.load_config(overrides={"task": task, "method.name": "prompt-tuning"})
