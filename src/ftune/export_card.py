"""The README.md of an export folder: what the model is, its files, a plain onnxruntime snippet that runs without
ftune, and how the int8 model compares with fp32."""

from __future__ import annotations

import json

from ftune.card import RunFacts, cell, file_name, local_paths, portable, score_line
from ftune.methods import METHODS


def export_readme(run, info: dict, task, tokenizer) -> str:
    """README.md of an export folder: what the model is, its files, how to run it with onnxruntime alone, and how
    the int8 model compares with fp32 (export.json's parity figures). `run` is the exported ftune.run.Run."""
    facts = RunFacts.read(run.path)
    hub_id, base_name = facts.base()
    base = f"[{hub_id}](https://huggingface.co/{hub_id})" if hub_id else base_name
    labels = f" (labels: {', '.join(facts.labels)})" if facts.labels and task.name != "regression" else ""
    parity = info.get("parity", {})
    files = info["files"]
    sizes = {v: parity.get(f"onnx-{v}", {}).get("bytes", 0) / 1e6 for v in files}
    rows = [(files["fp32"], f"the model in fp32 (opset {info['opset']}): inputs {', '.join(info['inputs'])} "
                            f"[batch, sequence], "
                            f"int64; output logits [batch, {len(facts.labels) or 1}]; {sizes['fp32']:.1f} MB")]
    if "int8" in files:
        rows.append((files["int8"], f"the same with int8 weights (dynamic quantization); {sizes['int8']:.1f} MB"))
    rows += [("config.json", "the model's transformers config: id2label, label2id, architecture"),
             ("tokenizer.json, tokenizer_config.json", "the tokenizer"),
             ("labels.json", "the label names in class-id order"),
             ("export.json", "how ftune made the export (inputs, max length, task, parity) and the sha256 of every "
                             "other file, which ftune checks before it loads them"),
             ("README.md", "this file")]
    table = "| file | what it is |\n|---|---|\n" + "\n".join(f"| {a} | {cell(b)} |" for a, b in rows)
    score = score_line(facts, lead="The run's test")
    method = facts.config.method.name
    merged = f" (the {method} adapter merged into the weights)." if METHODS[method].trains_adapter else "."
    text = "\n\n".join([
        f"# {facts.name}: ONNX export",
        f"A {task.name} model{labels} fine-tuned from {base} "
        f"with ftune (method: {facts.config.method.name}) on {file_name(facts.config.data.train)}, exported to ONNX"
        f"{merged} {score}",
        f"## Files\n\n{table}",
        "## Run it with onnxruntime\n\nNeeds only `pip install onnxruntime tokenizers numpy`; run it in this "
        "folder.\n\n"
        f"```python\n{onnx_snippet(info, task, tokenizer, len(facts.labels))}```\n\n"
        "With ftune: `ftune predict FOLDER --text \"...\"`, "
        f"`ftune eval FOLDER --data test.csv`, `ftune serve FOLDER`. They use model.int8.onnx when the folder has it "
        f"(and say so); `--variant fp32` picks model.onnx."
        + (" For int8 here, open model.int8.onnx instead." if "int8" in files else "")
        + (f" ftune reads a text longer than {info['max_length']} tokens in overlapping windows; this code cuts it."
           if getattr(getattr(task.options, "long_text", None), "strategy", None) == "chunk" else ""),
        _parity_section(parity, task)])
    return portable(text + "\n", local_paths(facts))


def _parity_section(parity: dict, task) -> str:
    metric = parity.get("metric", task.headline())

    def shown(value, form: str) -> str:
        return "" if value is None else form.format(value)

    models = {name: parity[name] for name in ("pytorch", "onnx-fp32", "onnx-int8")
              if isinstance(parity.get(name), dict)}
    rows = [f"| {name} | {shown(row.get(metric), '{:.4f}')} | {shown(row.get('max_abs_diff'), '{:.2g}')} | "
            f"{shown(row.get('same_label_as_pytorch'), '{:.1%}')} | "
            f"{shown(row['bytes'] / 1e6 if 'bytes' in row else None, '{:.1f}')} |" for name, row in models.items()]
    where = parity.get("data") or "the run's test split"
    return (f"## int8 against fp32\n\nEach ONNX model against the run's PyTorch model on {parity.get('texts', '?')} "
            f"held-out texts ({where}); int8 weights are smaller and faster on a CPU but may answer otherwise on a "
            f"few texts, as the last columns show.\n\n| model | {metric} | max \\|logit diff\\| | same label as "
            f"PyTorch | size MB |\n|---|---|---|---|---|\n" + "\n".join(rows))


# Which tokenizers.Encoding field feeds each graph input.
ENCODING_FIELDS = {"input_ids": "ids", "token_type_ids": "type_ids", "attention_mask": "attention_mask"}


def onnx_snippet(info: dict, task, tokenizer, num_labels: int) -> str:
    """Python that labels texts with this export through onnxruntime and the tokenizers library (transformers'
    tokenizer where the folder has no tokenizer.json), as ftune does: same truncation, padding and answer."""
    inputs, length = info["inputs"], info["max_length"]
    if getattr(tokenizer, "is_fast", False) and all(name in ENCODING_FIELDS for name in inputs):
        feed = "".join(f'\n    "{name}": [e.{ENCODING_FIELDS[name]} for e in encodings],' for name in inputs)
        library = "from tokenizers import Tokenizer"
        tokenize = f'''tokenizer = Tokenizer.from_file(f"{{folder}}/tokenizer.json")
tokenizer.enable_truncation(max_length={length})  # the length the model was trained with
tokenizer.enable_padding(pad_id={tokenizer.pad_token_id or 0}, pad_token={json.dumps(tokenizer.pad_token or "")})
encodings = tokenizer.encode_batch(texts)
inputs = {{{feed}\n}}
'''
    else:
        library = "from transformers import AutoTokenizer"
        tokenize = f'''tokenizer = AutoTokenizer.from_pretrained(folder)
encoded = tokenizer(texts, padding=True, truncation=True, max_length={length})  # as the model was trained
inputs = {{name: encoded[name] for name in {inputs!r}}}
'''
    head = f'''import json

import numpy as np
import onnxruntime as ort
{library}

folder = "."  # this export folder
texts = ["a first text to label", "and a second, longer one"]

{tokenize}session = ort.InferenceSession(f"{{folder}}/model.onnx")
feed = {{name: np.array(ids, dtype=np.int64) for name, ids in inputs.items()}}
logits = session.run(["logits"], feed)[0]
'''
    if task.name == "regression":
        mean, std = task.scale()
        return head + f'''values = logits[:, 0] * {std!r} + {mean!r}  # the model learned the target standardized
for text, value in zip(texts, values):
    print(json.dumps({{"text": text, "value": float(value)}}))
'''
    labels = 'id2label = json.load(open(f"{folder}/config.json"))["id2label"]\n'
    if task.name == "multi-label":
        thresholds = [round(float(t), 6) for t in task.thresholds(num_labels)]
        return head + labels + f'''probs = 1 / (1 + np.exp(-logits))
thresholds = np.array({thresholds})  # each label's decision threshold, as ftune uses them
for text, p in zip(texts, probs):
    chosen = [id2label[str(i)] for i in np.argsort(-p, kind="stable") if p[i] >= thresholds[i]]
    print(json.dumps({{"text": text, "labels": chosen}}))
'''
    return head + labels + '''probs = np.exp(logits - logits.max(axis=1, keepdims=True))
probs /= probs.sum(axis=1, keepdims=True)
for text, p in zip(texts, probs):
    print(json.dumps({"text": text, "label": id2label[str(p.argmax())], "score": float(p.max())}))
'''
