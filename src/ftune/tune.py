"""`ftune tune`: an Optuna study over a config's hyperparameters; every trial is a normal run that never reads
the test split.

    OUTPUT/study.db        the study (default storage; any Optuna RDB URL works, so processes and machines can share it)
    OUTPUT/trial-NNN/      each trial's run directory, trained with train.evaluate_test false
    OUTPUT/trials.md       number, state, validation metric and params of every trial
    OUTPUT/history.png     the validation metric per trial, and the best so far (Optuna's matplotlib plot)
    OUTPUT/curves.png      each trial's validation metric per evaluation, pruned trials included
    OUTPUT/best.yaml       the best trial's config, ready for `ftune train` (test evaluation back on)

TPE samples (trial k with seed + k), and the median pruner ends a trial whose validation metric at an evaluation
is worse than the median of the finished trials' at the same evaluation. `trials` is the study's total: each
process claims trials until the study holds that many, so a rerun of the same command only adds what is missing.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import socket
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ftune import recipe, safe_yaml
from ftune.config import Config, default_learning_rate, validate
from ftune.errors import ConfigError, RunError, RunPruned, TrainingStopped
from ftune.integrity import atomic_path, write_text
from ftune.methods import method_for
from ftune.tasks import task_for

Scalar = str | int | float | bool | None


class Range(BaseModel):
    """A number between low and high (both ends included), whole when both ends are; log samples evenly on a log
    scale."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    low: int | float
    high: int | float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if self.low > self.high:
            raise ValueError(f"low must not be above high (got low {self.low}, high {self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low above 0 (got low {self.low})")
        return self

    def suggest(self, trial, name: str) -> int | float:
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def describe(self) -> dict:
        return {"low": self.low, "high": self.high, **({"log": True} if self.log else {})}


class Choices(BaseModel):
    """One of a list of values."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    choices: tuple[Scalar, ...]

    @model_validator(mode="after")
    def _not_empty(self) -> "Choices":
        if not self.choices:
            raise ValueError("choices must list at least one value")
        return self

    def suggest(self, trial, name: str) -> Scalar:
        return trial.suggest_categorical(name, list(self.choices))

    def describe(self) -> dict:
        return {"choices": list(self.choices)}


Space = dict[str, Range | Choices]


def default_space(config: Config) -> Space:
    """The keys that matter for the config's method: learning rate (log-uniform, a decade either side of the method's
    default), epochs (1 to twice the config's, or than the data's choice where it sets none: ftune.recipe), batch size, warm-up and weight decay; then the method's own (its
    `search_space`: LoRA's r, alpha and dropout, the frozen layers for freeze, ...)."""
    lr = default_learning_rate(config.task.name, config.method.name)
    epochs = config.train.epochs or recipe.choose_epochs(len(task_for(config).load_splits(config.train.seed).train),
                                                         config.train)[0]  # unset: what a run would choose
    space: Space = {
        "train.learning_rate": Range(low=lr / 10, high=lr * 10, log=True),
        "train.epochs": Range(low=1, high=max(2, 2 * epochs)),
        "train.batch_size": Choices(choices=(8, 16, 32, 64)),
        "train.warmup_ratio": Range(low=0.0, high=0.2),
        "train.weight_decay": Range(low=0.0, high=0.1),
    }
    for key, spec in method_for(config).search_space(config).items():  # in a --space file's shape
        space[key] = (Choices if "choices" in spec else Range).model_validate(spec)
    return space


def load_space(path: Path, config: Config) -> Space:
    """A --space file: dotted config keys, each {low, high, log} or {choices: [...]}; each end and choice is checked
    against the config, so a bad key or value fails here, in one line naming it, before any trial."""
    where = f"space file {path}"
    if not path.is_file():
        raise ConfigError(f"{where} does not exist; pass a YAML file of key: {{low, high}} or key: {{choices: [...]}}")
    raw = safe_yaml.load(path, where)
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where} must map dotted config keys to ranges, e.g. train.epochs: {{low: 1, high: 4}}")
    space: Space = {}
    for key, spec in raw.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: {key} must be {{low, high, log}} or {{choices: [...]}} (got {safe_yaml.short(spec)})")
        kind = Choices if "choices" in spec else Range
        try:
            param = kind.model_validate(spec)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
            what = f"{key}.{field}" if field else key
            raise ConfigError(f"{where}: {what}: {err['msg'].removeprefix('Value error, ')}; a key takes "
                              f"{{low, high, log}} or {{choices: [...]}}") from None
        values = param.choices if isinstance(param, Choices) else (param.low, param.high)
        for value in values:
            with_params(config, {key: value}, where=where)
        whole = isinstance(param, Range) and isinstance(param.low, int) and isinstance(param.high, int)
        if whole and _accepts(config, key, param.low + 0.5):  # {low: 0, high: 1} of a key that takes fractions
            param = Range(low=float(param.low), high=float(param.high), log=param.log)
        space[str(key)] = param
    return space


def with_params(config: Config, params: dict[str, Any], where: str = "tune", **top: Any) -> Config:
    """The config with dotted keys set (a trial's params), validated as a whole; `top` sets train.evaluate_test
    and output_dir."""
    raw = config.model_dump(mode="json")
    for key, value in params.items():
        *parents, last = str(key).split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {key}: '{part}' is not a section")
        node[last] = value
    if "evaluate_test" in top:
        raw["train"]["evaluate_test"] = top["evaluate_test"]
    if "output_dir" in top:
        raw["output_dir"] = top["output_dir"]
    return validate(raw, where)


@dataclass
class TrialRow:
    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING
    value: float | None  # the best validation metric; a pruned trial's last one
    params: dict[str, Any]
    run_dir: Path
    note: str = ""  # why it was pruned or failed


@dataclass
class TuneResult:
    study_name: str
    storage: str
    folder: Path
    metric: str
    rows: list[TrialRow]
    best: TrialRow | None
    best_config: Path | None
    plots: list[Path]


def tune(config: Config, trials: int, output_dir: str | Path | None = None, storage: str | None = None,
         study_name: str | None = None, space: Space | None = None, seed: int = 0, pruner=None,
         say: Callable[[str], None] = lambda line: None) -> TuneResult:
    """Run this process's share of a study of `trials` trials (the study's total) and write the table, the plots
    and best.yaml; `pruner` replaces the median pruner, `say` receives a line per evaluation and per trial."""
    import optuna

    from ftune.training import preflight

    if trials < 1:
        raise ConfigError(f"--trials must be at least 1 (got {trials})")
    name = study_name or _default_name(config)
    folder = Path(output_dir or Path("runs") / f"tune-{name}")
    storage = storage or f"sqlite:///{folder / 'study.db'}"
    space = space if space is not None else default_space(config)
    preflight(config, resume=False, check_output=False)  # bad data or model: one error now, not one per trial
    folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial says what Optuna's would
    _not_mlflow(storage)
    study = _open_study(config, space, name, storage, pruner)
    tracking = _StudyTracking(config, study)
    metric = config.train.metric
    while True:
        with _claiming(storage):  # count and claim as one step, so processes sharing the study stop at `trials`
            if len(study.get_trials(deepcopy=False)) >= trials:
                break
            trial = study.ask()
        # Each trial samples with its own seed: a study replays exactly in one process, and processes sharing it
        # never draw the same random trials.
        study.sampler = optuna.samplers.TPESampler(seed=seed + trial.number)
        run_dir = folder / f"trial-{trial.number:03d}"
        if run_dir.exists():
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise RunError(f"{run_dir} already exists, but study {name} in {shown(storage)} is at trial {trial.number}: "
                           f"its database was replaced; pass another --output-dir or --study-name")
        _run_trial(study, trial, config, space, run_dir, say)
        tracking.file_trial(run_dir)
    rows = trial_rows(study, folder)
    result = TuneResult(name, shown(storage), folder, metric, rows, _best(study, rows), None, [])
    _write_outputs(study, result, config, space)
    tracking.finish(result)
    return result


def _run_trial(study, trial, config: Config, space: Space, run_dir: Path, say: Callable[[str], None]) -> None:
    """Train one trial and tell the study how it ended: complete (best validation metric), pruned or failed."""
    from optuna.trial import TrialState

    from ftune.training import train

    metric = config.train.metric
    evaluations = itertools.count()

    def on_evaluate(step: int, scores: dict) -> None:
        # Reported per evaluation, not per optimizer step: batch size varies across trials, so their steps never
        # line up, while the n-th evaluation (each epoch by default) does and the pruner can compare them.
        n, value = next(evaluations), scores[metric]
        trial.report(value, n)
        say(f"trial {trial.number}, evaluation {n + 1} (step {step}): validation {metric} {value:.4f}")
        if trial.should_prune():
            raise RunPruned(f"pruned at evaluation {n + 1}: {metric} {value:.4f}, worse than the median of the "
                            f"finished trials there")

    trial.set_user_attr("process", f"{socket.gethostname()}:{os.getpid()}")  # which machine ran it, in a shared study
    try:
        params = {key: param.suggest(trial, key) for key, param in space.items()}
        say(f"trial {trial.number}: " + ", ".join(f"{k}={_short(v)}" for k, v in params.items()))
        trial_config = with_params(config, params, evaluate_test=False, output_dir=str(run_dir))
        run = train(trial_config, quiet=True, on_evaluate=on_evaluate)
    except RunPruned as e:
        trial.set_user_attr("note", str(e))
        study.tell(trial, state=TrialState.PRUNED)
        say(f"trial {trial.number}: {e}")
        return
    except (ConfigError, RunError) as e:  # this trial's settings: diverged, out of memory; the study goes on
        trial.set_user_attr("note", str(e)[:500])
        study.tell(trial, state=TrialState.FAIL)
        say(f"trial {trial.number} failed: {e}")
        return
    except TrainingStopped as e:  # SIGINT / SIGTERM: a trial is not resumed; the study is, by the same command
        study.tell(trial, state=TrialState.FAIL)
        raise TrainingStopped(f"stopped during trial {trial.number} (recorded as failed): run the same command again "
                              f"to run the study's remaining trials", e.exit_code) from None
    except BaseException:  # a bug: the trial is failed in the study, and the study stops
        study.tell(trial, state=TrialState.FAIL)
        raise
    value = run.metrics["validation"]["best"]
    study.tell(trial, value)
    say(f"trial {trial.number} complete: best validation {metric} {value:.4f}")


def trial_rows(study, folder: Path) -> list[TrialRow]:
    """Every trial of the study, by number."""
    return [TrialRow(t.number, t.state.name, t.value if t.value is not None else _last(t), dict(t.params),
                     folder / f"trial-{t.number:03d}", t.user_attrs.get("note", ""))
            for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]


def table(result: TuneResult) -> tuple[list[str], list[tuple]]:
    """The trials as a header and rows: number (* for the best), state, validation metric, a column per param (by
    its last name where that is unique), and why a trial was pruned or failed."""
    keys = list(dict.fromkeys(k for row in result.rows for k in row.params))
    names = [k.rsplit(".", 1)[-1] for k in keys]
    names = names if len(set(names)) == len(names) else keys
    notes = any(r.note for r in result.rows)
    header = ["trial", "state", result.metric, *names, *(["note"] if notes else [])]
    rows = [(f"{r.number}{'*' if r is result.best else ''}", r.state.lower(),
             "" if r.value is None else f"{r.value:.4f}",
             *(_short(r.params.get(k, "")) for k in keys), *([r.note] if notes else []))
            for r in result.rows]
    return header, rows


def _open_study(config: Config, space: Space, name: str, storage: str, pruner):
    """The study, created or loaded; a study started with another config or space is refused, not mixed into."""
    import optuna

    direction = "minimize" if config.train.metric == "loss" else "maximize"
    try:
        study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction=direction,
                                    pruner=pruner or optuna.pruners.MedianPruner())
    except Exception as e:  # a bad URL, a missing driver, an unreachable server: the message names which
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        reason = shown(reason, storage)  # a driver may repeat the URL or the password in its message
        raise ConfigError(f"--storage {shown(storage)}: cannot open the study ({reason}); pass sqlite:///PATH.db or "
                          f"another database URL Optuna supports") from None
    # Tracking and output folder do not change what a trial learns; every other key must match.
    settings = config.model_dump(mode="json", exclude={"output_dir", "tracking"})
    base = {"config": yaml.safe_dump(settings, sort_keys=False),
            "space": {k: p.describe() for k, p in space.items()}}
    started = {k: study.user_attrs.get(k) for k in base}
    if started["config"] is None:
        for key, value in base.items():
            study.set_user_attr(key, value)
    elif started != base:
        which = "config" if started["config"] != base["config"] else "search space"
        raise ConfigError(f"study {name} in {shown(storage)} was started with another {which}; run it with the same config, "
                          f"--set and --space, or pass another --study-name")
    return study


@contextmanager
def _claiming(storage: str) -> Iterator[None]:
    """For a SQLite study, an exclusive lock on a file beside it while a process counts trials and asks for one;
    Optuna's MaxTrialsCallback counts after each trial, so processes finishing together would each start one more.
    A server database has no such lock: there, processes finishing at the same instant may run one extra trial each."""
    path = _sqlite_path(storage)
    if path is None:  # a server database, or SQLite in memory: no other process can share that one
        yield
        return
    lock = Path(str(path) + ".lock")
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
        yield


def _sqlite_path(storage: str) -> Path | None:
    """The file of a sqlite:/// URL (its query left off); None for other databases and for SQLite in memory."""
    if not storage.startswith("sqlite:///"):
        return None
    path = storage.removeprefix("sqlite:///").split("?")[0]
    return None if path in ("", ":memory:") or path.startswith("file::memory:") else Path(path)


def _password(storage: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        return make_url(storage).password or None
    except Exception:  # noqa: BLE001 - not a URL sqlalchemy reads: Optuna's own error says so
        return None


def shown(text: str, storage: str | None = None) -> str:
    """A storage URL, or a message about the URL `storage`, as it may be printed: a URL's password replaced by ***,
    and so is the password wherever the text repeats it."""
    text = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    password = _password(storage or text)
    return text.replace(password, "***") if password else text


MLFLOW_TABLES = {"experiments", "runs", "metrics", "params"}


def _not_mlflow(storage: str) -> None:
    """Refuse MLflow's tracking database as Optuna's storage before Optuna adds its tables to it: both keep an
    `alembic_version` table, so Optuna would then refuse it with a message about a schema version that confuses."""
    path = _sqlite_path(storage)
    if storage.startswith("sqlite") and (path is None or not path.is_file()):
        return  # a new file (or memory): nothing there yet; checked without creating it
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(storage)
        try:
            tables = set(sqlalchemy.inspect(engine).get_table_names())
        finally:
            engine.dispose()
    except Exception:  # noqa: BLE001 - unreachable or not a database: Optuna's error on opening it says which
        return
    if MLFLOW_TABLES <= tables and "studies" not in tables:
        raise ConfigError(f"--storage {shown(storage)} is an MLflow tracking database (it has MLflow's tables "
                          f"experiments and runs); give the study a database of its own, e.g. --storage "
                          f"sqlite:///runs/study.db (or leave --storage out)")


def _write_outputs(study, result: TuneResult, config: Config, space: Space) -> None:
    """trials.md, and with a completed trial the plots and best.yaml, into the study folder (and `result`)."""
    from ftune.report import markdown_table

    folder, best = result.folder, result.best
    space_text = yaml.safe_dump({k: p.describe() for k, p in space.items()}, sort_keys=False)
    write_text(folder / "trials.md", f"# Study {result.study_name}\n\n{markdown_table(*table(result))}\n\n"
                                     f"## Search space\n\n```yaml\n{space_text}```\n")
    if best is None:
        return
    result.plots = _plots(study, folder, result.metric)
    raw = with_params(config, best.params, evaluate_test=True).model_dump(mode="json")
    raw.pop("output_dir")  # `ftune train best.yaml` picks a fresh run directory, or takes --output-dir
    head = (f"# Best of study {result.study_name}: trial {best.number}, validation {result.metric} {best.value:.4f}.\n"
            f"# Train it (the test split is evaluated again): ftune train {folder / 'best.yaml'}\n")
    result.best_config = folder / "best.yaml"
    write_text(result.best_config, head + yaml.safe_dump(raw, sort_keys=False))


def _plots(study, folder: Path, metric: str) -> list[Path]:
    """Optuna's matplotlib figures of the study, as PNG files beside it."""
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as figures

    from ftune import plots  # its import also selects matplotlib's file-only backend

    written = []
    for name, draw in (("history.png", figures.plot_optimization_history),
                       ("curves.png", figures.plot_intermediate_values)):
        with warnings.catch_warnings():  # Optuna marks its matplotlib figures experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = draw(study)
        axes.set_ylabel(f"validation {metric}")
        if name == "curves.png":
            axes.set_xlabel("evaluation (0: the first)")
        figure = axes.figure
        figure.set_size_inches(8, 4.5)
        figure.tight_layout()
        try:
            with atomic_path(folder / name) as tmp:
                figure.savefig(tmp, dpi=plots.DPI, format="png")
        finally:
            plt.close(figure)
        written.append(folder / name)
    return written


class _StudyTracking:
    """With MLflow tracking, one MLflow run for the study, each trial's run filed under it as a child run (tagged
    after the trial: the tracker creates the trial's run). Failures warn once; the study goes on."""

    def __init__(self, config: Config, study):
        self.client = self.parent = None
        if config.tracking.backend != "mlflow":
            return
        from ftune.tracking import MlflowTracker

        tracker = MlflowTracker(config.tracking)  # the same store and experiment the trials log to
        self.client, self.parent = tracker.client, study.user_attrs.get("mlflow_run_id")
        if self.parent is None:  # processes starting together may each make one; each files its own trials
            run = self.client.create_run(tracker.experiment_id, run_name=f"tune-{study.study_name}",
                                         tags={"ftune.study": study.study_name})
            self.parent = run.info.run_id
            study.set_user_attr("mlflow_run_id", self.parent)

    def file_trial(self, run_dir: Path) -> None:
        from ftune.run import RUN_FILE, read_json

        if self.client and (run_dir / RUN_FILE).is_file():
            run_id = read_json(run_dir / RUN_FILE).get("tracking", {}).get("run_id")
            if run_id:
                self._guarded(self.client.set_tag, run_id, "mlflow.parentRunId", self.parent)

    def finish(self, result: TuneResult) -> None:
        if not self.client:
            return
        if result.best:
            self._guarded(self.client.log_metric, self.parent, f"best_validation_{result.metric}", result.best.value)
        for path in [result.folder / "trials.md", result.best_config, *result.plots]:
            if path:
                self._guarded(self.client.log_artifact, self.parent, str(path))
        self._guarded(self.client.set_terminated, self.parent, "FINISHED")

    def _guarded(self, action, *args) -> None:
        try:
            action(*args)
        except Exception as e:
            warnings.warn(f"mlflow tracking of the study: {type(e).__name__}: {e}; tracking of the study stops here",
                          stacklevel=2)
            self.client = None


def _best(study, rows: list[TrialRow]) -> TrialRow | None:
    complete = [r for r in rows if r.state == "COMPLETE"]
    return next((r for r in complete if r.number == study.best_trial.number), None) if complete else None


def _last(trial) -> float | None:
    """A pruned trial's last reported validation metric."""
    return trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None


def _accepts(config: Config, key: str, value: Any) -> bool:
    try:
        with_params(config, {key: value})
        return True
    except ConfigError:
        return False


def _default_name(config: Config) -> str:
    return f"{Path(config.data.train).stem or config.data.train}-{config.method.name}"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
