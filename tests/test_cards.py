"""Model cards of a run's model/ and adapter/ folders, and `ftune push` to a local stand-in of the hub's HTTP API."""

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import ftune
from ftune.card import base_model, run_card, write_cards
from ftune.export import export_onnx
from ftune.predictors import Predictor
from helpers import ftune_cli, full_and_lora_runs

TOKEN = "hf_test_token"
# An absolute path of this machine, as it would show in a card: /tmp/..., /home/..., /root/..., /work/...
LOCAL_PATH = re.compile(r"(?<![\w.:/])/(?:tmp|home|root|work|Users|var|opt)/")


@pytest.fixture(scope="module")
def runs(tiny_model, reviews_csv, tmp_path_factory):
    """A full run and a LoRA run (adapter only) of the tiny model, which is a local folder with no hub id."""
    root = tmp_path_factory.mktemp("card-runs")
    full, lora = full_and_lora_runs(tiny_model, reviews_csv, root, **{"train.epochs": 3, "train.learning_rate": 1e-2,
                                                                      "train.warmup_ratio": 0.0})
    return {"full": full.path, "lora": lora.path}


def front_matter(text: str) -> dict:
    from huggingface_hub import ModelCard

    return ModelCard(text).data.to_dict()


def test_base_model_is_named_by_hub_id_never_by_path(tmp_path):
    assert base_model("minilm") == ("sentence-transformers/all-MiniLM-L6-v2",) * 2
    assert base_model("bert-base-uncased") == ("bert-base-uncased",) * 2
    assert base_model("whatever", "org/model") == ("org/model",) * 2  # run.json's model_source: the hub id used
    cached = tmp_path / "hub" / "models--org--tiny-bert" / "snapshots" / ("0" * 40)
    cached.mkdir(parents=True)
    assert base_model(str(cached)) == ("org/tiny-bert",) * 2
    local = tmp_path / "my-bert"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"_name_or_path": "nreimers/MiniLM-L6-H384-uncased"}))
    # A config's _name_or_path is often what the folder was trained from: said, never claimed as the base
    assert base_model("other", str(local)) == (None, "a local model (my-bert; its config.json names "
                                                     "nreimers/MiniLM-L6-H384-uncased)")
    assert base_model(str(tmp_path / "gone")) == (None, "a local model (gone)")


@pytest.mark.e2e
def test_a_finished_run_has_a_hub_model_card_from_its_own_files(runs):
    run = ftune.Run(runs["full"])
    card = (runs["full"] / "model" / "README.md").read_text()
    meta = front_matter(card)
    test = run.metrics["test"]["finetuned"]
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert meta["tags"][0] == "ftune" and "base_model" not in meta  # a local base: no hub id to name
    [result] = meta["model-index"][0]["results"]
    scores = {m["type"]: m["value"] for m in result["metrics"]}
    assert scores == {"accuracy": round(test["accuracy"], 4), "macro_f1": round(test["macro_f1"], 4)}
    assert result["dataset"]["name"] == "reviews.csv" and result["dataset"]["split"] == "test"

    for section in ("## Labels", "## Results (test split)", "## Data", "## Training", "## How to use",
                    "## Intended use and limitations"):
        assert f"\n{section}\n" in card
    low, high = test["accuracy_ci95"]
    assert f"| fine-tuned | {test['accuracy']:.4f} | {low:.3f}–{high:.3f} |" in card
    assert "| TF-IDF + linear model (tuned on validation) |" in card and "| base model, untrained head |" in card
    data = run.metrics["data"]
    assert f"| examples | {data['train']} | {data['validation']} | {data['test']} |" in card
    assert "| 0 | neg |" in card and "| 1 | pos |" in card and "a local model (" in card
    assert "| learning rate | 0.01 (config) |" in card and "| seed | 0 |" in card and "| epochs | 3 of 3" in card
    assert not LOCAL_PATH.search(card), LOCAL_PATH.search(card)
    assert "model/README.md" in run.manifest["sha256"]  # covered, and the run still loads (its files verified)
    assert len(Predictor(runs["full"]).predict(["dull"])) == 1


@pytest.mark.e2e
def test_the_adapter_card_replaces_peft_template_and_can_be_rebuilt(runs, tmp_path):
    run = Path(shutil.copytree(runs["lora"], tmp_path / "lora"))
    card = (run / "adapter" / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "peft" and meta["tags"][:3] == ["ftune", "classification", "lora"]
    assert "More Information Needed" not in card and "base_model:adapter" not in card  # peft's empty template
    assert "AutoPeftModelForSequenceClassification.from_pretrained" in card and "'neg': 0" in card
    assert not LOCAL_PATH.search(card), LOCAL_PATH.search(card)

    # The card is rebuilt from the run's files alone, the same; run.json's sha256 follows, so the run still loads.
    (run / "adapter" / "README.md").write_text("edited by hand")
    assert write_cards(run) == [run / "adapter" / "README.md"]
    assert (run / "adapter" / "README.md").read_text() == card
    (run / "adapter" / "README.md").write_text("edited by hand")
    with pytest.raises(ftune.RunError, match="README.md is not the file that was written"):
        Predictor(run)
    write_cards(run)
    assert Predictor(run).predict(["dull"])[0]["label"] == Predictor(runs["lora"]).predict(["dull"])[0]["label"]


# --- a stand-in for the hub's HTTP API: what huggingface_hub calls for create_repo, create_branch and a commit ----

class Hub(ThreadingHTTPServer):
    """Accepts repos, branches and commits as the hub does (small files inline, *.safetensors / *.onnx through the
    LFS batch API and a PUT) and keeps what arrives: hub.repos[repo][revision] = {path: bytes}."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.repos: dict[str, dict] = {}
        self.created: list[dict] = []
        self.lfs: dict[str, bytes] = {}  # uploaded LFS objects by sha256


class HubHandler(BaseHTTPRequestHandler):
    server: Hub

    def log_message(self, *args):  # the test's output stays quiet
        pass

    def body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # httpx streams a file this way
            data = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                chunk = self.rfile.read(size)
                self.rfile.readline()
                if size == 0:
                    return data
                data += chunk
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def reply(self, status: int, payload=None):
        data = json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        oid = self.path.rsplit("/", 1)[-1]
        self.server.lfs[oid] = self.body()
        self.reply(200)

    def do_GET(self):  # repo_info, after a refused create_repo
        self.reply(401 if self.headers.get("Authorization") != f"Bearer {TOKEN}" else 404, {"error": "no"})

    def do_POST(self):
        body, path, hub = self.body(), self.path.split("?")[0], self.server
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.reply(401, {"error": "Invalid credentials in Authorization header"})
        if path == "/api/repos/create":
            request = json.loads(body)
            hub.created.append(request)
            repo = f"{request['organization']}/{request['name']}"
            hub.repos.setdefault(repo, {"main": {}})
            return self.reply(200, {"url": f"{hub.url}/{repo}"})
        if path == "/api/validate-yaml":
            return self.reply(200, {"errors": [], "warnings": []})
        if path.endswith(".git/info/lfs/objects/batch"):
            objects = json.loads(body)["objects"]
            return self.reply(200, {"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"], "actions": {"upload": {"href": f"{hub.url}/lfs/{o['oid']}"}}}
                for o in objects]})
        found = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit|branch)/(.+)", path)
        if not found:
            return self.reply(404, {"error": f"no such endpoint {path}"})
        repo, action, revision = found.groups()
        if action == "branch":
            hub.repos[repo].setdefault(revision, dict(hub.repos[repo]["main"]))
            return self.reply(200)
        if action == "preupload":
            files = json.loads(body)["files"]
            return self.reply(200, {"files": [
                {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith((".safetensors", ".onnx")) else "regular",
                 "shouldIgnore": False} for f in files]})
        tree = hub.repos[repo][revision]  # a commit: a header line, then a line per file
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                tree[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "lfsFile":
                tree[item["value"]["path"]] = hub.lfs[item["value"]["oid"]]
        return self.reply(200, {"commitUrl": f"{hub.url}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40,
                                "pullRequestUrl": None})


@pytest.fixture
def hub():
    server = Hub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def push(tmp_path, endpoint: str, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess:
    """`ftune push` in a process of its own: huggingface_hub reads HF_ENDPOINT and HF_HUB_DISABLE_XET when imported.
    Xet is off so the plain LFS protocol is used (the stand-in speaks no Xet); HF_HOME is empty (no saved token)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "ftune", "push", *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.e2e
def test_push_publishes_a_run_and_an_export(runs, hub, tmp_path):
    lora = runs["lora"]
    done = push(tmp_path, hub.url, str(lora), "someone/tiny-lora", "--private", "--revision", "v1")
    assert done.returncode == 0, done.stderr
    assert hub.created[0].get("visibility") == "private" or hub.created[0].get("private") is True
    tree = hub.repos["someone/tiny-lora"]["v1"]
    adapter = lora / "adapter"
    assert set(tree) >= {"adapter_model.safetensors", "adapter_config.json", "labels.json", "tokenizer.json",
                         "README.md", "report.md", "plots/curves.png"}
    assert tree["adapter_model.safetensors"] == (adapter / "adapter_model.safetensors").read_bytes()  # through LFS
    assert tree["adapter_model.safetensors"] in hub.lfs.values()
    assert tree["tokenizer.json"] == (adapter / "tokenizer.json").read_bytes()
    card = tree["README.md"].decode()
    assert card == run_card(lora, "adapter", "someone/tiny-lora")  # the card, naming the repo in its usage code
    assert 'from_pretrained("someone/tiny-lora"' in card
    for name, content in tree.items():  # nothing published names a path of this machine
        if not name.endswith((".safetensors", ".png")):
            assert not LOCAL_PATH.search(content.decode()), (name, LOCAL_PATH.search(content.decode()))
    base = json.loads(tree["adapter_config.json"])["base_model_name_or_path"]
    assert base == Path(ftune.Run(lora).config.model.name).name  # a local base: its folder's name only

    export = export_onnx(runs["full"], tmp_path / "export", quantize="int8")
    done = push(tmp_path, hub.url, str(export), "someone/tiny-onnx")
    assert done.returncode == 0, done.stderr
    assert "someone/tiny-onnx" in done.stdout
    tree = hub.repos["someone/tiny-onnx"]["main"]
    local = {p.name: p.read_bytes() for p in export.iterdir()}
    assert set(tree) == set(local)
    assert all(tree[name] == local[name] for name in local if name != "export.json")  # the graphs byte for byte
    info = json.loads(tree["export.json"])
    assert info["source_run"] == "full" and not LOCAL_PATH.search(tree["export.json"].decode())


@pytest.mark.e2e
def test_push_errors_are_one_line(runs, hub, tmp_path, monkeypatch, capsys):
    unfinished = Path(shutil.copytree(runs["full"], tmp_path / "unfinished"))
    manifest = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps(manifest | {"status": "running"}))
    for args, message in (([str(unfinished), "a/b"], "did not finish"),
                          ([str(runs["full"]), "not a repo id!"], "is not a hub repo id"),
                          ([str(runs["full"]), "a/b"], "HF_HUB_OFFLINE is set")):  # the tests' environment sets it
        code, _, err = ftune_cli(monkeypatch, capsys, "push", *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    for endpoint, token, message in ((hub.url, None, "no Hugging Face token"),
                                     (hub.url, "hf_wrong", "the token was refused"),
                                     (closed, TOKEN, "cannot reach the hub")):
        done = push(tmp_path, endpoint, str(runs["full"]), "someone/x", token=token)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and message in lines[-1] and lines[-1].startswith("error: "), done.stderr
    assert "someone/x" not in hub.repos
