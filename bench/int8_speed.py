"""Why int8 is or isn't faster on a CPU: one MiniLM-shaped model, fp32 vs int8, side by side.

    .venv/bin/python bench/int8_speed.py [--threads 2]

No weights needed: the model is built from MiniLM-L6's shape with random weights, which cost the
same time as trained ones, so it runs on any machine with ftune's dependencies. Measures
  1. the raw matrix product at MiniLM's FFN shape: onnxruntime fp32 MatMul vs int8 DynamicQuantizeMatMul;
  2. whole-model forward passes on batches of 32 x 32 tokens: PyTorch fp32, ONNX fp32, ONNX int8
     (per-channel dynamic quantization, as `ftune export --quantize int8` makes it);
and prints the CPU's int8 instruction flags (AVX-512 VNNI / AVX-VNNI / AMX decide whether int8 wins).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"]
    return " ".join(f for f in wanted if f in flags) or "none of " + ", ".join(wanted)


def per_second(fn, repeats: int = 10) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return repeats / (time.perf_counter() - start)


def gemm(threads: int) -> tuple[float, float]:
    """GOP/s of one (4096 x 384) @ (384 x 1536) product in fp32 and in dynamic int8."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = 4096, 384, 1536
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((k, n)).astype(np.float32)
    scale = np.abs(weight).max() / 127
    quantized = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)

    def session(node, initializers):
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], initializers)
        model = helper.make_model(graph, ir_version=9,  # readable by older onnxruntime releases too
                                  opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    fp32 = session(helper.make_node("MatMul", ["x", "w"], ["y"]), [numpy_helper.from_array(weight, "w")])
    int8 = session(helper.make_node("DynamicQuantizeMatMul", ["x", "w", "s", "z"], ["y"], domain="com.microsoft"),
                   [numpy_helper.from_array(quantized, "w"), numpy_helper.from_array(np.array(scale, np.float32), "s"),
                    numpy_helper.from_array(np.array(0, np.int8), "z")])
    x = rng.standard_normal((m, k)).astype(np.float32)
    ops = 2 * m * k * n / 1e9
    return ops * per_second(lambda: fp32.run(None, {"x": x})), ops * per_second(lambda: int8.run(None, {"x": x}))


def model_rates(threads: int) -> dict[str, float]:
    """Samples/s of MiniLM-L6-shaped classifiers on 32 x 32-token batches."""
    import onnxruntime as ort
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from ftune.export import quantize_int8

    torch.set_num_threads(threads)
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, num_labels=2)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    batch = {"input_ids": torch.randint(1000, 20000, (32, 32)), "token_type_ids": torch.zeros(32, 32, dtype=torch.long),
             "attention_mask": torch.ones(32, 32, dtype=torch.long)}
    names = list(batch)

    class LogitsOnly(torch.nn.Module):
        def forward(self, *tensors):
            return model(**dict(zip(names, tensors))).logits

    folder = Path(tempfile.mkdtemp())
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
    torch.onnx.export(LogitsOnly(), tuple(batch.values()), str(folder / "fp32.onnx"), input_names=names,
                      output_names=["logits"], dynamo=True, external_data=False, dynamic_shapes=(tuple(dims for _ in names),))
    quantize_int8(folder / "fp32.onnx", folder / "int8.onnx")
    feeds = {k: v.numpy() for k, v in batch.items()}
    rates = {}
    with torch.inference_mode():
        rates["PyTorch fp32"] = 32 * per_second(lambda: model(**batch))
    for name in ("fp32", "int8"):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(folder / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
        rates[f"ONNX {name}"] = 32 * per_second(lambda: session.run(None, feeds))
    return rates


def main() -> None:
    import os

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    threads = p.parse_args().threads
    print(f"CPU: {os.cpu_count()} logical cores, threads used {threads}; int8 flags: {cpu_flags()}")
    fp32, int8 = gemm(threads)
    print(f"matrix product 4096x384x1536: fp32 {fp32:.1f} GOP/s, int8 {int8:.1f} GOP/s, int8/fp32 {int8 / fp32:.2f}x")
    rates = model_rates(threads)
    base = rates["PyTorch fp32"]
    for name, rate in rates.items():
        print(f"{name:>14}: {rate:7.1f} samples/s  {rate / base:.2f}x PyTorch fp32")


if __name__ == "__main__":
    main()
