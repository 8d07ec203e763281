"""ftune: fine-tune pretrained transformers on your labeled data, and see what it gained.

    import ftune
    run = ftune.train(ftune.load_config("configs/mr_lora.yaml", ["train.epochs=2"]))
    run.predict(["the plot was thin but the acting carried it"])
"""

from ftune.config import Config, load_config
from ftune.errors import ConfigError, DataError, FtuneError, ModelError, RunError
from ftune.predictors import Run

__version__ = "0.1.0"


def train(config: Config, resume: bool = False, quiet: bool = False) -> Run:
    """Fine-tune as configured; returns the finished Run (see ftune.training)."""
    from ftune.training import train as _train

    return _train(config, resume=resume, quiet=quiet)


def evaluate(run: str | Run, data: str, trust_remote_code: bool = False, **columns: str) -> dict:
    """Score a finished run on another labeled file; columns as in data.text_column etc. `trust_remote_code` lets a
    run whose config asks for it run model code from its folder."""
    from ftune.predictors import evaluate_run

    return evaluate_run(run if isinstance(run, Run) else Run(run), data, trust_remote_code, **columns)


__all__ = ["Config", "ConfigError", "DataError", "FtuneError", "ModelError", "Run", "RunError", "evaluate",
           "load_config", "train", "__version__"]
