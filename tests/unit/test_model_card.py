"""The model card (app.lifecycle.card) written at publishing, and GET /models/{name}/versions/{v}/card serving it:
metadata that parses, figures from the report, every file's sha256, "unknown" training data for a checkpoint trained
elsewhere, the teacher of a student; 404 for what is not a published version, refused outside the repository. Fake
version folders (no ONNX runtime needed); tests/integration/test_model_card.py does it with a real export."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx
import pytest
import yaml

from app.lifecycle import LifecycleError
from app.lifecycle.card import write_card
from app.lifecycle.publish import publish, staging
from app.repository import CARD_FILE, Artifact, ModelConfig, write_config

LABELS = ["negative", "positive"]
ATTEMPT = {"recipe": "dynamic int8 per-channel", "agreement": 0.98, "fp32_accuracy": 0.9, "fp32_macro_f1": 0.88,
           "candidate_accuracy": 0.89, "candidate_macro_f1": 0.87, "size_mb": 1.0, "passed": True, "why": None}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def fake_version(folder, report: dict) -> None:
    """A version folder as read_config accepts it: config, tokenizer, artifacts (their bytes are not looked at)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.onnx").write_bytes(b"fp32 graph")
    (folder / "model.int8.onnx").write_bytes(b"int8 graph")
    write_config(folder, ModelConfig(labels=LABELS, max_length=64, report=report, artifacts=[
        Artifact(file="model.int8.onnx", precision="int8", providers=["cpu"], quantization=ATTEMPT["recipe"]),
        Artifact(file="model.onnx", precision="fp32", providers=["cpu"])]))


def report(source, **more) -> dict:
    gate = {"min_agreement": 0.97, "max_accuracy_loss": 0.01, "max_drift_share": 0.02,
            "data": "/secret/place/eval.csv", "texts": 40, "attempts": [ATTEMPT], "chosen": ATTEMPT["recipe"]}
    per_class = {label: {"precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 20} for label in LABELS}
    evaluation = {"fp32": {"accuracy": 0.9, "macro_f1": 0.88, "per_class": per_class}}
    return {"source": str(source), "gate": gate, "evaluation": evaluation, **more}


def test_publish_writes_the_card_from_the_report_and_the_checkpoint(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    data = {"file": "train.csv", "rows": 120, "sha256": "ab" * 32}
    (checkpoint / "report.json").write_text(json.dumps({
        "base": "google-bert/bert-base-uncased", "data": [data], "options": {"epochs": 3, "seed": 13},
        "train_size": 100, "validation_size": 20, "best_epoch": 2}))
    with staging(tmp_path / "repo", "tiny") as folder:
        fake_version(folder, report(checkpoint))
        published = publish(folder, None)
    card = (published / CARD_FILE).read_text()
    meta = front_matter(card)
    assert meta["pipeline_tag"] == "text-classification"
    assert meta["base_model"] == "google-bert/bert-base-uncased"
    assert meta["bertserve"]["labels"] == LABELS and meta["bertserve"]["head"]["max_length"] == 64
    result = meta["model-index"][0]["results"][0]
    assert meta["model-index"][0]["name"] == "tiny" and result["task"]["type"] == "text-classification"
    assert result["dataset"]["name"] == "eval.csv"  # the file's name, never its folder
    found = {m["name"]: (m["type"], m["value"]) for m in result["metrics"]}
    assert found["int8 decision agreement with fp32"] == ("agreement", 0.98)
    assert found["int8 accuracy"] == ("accuracy", 0.89) and found["int8 macro-F1"] == ("f1", 0.87)
    assert found["fp32 accuracy"] == ("accuracy", 0.9)
    assert "| train.csv | 120 | `" + "ab" * 32 + "` |" in card
    assert "epochs 3, seed 13" in card and "dynamic int8 per-channel | 0.98 |" in card
    for path in published.iterdir():
        if path.name != CARD_FILE:
            assert f"`{hashlib.sha256(path.read_bytes()).hexdigest()}`" in card, path.name
    assert "/secret" not in card and str(tmp_path) not in card
    # As the Hub reads it (huggingface_hub: a dev dependency): every figure an evaluation result.
    parsed = pytest.importorskip("huggingface_hub").ModelCard(card).data
    assert parsed.model_name == "tiny" and parsed.base_model == "google-bert/bert-base-uncased"
    assert [(r.metric_type, r.metric_value) for r in parsed.eval_results] == [
        (m["type"], m["value"]) for m in result["metrics"]]


def test_a_checkpoint_trained_elsewhere_says_unknown_and_a_student_names_its_teacher(tmp_path):
    student = report(tmp_path / "no-report-here", teacher_gate={
        "teacher": "/secret/teachers/big", "agreement": 0.95, "student_accuracy": 0.8, "teacher_accuracy": 0.82,
        "passed": True, "why": None}, distillation={"teacher_layers": 6, "layers": 2, "layers_kept": [0, 5]})
    with staging(tmp_path / "repo", "student") as folder:
        fake_version(folder, student)
        card = (publish(folder, 4) / CARD_FILE).read_text()
    assert "## Training data\n\nUnknown:" in card and "base_model" not in front_matter(card)
    assert "published by `bertserve distill`" in card and "Distilled from `big`: 2 of its 6 layers" in card
    found = {m["name"]: m["value"] for m in front_matter(card)["model-index"][0]["results"][0]["metrics"]}
    assert found["fp32 decision agreement with the teacher"] == 0.95 and found["teacher accuracy"] == 0.82
    assert "/secret" not in card


def test_a_version_that_exists_gets_no_card_and_stays_as_it_was(tmp_path):
    (tmp_path / "repo" / "tiny" / "1").mkdir(parents=True)
    with pytest.raises(LifecycleError, match="already exists"):
        with staging(tmp_path / "repo", "tiny") as folder:
            fake_version(folder, report(tmp_path))
            publish(folder, 1)
    assert list((tmp_path / "repo" / "tiny" / "1").iterdir()) == []


@pytest.fixture
def get(tmp_path):
    """GET on the app (its models never loaded: the card is served loaded or not) over a repository with tiny/1
    (a card), tiny/2 (none: published before cards), tiny/3 (a link to a version folder outside)."""
    from app.main import create_app
    from app.settings import Settings

    repo, outside = tmp_path / "repo", tmp_path / "outside" / "3"
    for version in (1, 2):
        fake_version(repo / "tiny" / str(version), report(tmp_path))
    write_card(repo / "tiny" / "1", "tiny", 1)
    fake_version(outside, report(tmp_path))
    write_card(outside, "tiny", 3)
    (repo / "tiny" / "3").symlink_to(outside, target_is_directory=True)

    def call(path: str, key: str | None = None, **settings) -> httpx.Response:
        app = create_app(Settings(model_repository=repo, poll_interval_s=0, **settings))

        async def one():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://in-process") as c:
                return await c.get(path, headers={"authorization": f"Bearer {key}"} if key else {})
        return asyncio.run(one())

    call.repo = repo
    return call


def test_the_card_is_served_as_markdown(get):
    answer = get("/models/tiny/versions/1/card")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/markdown; charset=utf-8"
    assert answer.content == (get.repo / "tiny" / "1" / CARD_FILE).read_bytes()


def test_a_client_route(get):
    path = "/models/tiny/versions/1/card"
    assert get(path, api_keys="client-1").status_code == 401
    assert get(path, "client-1", api_keys="client-1", admin_api_keys="admin-1").status_code == 200


@pytest.mark.parametrize("path, says", [
    ("/models/nope/versions/1/card", "no published version"),
    ("/models/tiny/versions/9/card", "no published version"),
    ("/models/tiny/versions/one/card", "no published version"),
    ("/models/.checkpoints/versions/1/card", "no published version"),
    ("/models/tiny/versions/%D9%A1/card", "no published version"),  # a digit, not an ASCII one
    ("/models/ti%00ny/versions/1/card", "no published version"),  # names no file system holds: not a 500
    ("/models/" + "t" * 5000 + "/versions/1/card", "no published version"),
    ("/models/tiny/versions/2/card", "no model card"),
    ("/models/tiny/versions/3/card", "outside the model repository (refused)"),
])
def test_404_for_what_is_not_a_card_of_the_repository(get, path, says):
    answer = get(path)
    assert answer.status_code == 404
    body = answer.json()
    assert body["error_type"] == "not_found" and says in body["error"]
    assert str(get.repo.parent) not in answer.text  # never a path
