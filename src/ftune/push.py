"""`ftune push`: a finished run (its model or adapter folder with the card, its report) or an export folder,
published to a Hugging Face hub model repo in one commit, through huggingface_hub (imported when used)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ftune.card import CARD, CONFIGS, RunFacts, base_model, local_paths, portable, run_card
from ftune.errors import PushError, RunError
from ftune.integrity import MANIFEST_KEY, verify
from ftune.run import RUN_FILE, damaged_run_fix


def push(path: str | Path, repo_id: str, token: str | None = None, private: bool = False,
         revision: str | None = None) -> str:
    """Publish a finished run (its model/ folder, else adapter/, with the card, plus report.md and its plots) or an
    export folder to the hub model repo `repo_id`, in one commit; returns the commit's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    path = Path(path)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise PushError(f"{repo_id!r} is not a hub repo id ({str(e).splitlines()[0][:100]}); use OWNER/NAME") from None
    files = _export_files(path) if _is_export(path) else _run_files(path, repo_id)
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true"):
        raise PushError("HF_HUB_OFFLINE is set, so nothing can be sent to the hub; unset it for `ftune push`")
    token = token or get_token()
    if not token:
        raise PushError("no Hugging Face token: pass --token, set HF_TOKEN, or log in with `hf auth login` (a token "
                        "with write access, from https://huggingface.co/settings/tokens)")
    api = HfApi(token=token)
    operations = [CommitOperationAdd(name, content) for name, content in files]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(repo_id, operations, commit_message=f"ftune push {path.resolve().name}",
                                   revision=revision)
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        why = {401: "the token was refused: check it", 403: "the token may not write to this repo or owner: use a "
               "token with write access"}.get(status, str(e).splitlines()[0][:160])
        raise PushError(f"the hub refused the push to {repo_id} ({why})") from None
    except ValueError as e:  # the hub's check of the card's metadata, say
        raise PushError(f"the hub refused the push to {repo_id} ({' '.join(str(e).split())[:160]})") from None
    except (OSError, _transport_error()) as e:  # connection refused, no DNS, a timeout
        detail = " ".join(str(e).split())[:120] or "no detail"
        raise PushError(f"cannot reach the hub at {api.endpoint} to push {repo_id} ({type(e).__name__}: "
                        f"{detail}); check the network, or HF_ENDPOINT") from None
    return str(commit.commit_url)


def _transport_error() -> type[Exception]:
    """The connection errors' base class of the HTTP client huggingface_hub uses: httpx2 in its 2.x releases."""
    try:
        from httpx2 import TransportError
    except ImportError:
        from httpx import TransportError
    return TransportError


def _is_export(path: Path) -> bool:
    from ftune.predictors.base import EXPORT_FILE

    return (path / EXPORT_FILE).is_file()


def _run_files(path: Path, repo_id: str) -> list[tuple[str, Any]]:
    """The model folder's files (model/ for transformers, else adapter/ for peft) at the repo's top, its card
    rebuilt naming the repo, report.md without local paths, and the plots it shows."""
    from ftune.run import Run

    run = Run(path)  # refuses an unfinished run, with the fix
    fix = damaged_run_fix(run.path)
    verify(run.path, run.manifest.get(MANIFEST_KEY), run.path / RUN_FILE, fix)  # no half-copied weights published
    folder = "model" if (run.path / "model").is_dir() else "adapter"
    if not (run.path / folder).is_dir():
        raise RunError(f"{run.path} has neither model/ nor adapter/; {fix}")
    paths = local_paths(RunFacts.read(run.path))
    files: list[tuple[str, Any]] = [(p.name, str(p)) for p in sorted((run.path / folder).iterdir())
                                    if p.is_file() and not p.is_symlink() and p.name not in (CARD, *CONFIGS)]
    # A base model known only as a local folder is named by that folder in the configs: by its name, once published.
    files += [(name, portable((run.path / folder / name).read_text(encoding="utf-8"), paths).encode())
              for name in CONFIGS if (run.path / folder / name).is_file()]
    files.append((CARD, run_card(run.path, folder, repo_id).encode()))
    if (run.path / "report.md").is_file():
        report = (run.path / "report.md").read_text(encoding="utf-8")
        files.append(("report.md", portable(report, paths).encode()))
        files += [(f"plots/{name}", str(run.path / "plots" / name))
                  for name in sorted(set(re.findall(r"\(plots/([\w.-]+\.png)\)", report)))
                  if (run.path / "plots" / name).is_file()]
    return files


def _export_files(path: Path) -> list[tuple[str, Any]]:
    """Every file the export's manifest lists, checked first, and export.json without this machine's paths."""
    from ftune.predictors.base import EXPORT_FILE
    from ftune.predictors.onnx import export_fix, read_export_info

    fix = export_fix(path)
    info = read_export_info(path, fix)
    listed = info.get(MANIFEST_KEY)
    if not isinstance(listed, dict):
        raise RunError(f"{path / EXPORT_FILE} lists no sha256 of its files (an export from an older ftune); {fix}")
    verify(path, listed, path / EXPORT_FILE, fix)
    source, base = info.get("source_run"), info["base_model"]
    info["source_run"] = Path(source).name if isinstance(source, str) else None
    info["base_model"] = base_model(base)[0] or Path(base).name  # an export does not keep its run's model_source
    text = portable(json.dumps(info, indent=2) + "\n", [source, base, path.resolve()])
    return [*((name, str(path / name)) for name in sorted(listed)), (EXPORT_FILE, text.encode())]
