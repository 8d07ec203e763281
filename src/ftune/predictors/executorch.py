"""An ExecuTorch export (`ftune export RUN --format executorch`) run through ExecuTorch's Python runtime: the same
program a phone's ExecuTorch runtime loads, with the XNNPACK kernels it uses.

Everything but the model call is OnnxPredictor's: export.json, the file hashes, labels, tokenizer and task.
A .pte takes one text at a time, unpadded (it has no attention mask input: on a device a text is labeled alone), so
every example is its own batch.
"""

from __future__ import annotations

import contextlib
import os

from ftune.errors import ConfigError, RunError
from ftune.inference import PerRow, batched_outputs
from ftune.predictors.onnx import OnnxPredictor

INSTALL = "pip install 'ftune[edge]' (ExecuTorch)"


def runtime():
    """ExecuTorch's runtime, with the quantized kernels the int8 embedding table needs registered."""
    try:
        import executorch.kernels.quantized  # noqa: F401  (registers quantized_decomposed ops)
        from executorch.runtime import Runtime
    except ImportError:
        raise ConfigError(f"ExecuTorch is not installed; {INSTALL}") from None
    return Runtime.get()


@contextlib.contextmanager
def quiet_native_log():
    """ExecuTorch's runtime prints what it reads about the CPU (cpuinfo) on the process's stderr, below Python:
    silenced for the load only, at the file descriptor."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class ExecutorchPredictor(OnnxPredictor):
    """An export folder with model.pte and/or model.int8.pte (export.json "format": "executorch")."""

    runtime = "executorch"

    @staticmethod
    def providers_for(device: str) -> list[str]:
        """None to choose: the program runs its XNNPACK delegate on the CPU."""
        if device not in ("auto", "cpu"):
            raise ConfigError(f"--device {device}: an ExecuTorch export runs on the CPU (XNNPACK); use --device cpu, "
                              f"or export the run to ONNX for a GPU")
        return []

    def open(self, fix: str) -> None:
        try:
            with quiet_native_log():
                self.method = runtime().load_program(str(self.file)).load_method("forward")
        except ConfigError:
            raise
        except Exception as e:  # the runtime raises RuntimeError or ValueError for a damaged program
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise RunError(f"ExecuTorch cannot load {self.file} ({first}); {fix}") from None
        self.input_names = list(self.info.get("inputs", []))
        unknown = [name for name in self.input_names if name not in self.tokenizer.model_input_names]
        if not self.input_names or unknown:
            raise RunError(f"{self.file.name} takes inputs the tokenizer in {self.export_dir} does not make "
                           f"({', '.join(unknown) or 'none named'}); {fix}")

    def outputs(self, data, per_row: PerRow) -> list:
        def forward(batch):
            logits = self.method.execute([batch[name] for name in self.input_names])[0]
            return per_row(logits, batch)

        return batched_outputs(forward, data, 1, self.tokenizer.pad_token_id or 0)

    def runs_on(self) -> str:
        return "XNNPACK (CPU)"

