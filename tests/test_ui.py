"""`ftune ui` in a real browser (Debian's Chromium driven by Playwright): pick a data file, fix a wrong column, set
the run up from the schema's form (a wrong value refused in the CLI's words), train it and watch its curve, open
its report, list it, try a text and export it; the run equals the same config trained from the CLI. Each page's
screenshot goes to $FTUNE_UI_SCREENSHOTS (default: the test's temporary folder). Beside it, the guards, without a
browser."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

import ftune
from ftune.ui.app import create_app
from helpers import chat_run, instructions, synthetic_reviews

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
TOKEN = "test-token"


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """The app under uvicorn in a thread, over a working folder holding reviews.csv (columns review, stars)."""
    work = tmp_path_factory.mktemp("ui")
    synthetic_reviews(400).to_csv(work / "reviews.csv", index=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(work / "runs", work, TOKEN, ["127.0.0.1", "localhost"])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "work": work}
    server.should_exit = True
    thread.join(timeout=10)


def test_the_token_the_host_and_the_working_folder_are_guarded(ui):
    url = ui["url"]
    assert httpx.get(f"{url}/").status_code == 403  # no token
    assert httpx.get(f"{url}/?token=wrong").status_code == 403
    assert httpx.get(f"{url}/?token={TOKEN}", headers={"Host": "evil.example.com"}).status_code == 400  # rebinding
    page = httpx.get(f"{url}/?token={TOKEN}")
    assert page.status_code == 200 and "ftune" in page.text and "cdn" not in page.text.lower()
    with httpx.Client(base_url=url, cookies=page.cookies) as client:  # the cookie the token URL set
        answer = client.post("/api/data", json={"settings": {"data.train": "../../etc/passwd"}})
        assert answer.status_code == 400 and "outside the working folder" in answer.text
        assert client.get("/runs/x/../../reviews.csv").status_code == 404


@pytest.mark.e2e
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; "
                                              "`make test` installs it when it runs as root)")
def test_the_whole_flow_in_a_browser_and_the_run_equals_the_cli_s(ui, tiny_model, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("FTUNE_UI_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1200, "height": 900})  # one cookie jar for every tab
        page = context.new_page()
        page.goto(f"{ui['url']}/?token={TOKEN}")

        # Data: the file's columns are review/stars, so the defaults (text/label) fail in the CLI's words; fix them.
        page.fill("#data-path", "reviews.csv")
        page.fill("#model", tiny_model)
        page.click("#read-data")
        expect(page.locator("#data-error")).to_contain_text("no column 'text'", timeout=60_000)
        page.screenshot(path=str(shots / "1-data-wrong-column.png"))
        page.select_option("#text-column", "review")
        page.select_option("#label-column", "stars")
        page.click("#read-data")
        expect(page.locator("#data-splits")).to_contain_text("validation", timeout=60_000)
        expect(page.locator("#data-preview")).to_contain_text("stars")
        page.screenshot(path=str(shots / "1-data.png"))

        # Configure: the form is the schema; a wrong value is refused in one line, then fixed.
        page.click("nav button[data-tab=configure]")
        page.select_option("#method", "full")
        page.wait_for_timeout(500)  # the method's keys reload
        settings = {"data.max_length": "32", "train.epochs": "3", "train.batch_size": "16", "train.log_steps": "2",
                    "train.learning_rate": "0.003", "train.warmup_ratio": "0", "tracking.backend": "none"}
        for key, value in settings.items():
            page.fill(f"#form input[data-key='{key}']", value)
        page.fill("#form input[data-key='train.epochs']", "-1")
        page.click("#check-config")
        expect(page.locator("#config-error")).to_contain_text("train.epochs", timeout=30_000)
        page.fill("#form input[data-key='train.epochs']", "3")
        page.fill("#run-name", "ui-run")
        page.click("#check-config")
        expect(page.locator("#command")).to_contain_text("ftune train config.yaml", timeout=30_000)
        expect(page.locator("#memory")).to_contain_text("GB")
        page.screenshot(path=str(shots / "2-configure.png"), full_page=True)

        # Train: the run is queued, trains in its own process, and its curve fills in.
        page.click("#start-run")
        expect(page.locator("#train-state")).to_have_text("done", timeout=300_000)
        assert int(page.locator("#curve polyline").first.get_attribute("data-points")) >= 2
        page.screenshot(path=str(shots / "3-train.png"), full_page=True)

        # The same config from the CLI, into the same folder: the same run, the same test score.
        run = ui["work"] / "runs" / "ui-run"
        config = ftune.load_config(run / "config.yaml", [f"output_dir={ui['work'] / 'runs' / 'cli-run'}"])
        cli = ftune.train(config, quiet=True)
        ours = json.loads((run / "metrics.json").read_text())["test"]["finetuned"]["accuracy"]
        assert cli.metrics["test"]["finetuned"]["accuracy"] == ours

        # Runs: both listed with their scores, their validation curves overlaid; the report opens.
        page.click("nav button[data-tab=runs]")
        expect(page.locator("#runs-table")).to_contain_text("cli-run")
        for name in ("ui-run", "cli-run"):
            page.check(f"#runs-table input[value='{name}']")
        page.click("#compare")
        expect(page.locator("#compare-curve polyline")).to_have_count(2)
        page.screenshot(path=str(shots / "4-runs.png"))
        report = context.new_page()  # as the runs table's link opens it: a tab with the same cookie
        report.goto(f"{ui['url']}/runs/ui-run/report.html")
        expect(report.locator("body")).to_contain_text("Before and after")
        report.screenshot(path=str(shots / "4-report.png"))

        # Try it, then ship it: labels with every class's score; ONNX and int8 with the parity table.
        page.click("nav button[data-tab=try]")
        page.fill("#try-texts", "a superb and wonderful film\nboring and dull")
        page.click("#predict")
        expect(page.locator("#answers")).to_contain_text("superb", timeout=60_000)
        answers = page.locator("#answers tr")
        assert "pos" in answers.nth(1).inner_text() and "neg" in answers.nth(2).inner_text()
        page.click("#export")
        expect(page.locator("#parity")).to_contain_text("onnx-int8", timeout=300_000)
        page.screenshot(path=str(shots / "5-try-and-ship.png"), full_page=True)
        page.click("nav button[data-tab=runs]")  # the lists now hold the export
        page.click("nav button[data-tab=try]")
        page.select_option("#try-run", "ui-run/onnx")
        page.click("#predict")
        expect(page.locator("#answers")).to_contain_text("boring", timeout=60_000)
        assert "neg" in page.locator("#answers tr").nth(2).inner_text()
        browser.close()


@pytest.mark.e2e
def test_a_run_stops_with_a_checkpoint_resumes_and_is_served(ui, tiny_model):
    """Stop sends SIGTERM (ftune saves a checkpoint and a resumable state); resume finishes it; serve starts
    `ftune serve` on the run."""
    with httpx.Client(base_url=ui["url"], params={"token": TOKEN}, timeout=60) as client:
        settings = {"data.train": "reviews.csv", "data.text_column": "review", "data.label_column": "stars",
                    "model.name": tiny_model, "method.name": "full", "data.max_length": 32, "train.epochs": 200,
                    "train.batch_size": 16, "tracking.backend": "none", "train.baselines": False}
        assert client.post("/api/runs", json={"settings": settings, "name": "long"}).status_code == 200
        deadline = time.time() + 120
        while not client.get("/api/runs/long/progress").json()["train"] and time.time() < deadline:
            time.sleep(0.5)  # stopped only once it has trained a step or more
        assert "stopping" in client.post("/api/runs/long/stop").json()["said"]
        while client.get("/api/runs/long/progress").json()["state"] == "training" and time.time() < deadline:
            time.sleep(0.5)
        assert client.get("/api/runs/long/progress").json()["state"] == "stopped"
        folder = ui["work"] / "runs" / "long"
        assert any((folder / "checkpoints").glob("step-*"))
        assert json.loads((folder / "run.json").read_text())["status"] == "interrupted"
        assert client.post("/api/runs/long/resume").status_code == 200
        while client.get("/api/runs/long/progress").json()["state"] != "training" and time.time() < deadline:
            time.sleep(0.5)
        client.post("/api/runs/long/stop")  # it resumed; stop it again, and train a short run to serve
        client.post("/api/runs", json={"settings": {**settings, "train.epochs": 1}, "name": "short"})
        while client.get("/api/runs/short/progress").json()["state"] != "done" and time.time() < deadline + 120:
            time.sleep(0.5)
        served = client.post("/api/runs/short/serve").json()
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{served['url']}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert httpx.get(f"{served['url']}/health").status_code == 200
        assert client.post("/api/runs/short/unserve").json()["said"] == "stopped"


@pytest.mark.e2e
def test_a_decoder_run_answers_in_a_stream(ui):
    rows = instructions(32)
    chat_run(ui["work"] / "runs" / "chatty", rows, [t for r in rows for t in r.values()])
    with httpx.Client(base_url=ui["url"], params={"token": TOKEN}, timeout=60) as client:
        refused = client.post("/api/predict", json={"source": "chatty/run", "texts": ["hello"]})
        assert refused.status_code == 400 and "chat box" in refused.text
        with client.stream("POST", "/api/chat", json={"source": "chatty/run",
                                                      "texts": ["what is the opposite of hot ?"]}) as streamed:
            pieces = list(streamed.iter_text())
        assert streamed.status_code == 200 and "".join(pieces).strip()
        outside = client.post("/api/predict", json={"source": "../../etc", "texts": ["x"]})
        assert outside.status_code == 404


@pytest.mark.e2e
def test_the_command_prints_its_url_with_the_token_and_serves_the_page(tmp_path):
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "ftune", "ui", "--port", str(port), "--root", str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        line = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/?token=" in line, line
        url = line.split()[3]
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                page = httpx.get(url, timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert page.status_code == 200 and "Train" in page.text
        assert httpx.get(url.split("?")[0]).status_code == 403  # the same page without the token
    finally:
        process.terminate()
        process.wait(timeout=30)
