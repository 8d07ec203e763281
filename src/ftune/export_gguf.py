"""`ftune export RUN --format gguf`: a decoder run (causal-lm, preference) as GGUF files for llama.cpp and Ollama,
checked by reading them back with transformers' GGUF loader.

The `gguf` package (llama.cpp's own Python writer) writes the files; what llama.cpp's convert_hf_to_gguf.py does for
the architectures covered here is done here: its tensor names (gguf's name map), Llama's query/key row order for its
rotary layout, the hyperparameters, and a byte-level BPE tokenizer with its merges, special tokens and chat template,
so the end-of-turn token the run learned is the one llama.cpp stops on. Two files: f16 and q8_0 (norms in f32, as the
converter keeps them). An adapter run is merged first. A Modelfile beside them lets `ollama create` take the q8_0 file.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ftune.errors import ConfigError, RunError
from ftune.export import _check_output, _foreign
from ftune.integrity import MANIFEST_KEY, manifest, remove_stale, staged_dir, write_json, write_text
from ftune.predictors import EXPORT_FILE
from ftune.run import Run
from ftune.tasks import TASKS, task_for

# transformers' model_type -> (GGUF architecture, whether llama.cpp's converter permutes the query/key rows)
ARCHITECTURES = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False),
                 "qwen3": ("qwen3", False)}
FILES = {"f16": "model-f16.gguf", "q8_0": "model-q8_0.gguf"}
PARITY_SAMPLES = 16  # held-out chats whose next-token logits are compared at every position
TOLERANCE = {"f16": 0.05, "q8_0": 0.5}  # max |logit difference| against the PyTorch model (fp16 and 8-bit weights)


def export_gguf(run_dir: str | Path, output_dir: str | Path | None = None, trust_remote_code: bool = False) -> Path:
    """Write RUN/gguf (or `output_dir`): model-f16.gguf, model-q8_0.gguf, Modelfile, export.json with the parity
    figures. Refused, in one line, for a run that is not a decoder or whose architecture or tokenizer GGUF (as
    written here) does not cover."""
    from ftune.predictors.pytorch import load_run_model

    run = Run(run_dir)
    task = task_for(run.config, run.task_state)
    if task.serves != "chat":
        raise ConfigError(f"{run.path} is a {task.name} run; GGUF holds decoders that write text "
                          f"({', '.join(n for n, t in TASKS.items() if t.serves == 'chat')}); use --format onnx")
    out = Path(output_dir) if output_dir else run.path / "gguf"
    _check_output(out)  # ONNX export's rule: an earlier export is replaced only when nothing else is in its folder
    tokenizer, model, is_adapter = load_run_model(run, trust_remote_code)
    model = (model.merge_and_unload() if is_adapter else model).float().eval()
    arch = _architecture(model.config)
    _check_tokenizer(tokenizer)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out.parent, out.name, lambda folder: not _foreign(folder))  # what a killed export left behind
    with staged_dir(out) as staging:
        for kind, name in FILES.items():
            write_gguf(model, tokenizer, arch, staging / name, kind)
        chats = _held_out_chats(task, run, tokenizer)
        parity = {kind: _parity(model, tokenizer, staging, name, chats) for kind, name in FILES.items()}
        for kind, figures in parity.items():
            if not figures["max_abs_diff"] <= TOLERANCE[kind]:
                raise RunError(f"the {kind} GGUF file read back by transformers disagrees with the PyTorch model (max "
                               f"|logit diff| {figures['max_abs_diff']:.3g} > {TOLERANCE[kind]}); nothing was written. "
                               f"Please report it with the model name")
        write_text(staging / "Modelfile", modelfile(tokenizer, FILES["q8_0"]))
        info = {"format": "gguf", "files": FILES, "architecture": arch, "source_run": str(run.path.resolve()),
                "base_model": run.config.model.name, "method": run.config.method.name, "task": task.name,
                "parity": {"chats": len(chats), **parity}, "created_at": datetime.now(timezone.utc).isoformat(),
                "versions": _versions(), MANIFEST_KEY: manifest(staging, (p.name for p in staging.iterdir()))}
        write_json(staging / EXPORT_FILE, info)
        _check_output(out, also=[p.name for p in staging.iterdir()])  # nothing of the user's appeared meanwhile
    return out


def _architecture(config) -> str:
    found = ARCHITECTURES.get(config.model_type)
    if found is None:
        raise ConfigError(f"GGUF export covers {', '.join(ARCHITECTURES)} decoders; this run's model is "
                          f"{config.model_type}: convert its merged model/ folder with llama.cpp's "
                          f"convert_hf_to_gguf.py")
    return found[0]


def _check_tokenizer(tokenizer) -> None:
    """The tokenizer must be byte-level BPE (Llama 3, Qwen, SmolLM, GPT-2) whose rule for splitting text before the
    merges llama.cpp knows by name: the kind written here."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    kind = (state.get("model") or {}).get("type")
    byte_level = "ByteLevel" in json.dumps(state.get("pre_tokenizer")) and "ByteLevel" in json.dumps(state.get("decoder"))
    if kind != "BPE" or not byte_level:
        raise ConfigError(f"GGUF export writes byte-level BPE tokenizers (Llama 3, Qwen, SmolLM); this run's is "
                          f"{kind or 'another kind'}{'' if byte_level else ' without byte-level pieces'}: convert "
                          f"its model/ folder with llama.cpp's convert_hf_to_gguf.py")
    if _split_rule(state) is None:
        raise ConfigError("GGUF export: this tokenizer splits text before its merges by a rule llama.cpp does not name "
                          "(known here: GPT-2's, Llama 3's, Qwen2's); convert its model/ folder with llama.cpp's "
                          "convert_hf_to_gguf.py")


def _split_rule(state: dict) -> str | None:
    """llama.cpp's name (tokenizer.ggml.pre) for how the tokenizer splits text before its merges: GPT-2's own regex
    (a ByteLevel pre-tokenizer with use_regex), or a Split by Llama 3's or Qwen2's pattern; None for another rule.
    Its "default" rule splits punctuation off first, so " ?" would become two tokens the model never saw."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    pre = state.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    patterns = [step.get("pattern", {}).get("Regex") for step in pre.get("pretokenizers", []) if step.get("type") == "Split"]
    for name in ("llama-bpe", "qwen2"):  # the names llama.cpp's converter writes for Llama 3 and Qwen2
        if GGUF_PRE_TOKENIZER_SPLITS.get(name) in patterns:
            return name
    return None


def write_gguf(model: torch.nn.Module, tokenizer, arch: str, path: Path, kind: str) -> None:
    """One GGUF file: hyperparameters, tokenizer, then every tensor under its GGUF name (f16 or q8_0 matrices)."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(Path(config.name_or_path or "model").name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float((getattr(config, "rope_parameters", None) or {}).get("rope_theta")
                                    or getattr(config, "rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[kind])
    _add_tokenizer(writer, tokenizer, config.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    permute = ARCHITECTURES[config.model_type][1]
    state = model.state_dict()
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # llama.cpp reads the tied output layer from the embedding
    for hf_name, tensor in state.items():
        stem, _, suffix = hf_name.rpartition(".")
        name = names.get_name(stem)
        if name is None:
            raise ConfigError(f"GGUF export: no GGUF name for tensor {hf_name} of this {config.model_type} model; "
                              f"convert its model/ folder with llama.cpp's convert_hf_to_gguf.py")
        data = tensor.detach().float().numpy()
        if permute and stem.endswith(("q_proj", "k_proj")):
            heads = config.num_attention_heads if stem.endswith("q_proj") else config.num_key_value_heads
            data = _rotary_rows(data, heads)
        values, dtype = _encoded(data, kind)
        writer.add_tensor(f"{name}.{suffix}", values, raw_dtype=dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _rotary_rows(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's order of a query/key projection's rows for its rotary layout (convert_hf_to_gguf.py's permute;
    transformers' GGUF loader undoes it)."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
        weights.shape)


def _encoded(data: np.ndarray, kind: str) -> tuple[np.ndarray, object]:
    """(bytes or values, the GGML type of bytes, None for values): vectors in f32 (norms, biases: what the converter keeps);
    matrices in f16, or q8_0 where each row is whole blocks of 32."""
    import gguf

    if data.ndim == 1:
        return data.astype(np.float32), None
    if kind == "q8_0" and data.shape[-1] % 32 == 0:
        quant = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(data.astype(np.float32), quant), quant
    return data.astype(np.float16), None


def _add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """A byte-level BPE tokenizer as llama.cpp's "gpt2" model: every token in id order (padded to the model's
    vocabulary), control tokens marked, merges, special token ids, and the chat template."""
    import gguf

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = {**state["model"]["vocab"], **{t["content"]: t["id"] for t in state.get("added_tokens", [])}}
    special = {t["content"] for t in state.get("added_tokens", []) if t.get("special")}
    tokens = [f"[PAD{i}]" for i in range(max(vocab_size, max(vocab.values()) + 1))]
    types = [gguf.TokenType.UNUSED] * len(tokens)
    for token, index in vocab.items():
        tokens[index] = token
        types[index] = gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_split_rule(state))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("pad", writer.add_pad_token_id), ("unk", writer.add_unk_token_id)):
        index = getattr(tokenizer, f"{name}_token_id", None)
        if index is not None:
            add(index)
    writer.add_add_bos_token(False)  # the chat template writes what a prompt starts with
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def modelfile(tokenizer, file: str) -> str:
    """Ollama's Modelfile: the weights, greedy-ish defaults left to Ollama, and a stop at each end-of-turn token the
    run learned (Ollama applies the chat template stored in the GGUF file)."""
    from ftune.tasks.causal_lm import end_of_turn_ids

    stops = [tokenizer.convert_ids_to_tokens(i) for i in end_of_turn_ids(tokenizer)]
    return f"FROM ./{file}\n" + "".join(f"PARAMETER stop {json.dumps(s)}\n" for s in stops)


def _held_out_chats(task, run: Run, tokenizer) -> list[list[int]]:
    """Token ids of the first held-out test chats, as training laid them out."""
    test = task.encode_splits(task.load_splits(run.config.train.seed), tokenizer)["test"]
    return [ids.tolist() for ids in test.input_ids[:PARITY_SAMPLES]]


def _parity(model, tokenizer, folder: Path, name: str, chats: list[list[int]]) -> dict:
    """The GGUF file through transformers' loader against the PyTorch model: the largest logit difference and how
    often the next token chosen agrees, at every position of the held-out chats; and the file's size."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=torch.float32).eval()
    diff, same, positions = 0.0, 0, 0
    with torch.no_grad():
        for ids in chats:
            x = torch.tensor([ids])
            ours, theirs = model(input_ids=x).logits[0], loaded(input_ids=x).logits[0]
            diff = max(diff, float((ours - theirs).abs().max()))
            same += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
            positions += len(ids)
    return {"max_abs_diff": diff, "same_next_token": same / max(positions, 1), "positions": positions,
            "bytes": (folder / name).stat().st_size}


def _versions() -> dict:
    import gguf
    import transformers

    return {"gguf": getattr(gguf, "__version__", "?"), "transformers": transformers.__version__, "torch": torch.__version__}
