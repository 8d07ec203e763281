"""ftune: fine-tune pretrained transformers on your labeled data, and see what it gained.

    import ftune
    run = ftune.train(ftune.load_config("configs/mr_lora.yaml", ["train.epochs=2"]))
    run.predict(["the plot was thin but the acting carried it"])
"""

import logging
import os
import sys
from typing import TYPE_CHECKING

# ftune runs no code from the model hub that the user did not ask for. transformers (5.2x) "kernelizes" every model it
# loads with compiled kernels fetched from the hub when the `kernels` package is installed (it comes with
# transformers), and bitsandbytes, which peft imports in every LoRA run, fetches and loads a 4-bit CPU kernel the same
# way on CPUs with AVX512-BF16. USE_HUB_KERNELS=NO is transformers' own switch; a `None` entry in sys.modules makes
# bitsandbytes' `import kernels` fail, which it treats as "not installed". A user who sets USE_HUB_KERNELS=YES gets
# what the libraries do by themselves.
if os.environ.setdefault("USE_HUB_KERNELS", "NO").upper() not in {"1", "ON", "YES", "TRUE"}:
    sys.modules.setdefault("kernels", None)
    # bitsandbytes then warns, when peft imports it (every LoRA run, and transformers' scheduler module), that the
    # kernel is missing; no ftune run on a CPU uses it (QLoRA needs CUDA). Set here, before anything imports it.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# torchao (which ExecuTorch export needs, and which peft and transformers import wherever it is installed) warns at
# import about CUDA kernels a CPU build lacks, and torch about an API torchao calls: advice for their developers that
# would open every ftune command's output.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)

from ftune.errors import ConfigError, DataError, FtuneError, ModelError, RunError  # noqa: E402

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ftune.config import Config
    from ftune.run import Run


def __getattr__(name: str):
    """`ftune.Config`, `ftune.load_config` and `ftune.Run` on first use: the CLI imports this package, and `ftune
    --help` must not wait for pydantic's models or torch."""
    if name in ("Config", "load_config"):
        from ftune import config

        return getattr(config, name)
    if name == "Run":
        from ftune.run import Run  # the run's files; torch only once it predicts

        return Run
    raise AttributeError(f"module 'ftune' has no attribute {name!r}")


def train(config: "Config", resume: bool = False, quiet: bool = False) -> "Run":
    """Fine-tune as configured; returns the finished Run (see ftune.training)."""
    from ftune.training import train as _train

    return _train(config, resume=resume, quiet=quiet)


def evaluate(run: "str | Run", data: str, trust_remote_code: bool = False, **columns: str) -> dict:
    """Score a finished run on another labeled file; columns as in data.text_column etc. `trust_remote_code` lets a
    run whose config asks for it run model code from its folder."""
    from ftune.predictors import evaluate_run
    from ftune.run import Run

    return evaluate_run(run if isinstance(run, Run) else Run(run), data, trust_remote_code, **columns)


__all__ = ["Config", "ConfigError", "DataError", "FtuneError", "ModelError", "Run", "RunError", "evaluate",
           "load_config", "train", "__version__"]
