"""`ftune export`: a run's model as ONNX (and int8), checked against PyTorch on held-out texts; or, with
--baseline, the run's TF-IDF baseline as ONNX, checked against scikit-learn on the run's test texts. `--format ort`
saves the ONNX graphs in ONNX Runtime's mobile format; ExecuTorch (ftune.export_executorch) shares all of
export_model but the writer.

torch.onnx (the dynamo exporter) writes the graph; onnxruntime's dynamic quantizer makes the
int8 copy. optimum's ONNX exporter would do both, but its current release requires
transformers < 4.58, and ftune is on transformers 5. skl2onnx converts the baseline's scikit-learn pipeline.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import logging
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ftune.export_card import FORMAT_NAMES, export_readme
from ftune.errors import ConfigError, RunError
from ftune.integrity import (MANIFEST_KEY, TMP_SUFFIX, manifest, read_json_file, remove_stale, staged_dir, write_json,
                             write_text)
from ftune.data import Encoded
from ftune.methods import method_for
from ftune.predictors import EXPORT_FILE, Predictor
from ftune.predictors.onnx import COLUMN_KEYS
from ftune.tasks import TASKS, task_for
from ftune.run import Run

# A format's writer: (merged model, tokenizer, folder, quantize, max_length) -> (input names, {"fp32"[, "int8"]: file})
Writer = Callable[[torch.nn.Module, object, Path, "str | None", int], tuple[list[str], dict[str, str]]]
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
README = "README.md"  # what the folder holds and how to run it without ftune (ftune.export_card)
# Every name an export writes, whatever its tokenizer (transformers' file names): a folder that holds only these
# is an earlier export, safe to replace; any other file there is the user's.
EXPORT_NAMES = {EXPORT_FILE, FP32_FILE, INT8_FILE, "model.ort", "model.int8.ort", "model.pte", "model.int8.pte",
                README, "config.json", "labels.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
                "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja",
                "chat_template.json"}
PARITY_TOLERANCE = 1e-3  # max |logit difference| between PyTorch and fp32 ONNX; float reordering stays ~1e-5
BASELINE_DIR = "baseline"  # `ftune export RUN --baseline`'s folder in the run unless --output says otherwise
BASELINE_AGREEMENT = 0.99  # least share of test texts the ONNX baseline must label as scikit-learn does
WORDS = r"[\pL\pN_]{2,}"  # scikit-learn's default token pattern, (?u)\b\w\w+\b, in onnxruntime's RE2 (skl2onnx's own
# stand-in, [a-zA-Z0-9_]+, drops accented letters and keeps one-letter words, which breaks word pairs)
LOCALE = "C.UTF-8"  # how the graph lowercases: onnxruntime's default, en_US.UTF-8, is missing on slim images, where
# the graph would then not load; C.UTF-8 is built into glibc 2.35+ and musl


def export_model(run_dir: str | Path, output_dir: str | Path | None = None, quantize: str | None = None,
                data: str | None = None, parity_samples: int = 1000, opset: int = 18,
                trust_remote_code: bool = False, format: str = "onnx", writer: Writer | None = None) -> Path:
    """Write EXPORT_DIR with model.onnx [+ model.int8.onnx] (or what another format's `writer` writes: ftune.
    export_executorch), tokenizer, labels.json and export.json (with the sha256 of every other file). An earlier
    export there is replaced only when its folder holds nothing else."""
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize {quantize!r} is not supported; use --quantize int8 or leave it out")
    name = FORMAT_NAMES[format]
    writer = writer or functools.partial(_write_ort if format == "ort" else _write_onnx, opset=opset)
    run = Run(run_dir)
    task = task_for(run.config, run.task_state)
    if not task.exportable:
        raise ConfigError(f"{run.path} is a {task.name} run; {name} export covers tasks with logits per text or token "
                          f"({', '.join(n for n, t in TASKS.items() if t.exportable)}); use `ftune predict` / "
                          f"`ftune serve` on the run directory")
    method_for(run.config).refuse_merge(f"{name} export of {run.path}", f"serve or predict the run directory itself "
                                        f"(ftune serve {run.path}, ftune predict {run.path})")
    out = Path(output_dir) if output_dir else run.path / format
    _check_output(out)  # before the minutes of work, so a refusal comes at once
    predictor = Predictor(run.path, trust_remote_code=trust_remote_code)
    held_out = _parity_data(task, run, data, parity_samples, predictor.tokenizer)
    reference = predictor.outputs(held_out, task.rows)  # before any adapter merge, so parity also checks the merge

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out.parent, out.name, lambda folder: not _foreign(folder))  # what a killed export left behind
    with staged_dir(out) as staging:
        model = predictor.plain_model().eval()  # an adapter merged
        inputs, files = writer(model, predictor.tokenizer, staging, quantize, run.config.data.max_length)
        predictor.tokenizer.save_pretrained(str(staging))
        write_json(staging / "labels.json", predictor.labels)
        _save_config(model, staging)
        info = {"format": format, "files": files, "inputs": inputs, "outputs": ["logits"],
                **({"opset": opset} if format != "executorch" else {}),
                "source_run": str(run.path.resolve()), "base_model": run.config.model.name,
                "method": run.config.method.name, "max_length": run.config.data.max_length,
                **{key: getattr(run.config.data, key) for key in COLUMN_KEYS}, "task": run.config.task.model_dump(),
                "task_state": task.state,
                "created_at": datetime.now(timezone.utc).isoformat(), "versions": _versions(),
                MANIFEST_KEY: _manifest(staging)}
        write_json(staging / EXPORT_FILE, info)  # OnnxPredictor reads it; the parity figures follow
        info["parity"] = _parity(staging, files, task, held_out, run.labels, reference, format)
        info["parity"]["data"] = Path(data).name if data else "the run's test split"  # a name: the README shows it
        write_text(staging / README, export_readme(run, info, task, predictor.tokenizer))  # with the parity figures
        info[MANIFEST_KEY] = _manifest(staging)  # the README too: every file but export.json is listed
        write_json(staging / EXPORT_FILE, info)
        _check_output(out, also=[p.name for p in staging.iterdir()])  # nothing of the user's appeared meanwhile
    return out


export_onnx = export_model  # ONNX is its default format


def _write_onnx(model: torch.nn.Module, tokenizer, folder: Path, quantize: str | None, max_length: int, opset: int
                ) -> tuple[list[str], dict[str, str]]:
    """model.onnx [+ model.int8.onnx] in `folder`: (the graph's input names, export.json's "files"). Any length
    runs: the sequence axis is dynamic."""
    inputs = _export_graph(model, tokenizer, folder / FP32_FILE, opset)
    files = {"fp32": FP32_FILE}
    if quantize == "int8":
        quantize_int8(folder / FP32_FILE, folder / INT8_FILE)
        files["int8"] = INT8_FILE
    return inputs, files


def _write_ort(model: torch.nn.Module, tokenizer, folder: Path, quantize: str | None, max_length: int, opset: int
               ) -> tuple[list[str], dict[str, str]]:
    """ONNX Runtime's mobile format: each ONNX graph saved by onnxruntime itself as .ort (basic graph optimizations
    only: those hold on every device), the .onnx files then removed."""
    import onnxruntime as ort

    inputs, graphs = _write_onnx(model, tokenizer, folder, quantize, max_length, opset)
    files = {}
    for variant, graph in graphs.items():
        files[variant] = graph.removesuffix(".onnx") + ".ort"
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(folder / files[variant])
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.add_session_config_entry("session.save_model_format", "ORT")
        options.log_severity_level = 3
        ort.InferenceSession(str(folder / graph), options, providers=["CPUExecutionProvider"])
        (folder / graph).unlink()
    return inputs, files


def _manifest(folder: Path) -> dict[str, str]:
    return manifest(folder, (p.name for p in folder.iterdir() if p.name != EXPORT_FILE))


def _save_config(model: torch.nn.Module, folder: Path) -> None:
    """config.json: the model's transformers config (id2label, label2id, architecture), which onnxruntime users
    and optimum's ORTModel classes read beside the graph."""
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]  # set by a model's save_pretrained, not by the config's own
    config.save_pretrained(str(folder))


def _check_output(out: Path, also: list[str] = ()) -> None:
    """Refuse an --output folder that holds anything an export does not write: replacing it would delete it."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"{out} is a {'symbolic link' if out.is_symlink() else 'file'}; pass a folder (new, empty, "
                          f"or an earlier export) with --output")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / EXPORT_FILE).is_file():
        raise ConfigError(f"{out} exists and is not an ftune export; pick an empty or new --output folder")
    foreign = _foreign(out, also)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConfigError(f"{out} holds files an export does not write ({shown}); an earlier export is replaced only "
                          f"when nothing else is in its folder: move them out, or pick another --output folder")


def _foreign(folder: Path, also: list[str] = ()) -> list[str]:
    """What in `folder` an export did not write: anything but its own file names, those its export.json lists, and
    temp files of a write cut short. Sub-folders are always foreign."""
    listed: set = set()
    try:
        if not (folder / EXPORT_FILE).is_symlink():  # a link could lead anywhere: not read (and is itself foreign)
            old = read_json_file(folder / EXPORT_FILE, "")  # within the size limit of every json read from a folder
            listed = {name for name in old.get(MANIFEST_KEY, {}) if isinstance(name, str) and "/" not in name}
    except (RunError, AttributeError, TypeError):
        pass  # missing or damaged: only the names every export writes count as its own
    ours = EXPORT_NAMES | listed | set(also)
    return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
                  if p.is_dir() or p.is_symlink() or not (p.name in ours or p.name.endswith(TMP_SUFFIX)))


def _parity_data(task, run: Run, data: str | None, limit: int, tokenizer) -> Encoded:
    """Held-out examples with labels, encoded as the task encodes them: the first `limit` of the run's own test
    split, or of a labeled file given with --data."""
    if data:
        encoded = task.encode_source(data, run.config.data, run.labels, tokenizer)
    else:
        encoded = task.encode_splits(task.load_splits(run.config.train.seed), tokenizer)["test"]
    documents = np.arange(len(encoded)) if encoded.groups is None else encoded.groups  # chunked: whole documents
    return encoded.subset(np.flatnonzero(documents < limit))


def _export_graph(model: torch.nn.Module, tokenizer, path: Path, opset: int) -> list[str]:
    """Trace the (merged) model with dynamic batch and sequence axes; input names come from the tokenizer."""
    sample = tokenizer(["a short text to trace", "and a second, longer one, so the batch holds padding"],
                       return_tensors="pt", padding=True)
    names = list(sample.keys())
    model = _LogitsOnly(model, names)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with _quiet():
        torch.onnx.export(model, tuple(sample[n] for n in names), str(path), input_names=names,
                          output_names=["logits"], opset_version=opset, dynamo=True, external_data=False,
                          dynamic_shapes=(tuple({0: batch, 1: sequence} for _ in names),))
    return names


class _LogitsOnly(torch.nn.Module):
    """Positional tensors in, logits out: the plain signature an ONNX graph has."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors))).logits


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8: weights quantized once, activations per batch; no calibration data needed.

    Per-channel weight scales: on mr, per-tensor scales cost the LoRA model 2.5 points, per-channel 0.9.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Shape hints from the trace: some exporter releases (torch 2.11) leave ones that contradict
    # the dynamic axes, and the quantizer's shape inference then refuses the graph. Drop them.
    graph = onnx.load(str(source))
    del graph.graph.value_info[:]
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        onnx.save(graph, f"{tmp}/model.onnx")
        quantize_dynamic(f"{tmp}/model.onnx", str(target), weight_type=QuantType.QInt8, per_channel=True)


def _parity(folder: Path, files: dict, task, data: Encoded, labels: list[str], reference: list, format: str = "onnx"
            ) -> dict:
    """Each exported model's outputs (through its own runtime) against PyTorch's, and every model's headline score on
    the same examples."""
    from ftune.predictors import export_predictor

    predictor = export_predictor(folder)
    report = {"texts": len(data), "metric": task.headline(), "pytorch": _scores(task, data, labels, reference, None)}
    for variant, name in files.items():
        rows = predictor(folder, variant).outputs(data, task.rows)
        report[f"{format}-{variant}"] = _scores(task, data, labels, rows, reference) | {"bytes": (folder / name).stat().st_size}
    fp32_diff = report[f"{format}-fp32"]["max_abs_diff"]
    if not fp32_diff <= PARITY_TOLERANCE:
        raise RunError(f"the {format} model disagrees with PyTorch (max |logit diff| {fp32_diff:.3g} > "
                       f"{PARITY_TOLERANCE}); nothing was written. Please report it with the model name")
    return report


def _scores(task, data: Encoded, labels: list[str], rows: list, reference: list | None) -> dict:
    """The task's headline score of these outputs; against the reference, the largest logit difference and how often
    the top output agrees."""
    scores = {task.headline(): task.score(rows, data, labels)[0][task.headline()] if len(data) else None}
    if reference is not None:  # a row per text (classifiers) or per token (taggers): compared output by output
        logits, expected = (np.concatenate([np.atleast_2d(row) for row in r]) for r in (rows, reference))
        scores["max_abs_diff"] = float(np.abs(logits - expected).max()) if len(data) else 0.0
        if logits.shape[-1] > 1:  # one output (regression): no top output to agree on
            scores["same_label_as_pytorch"] = float((logits.argmax(1) == expected.argmax(1)).mean()) if len(data) else None
    return scores


def _versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


@contextlib.contextmanager
def _quiet():
    """The exporter and quantizer print progress and advice meant for their developers, not our users."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


# --- the baseline -------------------------------------------------------------------------------------------------

def export_baseline(run_dir: str | Path, output_dir: str | Path | None = None) -> Path:
    """Write EXPORT_DIR with the run's TF-IDF baseline, refitted on the run's own training split, as one ONNX graph
    (model.onnx: raw strings in; a label id and every label's score out), labels.json, README.md and export.json
    ("kind": "classical", with the parity figures). Refused unless it gives scikit-learn's label on at least
    BASELINE_AGREEMENT of the run's test texts."""
    from ftune.predictors.classical import KIND, PROBABILITIES, ClassicalPredictor
    from ftune.tasks.baselines import fit_chosen, joined_texts

    run = Run(run_dir)
    task = task_for(run.config, run.task_state)
    if not task.ships_baseline:
        raise ConfigError(f"{run.path} is a {task.name} run; --baseline exports the TF-IDF baseline of "
                          f"{', '.join(n for n, t in TASKS.items() if t.ships_baseline)} runs only (single texts and "
                          f"text pairs): a {task.name} run's "
                          f"baseline cannot be exported yet, its fine-tuned model can (ftune export {run.path})")
    baseline = run.metrics["test"].get("tfidf")
    if not isinstance(baseline, dict):
        raise RunError(f"{run.path} has no TF-IDF baseline (it trained with train.baselines or train.evaluate_test "
                       f"off); train it again with both on to export its baseline")
    if not isinstance(baseline.get("chosen"), str):
        raise RunError(f"{run.path} was trained before its baseline recorded which model it chose; retrain it to "
                       f"export its baseline")
    out = Path(output_dir) if output_dir else run.path / BASELINE_DIR
    _check_output(out)
    splits = task.load_splits(run.config.train.seed)
    found, trained_on = splits.fingerprint(), run.manifest.get("data_hash")
    if found != trained_on:  # the baseline is fitted again: only on the very split it was chosen on
        raise RunError(f"{run.path}: the data ({run.config.data.train}) changed since the run trained (data hash "
                       f"{found[:12]}, was {str(trained_on)[:12]}); restore the data it trained on, or train a new run")
    pipeline = fit_chosen(splits, baseline["chosen"])
    if pipeline is None:
        raise RunError(f"{run.path}'s baseline ({baseline['chosen']}) is not a model this ftune's baseline grid "
                       f"makes; retrain the run to export its baseline")
    graph = _baseline_graph(pipeline, baseline["chosen"], len(run.labels), run.path)
    test, truth = joined_texts(splits.test), splits.test["label"].to_numpy()
    validation = float(np.mean(pipeline.predict(joined_texts(splits.validation)) == splits.validation["label"]))

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out.parent, out.name, lambda folder: not _foreign(folder))
    with staged_dir(out) as staging:
        graph_bytes = graph.SerializeToString()
        (staging / FP32_FILE).write_bytes(graph_bytes)
        write_json(staging / "labels.json", run.labels)
        info = {"kind": KIND, "format": "onnx", "files": {"model": FP32_FILE}, "inputs": ["text"],
                "outputs": ["label", "scores"],
                "scores": PROBABILITIES if hasattr(pipeline, "predict_proba") else "decision",
                "chosen": baseline["chosen"], "features": _vocabulary(pipeline), "pair_separator": " [SEP] ",
                "validation_accuracy": validation, "validation_accuracy_at_training": baseline.get("validation"),
                "source_run": str(run.path.resolve()), "task": run.config.task.model_dump(),
                **{key: getattr(run.config.data, key) for key in COLUMN_KEYS},
                "created_at": datetime.now(timezone.utc).isoformat(), "versions": _baseline_versions(),
                MANIFEST_KEY: _manifest(staging)}
        write_json(staging / EXPORT_FILE, info)  # ClassicalPredictor reads it; the parity figures follow
        ids, scores = ClassicalPredictor(staging).scores(test)  # the test split is never empty in a finished run
        predicted = pipeline.predict(test)
        agreed = float(np.mean(ids == predicted))
        info["parity"] = {"texts": len(test), "metric": "accuracy",
                          "sklearn": {"accuracy": float(np.mean(predicted == truth))},
                          "onnx": {"accuracy": float(np.mean(ids == truth)), "same_label_as_sklearn": agreed,
                                   "max_abs_diff": float(np.abs(scores - _sklearn_scores(pipeline, test)).max()),
                                   "bytes": len(graph_bytes)}}
        if agreed < BASELINE_AGREEMENT:
            raise RunError(f"the ONNX baseline gives scikit-learn's label on only {agreed:.1%} of the run's "
                           f"{len(test)} test texts (under {BASELINE_AGREEMENT:.0%}): onnxruntime reads this data's "
                           f"words otherwise; nothing was written. Export the fine-tuned model instead "
                           f"(ftune export {run.path})")
        write_text(staging / README, _baseline_readme(run, info))
        info[MANIFEST_KEY] = _manifest(staging)
        write_json(staging / EXPORT_FILE, info)
        _check_output(out, also=[p.name for p in staging.iterdir()])
    return out


def _baseline_graph(pipeline, chosen: str, labels: int, run_path: Path):
    """The fitted pipeline as one ONNX graph: input `text` (strings), outputs `label` (class ids) and `scores`."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType

    vectorizers = [vectorizer for _, vectorizer in pipeline.named_steps["features"].transformer_list]
    if any(vectorizer.analyzer != "word" for vectorizer in vectorizers):  # skl2onnx raises NotImplementedError
        raise ConfigError(f"{run_path}'s baseline ({chosen}) reads character n-grams within words, which skl2onnx "
                          f"cannot convert to ONNX; baselines over word n-grams export, and the fine-tuned model "
                          f"does too (ftune export {run_path})")
    model = pipeline.named_steps["model"]
    options = {id(v): {"tokenexp": WORDS, "locale": LOCALE} for v in vectorizers}
    # skl2onnx gives a classifier a ZipMap (a list of dicts) unless told not to; a linear SVM takes no such option,
    # and naming any other option keeps skl2onnx from adding it (which it then refuses)
    options[id(model)] = {"zipmap": False} if hasattr(model, "predict_proba") else {"nocl": False}
    with _quiet():
        graph = convert_sklearn(pipeline, initial_types=[("text", StringTensorType([None]))], options=options,
                                target_opset=18)
    _fix_sublinear_tf(graph.graph)
    _name_scores(graph.graph, labels)
    return graph


def _fix_sublinear_tf(graph) -> None:
    """skl2onnx writes TF-IDF's sublinear tf as log(1 + tf); scikit-learn's is 1 + log(tf) where tf > 0 (0 stays 0),
    so a word said twice would weigh otherwise. Each such Add(tf, ones) -> Log pair becomes
    Where(tf > 0, Log(tf) + ones, 0). A skl2onnx that writes it otherwise is left alone (parity then tells)."""
    from onnx import helper, numpy_helper

    ones = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    ones = {name: value for name, value in ones.items() if value.size and np.all(value == 1)}
    made = {output: node for node in graph.node for output in node.output}
    nodes = list(graph.node)
    for log in [node for node in nodes if node.op_type == "Log"]:
        add = made.get(log.input[0])
        if add is None or add.op_type != "Add" or len(add.input) != 2 or add.input[1] not in ones:
            continue
        tf, one, out = add.input[0], add.input[1], log.output[0]
        zero = f"{out}_zero"
        graph.initializer.append(numpy_helper.from_array(np.zeros(1, ones[one].dtype), zero))
        rewritten = [helper.make_node("Log", [tf], [f"{out}_log"]),
                     helper.make_node("Add", [f"{out}_log", one], [f"{out}_plus1"]),
                     helper.make_node("Greater", [tf, zero], [f"{out}_counted"]),
                     helper.make_node("Where", [f"{out}_counted", f"{out}_plus1", zero], [out])]
        at = nodes.index(add)
        nodes = nodes[:at] + rewritten + [n for n in nodes[at + 1:] if n is not log]
    del graph.node[:]
    graph.node.extend(nodes)


def _name_scores(graph, labels: int) -> None:
    """The second output as `scores` [batch, labels]: skl2onnx calls it probabilities, which a linear SVM's decision
    values are not, and gives a binary SVM one column (the second class's value): that becomes [-value, value], as
    scikit-learn's decision_function reads for two classes."""
    from onnx import helper

    output = graph.output[1]
    if labels == 2 and output.type.tensor_type.shape.dim[1].dim_value == 1:
        graph.node.extend([helper.make_node("Neg", [output.name], ["negated"]),
                           helper.make_node("Concat", ["negated", output.name], ["scores"], axis=1)])
    else:
        graph.node.append(helper.make_node("Identity", [output.name], ["scores"]))
    output.name = "scores"
    output.type.tensor_type.shape.dim[1].dim_value = labels


def _sklearn_scores(pipeline, texts: list[str]) -> np.ndarray:
    """What the graph's `scores` should hold: probabilities, or decision values ([-d, d] for two classes)."""
    if hasattr(pipeline, "predict_proba"):
        return pipeline.predict_proba(texts)
    scores = pipeline.decision_function(texts)
    return np.stack([-scores, scores], 1) if scores.ndim == 1 else scores


def _vocabulary(pipeline) -> int:
    """The number of TF-IDF features: the width of the graph's dense matrix (the predictor sizes batches by it)."""
    return sum(len(v.vocabulary_) for _, v in pipeline.named_steps["features"].transformer_list)


def _baseline_versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("scikit-learn", "skl2onnx", "onnx", "onnxruntime")}


def _baseline_readme(run: Run, info: dict) -> str:
    """README.md of a baseline export: what the model is, its files, how to run it with onnxruntime alone."""
    parity, names = info["parity"], json.dumps(run.labels)
    scores = ("each label's probability" if info["scores"] == "probabilities" else
              "each label's linear SVM decision value (higher: more likely; not a probability)")
    return f"""# {run.path.name}: TF-IDF baseline, ONNX export

The classical baseline of the ftune run `{run.path.name}` ({run.config.task.name} on {Path(run.config.data.train).name}): {info['chosen']}, over TF-IDF features, chosen on the run's validation split and fitted on its training split. Validation accuracy {info['validation_accuracy']:.1%}; on the run's {parity['texts']} test texts it gives scikit-learn's label on {parity['onnx']['same_label_as_sklearn']:.1%}, with accuracy {parity['onnx']['accuracy']:.1%}.

| file | what it is |
|---|---|
| {FP32_FILE} | the whole model: input `text` (strings [batch]); outputs `label` (int64 [batch], an index into labels.json) and `scores` (float [batch, {len(run.labels)}]: {scores}) |
| labels.json | the label names in class-id order: {names} |
| export.json | how ftune made the export (the model chosen, parity with scikit-learn) and the sha256 of every other file |
| README.md | this file |

## Run it without ftune

```python
import json
import numpy as np
import onnxruntime as ort

session = ort.InferenceSession("{FP32_FILE}")
labels = json.load(open("labels.json"))
ids, scores = session.run(["label", "scores"], {{"text": np.array(["a text to label"], dtype=object)}})
print([labels[i] for i in ids])
```

A text pair is one string, joined as the baseline learned it: `first + " [SEP] " + second`. The graph lowercases with the {LOCALE} locale, which onnxruntime must find on the machine.

With ftune: `ftune predict THIS_FOLDER --input texts.csv`, `ftune serve THIS_FOLDER`.
"""
