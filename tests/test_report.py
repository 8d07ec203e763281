"""The run report: what it contains, that it is self-contained and escaped, and how a browser shows it."""

import re
import shutil
import subprocess

import pytest

import ftune
from ftune.report import Section, to_html, write_reports
from ftune.run import read_json

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
# Counts the page's images and the broken ones once everything has loaded; --dump-dom then prints the result.
IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  document.body.dataset.images = images.length;
  document.body.dataset.broken = images.filter(i => !i.complete || i.naturalWidth === 0).length;
});
</script></body>"""


@pytest.fixture(scope="module")
def run(tiny_model, reviews_csv, tmp_path_factory):
    cfg = ftune.load_config(overrides={
        "model.name": tiny_model, "data.train": str(reviews_csv), "data.text_column": "review",
        "data.label_column": "stars", "data.max_length": 32, "train.epochs": 2, "train.batch_size": 16,
        "train.learning_rate": 3e-3, "train.log_steps": 2, "tracking.backend": "none",
        "output_dir": str(tmp_path_factory.mktemp("report") / "run")})
    return ftune.train(cfg, quiet=True)


def test_report_shows_before_after_curves_confusion_mistakes_data_and_environment(run):
    md = (run.path / "report.md").read_text()
    test = run.metrics["test"]
    low, high = test["tfidf"]["accuracy_ci95"]  # the tuned baseline shows its interval like the fine-tuned model
    for text in ("Before and after", "base model, untrained head", "TF-IDF + linear model (tuned on validation)",
                 "fine-tuned", f"{test['finetuned']['accuracy']:.4f}", f"{test['tfidf']['accuracy']:.4f}",
                 f"{low:.3f}–{high:.3f}",
                 "Confusion matrix", "Fine-tuned model per class", "Data: class balance", "Data: tokens per text",
                 "Environment", "transformers", "```yaml", "learning_rate: 0.003"):
        assert text in md, text
    assert {p.name for p in (run.path / "plots").iterdir()} == {"curves.png", "confusion.png", "lengths.png"}
    for name in ("curves.png", "confusion.png", "lengths.png"):
        assert f"](plots/{name})" in md
        assert (run.path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = run.metrics["data"]
    assert sum(data["classes"]["test"].values()) == data["test"] == test["finetuned"]["n"]
    assert sum(data["tokens"]["histogram"]["train"]) == data["train"]

    predictions = (run.path / "test_predictions.csv").read_text().splitlines()
    assert predictions[0] == "text,label,predicted,score,true_label_score" and len(predictions) == test["finetuned"]["n"] + 1


def test_html_report_is_self_contained_and_escapes_every_text(run, tmp_path):
    page = (run.path / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3
    assert not re.search(r'src="(?!data:)', page)  # nothing fetched from disk or network

    (tmp_path / "x.png").write_bytes((run.path / "plots" / "curves.png").read_bytes())
    hostile = to_html("<b>t</b>", [Section("<img src=x onerror=alert(1)>", "a & <script>", ["<th>"], [("<td>",)],
                                           ("x.png",), "</pre><script>")], tmp_path)
    assert "<script>" not in hostile and "<img src=x" not in hostile and "&lt;script&gt;" in hostile


def test_report_is_rebuilt_from_the_run_directory_alone(run):
    before = (run.path / "report.md").read_text()
    shutil.rmtree(run.path / "plots")
    (run.path / "report.html").unlink()
    write_reports(run.path)
    assert (run.path / "report.md").read_text() == before
    assert (run.path / "report.html").is_file() and len(list((run.path / "plots").iterdir())) == 3


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; "
                                              "`make test` installs it when it runs as root)")
def test_report_renders_in_headless_chromium_with_no_broken_image(run, tmp_path):
    page = tmp_path / "report.html"
    page.write_text((run.path / "report.html").read_text().replace("</body>", IMAGE_CHECK))
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    dom = done.stdout
    assert 'data-images="3"' in dom and 'data-broken="0"' in dom, done.stderr[-2000:]
    finetuned = run.metrics["test"]["finetuned"]
    assert "Before and after" in dom and f"{finetuned['accuracy']:.4f}" in dom
    confusion = read_json(run.path / "metrics.json")["test"]["finetuned"]["confusion"]
    assert "Confusion matrix" in dom and all(f"<td>{n}</td>" in dom for row in confusion for n in row)
