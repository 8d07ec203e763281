"""The README.md of an export folder: what the model is, its files, a plain onnxruntime snippet that runs without
ftune, and how the int8 model compares with fp32."""

from __future__ import annotations

import json

from ftune.card import RunFacts, cell, file_name, local_paths, portable, score_line
from ftune.methods import METHODS


# export.json's "format", as the README and the export messages name it
FORMAT_NAMES = {"onnx": "ONNX", "ort": "ONNX Runtime (ORT format)", "executorch": "ExecuTorch"}


def export_readme(run, info: dict, task, tokenizer) -> str:
    """README.md of an export folder: what the model is, its files, how to run it with onnxruntime alone, and how
    the int8 model compares with fp32 (export.json's parity figures). `run` is the exported ftune.run.Run."""
    facts = RunFacts.read(run.path)
    hub_id, base_name = facts.base()
    base = f"[{hub_id}](https://huggingface.co/{hub_id})" if hub_id else base_name
    labels = f" (labels: {', '.join(facts.labels)})" if facts.labels and task.name != "regression" else ""
    parity = info.get("parity", {})
    files, runtime = info["files"], info.get("format", "onnx")
    sizes = {v: parity.get(f"{runtime}-{v}", {}).get("bytes", 0) / 1e6 for v in files}
    if runtime == "executorch":
        rows = [(files["fp32"], f"the program in fp32, lowered to XNNPACK: inputs {', '.join(info['inputs'])} [1, "
                                f"2 to {info['max_length']} tokens], int64, one text unpadded; output logits [1, "
                                f"{len(facts.labels) or 1}]; {sizes['fp32']:.1f} MB")]
    else:
        mobile = ", ONNX Runtime format: its mobile packages load it too" if runtime == "ort" else ""
        rows = [(files["fp32"], f"the model in fp32 (opset {info['opset']}{mobile}): inputs "
                                f"{', '.join(info['inputs'])} [batch, sequence], int64; output logits [batch, "
                                f"{len(facts.labels) or 1}]; {sizes['fp32']:.1f} MB")]
    if "int8" in files:
        how = ("int8 linear layers (dynamic activations) and int8 embedding rows" if runtime == "executorch" else
               "int8 weights (dynamic quantization)")
        rows.append((files["int8"], f"the same with {how}; {sizes['int8']:.1f} MB"))
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
    name = FORMAT_NAMES[runtime]
    text = "\n\n".join([
        f"# {facts.name}: {name} export",
        f"A {task.name} model{labels} fine-tuned from {base} "
        f"with ftune (method: {facts.config.method.name}) on {file_name(facts.config.data.train)}, exported to {name}"
        f"{merged} {score}",
        f"## Files\n\n{table}",
        (_executorch_section(info, files) if runtime == "executorch" else
         "## Run it with onnxruntime\n\nNeeds only `pip install onnxruntime tokenizers numpy`; run it in this "
         "folder.\n\n"
         f"```python\n{onnx_snippet(info, task, tokenizer, len(facts.labels))}```")
        + "\n\nWith ftune: `ftune predict FOLDER --text \"...\"`, "
        f"`ftune eval FOLDER --data test.csv`, `ftune serve FOLDER`. They use the int8 model when the folder has it "
        f"(and say so); `--variant fp32` picks {files['fp32']}."
        + (f" For int8 here, open {files['int8']} instead." if "int8" in files else "")
        + (f" ftune reads a text longer than {info['max_length']} tokens in overlapping windows; this code cuts it."
           if getattr(getattr(task.options, "long_text", None), "strategy", None) == "chunk" else ""),
        _parity_section(parity, task, runtime, name)])
    return portable(text + "\n", local_paths(facts))


def _executorch_section(info: dict, files: dict) -> str:
    """How to run a .pte: ExecuTorch's Python runtime here, its Module API on a phone."""
    feed = ", ".join(f'torch.tensor([encoding.{ENCODING_FIELDS[name]}])' for name in info["inputs"])
    return f"""## Run it with ExecuTorch

On a phone: ExecuTorch's Android (`org.pytorch.executorch.Module`) or iOS runtime, built with the XNNPACK backend
(and, for {files.get('int8', 'an int8 program')}, the quantized kernels), loads the file as it is; tokenize with the
`tokenizers` library or the platform's port of tokenizer.json. In Python (`pip install executorch tokenizers`):

```python
import executorch.kernels.quantized  # the int8 embedding kernel
import torch
from executorch.runtime import Runtime
from tokenizers import Tokenizer

tokenizer = Tokenizer.from_file("tokenizer.json")
tokenizer.enable_truncation(max_length={info['max_length']})
method = Runtime.get().load_program("{files['fp32']}").load_method("forward")
encoding = tokenizer.encode("a text to label")
logits = method.execute([{feed}])[0]
```"""


def _parity_section(parity: dict, task, runtime: str = "onnx", title: str = "ONNX") -> str:
    metric = parity.get("metric", task.headline())

    def shown(value, form: str) -> str:
        return "" if value is None else form.format(value)

    models = {name: parity[name] for name in ("pytorch", f"{runtime}-fp32", f"{runtime}-int8")
              if isinstance(parity.get(name), dict)}
    rows = [f"| {name} | {shown(row.get(metric), '{:.4f}')} | {shown(row.get('max_abs_diff'), '{:.2g}')} | "
            f"{shown(row.get('same_label_as_pytorch'), '{:.1%}')} | "
            f"{shown(row['bytes'] / 1e6 if 'bytes' in row else None, '{:.1f}')} |" for name, row in models.items()]
    where = parity.get("data") or "the run's test split"
    return (f"## int8 against fp32\n\nEach {title} model against the run's PyTorch model on {parity.get('texts', '?')} "
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

{tokenize}session = ort.InferenceSession(f"{{folder}}/{info['files']['fp32']}")
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
    if task.name == "token-classification":
        words = ("[e.word_ids for e in encodings]" if "encodings = " in tokenize else
                 "[encoded.word_ids(i) for i in range(len(texts))]")
        return head + labels + f'''# a tag per word, read off its first sub-token (words as the tokenizer splits them;
# ftune splits a text at whitespace and tokenizes the words)
for text, words, row in zip(texts, {words}, logits):
    firsts = {{word: i for i, word in reversed(list(enumerate(words))) if word is not None}}
    tags = [id2label[str(row[i].argmax())] for _, i in sorted(firsts.items())]
    print(json.dumps({{"text": text, "tags": tags}}))
'''
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
