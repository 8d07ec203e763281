"""More than one process: the torchrun launch, the Accelerator for the configured strategy, and the
few collective steps the loop needs.

Every process builds the same global batches from the seed and trains on its own slice of each
(see training.py); evaluation splits the length-sorted batches between processes and gathers the
logits with their indices, so every example is scored once. Only the main process writes files.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, broadcast_object_list, gather_object

from ftune.checkpoint import trainable_state
from ftune.schema import DistributedConfig
from ftune.data.batching import eval_batches
from ftune.data.tokenize import Encoded
from ftune.errors import ConfigError, FtuneError
from ftune.inference import PerRow, logit_rows, logits_of, predict_outputs, use_gpu_well
from ftune.stopping import StopFlag

T = TypeVar("T")


def launched() -> bool:
    """True inside a process started by torchrun / accelerate launch (or any launcher that sets LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


LAUNCH_OPTIONS = ("--nproc", "--nnodes", "--node-rank", "--master-addr", "--master-port")


def without_launch_options(argv: list[str]) -> list[str]:
    """The command line minus the launcher's own options (torchrun would take --nproc for --nproc-per-node)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_OPTIONS:
            skip = True  # its value follows
        elif not arg.startswith(tuple(o + "=" for o in LAUNCH_OPTIONS)):
            kept.append(arg)
    return kept


def torchrun_command(argv: list[str], nproc: int, nnodes: int, node_rank: int, master_addr: str | None,
                     master_port: int) -> list[str]:
    """`python -m torch.distributed.run ... -m ftune <argv>`: the same ftune command, once per process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if nnodes == 1:
        command += ["--standalone"]  # a free port on this machine, no rendezvous server to name
    else:
        if not master_addr:
            raise ConfigError("--nnodes > 1 needs --master-addr: the address of the machine with --node-rank 0")
        command += ["--nnodes", str(nnodes), "--node-rank", str(node_rank), "--master-addr", master_addr,
                    "--master-port", str(master_port)]
    return command + ["-m", "ftune", *without_launch_options(argv)]


def launch_env(nproc: int) -> dict[str, str]:
    """Split this machine's cores between the processes (torchrun would otherwise set 1 thread and warn)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env


def make_accelerator(cfg: DistributedConfig, mixed_precision: str, batch_size: int | str, accumulation: int,
                     max_grad_norm: float | None) -> Accelerator:
    """DDP (gloo on CPU, NCCL on GPUs) by default; FSDP or DeepSpeed ZeRO through Accelerate's plugins."""
    check_strategy(cfg)
    plugins = {}
    if cfg.strategy == "fsdp":
        from accelerate import FullyShardedDataParallelPlugin

        plugins["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            fsdp_version=2, cpu_offload=cfg.cpu_offload, auto_wrap_policy="transformer_based_wrap",
            state_dict_type="FULL_STATE_DICT", reshard_after_forward=True)
    elif cfg.strategy == "deepspeed":
        from accelerate import DeepSpeedPlugin

        offload = "cpu" if cfg.cpu_offload else "none"
        plugin = DeepSpeedPlugin(zero_stage=cfg.zero_stage, gradient_accumulation_steps=accumulation,
                                 gradient_clipping=max_grad_norm or 0.0, offload_optimizer_device=offload,
                                 offload_param_device=offload if cfg.zero_stage == 3 else "none",
                                 zero3_save_16bit_model=False)
        if batch_size == "auto":
            raise ConfigError("train.batch_size=auto is not supported with distributed.strategy=deepspeed; set a number")
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size  # no DataLoader to read it from
        plugins["deepspeed_plugin"] = plugin
    # Accelerate keeps one AcceleratorState per process and refuses a second Accelerator with another precision
    # (a script that trains fp32 then bf16): each run starts its own. The process group (PartialState) is kept.
    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision, **plugins)
    use_gpu_well(accelerator.device)
    return accelerator


def check_strategy(cfg: DistributedConfig) -> None:
    """FSDP and DeepSpeed shard across GPUs: on CPU, or without the deepspeed package, say so now."""
    if cfg.strategy != "ddp" and not torch.cuda.is_available():
        raise ConfigError(f"distributed.strategy={cfg.strategy} shards the model across GPU memory and needs CUDA GPUs; "
                          f"on CPU use distributed.strategy=ddp (the default)")
    if cfg.strategy == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise ConfigError("distributed.strategy=deepspeed needs the deepspeed package: pip install deepspeed") from None


def on_main_then_share(accelerator: Accelerator, make: Callable[[], T]) -> T:
    """Run `make` on the main process only; every process gets its result, or raises its user error."""
    result: list = [None]
    if accelerator.is_main_process:
        try:
            result = [("ok", make())]
        except FtuneError as e:
            result = [("error", (type(e), str(e)))]
    if accelerator.num_processes > 1:
        broadcast_object_list(result)
    kind, value = result[0]
    if kind == "error":
        raise value[0](value[1])
    return value


def gathered_outputs(accelerator: Accelerator, model: torch.nn.Module, data: Encoded, batch_size: int, pad_id: int,
                     per_row: PerRow = logit_rows, forward: Callable = logits_of,
                     dtype: torch.dtype | None = None) -> list:
    """`per_row`'s result for every example of `data`, in input order, each computed by exactly one process."""
    model = accelerator.unwrap_model(model)  # no DDP collectives: processes may run different numbers of batches
    world, rank = accelerator.num_processes, accelerator.process_index
    if world == 1:
        return predict_outputs(model, data, batch_size, pad_id, accelerator.device, per_row, forward, dtype)
    mine = np.asarray([i for batch in eval_batches(data.lengths, batch_size)[rank::world] for i in batch], dtype=np.int64)
    local = predict_outputs(model, data.subset(mine), batch_size, pad_id, accelerator.device, per_row, forward, dtype)
    out: list = [None] * len(data)
    for indices, rows in gather_object([(mine, local)]):
        for i, row in zip(indices, rows):
            out[i] = row
    return out


def gathered(accelerator: Accelerator, value: T) -> list[T]:
    """`value` from every process, in rank order (one process: just [value])."""
    return gather_object([value]) if accelerator.num_processes > 1 else [value]


def sharded(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def trainable_weights(accelerator: Accelerator, model) -> dict[str, torch.Tensor]:
    """The trainable tensors, whole: gathered from the shards under FSDP / DeepSpeed (a collective call)."""
    if not sharded(accelerator):
        return trainable_state(accelerator.unwrap_model(model))
    names = {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
    return {n: t.contiguous() for n, t in accelerator.get_state_dict(model).items() if n in names}


def stop_asked(stop: StopFlag, accelerator: Accelerator) -> bool:
    """Whether any process was asked to stop; all processes must agree, so they stop at the same step."""
    if accelerator.num_processes == 1:
        return bool(stop)
    return bool(accelerator.reduce(torch.tensor(float(bool(stop)), device=accelerator.device), "sum") > 0)
