"""`ftune export RUN --format gguf`: a LoRA chat run merged and written as f16 and q8_0 GGUF files, which
transformers' GGUF loader reads back with the same next-token logits (within the stated tolerance), the same
tokenizer and chat template; an Ollama Modelfile beside them; and the runs GGUF cannot hold refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from ftune.export_gguf import TOLERANCE
from ftune.tiny import build_tiny_decoder
from helpers import chat_run, ftune_cli, instructions

CHAT = [{"role": "user", "content": "what is the opposite of hot ?"},
        {"role": "assistant", "content": "the opposite of hot is cold ."}]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A LoRA causal-lm run of a tiny decoder with a byte-level BPE tokenizer (as Llama 3's and Qwen's), exported."""
    import ftune
    from ftune.export_gguf import export_gguf

    root = tmp_path_factory.mktemp("gguf")
    rows = instructions(200, seed=2)
    decoder = build_tiny_decoder(root / "decoder", [t for r in rows for t in r.values()], byte_level=True)
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = ftune.load_config(overrides={
        "task": "causal-lm", "model.name": str(decoder), "data.train": str(root / "data.jsonl"),
        "data.max_length": 64, "train.epochs": 1, "train.learning_rate": 1e-3, "method.name": "lora",
        "tracking.backend": "none", "output_dir": str(root / "run")})
    run = ftune.train(config, quiet=True)
    return run.path, export_gguf(run.path)


def test_transformers_reads_the_files_back_with_the_same_logits(exported):
    run, folder = exported
    info = json.loads((folder / "export.json").read_text())
    assert info["architecture"] == "llama" and set(info["files"]) == {"f16", "q8_0"}
    for kind in ("f16", "q8_0"):
        figures = info["parity"][kind]
        assert figures["max_abs_diff"] <= TOLERANCE[kind] and figures["positions"] > 100
        assert figures["same_next_token"] >= (0.99 if kind == "f16" else 0.9)
    assert info["parity"]["q8_0"]["bytes"] < 0.7 * info["parity"]["f16"]["bytes"]

    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    merged = AutoPeftModelForCausalLM.from_pretrained(run / "adapter").merge_and_unload().eval()
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file="model-f16.gguf").eval()
    ids = torch.tensor([[5, 7, 9, 11, 13, 2]])
    with torch.no_grad():
        assert (merged(input_ids=ids).logits - loaded(input_ids=ids).logits).abs().max() <= TOLERANCE["f16"]


def test_the_tokenizer_chat_template_and_end_of_turn_travel_in_the_file(exported):
    run, folder = exported
    from transformers import AutoTokenizer

    ours = AutoTokenizer.from_pretrained(run / "adapter")
    theirs = AutoTokenizer.from_pretrained(folder, gguf_file="model-q8_0.gguf")
    assert theirs.chat_template == ours.chat_template and theirs.eos_token == "<|end|>"
    rendered = [list(t.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]) for t in (ours, theirs)]
    assert rendered[0] == rendered[1]
    assert ours("héllo wörld <|end|>")["input_ids"] == theirs("héllo wörld <|end|>")["input_ids"]
    assert (folder / "Modelfile").read_text() == 'FROM ./model-q8_0.gguf\nPARAMETER stop "<|end|>"\n'
    import gguf

    fields = gguf.GGUFReader(folder / "model-f16.gguf").fields  # GPT-2's split rule, by the name llama.cpp knows
    assert bytes(fields["tokenizer.ggml.pre"].parts[-1]).decode() == "gpt-2"


def test_runs_gguf_cannot_hold_are_refused_in_one_line(tmp_path, monkeypatch, capsys, tiny_config):
    import ftune

    word_level = chat_run(tmp_path / "words", instructions(32), [t for r in instructions(32) for t in r.values()])
    code, _, err = ftune_cli(monkeypatch, capsys, "export", word_level, "--format", "gguf")
    assert code == 2 and "byte-level BPE" in err and len(err.strip().splitlines()) == 1, err
    classifier = ftune.train(tiny_config(**{"train.epochs": 1, "output_dir": str(tmp_path / "classifier")}), quiet=True)
    code, _, err = ftune_cli(monkeypatch, capsys, "export", str(classifier.path), "--format", "gguf")
    assert code == 2 and "use --format onnx" in err, err


def test_llama_cpp_answers_from_the_file(exported):
    """Only where llama.cpp's Python binding is installed (it builds from source; not in the lock)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    _, folder = exported
    llm = llama_cpp.Llama(model_path=str(folder / "model-f16.gguf"), n_ctx=128, verbose=False)
    answer = llm.create_chat_completion(messages=CHAT[:1], max_tokens=8, temperature=0)
    assert isinstance(answer["choices"][0]["message"]["content"], str)
