"""The `ftune` command: one small function per verb. Nothing imports this module."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ftune.cli_options import DATA, config_flags, settings_flags
from ftune.errors import FtuneError, TrainingStopped
from ftune.schema import METHOD_NAMES
from ftune.serve_settings import ServeSettings
from ftune.tasks import DEFAULT_TASK

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune pretrained transformers on your labeled data.")
data_app = typer.Typer(no_args_is_help=True, help="Built-in datasets.")
app.add_typer(data_app, name="data")
runs_app = typer.Typer(no_args_is_help=True, help="List, compare and browse runs.")
app.add_typer(runs_app, name="runs")
out = Console()

Opt = Optional[str]
# Flags that set config keys (--data, --epochs, ...) come from the schema: @config_flags (ftune.cli_options).
ConfigArg = Annotated[Optional[Path], typer.Argument(help="YAML config; flags and --set override it (train: or a run "
                                                              "directory to --resume)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="section.key=value, repeatable")]
# Commands that load a run someone may have handed you: its config alone never makes them run its code.
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="run model code shipped in the run's folder when "
                                                                    "its config asks to (only for runs you trust)")]
DeviceOpt = Annotated[str, typer.Option(help="where the model runs: auto (a CUDA GPU when torch sees one), cpu, cuda")]
PrecisionOpt = Annotated[str, typer.Option(help="a run's PyTorch model: fp32, or bf16/fp16 autocast (fp16: GPU only)")]


@app.command()
@config_flags("model.name", "model.init_from", *DATA, "method.name", "train.epochs", "train.learning_rate",
              "train.batch_size", "output_dir", "tracking.backend")
def train(
    config: ConfigArg = None,
    resume: Annotated[bool, typer.Option(help="continue the interrupted run in --output-dir")] = False,
    set_: SetOpt = None,
    quiet: Annotated[bool, typer.Option(help="no progress output")] = False,
    nproc: Annotated[int, typer.Option(min=1, help="processes on this machine (torchrun; gloo on CPU, NCCL on GPUs)")] = 1,
    nnodes: Annotated[int, typer.Option(min=1, help="machines taking part")] = 1,
    node_rank: Annotated[int, typer.Option(min=0, help="this machine's index, 0 .. nnodes-1")] = 0,
    master_addr: Annotated[Opt, typer.Option(help="address of the machine with node rank 0 (nnodes > 1)")] = None,
    master_port: Annotated[int, typer.Option(help="port on the master machine (nnodes > 1)")] = 29500,
    seeds: Annotated[Opt, typer.Option(help="one run per training seed, e.g. 0,1,2, in OUTPUT/seed-N on one split, "
                                            "then mean, sd and 95% interval in OUTPUT/summary.html")] = None,
    budget: Annotated[Opt, typer.Option(help="time for the whole run, e.g. 90s, 20m, 1.5h: tries a few recipes on "
                                             "validation (successive halving), trains the best in OUTPUT/final and "
                                             "lists every candidate in OUTPUT/budget.json")] = None,
    flags: dict[str, Any] | None = None,
) -> None:
    """Fine-tune a model and print the before/after table."""
    if budget is not None:  # a bad value or combination is said before any data is read
        from ftune.budget import check_flags, parse_budget

        budget_s = parse_budget(budget)
        check_flags(resume, seeds is not None, nproc * nnodes)
    output_dir = flags.get("output_dir")
    if config is not None and config.is_dir():  # `ftune train RUN --resume`: the run's own config and folder
        output_dir, config = output_dir or str(config), config / "config.yaml"
    if resume and config is None and output_dir and (Path(output_dir) / "config.yaml").is_file():
        config = Path(output_dir) / "config.yaml"  # resume from the run directory alone: its config is the base
    cfg = _config(config, set_, flags | {"output_dir": output_dir})
    if budget is not None:  # its own checks read the data first, as _check_data does
        return _train_budget(cfg, budget_s, quiet)
    if "LOCAL_RANK" not in os.environ:  # launched processes: training's first process reads (and fetches) the data
        _check_data(cfg)
    if seeds is not None:
        return _train_seeds(cfg, seeds, resume, quiet, nproc * nnodes)
    from ftune.distributed import launch_env, launched, torchrun_command
    from ftune.training import preflight
    from ftune.training import train as run_training

    if (nproc > 1 or nnodes > 1) and not launched():  # start the processes, each running this same command
        preflight(cfg, resume, check_output=node_rank == 0)
        command = torchrun_command(sys.argv[1:], nproc, nnodes, node_rank, master_addr, master_port)
        sys.stdout.flush()
        os.execve(command[0], command, launch_env(nproc))  # become torchrun: Ctrl-C and SIGTERM reach it directly
    _show_run(run_training(cfg, resume=resume, quiet=quiet))


def _show_run(run) -> None:
    """The before/after table of a finished run, its diagnosis and where its files and tracked run are."""
    from ftune.diagnosis import lines as diagnosis_lines
    from ftune.report import before_after_table

    if not _main_process():
        return
    if run.metrics.get("better_baseline"):  # the first thing said: the user should ship the better model
        out.print(f"[bold yellow]not better than a baseline:[/] {run.metrics['better_baseline']['line']}",
                  highlight=False, soft_wrap=True)
    header, rows = before_after_table(run.metrics["test"], run.metrics.get("scores"))
    if rows:
        _print_table(header, rows, f"test split, {run.metrics['test']['finetuned']['n']} examples")
    else:  # train.evaluate_test=false
        out.print(run.metrics["test"]["note"], highlight=False)
    for sliced in ((run.metrics["test"].get("finetuned") or {}).get("slices") or {}).values():  # data.slice_columns
        from ftune.slices import lines

        for line in lines(sliced):
            out.print(f"  {line}", highlight=False, soft_wrap=True)
    for line in diagnosis_lines(run.metrics.get("diagnosis")):  # a run that learned nothing says so, last thing seen
        out.print(f"[bold yellow]diagnosis:[/] {line}", highlight=False, soft_wrap=True)
    out.print(f"run directory: {run.path}  (report.html inside)", highlight=False)
    tracking = run.manifest.get("tracking", {})
    if tracking.get("backend") == "mlflow":
        from ftune.tracking import local_store_uri

        browse = "ftune runs ui" + ("" if tracking["uri"] == local_store_uri() else f" --store {tracking['uri']}")
        out.print(f"MLflow: run {tracking['run_id']} in {tracking['uri']}  (browse: {browse})", highlight=False)
    if tracking.get("backend") == "wandb":
        from ftune.tracking_wandb import summary_line

        out.print(summary_line(tracking), highlight=False, soft_wrap=True)


@app.command()
@config_flags("distill.layers", "distill.temperature", "distill.alpha", "data.unlabeled", "method.name",
              "train.epochs", "train.learning_rate", "output_dir")
def distill(
    teacher: Annotated[Path, typer.Argument(help="a finished classification or token-classification run")],
    student: Annotated[Opt, typer.Option(help="model.name of a smaller pretrained student (instead of --layers)")] = None,
    resume: Annotated[bool, typer.Option(help="continue the interrupted student in --output-dir")] = False,
    set_: SetOpt = None,
    quiet: Annotated[bool, typer.Option(help="no progress output")] = False,
    flags: dict[str, Any] | None = None,
) -> None:
    """Train a smaller student on a finished run's answers as well as its labels, on the teacher's data and settings.
    The student is a normal run (report with the teacher as a row, predict, export, serve)."""
    from datetime import datetime

    from ftune.errors import ConfigError
    from ftune.run import Run
    from ftune.training import train as run_training

    layers = flags.get("distill.layers")
    if (layers is None) == (student is None):
        raise ConfigError("ftune distill: pass --layers N (the teacher cut to N layers) or --student MODEL (a smaller "
                          "pretrained model), one of them")
    teacher_run = Run(teacher)  # the teacher's data and settings; refuses an unfinished run
    raw = teacher_run.config.model_dump(mode="json")
    source = teacher_run.manifest.get("model_source")
    if isinstance(source, str) and Path(source).is_dir():  # the base as found at training, not relative to here
        raw["model"]["name"] = source
    raw["train"]["learning_rate"] = None  # the student's method's default, not the teacher's
    default_dir = Path("runs") / f"{teacher.resolve().name}-student-{layers or 'model'}-{datetime.now():%Y%m%d-%H%M%S}"
    # full fine-tuning and a folder of its own unless the flags say otherwise (they override what is set here)
    raw.update(method={"name": "full"}, distill={"teacher": str(teacher)}, output_dir=str(default_dir))
    cfg = _config(raw, set_, flags | {"model.name": student})
    _show_run(run_training(cfg, resume=resume, quiet=quiet))


def _train_seeds(cfg, text: str, resume: bool, quiet: bool, processes: int) -> None:
    """`train --seeds`: a run per seed (ftune.seeds), then the scores across seeds as a table."""
    from ftune.errors import ConfigError
    from ftune.seeds import baseline_table, diagnosis_lines, interval_note, parse_seeds, summary_table, train_seeds

    seeds = parse_seeds(text)
    if processes > 1:
        raise ConfigError("--seeds trains its seeds one after another in one process; drop --nproc/--nnodes, or "
                          "train each seed on its own with --set train.seed=N --set data.split_seed=S")
    summary = train_seeds(cfg, seeds, resume=resume, quiet=quiet)
    examples = summary.runs[0].metrics["test"]["finetuned"].get("n")
    for title, (header, rows) in ((f"fine-tuned, test split ({examples} examples), {len(seeds)} seeds",
                                   summary_table(summary)), ("baselines, same split", baseline_table(summary))):
        if rows:
            _print_table(header, rows, title, right=[c for c in header if c not in ("metric", "baseline")])
    out.print(interval_note(len(seeds)), highlight=False, soft_wrap=True)
    for line in diagnosis_lines(summary):
        out.print(f"[bold yellow]diagnosis:[/] {line}", highlight=False, soft_wrap=True)
    out.print(f"seeds folder: {summary.path}  (summary.html inside; each seed's run in seed-N)", highlight=False)


def _train_budget(cfg, budget_s: float, quiet: bool) -> None:
    """`train --budget`: a search of a few recipes within the time (ftune.budget), its table, then the winner's run
    as any run is shown."""
    from ftune.budget import search, table

    def tell(line: str) -> None:
        out.print(line, markup=False, highlight=False, soft_wrap=True)

    # A line per candidate's run unless --quiet; the search's decisions (the plan, a budget too small) always.
    result = search(cfg, budget_s, say=(lambda line: None) if quiet else tell, tell=tell, quiet=quiet)
    header, rows = table(result)
    better = "lower" if result.lower_is_better else "higher"
    _print_table(header, rows, f"candidates: validation {result.metric} ({better} is better), * the winner",
                 right=header[1:5])
    out.print(f"budget: {result.elapsed_s:.0f} s of {result.budget_s:.0f} s; every candidate in "
              f"{result.path / 'budget.json'}", markup=False, highlight=False, soft_wrap=True)
    _show_run(result.final)


@app.command("cloud-train")
def cloud_train(
    config: Annotated[Opt, typer.Argument(help="YAML config (a gs:// path is read through /gcs); on SageMaker, or "
                                               "the hyperparameter `config`")] = None,
    set_: SetOpt = None,
    platform: Annotated[str, typer.Option(help="sagemaker, vertex, or auto: the one whose variables are set")] = "auto",
    quiet: Annotated[bool, typer.Option(help="no progress output")] = False,
) -> None:
    """Train as SageMaker or Vertex AI start a training container: the data, the settings and the model's folder come
    from the platform, then `ftune train` runs. SageMaker: a failure's reason also goes to /opt/ml/output/failure."""
    from ftune import cloud

    chosen = cloud.detect(platform)
    with cloud.failure_reported(chosen):
        job = cloud.training_job(chosen, config, set_ or [])
        _call(train, config=job.config, set_=job.overrides, quiet=quiet)
        cloud.publish(job)
    out.print(f"{chosen}: the run is in {job.model_dir}", highlight=False, soft_wrap=True)


def _call(command, **given):
    """A command called from another as typer calls it: `given`, and every other parameter at its default."""
    import inspect

    return command(**{name: p.default for name, p in inspect.signature(command).parameters.items()} | given)


@app.command("eval")
def evaluate(
    run: Annotated[Path, typer.Argument(metavar="RUN|EXPORT_DIR", help="run directory or `ftune export` folder")],
    data: Annotated[str, typer.Option(help="labeled file to score")],
    text_column: Annotated[Opt, typer.Option()] = None,
    text_pair_column: Annotated[Opt, typer.Option()] = None,
    label_column: Annotated[Opt, typer.Option()] = None,
    slice_by: Annotated[Opt, typer.Option(help="a column of --data holding each row's group (a source, a language, "
                                               "a length bucket): every metric per group, and the largest gap")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print metrics as JSON")] = False,
    variant: Annotated[Opt, typer.Option(help="for an export: int8 or fp32 (default: int8 when there is one)")] = None,
    trust_remote_code: TrustOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
) -> None:
    """Score a finished run, or its ONNX export, on another labeled file."""
    from ftune.predictors import evaluate_export, evaluate_run, is_export, load_predictor
    from ftune.run import Run

    columns = {"text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column}
    if variant is None and not is_export(run):
        metrics = evaluate_run(Run(run), data, trust_remote_code, device, precision, slice_by, **columns)
    else:  # an export; --variant on a run is refused by load_predictor, with the fix
        predictor = load_predictor(run, variant, trust_remote_code, device, precision)
        Console(stderr=True).print(predictor.using(), highlight=False, markup=False, soft_wrap=True)
        metrics = evaluate_export(predictor, data, slice_by, **columns)
    if json_out:
        print(json.dumps(metrics, indent=2))
        return
    if "slices" in metrics:
        from ftune.slices import lines

        for line in lines(metrics.pop("slices")):
            out.print(line, highlight=False, markup=False)
    scores = ", ".join(f"{name} {value:.4f}" + (" (95% CI {:.3f}–{:.3f})".format(*metrics[f"{name}_ci95"])
                                                  if f"{name}_ci95" in metrics else "")
                       for name, value in metrics.items() if isinstance(value, float))
    out.print(f"{data}: {metrics['n']} examples, {scores}", highlight=False)


@app.command()
def predict(
    source: Annotated[Path, typer.Argument(metavar="RUN|EXPORT_DIR", help="run directory or `ftune export` folder")],
    text: Annotated[Optional[list[str]], typer.Option(help="a text to label, repeatable")] = None,
    input_: Annotated[Opt, typer.Option("--input", help="CSV/TSV/JSON/JSONL/Parquet/TXT file, or - for stdin lines")] = None,
    text_column: Annotated[Opt, typer.Option(help="column of --input holding the text")] = None,
    text_pair_column: Annotated[Opt, typer.Option(help="column of --input holding each text's second text (pair "
                                                       "tasks; for a reward model the answer, the text its prompt)")
                                ] = None,
    output: Annotated[Optional[Path], typer.Option(help="write .csv or .jsonl here instead of printing")] = None,
    variant: Annotated[Opt, typer.Option(help="for an export: int8 or fp32 (default: int8 when there is one)")] = None,
    trust_remote_code: TrustOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
) -> None:
    """Label texts with a fine-tuned run or its ONNX export."""
    import pandas as pd

    from ftune.predict_io import check_output, check_texts, echo, write_predictions
    from ftune.predictors import load_predictor

    if output is not None:
        check_output(output)
    if text:
        check_texts(text, "--text")
    predictor = load_predictor(source, variant, trust_remote_code, device, precision)
    if hasattr(predictor, "using"):  # an export: which of its models answers, on stderr (stdout has the answers)
        Console(stderr=True).print(predictor.using(), highlight=False, markup=False, soft_wrap=True)
    if text:
        frame = pd.DataFrame({"text": text})
    elif input_ == "-":
        frame = _read_input(input_, "text")
    elif input_:
        frame = _read_input(input_, text_column or predictor.text_column or "text")
    else:
        raise FtuneError("nothing to predict: pass --text TEXT, --input FILE, or --input - for stdin")
    texts = frame.pop("_text").tolist() if "_text" in frame else frame["text"].tolist()
    if text_pair_column and (not input_ or input_ == "-"):
        raise FtuneError("--text-pair-column reads a column of --input FILE; pass the file with both columns")
    pairs = _read_input(input_, text_pair_column)["_text"].tolist() if text_pair_column else None
    results = predictor.predict(texts, pairs)
    if output:
        write_predictions(frame, results, output)
        out.print(f"wrote {len(texts)} predictions to {output}", highlight=False)
    else:
        for text_, result in zip(texts, results):
            print(echo(text_, result))


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="run directory")],
    format_: Annotated[str, typer.Option("--format", help="export format: onnx (classifiers, taggers, regression), "
                                                          "ort (the same, in ONNX Runtime's mobile format), "
                                                          "executorch (the same, as .pte for phones and devices), "
                                                          "gguf (decoders: llama.cpp, Ollama)")] = "onnx",
    quantize: Annotated[Opt, typer.Option(help="also write an int8 model (dynamic quantization): int8")] = None,
    output: Annotated[Optional[Path], typer.Option(help="export folder (default: RUN/FORMAT)")] = None,
    data: Annotated[Opt, typer.Option(help="labeled file for the parity check (default: the run's test split)")] = None,
    trust_remote_code: TrustOpt = False,
    baseline: Annotated[bool, typer.Option("--baseline", help="export the run's TF-IDF baseline instead (default "
                                                              "folder: RUN/baseline), checked against scikit-learn "
                                                              "on the run's test split")] = False,
) -> None:
    """Export a run to ONNX or ExecuTorch (an adapter merged), optionally int8, and check it against PyTorch; or, with
    --baseline, its TF-IDF baseline; or a decoder to GGUF."""
    from ftune.run import read_json

    if format_ not in ("onnx", "ort", "executorch", "gguf"):
        raise FtuneError(f"--format {format_!r} is not supported; use --format onnx, ort, executorch or gguf")
    if format_ == "gguf":
        return _export_gguf(run, output, quantize, baseline, trust_remote_code)
    if baseline:
        if format_ != "onnx":
            raise FtuneError(f"--baseline exports the TF-IDF baseline as ONNX only; drop --format {format_}")
        return _export_baseline(run, output, quantize, data)
    with out.status("exporting, then checking the export against PyTorch on held-out texts"):
        if format_ == "executorch":
            from ftune.export_executorch import export_executorch as exporter
        else:
            from ftune.export import export_model

            exporter = functools.partial(export_model, format=format_)
        folder = exporter(run, output, quantize, data, trust_remote_code=trust_remote_code)
    parity = read_json(folder / "export.json")["parity"]
    metric = parity["metric"]
    rows = [("pytorch", _score(parity["pytorch"][metric]), "", "", "")]
    rows += [(name, _score(row[metric]), f"{row['max_abs_diff']:.2g}", _pct(row.get("same_label_as_pytorch")),
              f"{row['bytes'] / 1e6:.1f}") for name, row in ((n, parity[n]) for n in (f"{format_}-fp32",
                                                                                      f"{format_}-int8")
                                                              if n in parity)]
    _print_table(("model", metric, "max |logit diff|", "same top output as PyTorch", "size MB"), rows,
                 f"parity on {parity['texts']} held-out texts")
    out.print(f"export folder: {folder}")


def _export_gguf(run: Path, output: Path | None, quantize: str | None, baseline: bool, trust_remote_code: bool
                 ) -> None:
    from ftune.export_gguf import export_gguf
    from ftune.run import read_json

    if quantize or baseline:
        raise FtuneError(f"--format gguf writes f16 and q8_0 files itself and takes no "
                         f"{'--quantize' if quantize else '--baseline'}; leave it out")
    with out.status("exporting to GGUF, then reading the files back with transformers"):
        folder = export_gguf(run, output, trust_remote_code=trust_remote_code)
    parity = read_json(folder / "export.json")["parity"]
    rows = [(kind, f"{parity[kind]['max_abs_diff']:.2g}", _pct(parity[kind]["same_next_token"]),
             f"{parity[kind]['bytes'] / 1e6:.1f}") for kind in ("f16", "q8_0")]
    _print_table(("file", "max |logit diff|", "same next token as PyTorch", "size MB"), rows,
                 f"read back by transformers, every position of {parity['chats']} held-out chats")
    out.print(f"export folder: {folder}  (ollama create NAME -f {folder}/Modelfile)")


def _export_baseline(run: Path, output: Path | None, quantize: str | None, data: str | None) -> None:
    """`export --baseline`: the baseline refitted and converted (ftune.export.export_baseline), then its parity."""
    from ftune.export import export_baseline
    from ftune.run import read_json

    if quantize is not None or data is not None:
        flag = "--quantize" if quantize is not None else "--data"
        raise FtuneError(f"{flag} applies to the fine-tuned model's export; a baseline export is one small fp32 "
                         f"model, checked on the run's test split: drop {flag}")
    with out.status("refitting the run's baseline, converting it, checking it against scikit-learn"):
        folder = export_baseline(run, output)
    info = read_json(folder / "export.json")
    parity, onnx = info["parity"], info["parity"]["onnx"]
    _print_table(("model", "accuracy", "same label as scikit-learn", "max |score diff|", "size MB"),
                 [("scikit-learn", _score(parity["sklearn"]["accuracy"]), "", "", ""),
                  ("onnx", _score(onnx["accuracy"]), _pct(onnx["same_label_as_sklearn"]),
                   f"{onnx['max_abs_diff']:.2g}", f"{onnx['bytes'] / 1e6:.1f}")],
                 f"parity on the run's {parity['texts']} test texts")
    recorded = info.get("validation_accuracy_at_training")
    again = "" if recorded is None or abs(recorded - info["validation_accuracy"]) < 1e-9 else \
        f" (the run recorded {_pct(recorded)}: this scikit-learn fits it otherwise)"
    scores = "" if info["scores"] == "probabilities" else "; its scores are SVM decision values, not probabilities"
    out.print(f"baseline: {info['chosen']}; validation accuracy {_pct(info['validation_accuracy'])}{again}{scores}",
              highlight=False, soft_wrap=True)
    out.print(f"export folder: {folder}", highlight=False, soft_wrap=True)


@app.command()
def push(
    source: Annotated[Path, typer.Argument(metavar="RUN|EXPORT_DIR", help="finished run directory or `ftune export` "
                                                                          "folder")],
    repo_id: Annotated[str, typer.Argument(help="hub model repo, OWNER/NAME (created when missing)")],
    private: Annotated[bool, typer.Option(help="create the repo private (an existing repo keeps its visibility)")
                       ] = False,
    token: Annotated[Opt, typer.Option(help="hub token with write access (default: HF_TOKEN, or the token of "
                                            "`hf auth login`)")] = None,
    revision: Annotated[Opt, typer.Option(help="branch to commit to, created when missing (default: main)")] = None,
) -> None:
    """Publish a run (its model/ folder, else adapter/, with its model card, plus report.md) or an export folder
    to the Hugging Face hub, in one commit."""
    from ftune.push import push as push_to_hub

    with out.status(f"pushing {source} to {repo_id}"):
        url = push_to_hub(source, repo_id, token, private, revision)
    out.print(f"pushed {source} to {repo_id}: {url}", highlight=False, soft_wrap=True)


@app.command()
@settings_flags(ServeSettings)
def serve(
    sources: Annotated[Optional[list[Path]], typer.Argument(
        metavar="RUN|EXPORT_DIR", help="run directory or `ftune export` folder; several runs are served side by "
                                       "side, named by their folders (adapter runs of one base model share it); "
                                       "with --platform: the platform's model folder")] = None,
    host: Annotated[Opt, typer.Option(help="address to bind; loopback unless you mean to expose it (default: "
                                           "127.0.0.1; with --platform 0.0.0.0)")] = None,
    port: Annotated[Optional[int], typer.Option(help="TCP port (default: 8000; --platform: the platform's)")] = None,
    platform: Annotated[Opt, typer.Option(help="answer as a cloud's prediction container: sagemaker (GET /ping, POST "
                                               "/invocations, /opt/ml/model) or vertex (the AIP_ variables; chosen "
                                               "when they are set)")] = None,
    variant: Annotated[Opt, typer.Option(help="for an export: int8 or fp32 (default: int8 when there is one)")] = None,
    trust_remote_code: TrustOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    settings: ServeSettings | None = None,
) -> None:
    """Serve a run or an export over HTTP: POST /v1/predict, GET /health, GET /v1/model, /docs. Several runs:
    a request names its model ("model": NAME, or POST /v1/models/NAME/predict); GET /v1/models lists them.
    A causal-lm run is served alone, with OpenAI's chat API: POST /v1/chat/completions, GET /v1/models."""
    from ftune.cloud import serving
    from ftune.serve import is_loopback, load
    from ftune.serve import serve as run_server

    cloud = serving(platform)
    if cloud is not None:  # the platform's model, port and address unless the command line names them
        sources, host, port = cloud.sources(sources), host or "0.0.0.0", port or cloud.port
    elif not sources:
        from ftune.errors import ConfigError

        raise ConfigError("ftune serve: name the run directory or export folder to serve")
    host, port = host or "127.0.0.1", port or 8000
    served = load(sources, variant, trust_remote_code, device, precision)
    if not is_loopback(host) and settings.api_key is None and cloud is None:  # a platform fronts its container
        Console(stderr=True).print(f"[yellow]warning:[/] serving on {host} without --api-key: anyone who can reach "
                                   f"this port can use the model")
    models = served if isinstance(served, dict) else {str(sources[0]): served}
    first = next(iter(models.values()))
    where = first.describe().get("device", "cpu")
    api = "  (OpenAI-compatible: POST /v1/chat/completions)" if getattr(first, "writes_text", False) else ""
    if cloud is not None:
        api += f"  ({cloud.platform}: GET {cloud.health_route}, POST {cloud.predict_route})"
    out.print(f"serving {', '.join(models)} ({first.kind} on {where}) on http://{host}:{port}  (docs: /docs){api}",
              highlight=False)
    run_server(served, host, port, settings, cloud=cloud)


@app.command()
def ui(
    root: Annotated[Path, typer.Option(help="folder of runs: new runs are written there, and the page lists "
                                            "them")] = Path("runs"),
    host: Annotated[str, typer.Option(help="address to bind; loopback unless you mean to expose it")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 7860,
    token: Annotated[Opt, typer.Option(help="the token the URL must carry (default: a random one)")] = None,
    trust_remote_code: TrustOpt = False,
) -> None:
    """The workflow in a browser, over a folder of runs: look at a data file, configure, train and watch a run,
    read reports, compare runs, try a model, export and serve it. Data files are read under this folder."""
    import secrets

    import uvicorn

    from ftune.serve_guards import LOOPBACK_HOSTS, is_loopback
    from ftune.ui.app import create_app

    token = token or secrets.token_urlsafe(24)
    allowed = LOOPBACK_HOSTS if is_loopback(host) else None  # the Host check against DNS rebinding, on loopback
    app_ = create_app(root, Path.cwd(), token, allowed, trust_remote_code)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    out.print(f"ftune ui on http://{shown}:{port}/?token={token}  (runs: {root}; Ctrl+C stops it)", highlight=False,
              soft_wrap=True)
    uvicorn.run(app_, host=host, port=port, log_level="warning")


@app.command()
def generate(
    run: Annotated[Path, typer.Argument(help="a causal-lm run directory")],
    prompt: Annotated[list[str], typer.Option(help="an instruction to answer, repeatable")],
    max_new_tokens: Annotated[int, typer.Option(min=1, help="tokens to write at most")] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, help="0: greedy (the same answer every time); > 0 samples")] = 0.0,
    system: Annotated[Opt, typer.Option(help="a system message before each prompt")] = None,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    trust_remote_code: TrustOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Answer prompts with an instruction-tuned decoder (task: causal-lm), laid out as in training."""
    from ftune.generate import Generator

    generator = Generator(run, trust_remote_code, device)
    for text in prompt:
        answer = generator.generate(text, max_new_tokens, temperature, seed, system)
        print(json.dumps({"prompt": text, "response": answer}, ensure_ascii=False))


@app.command("config")
def config_keys(
    task: Annotated[str, typer.Option(help="the task whose keys to list")] = DEFAULT_TASK,
    method: Annotated[str, typer.Option(help=f"the method whose keys to list: {', '.join(METHOD_NAMES)}")] = "full",
    markdown: Annotated[bool, typer.Option(help="print docs/configuration.md's tables for every task and method")
                        ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the keys as a JSON list")] = False,
) -> None:
    """Every config key of a task and method, with its type, default and description (from the schema itself)."""
    from ftune.config import METHOD_NAMES, TASKS, config_markdown, describe_keys

    if markdown:
        print(config_markdown(), end="")
        return
    if task not in TASKS or method not in METHOD_NAMES:
        raise FtuneError(f"--task must be one of {', '.join(TASKS)} and --method one of {', '.join(METHOD_NAMES)} "
                         f"(got {task}, {method})")
    header = ("key", "type", "default", "description")
    rows = [(key, kind.replace("\\|", "|"), default.strip("`"), text)
            for key, kind, default, text in describe_keys(task, method)]
    if json_out:
        print(json.dumps([dict(zip(header, row)) for row in rows], indent=2))
        return
    _print_table(header, rows, f"config keys: task {task}, method {method} (set in YAML, or --set key=value)",
                 wrap=("type", "default", "description"))


@app.command()
def report(run: Annotated[Path, typer.Argument(help="run directory")]) -> None:
    """Write the run's report.html, report.md and plots/ again from its files."""
    from ftune.errors import RunError
    from ftune.report import write_reports
    from ftune.run import Run, damaged_run_fix

    path = Run(run).path
    try:
        write_reports(path)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:  # a hand-edited metrics.json, say
        raise RunError(f"{path}: metrics.json (or run.json, config.yaml) is not shaped as ftune writes it "
                       f"({type(e).__name__}: {str(e)[:80]}); {damaged_run_fix(path)}") from None
    out.print(f"report: {run / 'report.html'}", highlight=False)


@app.command()
@config_flags(*DATA, "tracking.backend")
def tune(
    config: ConfigArg = None,
    trials: Annotated[int, typer.Option(min=1, help="trials in the study in all; processes sharing it count together, "
                                                    "and running the command again only adds the missing ones")] = 20,
    space: Annotated[Optional[Path], typer.Option(help="YAML of dotted keys, each {low, high, log} or {choices: [...]}; "
                                                       "default: learning rate, epochs, batch size, warm-up, weight decay "
                                                       "and the method's own")] = None,
    output_dir: Annotated[Opt, typer.Option(help="study folder: trial-NNN runs, trials.md, plots, best.yaml "
                                                 "(default runs/tune-NAME)")] = None,
    storage: Annotated[Opt, typer.Option(help="Optuna storage URL (default sqlite:///OUTPUT/study.db); processes or "
                                              "machines given the same URL and study name share the study")] = None,
    study_name: Annotated[Opt, typer.Option(help="default: the config file's name, else DATA-METHOD")] = None,
    seed: Annotated[int, typer.Option(help="TPE sampler seed (trial k samples with seed + k)")] = 0,
    set_: SetOpt = None,
    quiet: Annotated[bool, typer.Option(help="no line per evaluation and trial")] = False,
    flags: dict[str, Any] | None = None,
) -> None:
    """Search hyperparameters with Optuna (TPE, median pruning): every trial is a run that never reads the test
    split; prints the trials and writes the best config as best.yaml."""
    from ftune.tune import load_space, table, tune as run_study

    def say(line: str) -> None:
        if not quiet:
            out.print(line, markup=False, highlight=False, soft_wrap=True)

    cfg = _config(config, set_, flags)
    result = run_study(cfg, trials, output_dir, storage, study_name or (config.stem if config else None),
                       load_space(space, cfg) if space else None, seed, say=say)
    states = [r.state.lower() for r in result.rows]
    counts = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))
    out.print(f"study {result.study_name}: {len(states)} trials ({counts}); validation {result.metric}, * best",
              highlight=False, soft_wrap=True)
    header, rows = table(result)
    _print_table(header, rows, wrap=("params", "note"))
    out.print(f"all trials: {result.folder / 'trials.md'}  study: {result.storage}", markup=False, highlight=False,
              soft_wrap=True)
    if result.best is None:
        from ftune.errors import RunError

        raise RunError(f"no trial of study {result.study_name} completed, so no best.yaml; read each trial's note in "
                       f"{result.folder / 'trials.md'}, then widen or move the search with --space")
    out.print(f"best: trial {result.best.number}, validation {result.metric} {result.best.value:.4f} "
              f"({result.best.run_dir})", markup=False, highlight=False, soft_wrap=True)
    out.print(f"plots: {', '.join(str(p) for p in result.plots)}", markup=False, highlight=False, soft_wrap=True)
    out.print(f"best config: {result.best_config}  (ftune train {result.best_config} evaluates it on the test split)",
              markup=False, highlight=False, soft_wrap=True)


@runs_app.command("list")
def runs_list(root: Annotated[Path, typer.Argument(help="folder holding run directories")] = Path("runs"),
              json_out: Annotated[bool, typer.Option("--json", help="print the runs as a JSON list")] = False) -> None:
    """One line per run: name, model, method, data, test score (the task's headline), best validation, time, status."""
    from ftune.runs import find_runs, run_row

    rows = [{"path": str(path), **run_row(path)} for path in find_runs(root)]
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        out.print(f"no runs in {root}")
        return
    _print_table(list(rows[0])[1:], [list(row.values())[1:] for row in rows])


@runs_app.command("compare")
def runs_compare(
    runs: Annotated[list[Path], typer.Argument(help="two or more finished run directories; the first is the reference")],
    output: Annotated[Optional[Path], typer.Option(help="folder for compare.html/.md and curves.png")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the table as JSON: a row per metric or setting")] = False,
) -> None:
    """Metrics and the settings that differ, side by side with differences from the first run, and overlaid training
    curves."""
    from ftune.runs import compare_runs

    header, rows, folder = compare_runs(runs, output)
    if json_out:
        print(json.dumps({"columns": header, "rows": [dict(zip(header, map(str, row))) for row in rows],
                          "html": str(folder / "compare.html")}, indent=2))
        return
    _print_table(header, rows, right=header[1:])
    out.print(f"curves and tables: {folder / 'compare.html'}", highlight=False)


@runs_app.command("ui")
def runs_ui(
    store: Annotated[Opt, typer.Option(help="folder holding mlflow.db, or a tracking URI (default: ./mlruns)")] = None,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 5000,
) -> None:
    """Start the MLflow UI on the local tracking store."""
    from ftune.tracking import runs_table_url, ui_command

    command = ui_command(store, host, port)
    out.print(f"MLflow UI on {runs_table_url(store, host, port)} (Ctrl-C stops it)", highlight=False)
    sys.stdout.flush()
    os.execv(command[0], command)  # become the MLflow server: Ctrl-C and kill reach it directly


def _config(path: Path | dict | None, set_: list[str] | None, flags: dict):
    """The config file (or a config as a dict, or the defaults), then the flags that were given, then each --set."""
    from ftune.config import load_config, parse_override

    overrides = {k: v for k, v in flags.items() if v is not None}
    overrides.update(parse_override(item) for item in set_ or [])
    cfg = load_config(path, overrides, infer_task=True)
    inferred = cfg._task_inferred
    # Said once, before anything slow, and only where it is news: a column of class names is classification, as it
    # always was. (Launched processes stay quiet: the command that started them has said it.)
    if inferred is not None and not inferred.plain and "LOCAL_RANK" not in os.environ:
        Console(stderr=True).print(f"task: {inferred.task} (inferred: {inferred.reason}; override with --task NAME)",
                                   markup=False, highlight=False, soft_wrap=True)
    return cfg


def _check_data(cfg) -> None:
    """Read the data as training will, before torch is imported: a wrong file, column or label is said in a second,
    not after the libraries' start-up. (Reading a table twice costs far less than that start-up.)"""
    from ftune.tasks import task_for

    task_for(cfg).load_splits(cfg.train.seed)


def _print_table(header, rows, title: str | None = None, right=(), wrap=()) -> None:
    """A table when it fits the width (the terminal's, or 80 in a log), else the same cells as plain lines, so a log
    never shows a cut border, a cell cut short or a word split in two. Only the `wrap` columns (descriptions) may
    break, at spaces. Cells are shown as written, never read as markup (they hold data and user text)."""
    from rich.cells import cell_len

    def needed(col: int) -> int:  # a column's narrowest width: its longest cell, or longest word where it wraps
        cells = [str(header[col]), *(str(row[col]) for row in rows)]
        parts = [word for cell in cells for word in cell.split()] if header[col] in wrap else cells
        return max(map(cell_len, parts), default=0)

    if sum(map(needed, range(len(header)))) + 3 * len(header) + 1 <= out.width:  # + padding and borders
        table = Table(title=title)
        for col in header:
            table.add_column(col, justify="right" if col in right else "left", no_wrap=col not in wrap)
        for row in rows:
            table.add_row(*(Text(str(cell)) for cell in row))
        out.print(table)
        return
    if title:
        print(f"{title}:")
    for row in rows:  # `first cell  header: cell; header: cell`, empty cells left out
        print(f"{row[0]}  " + "; ".join(f"{col}: {cell}" for col, cell in zip(header[1:], row[1:]) if str(cell) != ""))


def _main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@data_app.command("validate")
@config_flags("model.name", *DATA)
def data_validate(
    config: ConfigArg = None,
    set_: SetOpt = None,
    strict: Annotated[bool, typer.Option(help="exit 1 when there are warnings")] = False,
    flags: dict[str, Any] | None = None,
) -> None:
    """Check data the way `ftune train` does before it loads a model (model.name's tokenizer measures text
    lengths): errors exit 2, warnings are listed."""
    from ftune.tasks import task_for

    cfg = _config(config, set_, flags)
    task = task_for(cfg)
    splits = task.load_splits(cfg.train.seed)  # the data's own errors before torch and transformers load
    from ftune.train_setup import data_report

    task, splits, tokenizer, summary, found = data_report(cfg, (task, splits))
    shown = list(summary.get("classes", {}).get("train", {}))[:8]  # class (or tag) counts, where the task has them
    rows = [(name, str(summary[name]), *(str(summary.get("classes", {}).get(name, {}).get(c, 0)) for c in shown))
            for name in ("train", "validation", "test")]
    header = ("split", "rows", *shown)
    _print_table(header, rows, f"{cfg.data.train}: {task.name}" + (f", {len(splits.labels)} classes" if shown
                                                                    else ""), right=header)
    example = task.learned_example(splits, tokenizer)
    if example:
        out.print(Text.assemble("The first training example as the model reads it; it learns the text between [[ and "
                                "]] (in green), and nothing else:\n",
                                *((f"[[{text}]]", "bold green") if learned else (text, "") for text, learned in example)))
    for line in found:
        out.print(f"warning: {line}", highlight=False, markup=False)
    out.print(f"{len(found)} warning(s); no errors" if found else "no errors, no warnings")
    if strict and found:
        raise typer.Exit(1)


@data_app.command("list")
def data_list() -> None:
    """Built-in datasets: size, classes, provenance and license note."""
    from ftune.data import CATALOG

    table = Table(show_lines=True)
    for col in ("name", "rows", "classes", "description / provenance / license note"):
        table.add_column(col, overflow="fold")
    for b in CATALOG.values():
        table.add_row(b.name, str(b.rows), ", ".join(b.classes),
                      f"{b.description}\n[dim]source:[/] {b.provenance}\n[dim]note:[/] {b.license_note}")
    out.print(table)
    out.print("Fetched from PyPI on first use, verified by sha256, cached under $FTUNE_CACHE or ~/.cache/ftune.")


def _read_input(source: str, column: str):
    """The input table with every column kept, plus the texts to label in `_text`."""
    import pandas as pd

    from ftune.data.prepare import text_table
    from ftune.data.sources import read_stdin_lines

    if source == "-":
        return pd.DataFrame({"text": read_stdin_lines()})
    table, texts = text_table(source, column)
    return table.reset_index(drop=True).assign(_text=texts)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except TrainingStopped as e:  # SIGINT / SIGTERM after a checkpoint: say how to continue, exit 128 + signal
        if _main_process():
            Console(stderr=True).print(f"[bold yellow]stopped:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except FtuneError as e:
        if _main_process():  # every process meets the same user error; one of them says it
            Console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
