"""`ftune export RUN --format executorch`: a run's model as ExecuTorch programs (.pte) for phones and other devices,
lowered to the XNNPACK delegate (ARM and x86 CPUs), fp32 and int8.

torch.export traces the merged model with a dynamic sequence length (1 text, up to the run's max_length tokens, no
padding and so no attention mask input: on a device a text is labeled alone); executorch's
`to_edge_transform_and_lower` hands every operator XNNPACK runs to it. int8 is PT2E quantization with XNNPACK's
quantizer: linear layers get int8 weights per output channel and int8 activations quantized per call (dynamic, as
ONNX export's int8: no calibration data), and the embedding tables, a third of a small encoder's bytes that PT2E
leaves in fp32, get int8 rows with one scale each (ExecuTorch's quantized embedding_byte kernel).
export.export_model does the rest, as for ONNX: the folder, tokenizer, labels, README and the parity check, which
runs each .pte through ExecuTorch's own Python runtime (predictors.executorch).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ftune.export import _LogitsOnly, _quiet, export_model
from ftune.predictors.executorch import runtime

FILES = {"fp32": "model.pte", "int8": "model.int8.pte"}


def export_executorch(run_dir: str | Path, output_dir: str | Path | None = None, quantize: str | None = None,
                      data: str | None = None, trust_remote_code: bool = False) -> Path:
    """Write RUN/executorch (or `output_dir`): model.pte [+ model.int8.pte], tokenizer, labels.json, README.md and
    export.json with the parity figures; refused, in one line, where ExecuTorch is not installed."""
    runtime()  # before the run is read
    return export_model(run_dir, output_dir, quantize, data, trust_remote_code=trust_remote_code, format="executorch",
                        writer=write_programs)


def write_programs(model: torch.nn.Module, tokenizer, folder: Path, quantize: str | None, max_length: int
                   ) -> tuple[list[str], dict[str, str]]:
    """model.pte [+ model.int8.pte] in `folder`: (the program's input names, export.json's "files")."""
    sample = tokenizer(["a short text to trace, with a few words"], return_tensors="pt", truncation=True,
                       max_length=max_length)
    names = [name for name in sample.keys() if name != "attention_mask"]
    module, example = _LogitsOnly(model, names), tuple(sample[name] for name in names)
    # 0/1-sized dimensions are specialized by torch.export, so the shortest text is 2 tokens: a tokenizer that
    # adds special tokens never makes fewer; a single-token text is padded by the predictor (it has none here)
    sequence = torch.export.Dim("sequence", min=2, max=max(max_length, 3))
    shapes = tuple({1: sequence} for _ in names)
    files = {"fp32": FILES["fp32"]}
    with _quiet():
        program = torch.export.export(module, example, dynamic_shapes=(shapes,), strict=False)
        _write(program, folder / FILES["fp32"])
        if quantize == "int8":
            _write(_quantized(module, example, shapes), folder / FILES["int8"])
            files["int8"] = FILES["int8"]
    return names, files


def _write(program: torch.export.ExportedProgram, path: Path) -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    path.write_bytes(to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)


def _quantized(module: torch.nn.Module, example: tuple, shapes: tuple) -> torch.export.ExportedProgram:
    """The model with int8 embedding rows, then PT2E dynamic int8 linear layers, exported again."""
    import copy

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                          get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    module = copy.deepcopy(module)  # runtime() has registered quantized_decomposed.embedding_byte, which it calls
    _int8_embeddings(module)
    graph = torch.export.export(module, example, dynamic_shapes=(shapes,), strict=False).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    graph = prepare_pt2e(graph, quantizer)
    graph(*example)  # dynamic activations: one pass only places the observers, nothing is calibrated
    graph = convert_pt2e(graph)
    return torch.export.export(graph, example, dynamic_shapes=shapes, strict=False)


class Int8Embedding(torch.nn.Module):
    """An embedding table as int8 rows with one fp32 scale each (symmetric: the row's largest |value| maps to 127)."""

    def __init__(self, embedding: torch.nn.Embedding):
        super().__init__()
        weight = embedding.weight.detach().float()
        scales = (weight.abs().amax(1) / 127).clamp(min=1e-12)
        self.register_buffer("weight", torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized_decomposed.embedding_byte.dtype(self.weight, self.scales, None, -127, 127, ids,
                                                                   dtype=torch.float32)


def _int8_embeddings(module: torch.nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, torch.nn.Embedding):
            setattr(module, name, Int8Embedding(child))
        else:
            _int8_embeddings(child)
