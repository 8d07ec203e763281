"""The managed clouds' container contracts, read into what `ftune train` and `ftune serve` take: Amazon SageMaker
(a bring-your-own container) and Google Vertex AI (custom training, custom prediction containers).

A platform says where things are through paths and environment variables; this module reads them and nothing
else: the training and the serving are `ftune train`'s and `ftune serve`'s own (ftune.cli runs them).

SageMaker training (under /opt/ml, or $FTUNE_SAGEMAKER_ROOT for tests and local tries; the SM_ variables that the
sagemaker-training toolkit sets win where present):
    input/data/CHANNEL/                 SM_CHANNEL_<CHANNEL>: train|training, validation|eval, test -> data.train,
                                        data.validation, data.test (the channel's one file, or a saved dataset)
    input/config/hyperparameters.json   {"train.epochs": "2", ...} -> config overrides; "config": a YAML config
    model/                              SM_MODEL_DIR: the run directory (SageMaker uploads it as model.tar.gz)
    output/data/                        SM_OUTPUT_DATA_DIR: the report and metrics again (output.tar.gz)
    output/failure                      the one-line reason a job failed
Vertex AI custom training:
    AIP_MODEL_DIR                       the run directory (gs://B/P is /gcs/B/P: Cloud Storage FUSE)
    AIP_TRAINING_DATA_URI, ...          data.train, data.validation, data.test (AIP_DATA_FORMAT: jsonl or csv)
    AIP_TENSORBOARD_LOG_DIR             tracking.backend tensorboard, logging there
Serving: the model's folder, the port and the routes each platform gives a prediction container (`Serving`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ftune import safe_yaml
from ftune.errors import ConfigError, DataError, FtuneError, TrainingStopped
from ftune.run_folder import LOCK_FILE

PLATFORMS = ("sagemaker", "vertex")
# SageMaker input channels that hold a split. Other channels (a config, a base model) are read by their paths.
CHANNELS = {"train": "data.train", "training": "data.train", "validation": "data.validation",
            "eval": "data.validation", "test": "data.test"}
VERTEX_DATA = {"AIP_TRAINING_DATA_URI": "data.train", "AIP_VALIDATION_DATA_URI": "data.validation",
               "AIP_TEST_DATA_URI": "data.test"}
REPORT_FILES = ("report.html", "report.md", "metrics.json")  # copied to SageMaker's output data as well


@dataclass
class TrainingJob:
    """What a platform asks of `ftune train`: a config file (or none), the overrides (`key=value`, as --set: the
    platform's paths first, then the user's, which win), where the run trains, and where the finished run goes."""

    platform: str
    config: Path | None
    overrides: list[str]
    work_dir: Path
    model_dir: Path
    output_data_dir: Path | None = None


@dataclass
class Serving:
    """Where and how a platform's prediction container answers."""

    platform: str
    model: Path | None  # the model's folder as the platform gives it; None: the command line must name it
    port: int
    health_route: str
    predict_route: str

    def sources(self, given: list[Path] | None) -> list[Path]:
        """What is served: the one run or export the command line names, else the platform's model folder."""
        if given and len(given) > 1:
            raise ConfigError(f"--platform {self.platform} serves one run or export (the platform sends every "
                              f"request to one model); serve the others in containers of their own")
        if given:
            return given
        if self.model is None:
            raise ConfigError("AIP_STORAGE_URI is not set (the Model has no artifact URI): name the run's folder, "
                              "e.g. ftune serve /models/run --platform vertex")
        return [self.model]


def detect(asked: str) -> str:
    """The platform that started this container: `asked`, or (auto) the one whose traces are here: Vertex AI's
    AIP_MODEL_DIR, SageMaker's SM_MODEL_DIR or its hyperparameters file."""
    if asked in PLATFORMS:
        return asked
    if asked != "auto":
        raise ConfigError(f"--platform {asked}: choose sagemaker, vertex or auto")
    if "AIP_MODEL_DIR" in os.environ:
        return "vertex"
    if "SM_MODEL_DIR" in os.environ or _hyperparameters_file().is_file():
        return "sagemaker"
    raise ConfigError("ftune cloud-train: no platform found (SageMaker writes /opt/ml/input/config/"
                      "hyperparameters.json, Vertex AI sets AIP_MODEL_DIR); pass --platform sagemaker or vertex, or "
                      "train here with `ftune train`")


@contextmanager
def failure_reported(platform: str) -> Iterator[None]:
    """Runs the job; a failure's one-line reason also goes where the platform shows it (SageMaker: output/failure,
    the job's FailureReason), then the error goes on as before (the CLI exits non-zero)."""
    try:
        yield
    except Exception as e:
        if platform == "sagemaker":
            reason = (str(e) if isinstance(e, FtuneError) else f"stopped: {e}" if isinstance(e, TrainingStopped)
                      else f"{type(e).__name__}: {e} (the job's log has the traceback)")
            failure = Path(os.environ.get("SM_OUTPUT_DIR", _sagemaker_root() / "output")) / "failure"
            failure.parent.mkdir(parents=True, exist_ok=True)
            failure.write_text(" ".join(reason.split()) + "\n", encoding="utf-8")  # one line
        raise


def training_job(platform: str, config: str | None, overrides: list[str]) -> TrainingJob:
    """The job the platform's environment describes, checked before any data is read."""
    return _sagemaker_job(config, overrides) if platform == "sagemaker" else _vertex_job(config, overrides)


def publish(job: TrainingJob) -> None:
    """The finished run where the platform collects the model, without checkpoints/: they serve --resume only and
    are the largest files (a full fine-tune's optimizer state is twice the model)."""
    if job.work_dir == job.model_dir:
        shutil.rmtree(job.model_dir / "checkpoints", ignore_errors=True)
        (job.model_dir / LOCK_FILE).unlink(missing_ok=True)  # the finished run's, held by no one now
    else:  # copied file by file, not renamed (see _vertex_job)
        shutil.copytree(job.work_dir, job.model_dir, ignore=shutil.ignore_patterns("checkpoints", LOCK_FILE),
                        dirs_exist_ok=True)
        shutil.rmtree(job.work_dir)
    if job.output_data_dir is not None:
        job.output_data_dir.mkdir(parents=True, exist_ok=True)
        for name in REPORT_FILES:
            if (job.model_dir / name).is_file():
                shutil.copy2(job.model_dir / name, job.output_data_dir / name)


def local_path(uri: str, variable: str) -> Path:
    """A path or a gs://BUCKET/PATH URI as a path here: Vertex AI mounts Cloud Storage at /gcs (FUSE), so
    gs://B/P is /gcs/B/P ($FTUNE_GCS_ROOT instead of /gcs for tests and local tries)."""
    if uri.startswith("gs://"):
        return Path(os.environ.get("FTUNE_GCS_ROOT", "/gcs")) / uri.removeprefix("gs://")
    if "://" in uri:
        raise ConfigError(f"{variable}={uri}: ftune reads local paths and gs:// (through /gcs); copy the data "
                          f"there, or into the image")
    return Path(uri)


def serving(asked: str | None) -> Serving | None:
    """How a platform's prediction container must answer: `asked` (sagemaker, vertex), or Vertex AI where its
    variables are set; None: plain `ftune serve`. SageMaker sets no variable a container could be recognized by."""
    if asked is not None and asked not in PLATFORMS:
        raise ConfigError(f"--platform {asked}: choose sagemaker or vertex")
    platform = asked or ("vertex" if "AIP_PREDICT_ROUTE" in os.environ or "AIP_HTTP_PORT" in os.environ else None)
    if platform == "sagemaker":
        return Serving("sagemaker", _sagemaker_root() / "model", _port("SAGEMAKER_BIND_TO_PORT"), "/ping",
                       "/invocations")
    if platform == "vertex":
        storage = os.environ.get("AIP_STORAGE_URI")
        model = local_path(storage, "AIP_STORAGE_URI") if storage else None
        if model is not None and storage.startswith("gs://") and not model.exists():
            raise ConfigError(f"AIP_STORAGE_URI={storage} is not mounted at {model}, and ftune serve does not "
                              f"download from Cloud Storage: copy the run into the image (or a mounted disk) and "
                              f"pass its path")
        return Serving("vertex", model, _port("AIP_HTTP_PORT"), os.environ.get("AIP_HEALTH_ROUTE", "/health"),
                       os.environ.get("AIP_PREDICT_ROUTE", "/predict"))
    return None


def _port(variable: str) -> int:
    value = os.environ.get(variable, "8080")  # both platforms' default
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigError(f"{variable}={value} is not a TCP port; set it to a number from 1 to 65535")
    return int(value)


def _sagemaker_root() -> Path:
    return Path(os.environ.get("FTUNE_SAGEMAKER_ROOT", "/opt/ml"))


def _hyperparameters_file() -> Path:
    return Path(os.environ.get("SM_INPUT_CONFIG_DIR", _sagemaker_root() / "input" / "config")) / "hyperparameters.json"


def _sagemaker_job(config: str | None, overrides: list[str]) -> TrainingJob:
    root = _sagemaker_root()
    channels = _channels(root)
    hyperparameters = _hyperparameters()
    if "output_dir" in hyperparameters:
        raise ConfigError("SageMaker hyperparameter output_dir: the run goes to SM_MODEL_DIR (/opt/ml/model), which "
                          "SageMaker uploads; drop the hyperparameter")
    named = hyperparameters.pop("config", None)
    if named is not None and config is not None:
        raise ConfigError(f"a config is named twice: the hyperparameter config={named} and the argument {config}; "
                          f"keep one")
    config_path = _channel_config(named, channels) if named is not None else Path(config) if config else None
    paths = {}
    for name, folder in channels.items():
        key = CHANNELS.get(name)
        if key is not None and key not in hyperparameters:
            if key in paths:
                both = " and ".join(n for n in CHANNELS if CHANNELS[n] == key and n in channels)
                raise ConfigError(f"SageMaker channels {both} both hold {key}; keep one of them")
            paths[key] = _channel_data(name, folder, key)
    if "data.train" not in paths and "data.train" not in hyperparameters and not _config_names_data(config_path):
        raise DataError(f"no training data: add an input channel named 'train' to the training job (SageMaker copies "
                        f"it to {root / 'input/data/train'}), or set the hyperparameter data.train")
    model_dir = Path(os.environ.get("SM_MODEL_DIR", root / "model"))
    output_data = Path(os.environ.get("SM_OUTPUT_DATA_DIR", root / "output" / "data"))
    settings = _quoted(paths | {"output_dir": str(model_dir)}) + [f"{k}={v}" for k, v in hyperparameters.items()]
    _check_hyperparameters(config_path, settings)
    return TrainingJob("sagemaker", config_path, settings + overrides, model_dir, model_dir, output_data)


def _channels(root: Path) -> dict[str, Path]:
    """SageMaker's input channels: {name: folder}, from SM_CHANNEL_<NAME> or the folders of input/data. A channel
    in Pipe mode (a stream, no files) is refused: ftune reads a file more than once."""
    data = root / "input" / "data"
    found = {p.name: p for p in sorted(data.iterdir()) if p.is_dir()} if data.is_dir() else {}
    found |= {k.removeprefix("SM_CHANNEL_").lower(): Path(v) for k, v in os.environ.items()
              if k.startswith("SM_CHANNEL_")}
    described = _hyperparameters_file().parent / "inputdataconfig.json"
    modes = json.loads(described.read_text(encoding="utf-8")) if described.is_file() else {}
    for name, spec in modes.items() if isinstance(modes, dict) else ():
        if name in CHANNELS and isinstance(spec, dict) and spec.get("TrainingInputMode") == "Pipe":
            raise ConfigError(f"SageMaker channel '{name}' is in Pipe mode, a stream ftune cannot read twice; set the "
                              f"channel's input mode to File or FastFile")
    return found


def _channel_data(name: str, folder: Path, key: str) -> str:
    """What a split's channel holds: its one file, or a `datasets` save_to_disk folder."""
    if (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file():
        return str(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if len(files) == 1:
        return str(files[0])
    where = f"SageMaker channel '{name}' ({folder})"
    if not files:
        raise DataError(f"{where} holds no file; point the channel at the S3 object (or prefix) of the data file")
    shown = ", ".join(str(p.relative_to(folder)) for p in files[:3]) + (", ..." if len(files) > 3 else "")
    raise DataError(f"{where} holds {len(files)} files ({shown}); ftune reads one file per split: give the channel "
                    f"one file, or set the hyperparameter {key} to one of them")


def _hyperparameters() -> dict[str, str]:
    """The job's hyperparameters: {key: value as written}. SageMaker writes every value as a string; a value read as
    YAML (as --set reads one) gives numbers their type, and JSON-encoded strings ("\\"minilm\\"") their text. The
    sagemaker_* keys that SageMaker's SDK adds are its own."""
    path = _hyperparameters_file()
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not JSON ({e}); SageMaker writes it from the job's HyperParameters") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold an object of hyperparameters, e.g. {{\"train.epochs\": \"2\"}}")
    return {str(key): value if isinstance(value, str) else json.dumps(value) for key, value in raw.items()
            if not str(key).startswith("sagemaker_")}


def _check_hyperparameters(config: Path | None, settings: list[str]) -> None:
    """A hyperparameter the config does not take, said as the job's before anything loads (train would call it the
    command line's)."""
    from ftune.config import load_config  # pydantic and the task registry: only for a job

    try:
        load_config(config, settings, infer_task=True)
    except ConfigError as e:
        if not str(e).startswith("command line: "):
            raise  # the config file's own, named by its path
        raise ConfigError(f"SageMaker hyperparameters ({_hyperparameters_file()}): "
                          f"{str(e).removeprefix('command line: ')}") from None


def _channel_config(name: str, channels: dict[str, Path]) -> Path:
    """The hyperparameter `config`: a path in the image (absolute, or from the working folder), else a file of that
    name in an input channel."""
    path = Path(name)
    if path.is_absolute() or path.is_file():
        return path
    found = [folder / name for folder in channels.values() if (folder / name).is_file()]
    if not found:
        raise ConfigError(f"hyperparameter config={name}: no such file in the image ({Path.cwd()}) or in an input "
                          f"channel ({', '.join(channels) or 'none'}); name a YAML file in one of them")
    return found[0]


def _config_names_data(path: Path | None) -> bool:
    if path is None or not path.is_file():
        return False  # a missing file is train's to say
    raw = safe_yaml.load(path, f"config file {path}")
    return isinstance(raw, dict) and isinstance(raw.get("data"), dict) and bool(raw["data"].get("train"))


def _vertex_job(config: str | None, overrides: list[str]) -> TrainingJob:
    if "AIP_MODEL_DIR" not in os.environ:
        raise ConfigError("AIP_MODEL_DIR is not set: Vertex AI sets it from the job's base output directory; set "
                          "baseOutputDirectory (or the variable) to where the run should go")
    model_dir = local_path(os.environ["AIP_MODEL_DIR"], "AIP_MODEL_DIR")
    if model_dir.is_dir() and any(model_dir.iterdir()):
        raise ConfigError(f"AIP_MODEL_DIR ({model_dir}) already holds files; give the job a new base output directory")
    data_format = os.environ.get("AIP_DATA_FORMAT", "jsonl")
    if data_format not in ("jsonl", "csv"):
        raise ConfigError(f"AIP_DATA_FORMAT={data_format}: ftune reads files; export the dataset as jsonl or csv")
    paths = {key: str(_vertex_data(variable)) for variable, key in VERTEX_DATA.items() if os.environ.get(variable)}
    if os.environ.get("AIP_TENSORBOARD_LOG_DIR"):
        logs = local_path(os.environ["AIP_TENSORBOARD_LOG_DIR"], "AIP_TENSORBOARD_LOG_DIR")
        paths |= {"tracking.backend": "tensorboard", "tracking.uri": str(logs)}
    config_path = local_path(config, "the config argument") if config else None
    # Trained on local disk, then copied: ftune renames checkpoint folders into place, and Cloud Storage FUSE by
    # default refuses to rename a folder that holds files (its rename-dir-limit is 0), or copies it object by object.
    work_dir = Path(tempfile.mkdtemp(prefix="ftune-run-"))
    return TrainingJob("vertex", config_path, _quoted(paths | {"output_dir": str(work_dir)}) + overrides, work_dir,
                       model_dir)


def _vertex_data(variable: str) -> Path:
    """A data URI as one local file. Vertex AI's URIs may end in a wildcard (gs://B/P/training-*): it must match
    exactly one file, as ftune reads one file per split."""
    uri = os.environ[variable]
    path = local_path(uri, variable)
    if not any(c in path.name for c in "*?["):
        return path
    matches = sorted(path.parent.glob(path.name))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise DataError(f"{variable}={uri}: no file matches {path}; check the URI and that the bucket is mounted")
    raise DataError(f"{variable}={uri} matches {len(matches)} files; ftune reads one file per split: join them "
                    f"into one file (or export the dataset as one) and point {variable} at it")


def _quoted(values: dict[str, str]) -> list[str]:
    # JSON strings are YAML strings: a path reaches the config exactly, whatever it holds (`#`, `: `, a number)
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]
