"""The files of a run or export folder, which someone may hand you: written safely, checked before use.

Writing: every file goes to a fresh temp file in the same folder and is then `os.replace`d over its
name. Readers see the old file or the new one, never half of one; a symlink planted at the name is
replaced, not followed, so nothing lands outside the folder. Folders (model/, adapter/, an export)
are built under a hidden name beside their place and renamed in; the old one is renamed aside and
removed only after the new one is in.

Reading: a sha256 manifest of every file a predictor loads (weights, tokenizer files, labels.json,
ONNX graphs), written when the run finishes or the export is made, checked when a predictor loads.
It catches what a kill or a partial copy leaves (a missing tokenizer.json loads in transformers as a
tokenizer that maps every word to [UNK]). It is no signature: what keeps a hostile folder from
running code or reading elsewhere is that ftune loads only safetensors and ONNX, never trusts remote
code unless told to, and refuses file names that leave the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from ftune.errors import RunError

TMP_SUFFIX = ".ftune-tmp"  # a file being written; left behind only by a kill, and replaced by the next write
MANIFEST_KEY = "sha256"    # in run.json and export.json: {path relative to the folder: sha256 hex digest}


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A new temp file beside `path` to write to; on success it replaces `path` (a symlink there included)."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)  # O_EXCL: a fresh file
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp makes it private; run and export files are meant to be read and shared
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def own_dir(path: Path) -> Path:
    """A folder ftune writes into inside a run (plots/): made when missing; a symlink or a file there is refused,
    since writing through it would land elsewhere."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise RunError(f"{path} is a {'symbolic link' if path.is_symlink() else 'file'}, not a folder; ftune writes "
                       f"only inside the run folder: remove it and run the command again")
    path.mkdir(exist_ok=True)
    return path


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A hidden folder beside `target` to fill; when the block ends without error it becomes `target` (see
    `replace_dir`), else it is removed."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-{os.getpid()}-", dir=target.parent))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it private; a model folder is meant to be shared
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_dir(new: Path, target: Path) -> None:
    """Put the complete folder `new` at `target` by renames: the old folder is renamed aside, the new one renamed
    in, and only then the old one removed. A kill in between leaves both whole under hidden names (removed by
    `remove_stale`), never a mix. A symlink at `target` is removed (the link only), never followed."""
    aside = None
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}-{os.getpid()}-old-", dir=target.parent))
        os.replace(target, aside)  # over the empty folder mkdtemp reserved
    os.replace(new, target)
    if aside is not None:
        shutil.rmtree(aside)


def restore_aside(parent: Path, name: str) -> Path | None:
    """A kill between `replace_dir`'s two renames leaves no folder at `parent/name`, only the old one under its
    hidden aside name: rename it back (the newest, of a process that is gone). Returns the restored path."""
    target = parent / name
    if target.exists() or target.is_symlink() or not parent.is_dir():
        return None
    pattern = re.compile(rf"\.{re.escape(name)}-(\d+)-old-[a-z0-9_]{{8}}")
    asides = [p for p in parent.iterdir() if (m := pattern.fullmatch(p.name)) and p.is_dir() and not p.is_symlink()
              and not _alive(int(m.group(1)))]
    if not asides:
        return None
    try:
        os.replace(max(asides, key=lambda p: p.stat().st_mtime), target)
    except OSError:  # a folder we may not write: the caller then finds nothing there and says so
        return None
    return target


def remove_stale(parent: Path, name: str, ours) -> None:
    """Remove the hidden folders `staged_dir` / `replace_dir` made for `parent/name` in a process that was killed:
    only when that process is gone and the folder holds nothing but what `ours(folder)` accepts. A folder that a
    kill left only aside is first put back (`restore_aside`)."""
    restore_aside(parent, name)
    # mkdtemp's 8 random characters after the name and pid; without a pid: the staging of earlier ftune exports
    pattern = re.compile(rf"\.{re.escape(name)}-(?:(\d+)-)?(?:old-)?[a-z0-9_]{{8}}")
    for path in parent.iterdir() if parent.is_dir() else []:
        found = pattern.fullmatch(path.name)
        if not found or path.is_symlink() or not path.is_dir():
            continue
        if found.group(1) and _alive(int(found.group(1))):
            continue  # the process writing it is still at work
        if ours(path):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")


def weights_digests(folder: Path) -> dict[str, str]:
    """The sha256 of each weights file in a model folder: the identity of a LoRA run's base, which the adapter
    is meaningless without (a base changed in place under the same path would load silently)."""
    return {path.name: sha256(path) for pattern in WEIGHT_PATTERNS for path in sorted(Path(folder).glob(pattern))
            if path.is_file()}


def manifest(folder: Path, names: Iterable[str]) -> dict[str, str]:
    """{name: sha256} for files under `folder`, names relative to it with forward slashes."""
    return {name: sha256(folder / name) for name in sorted(names)}


def files_under(folder: Path, *subdirs: str) -> list[str]:
    """Every file below the given subfolders of `folder`, relative to it."""
    return [p.relative_to(folder).as_posix() for sub in subdirs if (folder / sub).is_dir()
            for p in sorted((folder / sub).rglob("*")) if p.is_file()]


def run_manifest(run_dir: Path) -> dict[str, str]:
    """The sha256 of everything a run's predictor loads: model/, adapter/, labels.json and task.json (if any)."""
    task_state = ["task.json"] if (run_dir / "task.json").is_file() else []
    return manifest(run_dir, [*files_under(run_dir, "model", "adapter"), "labels.json", *task_state])


def member(folder: Path, name: Any, listed_in: Path, fix: str) -> Path:
    """`folder/name` for a name read from a file someone may have edited: refused unless it stays inside the
    folder (no absolute path, no `..`, no symlink that leads out). Nothing outside is ever opened."""
    parts = PurePosixPath(name).parts if isinstance(name, str) and name and "\\" not in name else ()
    if not parts or parts[0] == "/" or ".." in parts or name.startswith("~"):
        raise RunError(f"{listed_in} names {str(name)[:80]!r}, which is not a file inside {folder}; {fix}")
    path = folder.joinpath(*parts)
    if not path.resolve().is_relative_to(folder.resolve()):
        raise RunError(f"{path} leads outside {folder} (a symbolic link); {fix}")
    return path


def verify(folder: Path, files: Any, listed_in: Path, fix: str) -> None:
    """Every file the manifest lists is in `folder`, unchanged; the first missing or changed one is refused with
    `fix`. Each file is hashed once, when a predictor loads (0.09 s for MiniLM's 91 MB here, warm cache): cheap next to
    loading the model, and far cheaper than answers from a half-copied one. `files` None: a folder written
    before manifests existed, loaded unchecked."""
    if files is None:
        return
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise RunError(f"{listed_in}: '{MANIFEST_KEY}' is not a map of file names to sha256 digests; {fix}")
    for name, digest in files.items():
        path = member(folder, name, listed_in, fix)
        if not path.is_file():
            raise RunError(f"{path} is missing (listed in {listed_in.name}); {fix}")
        if sha256(path) != digest:
            raise RunError(f"{path} is not the file that was written (its sha256 differs from {listed_in.name}'s); "
                           f"{fix}")


def _not_elsewhere(path: Path, fix: str) -> None:
    """A run's or export's own file must be in its folder: a symlink there that leads out is not read."""
    if path.is_symlink() and path.resolve().parent != path.parent.resolve():
        raise RunError(f"{path} is a symbolic link that leads outside {path.parent}; {fix}")


MAX_JSON_BYTES = 64 << 20  # far above any json ftune writes into a run (metrics.json of a long run: well under 1 MB)


def read_json_file(path: Path, fix: str) -> Any:
    """JSON from a file someone may have edited or cut short: any problem is one RunError naming it."""
    _not_elsewhere(path, fix)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
        if len(data) > MAX_JSON_BYTES:
            raise RunError(f"{path} is larger than {MAX_JSON_BYTES:,} bytes, far more than ftune writes there; {fix}")
        return json.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path} is missing; {fix}") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        detail = e.strerror if isinstance(e, OSError) else str(e).splitlines()[0][:80] if str(e) else type(e).__name__
        raise RunError(f"{path} cannot be read as JSON ({detail}); {fix}") from None


def read_yaml_file(path: Path, fix: str) -> dict:
    """A YAML mapping (a run's config.yaml) from a file someone may have edited: read with the limits of a config
    the user wrote (ftune.safe_yaml); any problem is one RunError."""
    from ftune import safe_yaml

    _not_elsewhere(path, fix)
    if not path.exists():
        raise RunError(f"{path} is missing; {fix}")
    raw = safe_yaml.load(path, str(path), RunError, fix)
    if not isinstance(raw, dict):
        raise RunError(f"{path} is not a config (a YAML mapping); {fix}")
    return raw


def read_labels(path: Path, fix: str) -> list[str]:
    """labels.json: the label names in class-id order, a list of distinct non-empty strings."""
    labels = read_json_file(path, fix)
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels) \
            or len(set(labels)) != len(labels):
        raise RunError(f"{path} is not a list of distinct label names; {fix}")
    return labels


def check_label_order(labels: list[str], labels_path: Path, model_labels: list[str] | None, source: Path,
                      fix: str) -> None:
    """labels.json must name the classes in the order the model's head was trained with (`model_labels`, from the
    model's config.json or the adapter's labels.json); otherwise every answer would carry the wrong name."""
    if model_labels is None or model_labels == labels:
        return
    if len(model_labels) != len(labels):
        raise RunError(f"{labels_path} has {len(labels)} labels but the model in {source.parent} was trained with "
                       f"{len(model_labels)} (in {source.name}); {fix}")
    i = next(i for i, (a, b) in enumerate(zip(labels, model_labels)) if a != b)
    raise RunError(f"{labels_path} names class {i} {labels[i]!r} but the model was trained with {model_labels[i]!r} "
                   f"there (in {source}); restore labels.json: {fix}")


def config_labels(config_file: Path, fix: str) -> list[str] | None:
    """The id2label of a transformers config.json in class-id order; None when it has none."""
    id2label = read_json_file(config_file, fix).get("id2label") if config_file.is_file() else None
    if not isinstance(id2label, dict):
        return None
    try:
        return [str(id2label[str(i)]) for i in range(len(id2label))]
    except KeyError:
        raise RunError(f"{config_file}: id2label does not number its labels 0..{len(id2label) - 1}; {fix}") from None


def check_weights_format(folder: Path, fix: str) -> None:
    """ftune writes weights only as safetensors: a folder that has none holds pickles, which are not loaded, and
    a safetensors file whose header does not cover it was cut short (reading the header costs nothing)."""
    from safetensors import SafetensorError, safe_open

    names = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
    if not any((folder / name).is_file() for name in names):
        raise RunError(f"{folder} has no safetensors weights (ftune writes model.safetensors or "
                       f"adapter_model.safetensors, and loads no pickled weights); {fix}")
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="numpy"):
                pass
        except (SafetensorError, OSError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:100]
            raise RunError(f"{path} is not a whole safetensors file ({first}); {fix}") from None


def check_tokenizer(tokenizer, folder: Path, fix: str) -> None:
    """A tokenizer folder missing its vocabulary still loads in transformers, as one that maps every word to the
    unknown token: refuse it rather than answer from it."""
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise RunError(f"the tokenizer in {folder} has no vocabulary (tokenizer.json or its vocabulary file is "
                       f"missing); {fix}")


def check_trust(asks: Any, allowed: bool, config_file: Path) -> bool:
    """Whether to run code shipped in a run's folder: only when its config asks and the command was given
    --trust-remote-code. A folder someone handed you must not run its code because its config says so."""
    if asks and not allowed:
        raise RunError(f"{config_file} sets model.trust_remote_code: true: the run asks to run Python code from its "
                       f"folder; pass --trust-remote-code if you trust it")
    return bool(asks) and allowed
