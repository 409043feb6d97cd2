"""Every architecture optimum-onnx exports for text classification: exported by `bertserve export`, served, and
answering as `transformers.pipeline("text-classification", top_k=None)` does on the same checkpoint."""

from __future__ import annotations

import json

import onnx
import pytest

from app.cli import main as cli
from app.settings import Settings
from tests.support.apps import in_process
from tests.support.tiny import PARITY_TEXTS, make_tiny_checkpoint

pytestmark = pytest.mark.slow

# BERT, DistilBERT and RoBERTa: tests/integration/test_export_parity.py.
ARCHS = ["deberta-v2", "deberta", "modernbert", "electra", "albert", "mpnet", "xlm-roberta", "camembert"]
TEXTS = PARITY_TEXTS


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("architectures")
    checkpoints = {arch: make_tiny_checkpoint(root / "checkpoints" / arch, arch) for arch in ARCHS}
    for arch, checkpoint in checkpoints.items():
        cli(["export", str(checkpoint), "--name", arch, "--quantize", "none", "--model-repository", str(root / "repo")])
    return root / "repo", checkpoints


@pytest.fixture(scope="module")
def call(exported):
    # Parity of the export itself: onnxruntime on the fp32 graph (auto may pick OpenVINO, which computes in bf16
    # on a CPU with AVX512-BF16 or AMX: within its golden gate, not within 1e-3 of PyTorch)
    yield from in_process(Settings(model_repository=exported[0], poll_interval_s=0, batch_autotune=False,
                                   provider="cpu", log_level="error"))


@pytest.mark.parametrize("arch", ARCHS)
def test_served_like_the_transformers_pipeline(exported, call, arch):
    from transformers import pipeline

    checkpoint = exported[1][arch]
    expected = pipeline("text-classification", model=str(checkpoint), tokenizer=str(checkpoint), top_k=None,
                        device="cpu")(TEXTS, truncation=True)
    response = call("POST", "/predict", json={"inputs": TEXTS, "model": arch})  # one padded batch
    assert response.status_code == 200, response.text
    for served, reference in zip(response.json(), expected, strict=True):
        assert [s["label"] for s in served] == [r["label"] for r in reference]  # ranked alike
        assert max(abs(s["score"] - r["score"]) for s, r in zip(served, reference)) <= 1e-3
    # Scores spread over the labels (not all near 1/3), so the comparison above means something.
    assert max(r[0]["score"] for r in expected) > 0.4


def test_graphs_get_the_inputs_they_declare(exported):
    """DeBERTa-v3's layout (no token type embeddings) and ModernBERT take no token_type_ids; ELECTRA does."""
    repo = exported[0]

    def inputs(arch):
        return {i.name for i in onnx.load(repo / arch / "1" / "model.onnx").graph.input}

    assert inputs("deberta-v2") == inputs("modernbert") == {"input_ids", "attention_mask"}
    assert inputs("electra") == {"input_ids", "attention_mask", "token_type_ids"}
    report = json.loads((repo / "deberta-v2" / "1" / "bertserve.json").read_text())["report"]
    assert report["parity_max_prob_diff"] <= 1e-4


def test_an_architecture_optimum_cannot_export_is_one_line_naming_those_it_can(tmp_path, capsys):
    from transformers import T5Config

    folder = tmp_path / "t5"
    T5Config(num_layers=1, d_model=16, d_ff=32, num_heads=2, d_kv=8, vocab_size=100).save_pretrained(folder)
    with pytest.raises(SystemExit) as info:
        cli(["export", str(folder), "--name", "t5", "--model-repository", str(tmp_path / "repo")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "cannot export architecture 't5' for text-classification" in err[0]
    assert all(arch in err[0] for arch in ["bert", "deberta", "deberta-v2", "modernbert", "electra", "mpnet"])
    assert not (tmp_path / "repo").exists()


def test_an_architecture_whose_graph_needs_inputs_bertserve_does_not_feed_is_refused(tmp_path, capsys):
    from transformers import LayoutLMConfig

    folder = tmp_path / "layoutlm"
    LayoutLMConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                   vocab_size=100).save_pretrained(folder)
    with pytest.raises(SystemExit) as info:
        cli(["export", str(folder), "--name", "layout", "--model-repository", str(tmp_path / "repo")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "['bbox']" in err[0] and "does not feed" in err[0], err


def test_a_tokenizer_making_inputs_the_model_lacks_is_one_line_not_a_type_error(tmp_path, capsys):
    """A DistilBERT saved with a BERT tokenizer (token_type_ids): transformers' pipeline passes the model whatever
    the tokenizer makes and fails with a TypeError; export says what to fix, before any work."""
    import shutil

    checkpoint = make_tiny_checkpoint(tmp_path / "distilbert", "distilbert")
    bert = make_tiny_checkpoint(tmp_path / "bert", "bert")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(bert / name, checkpoint / name)
    with pytest.raises(SystemExit) as info:
        cli(["export", str(checkpoint), "--name", "mixed", "--model-repository", str(tmp_path / "repo")])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    said = "its tokenizer makes ['token_type_ids'], which DistilBertForSequenceClassification does not take"
    assert len(err) == 1 and said in err[0], err
    assert '"model_input_names": ["input_ids", "attention_mask"]' in err[0], err
    assert not (tmp_path / "repo").exists()
