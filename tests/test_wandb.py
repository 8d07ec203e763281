"""W&B tracking, offline: read back from the run's .wandb transaction log (config, history, summary, files, model).

Nothing here reaches a W&B server: WANDB_MODE=offline for every run, no credentials, a temporary HOME
and W&B folders, and a base URL on a closed local port so that a mistake fails at once, on this machine.
"""

import json
import struct
import sys
import time
from pathlib import Path

import pytest

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

import ftune  # noqa: E402
from ftune.cli import main  # noqa: E402
from ftune.tracking_wandb import NOT_LOGGED_IN, offline_reason  # noqa: E402

pytestmark = pytest.mark.e2e  # trains whole runs: make test-quick leaves this module out

BLOCK = 32 * 1024  # the .wandb file is a LevelDB log: 32 KiB blocks of records, each with a 7-byte header


def wandb_records(path: Path, wait_s: float = 30) -> list:
    """The records of a closed run's .wandb file. wandb's core process writes the last ones (the exit record) after
    `finish` has returned, which a loaded machine shows: read again until the exit record is there."""
    deadline = time.monotonic() + wait_s
    records = _read_records(path)
    while not of_kind(records, "exit") and time.monotonic() < deadline:
        time.sleep(0.2)
        records = _read_records(path)
    return records


def _read_records(path: Path) -> list:
    """The protobuf records of a .wandb file. wandb 0.31 keeps its reader in the Go core, so this reads the
    LevelDB log format itself (a 7-byte W&B header, then records split across blocks as FULL/FIRST/MIDDLE/LAST)."""
    data, records, pending = path.read_bytes(), [], b""
    assert data[:4] == b":W&B"
    pos = 7
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if pos + 7 + length > len(data):  # a record still being written
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def of_kind(records: list, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def history(records: list) -> list[dict]:
    return [{"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in h.item}
            for h in of_kind(records, "history")]


def summary(records: list) -> dict:
    folded = {}
    for update in (u for s in of_kind(records, "summary") for u in s.update):
        folded["/".join(update.nested_key) or update.key] = json.loads(update.value_json)
    return folded


def run_folders(run) -> list[Path]:
    tracking = run.manifest["tracking"]
    return sorted(Path(tracking["dir"]).glob(f"offline-run-*-{tracking['run_id']}"))


@pytest.fixture(scope="module", autouse=True)
def offline_wandb(tmp_path_factory):
    """Every W&B folder in a temporary place, offline, and wandb's service stopped afterwards."""
    home = tmp_path_factory.mktemp("wandb-home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HOME", str(home))
        for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
            env.setenv(name, str(home / name.lower()))
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_SILENT", "true")
        env.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
        for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC"):
            env.delenv(name, raising=False)
        wandb.teardown()  # settings are read when wandb sets up: start from this environment
        yield
        wandb.teardown()


@pytest.fixture(scope="module")
def wandb_run(tiny_model, reviews_csv, tmp_path_factory):
    """A run tracked in W&B offline, logging every 2 steps, with the model uploaded."""
    root = tmp_path_factory.mktemp("wandb-run")
    cfg = ftune.load_config(overrides={
        "model.name": tiny_model, "data.train": str(reviews_csv), "data.text_column": "review",
        "data.label_column": "stars", "data.max_length": 32, "train.epochs": 1, "train.batch_size": 16,
        "train.learning_rate": 3e-3, "train.log_steps": 2, "tracking.backend": "wandb",
        "tracking.experiment": "tests", "tracking.log_model": True, "output_dir": str(root / "run")})
    run = ftune.train(cfg, quiet=True)
    [folder] = run_folders(run)
    return run, folder, wandb_records(next(folder.glob("run-*.wandb")))


def test_wandb_run_has_the_config_history_summary_files_and_model(wandb_run):
    run, folder, records = wandb_run
    tracking = run.manifest["tracking"]
    assert tracking["backend"] == "wandb" and tracking["dir"] == str((run.path / "wandb").resolve())
    assert tracking["mode"] == "offline" and tracking["project"] == "tests" and tracking["url"] is None

    [started] = of_kind(records, "run")
    assert started.run_id == tracking["run_id"] and started.project == "tests" and started.display_name == "run"
    config = {u.key: json.loads(u.value_json) for u in started.config.update}
    assert config["model"]["name"] == run.config.model.name and config["train"]["learning_rate"] == 0.003
    assert config["method"]["name"] == "full" and config["train"]["epochs"] == 1

    logged = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    rows = history(records)
    train = [(r["_step"], r["train/loss"]) for r in rows if "train/loss" in r]
    assert [s for s, _ in train] == [e["step"] for e in logged if e["type"] == "train"]
    assert [v for _, v in train] == pytest.approx([e["loss"] for e in logged if e["type"] == "train"])
    accuracy = [(r["_step"], r["validation/accuracy"]) for r in rows if "validation/accuracy" in r]
    evaluations = run.metrics["validation"]["history"]
    assert accuracy == [(h["step"], pytest.approx(h["validation"]["accuracy"])) for h in evaluations]

    final = summary(records)
    assert final["test/accuracy"] == pytest.approx(run.metrics["test"]["finetuned"]["accuracy"])
    assert final["test/tfidf_accuracy"] == pytest.approx(run.metrics["test"]["tfidf"]["accuracy"])

    saved = {f.path for files in of_kind(records, "files") for f in files.files}
    assert {"report.html", "report.md", "config.yaml", "metrics.json", "metrics.jsonl", "plots/curves.png"} <= saved
    assert (folder / "files" / "report.html").resolve() == (run.path / "report.html").resolve()  # linked, not copied

    [model] = of_kind(records, "artifact")
    assert model.type == "model" and model.name == f"run-{tracking['run_id']}-model"
    assert "model.safetensors" in {c.path for c in model.manifest.contents}
    assert [e.exit_code for e in of_kind(records, "exit")] == [0]


def test_a_wandb_failure_mid_run_warns_once_and_ftune_train_completes_and_says_where_the_run_is(
        tiny_config, tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise ConnectionError("wandb went away")

    monkeypatch.setattr(wandb.Run, "log", refuse)
    config = tmp_path / "config.yaml"
    config.write_text(ftune.config.to_yaml(tiny_config(**{"train.epochs": 1, "train.log_steps": 2})))
    monkeypatch.setattr(sys, "argv", ["ftune", "train", str(config), "--tracking", "wandb", "--quiet"])
    failure = "wandb tracking: logging metrics failed .*wandb went away.*the run goes on"
    with pytest.warns(UserWarning, match=failure) as seen, pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    assert exited.value.code == 0, captured.err
    assert len([w for w in seen if "wandb tracking" in str(w.message)]) == 1
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["status"] == "complete" and (tmp_path / "run" / "report.html").is_file()

    wandb_dir, run_id = tmp_path.resolve() / "run" / "wandb", manifest["tracking"]["run_id"]
    sync = f"wandb sync {wandb_dir}/offline-run-*-{run_id}"
    assert f"W&B: WANDB_MODE=offline, so the run is logged offline in {wandb_dir}; upload it later with: {sync}\n" \
        in captured.err
    assert f"W&B: offline run {run_id} in {wandb_dir}  (upload: {sync})\n" in captured.out
    [folder] = wandb_dir.glob(f"offline-run-*-{run_id}")
    records = wandb_records(next(folder.glob("run-*.wandb")))
    assert [e.exit_code for e in of_kind(records, "exit")] == [1]  # the W&B run is closed all the same, as failed


def test_resume_continues_the_same_wandb_run(tiny_config, monkeypatch):
    import ftune.training

    def save_then_interrupt(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt  # as if Ctrl-C came right after epoch 1's checkpoint

    original = ftune.training.save_checkpoint
    cfg = tiny_config(**{"tracking.backend": "wandb", "train.epochs": 2})
    monkeypatch.setattr(ftune.training, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        ftune.train(cfg, quiet=True)
    monkeypatch.setattr(ftune.training, "save_checkpoint", original)
    time.sleep(1.1)  # wandb names an offline folder by the second its run starts: a resume within it shares the folder
    run = ftune.train(cfg, resume=True, quiet=True)

    first, second = [wandb_records(next(f.glob("run-*.wandb"))) for f in run_folders(run)]  # offline: one per start
    assert {r.run_id for r in of_kind(first + second, "run")} == {run.manifest["tracking"]["run_id"]}
    assert of_kind(first, "preempting") and [e.exit_code for e in of_kind(first, "exit")] == [1]
    assert [e.exit_code for e in of_kind(second, "exit")] == [0]
    assert [r["_step"] for r in history(first + second) if "validation/accuracy" in r] == \
        [h["step"] for h in run.metrics["validation"]["history"]]


def test_offline_unless_logged_in_and_the_users_wandb_mode_wins(monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    try:
        wandb.teardown()
        assert offline_reason() == NOT_LOGGED_IN  # the temporary HOME has no ~/.netrc
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
        wandb.teardown()
        assert offline_reason() is None  # credentials found, not checked: wandb.init goes online
        monkeypatch.setenv("WANDB_MODE", "offline")
        assert offline_reason() == "WANDB_MODE=offline"
    finally:
        wandb.teardown()


def test_a_missing_wandb_package_is_one_line_with_the_install_command(tiny_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    config = tmp_path / "config.yaml"
    config.write_text(ftune.config.to_yaml(tiny_config()))
    monkeypatch.setattr(sys, "argv", ["ftune", "train", str(config), "--tracking", "wandb", "--quiet"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2 and not (tmp_path / "run").exists()
    assert capsys.readouterr().err == \
        "error: tracking.backend=wandb needs the wandb package: pip install 'ftune[wandb]'\n"
