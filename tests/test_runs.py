"""`ftune runs list` and `ftune runs compare` on real tiny runs, and `ftune report`."""

import json
import shutil

import pytest

from helpers import ftune_cli, full_and_lora_runs


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich folds table cells to the terminal width


@pytest.fixture(scope="module")
def two_runs(tiny_model, reviews_csv, tmp_path_factory):
    """A full and a LoRA run of the tiny model under one folder, as `runs/` would hold them."""
    root = tmp_path_factory.mktemp("runs")
    full, lora = full_and_lora_runs(tiny_model, reviews_csv, root, **{"train.epochs": 2, "train.learning_rate": 3e-3,
                                                                      "train.log_steps": 2})
    return root, full, lora


def test_runs_list_shows_every_run_with_its_status(two_runs, monkeypatch, capsys):
    root, full, lora = two_runs
    broken = root / "broken"
    shutil.copytree(full.path, broken, ignore=shutil.ignore_patterns("metrics.json", "model", "checkpoints"))
    manifest = json.loads((broken / "run.json").read_text())
    (broken / "run.json").write_text(json.dumps({**manifest, "status": "failed", "started_unix": 2e9}))
    try:
        code, out, _ = ftune_cli(monkeypatch, capsys, "runs", "list", str(root))
    finally:
        shutil.rmtree(broken)
    lines = [line for line in out.splitlines() if line.startswith("│")]
    assert code == 0 and len(lines) == 3
    assert "full" in lines[0] and "complete" in lines[0] and f"{full.metrics['test']['finetuned']['accuracy']:.4f}" in lines[0]
    assert "lora" in lines[1] and "complete" in lines[1]
    assert "broken" in lines[2] and "failed" in lines[2]


def test_runs_compare_prints_both_runs_differences_and_writes_curves(two_runs, tmp_path, monkeypatch, capsys):
    root, full, lora = two_runs
    code, out, err = ftune_cli(monkeypatch, capsys, "runs", "compare", str(full.path), str(lora.path),
                               "--output", str(tmp_path / "cmp"))
    assert code == 0, err
    a, b = full.metrics["test"]["finetuned"]["accuracy"], lora.metrics["test"]["finetuned"]["accuracy"]
    row = next(line for line in out.splitlines() if "test accuracy " in line and "CI" not in line)
    assert f"{a:.4f}" in row and f"{b:.4f}" in row and f"{b - a:+.4f}" in row
    assert "lora − full" in out and "trainable parameters" in out
    assert next(line for line in out.splitlines() if "method.r " in line)  # a setting only the LoRA run has
    assert (tmp_path / "cmp" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "data:image/png;base64," in page and f"{b - a:+.4f}" in page
    assert "](./curves.png)" in (tmp_path / "cmp" / "compare.md").read_text()


def test_one_damaged_run_does_not_hide_the_others(two_runs, monkeypatch, capsys):
    root, full, _ = two_runs
    damaged = root / "damaged"
    shutil.copytree(full.path, damaged, ignore=shutil.ignore_patterns("model", "checkpoints"))
    (damaged / "metrics.json").write_text("{ not json")
    try:
        code, out, _ = ftune_cli(monkeypatch, capsys, "runs", "list", str(root))
        compared = ftune_cli(monkeypatch, capsys, "runs", "compare", str(full.path), str(damaged))
    finally:
        shutil.rmtree(damaged)
    lines = [line for line in out.splitlines() if line.startswith("│")]
    assert code == 0 and len(lines) == 3 and any("damaged" in line and "unreadable" in line for line in lines)
    code, _, err = compared
    assert code == 2 and "metrics.json" in err and "cannot be read as JSON" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["runs", "compare", "{full}"], "compare needs at least two run directories"),
    (["runs", "compare", "{full}", "{root}/nope"], "nope is not an ftune run directory"),
    (["runs", "list", "{root}/nope"], "is not a folder; pass the folder that holds your runs"),
    (["report", "{root}/nope"], "is not an ftune run directory"),
])
def test_runs_errors_are_one_line_with_exit_code_2(two_runs, monkeypatch, capsys, args, message):
    root, full, _ = two_runs
    args = [a.format(full=full.path, root=root) for a in args]
    code, _, err = ftune_cli(monkeypatch, capsys, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_report_command_rewrites_the_report(two_runs, monkeypatch, capsys):
    _, _, lora = two_runs
    (lora.path / "report.html").unlink()
    code, out, _ = ftune_cli(monkeypatch, capsys, "report", str(lora.path))
    assert code == 0 and (lora.path / "report.html").is_file() and "report.html" in out


def test_runs_list_and_compare_in_a_log_and_as_json(two_runs, monkeypatch, capsys):
    """In 80 columns that cannot hold the table, a run is one plain line; --json carries the same rows."""
    from rich.console import Console

    import ftune.cli

    root, full, lora = two_runs
    monkeypatch.setattr(ftune.cli, "out", Console(width=80))  # as in a log file or CI
    code, out, _ = ftune_cli(monkeypatch, capsys, "runs", "list", str(root))
    assert code == 0 and max(map(len, out.splitlines())) > 80  # one line per run, however long, never folded
    assert [line.split()[0] for line in out.splitlines()] == ["full", "lora"]
    code, out, _ = ftune_cli(monkeypatch, capsys, "runs", "list", str(root), "--json")
    rows = json.loads(out)
    assert [(r["name"], r["method"], r["status"].split()[0]) for r in rows] == [("full", "full", "complete"),
                                                                                 ("lora", "lora", "complete")]
    code, out, _ = ftune_cli(monkeypatch, capsys, "runs", "compare", str(full.path), str(lora.path), "--json")
    table = json.loads(out)
    method = next(row for row in table["rows"] if row["metric"] == "method.name")
    assert (method["full"], method["lora"]) == ("full", "lora") and table["html"].endswith("compare.html")


def test_a_killed_run_is_listed_as_interrupted_not_running(two_runs, monkeypatch, capsys):
    from ftune.run import _lock, release_run_dir

    root, full, _ = two_runs
    killed = root / "killed"
    shutil.copytree(full.path, killed, ignore=shutil.ignore_patterns("metrics.json", "model", "checkpoints"))
    manifest = json.loads((killed / "run.json").read_text())
    (killed / "run.json").write_text(json.dumps({**manifest, "status": "running"}))  # as SIGKILL leaves it
    try:
        status = {r["name"]: r["status"] for r in json.loads(ftune_cli(monkeypatch, capsys, "runs", "list", str(root),
                                                                        "--json")[1])}
        assert status["killed"] == "interrupted"
        _lock(killed)  # a process training there now
        status = {r["name"]: r["status"] for r in json.loads(ftune_cli(monkeypatch, capsys, "runs", "list", str(root),
                                                                        "--json")[1])}
        assert status["killed"] == "running"
    finally:
        release_run_dir(killed)
        shutil.rmtree(killed)
