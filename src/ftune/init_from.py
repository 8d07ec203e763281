"""`model.init_from` (`--init-from RUN`): a run that starts from another run's weights instead of the base model's.

SFT then preference tuning is the common case (a causal-lm run, then a preference run from it), but any task may
continue a run of the same kind of model (new data, another language). A run that saved full weights (its model/
folder) is the start as it is. An adapter run (LoRA, DoRA...) is merged into its base once, and the merged model is
kept in the cache (~/.cache/ftune/init/, by the adapter's digest): the new run trains its own method on top, and
records that folder as its model source, as any run records its base.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ftune.data.builtin import cache_dir
from ftune.errors import ConfigError
from ftune.integrity import weights_digests
from ftune.models import resolve_model
from ftune.run_folder import RunFolder


def model_source(config) -> str:
    """Where the run's starting weights are: the base model's folder (or hub id), or the run named by init_from."""
    start = config.model.init_from
    return resolve_model(config.model.name) if start is None else starting_run(start, config)


def _same_model(a: str, b: str) -> bool:
    """Whether two model names point at the same base: one folder (however written), or one hub id or alias."""
    try:
        return Path(resolve_model(a)).resolve() == Path(resolve_model(b)).resolve()
    except Exception:  # noqa: BLE001 - a base that no longer resolves: compare the names
        return a == b


def starting_run(path: str, config) -> str:
    """The folder of a finished run's weights (an adapter merged into its base first), checked to fit this run."""
    from ftune.tasks import TASKS

    run = RunFolder(path)  # not a run, or unfinished: one line naming the fix
    theirs, ours = TASKS[run.config.task.name], TASKS[config.task.name]
    if theirs.peft_type != ours.peft_type:
        raise ConfigError(f"model.init_from: {path} is a {run.config.task.name} run, whose model has another head "
                          f"than a {config.task.name} run's; start from a run of the same kind of model "
                          f"({ours.peft_type}), or from the base model (drop --init-from)")
    if not _same_model(config.model.name, run.config.model.name):
        raise ConfigError(f"model.init_from: {path} was trained from {run.config.model.name}, and this run names "
                          f"model {config.model.name}; leave --model out (the run's base is taken) or name that base")
    if (run.path / "model" / "config.json").is_file():
        return str((run.path / "model").resolve())
    return _merged(run)


def _merged(run: RunFolder) -> str:
    """An adapter run's base with the adapter merged, saved once in the cache."""
    from ftune.methods import method_for
    from ftune.predictors.pytorch import load_run_model

    digest = hashlib.sha256(repr(sorted(weights_digests(run.path / "adapter").items())).encode()).hexdigest()[:16]
    folder = cache_dir() / "init" / digest
    if (folder / "config.json").is_file():
        return str(folder)
    method_for(run.config).refuse_merge(f"model.init_from {run.path}", "start from a run with another method")
    tokenizer, model, _ = load_run_model(run, run.config.model.trust_remote_code)
    partial = folder.with_name(folder.name + ".partial")
    model.merge_and_unload().save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.replace(folder)  # whole or absent: a kill while saving leaves no half model to start from
    return str(folder)
