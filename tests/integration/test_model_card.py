"""train -> export through the CLI on a tiny random BERT, and the model card it publishes: Hugging Face metadata
with the gate's figures, the training data's name, rows and sha256, every file's sha256, never a training text; then
served by GET /models/{name}/versions/{v}/card."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx
import pytest
import yaml

from app.cli import main as cli
from tests.support.tiny import CORPUS, LABELS, make_tiny_checkpoint

pytestmark = pytest.mark.slow

MARKER = "zebracorn quillfeather"  # a training text's words: never in the card


def test_export_publishes_a_card_of_what_it_measured(tmp_path):
    base = make_tiny_checkpoint(tmp_path / "base", "bert")
    data = tmp_path / "reviews.csv"
    rows = [(text.replace(",", ""), LABELS[i % 3]) for i, text in enumerate(CORPUS * 5)] + [(MARKER, "neutral")]
    data.write_text("review,sentiment\n" + "".join(f"{t},{lab}\n" for t, lab in rows))
    output, repo = tmp_path / "trained", tmp_path / "repo"
    cli(["train", "--data", str(data), "--text-column", "review", "--label-column", "sentiment",
         "--base", str(base), "--output", str(output), "--epochs", "1"])
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    assert json.loads((output / "report.json").read_text())["data"] == [
        {"file": "reviews.csv", "rows": len(rows), "sha256": digest}]
    cli(["export", str(output), "--name", "tiny", "--model-repository", str(repo), "--eval-data", str(data),
         "--text-column", "review", "--label-column", "sentiment", "--min-agreement", "0"])

    folder = repo / "tiny" / "1"
    card = (folder / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n", 2)[1])
    assert meta["pipeline_tag"] == "text-classification" and meta["bertserve"]["labels"] == LABELS
    chosen = json.loads((folder / "bertserve.json").read_text())["report"]["gate"]["attempts"][0]
    metrics = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["int8 decision agreement with fp32"] == chosen["agreement"]
    assert metrics["int8 accuracy"] == chosen["candidate_accuracy"]
    assert metrics["fp32 macro-F1"] == chosen["fp32_macro_f1"]
    assert f"| reviews.csv | {len(rows)} | `{digest}` |" in card
    files = [p for p in folder.iterdir() if p.name != "README.md"]
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json", "bertserve.json", "golden.json"} <= {
        p.name for p in files}
    for path in files:
        assert f"`{hashlib.sha256(path.read_bytes()).hexdigest()}`" in card, path.name
    assert "zebracorn" not in card and "quillfeather" not in card
    assert str(tmp_path) not in card  # names, never folders

    from app.main import create_app
    from app.settings import Settings

    app = create_app(Settings(model_repository=repo, poll_interval_s=0))  # not loaded: served all the same

    async def get(path: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://in-process") as c:
            return await c.get(path)

    answer = asyncio.run(get("/models/tiny/versions/1/card"))
    assert answer.status_code == 200 and answer.text == card
    assert asyncio.run(get("/models/tiny/versions/2/card")).status_code == 404
