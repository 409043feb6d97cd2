"""Tiny random BERT-family checkpoints for tests: real architectures and real tokenizers, built offline in seconds;
the four classifier heads; and the slower tiny model that holds a server's engine busy."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

LABELS = ["negative", "neutral", "positive"]

CORPUS = [
    "this medicine worked wonders and i feel great",
    "terrible side effects , i would never take it again",
    "it was okay , nothing special but no harm either",
    "my doctor changed the dose after two weeks",
    "headache nausea and dizziness every single day",
    "best treatment i have had in years , highly recommend",
]
REVIEW = CORPUS[0]  # one review, every word of it in the tiny tokenizer's vocabulary
# The parity texts and pairs (tests/integration, benchmarks/parity.py). The last of each is longer than the model
# reads: both sides truncate it (pairs longest_first) to the tokenizer's 64 tokens.
PARITY_TEXTS = CORPUS + ["an unseen wordpiece zebra xylophone", "great " * 80]
PARITY_PAIRS = [(CORPUS[0], CORPUS[1]), (CORPUS[2], CORPUS[3]), (CORPUS[4], CORPUS[5]), (CORPUS[1], CORPUS[0]),
                ("an unseen wordpiece zebra", "xylophone"), ("great " * 40, " ".join(CORPUS))]


def _bert_tokenizer(path: Path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS * 4, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",  # BERT's own pair template, type ids too
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=64,
    )
    fast.save_pretrained(path)
    return fast


def _roberta_tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(
        CORPUS * 4,
        trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        cls_token="<s>", sep_token="</s>", mask_token="<mask>", model_max_length=64,
    )
    fast.save_pretrained(path)
    return fast


# Byte-level BPE with <s> </s> <pad>: the tokenizer family of these; the others take the WordPiece one ([CLS] [SEP]).
ROBERTA_STYLE = {"roberta", "xlm-roberta", "camembert", "mpnet"}


def _more_config(arch: str, hidden: int, layers: int, positions: int, tokenizer) -> dict:
    """Config arguments of the other architectures optimum-onnx exports for text classification, kept as tiny."""
    # Weights 10x wider than the default: scores spread over the labels, not all near 1/3, so parity means something.
    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=2 * hidden,
                  pad_token_id=tokenizer.pad_token_id, initializer_range=0.2)
    if arch in ROBERTA_STYLE:  # positions offset by padding_idx + 1, as RoBERTa's
        return dict(common, max_position_embeddings=positions + 2)
    if arch == "deberta-v2":  # DeBERTa-v3's layout: relative positions only, no token_type_ids
        return dict(common, max_position_embeddings=positions, type_vocab_size=0, relative_attention=True,
                    position_buckets=16, norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
                    position_biased_input=False, max_relative_positions=-1)
    if arch == "deberta":
        return dict(common, max_position_embeddings=positions, relative_attention=True, pos_att_type=["c2p", "p2c"])
    if arch == "modernbert":
        ids = {f"{k}_token_id": tokenizer.convert_tokens_to_ids(t)
               for k, t in (("cls", "[CLS]"), ("sep", "[SEP]"), ("bos", "[CLS]"), ("eos", "[SEP]"))}
        return dict(common, max_position_embeddings=positions, local_attention=16, reference_compile=False, **ids)
    if arch in ("electra", "albert"):
        return dict(common, max_position_embeddings=positions, embedding_size=hidden // 2)
    raise ValueError(f"unknown arch {arch}")


def make_tiny_checkpoint(
    path: Path, arch: str = "bert", seed: int = 0, hidden: int = 32, layers: int = 2, positions: int = 64
) -> Path:
    """Write a Hugging Face folder with a random small sequence classifier (2 layers, hidden 32 by default)
    and its tokenizer. Larger sizes make a model slow enough to hold the engine busy in fault tests."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    tokenizer = _roberta_tokenizer(path) if arch in ROBERTA_STYLE else _bert_tokenizer(path)
    labels = {"id2label": dict(enumerate(LABELS)), "label2id": {l: i for i, l in enumerate(LABELS)}}
    size = dict(vocab_size=len(tokenizer), **labels)
    torch.manual_seed(seed)
    if arch == "bert":
        config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                            intermediate_size=2 * hidden, max_position_embeddings=positions, **size)
        model = BertForSequenceClassification(config)
    elif arch == "distilbert":
        config = DistilBertConfig(dim=hidden, n_layers=layers, n_heads=2, hidden_dim=2 * hidden,
                                  max_position_embeddings=positions, **size)
        model = DistilBertForSequenceClassification(config)
    elif arch == "roberta":
        config = RobertaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                               intermediate_size=2 * hidden, max_position_embeddings=positions + 2,
                               pad_token_id=tokenizer.pad_token_id, **size)
        model = RobertaForSequenceClassification(config)
    else:
        from transformers import AutoConfig, AutoModelForSequenceClassification

        config = AutoConfig.for_model(arch, **_more_config(arch, hidden, layers, positions, tokenizer), **size)
        model = AutoModelForSequenceClassification.from_config(config)
    if "token_type_ids" not in inspect.signature(model.forward).parameters:  # as its real tokenizer: not made
        tokenizer.model_input_names = tokenizer.init_kwargs["model_input_names"] = ["input_ids", "attention_mask"]
        tokenizer.save_pretrained(path)
    model.eval()
    model.save_pretrained(path)
    return path


def export_tiny_model(checkpoint: Path, version_dir: Path, max_length: int = 64) -> Path:
    """Export a checkpoint with optimum and lay it out as a published model version (fp32 artifact)."""
    from optimum.exporters.onnx import main_export

    from app.repository import Artifact, ModelConfig, write_config

    work = version_dir.parent / f".export-{version_dir.name}"
    shutil.rmtree(work, ignore_errors=True)
    main_export(str(checkpoint), output=work, task="text-classification", do_validation=False)
    work.mkdir(exist_ok=True)
    write_config(
        work,
        ModelConfig(
            labels=LABELS,
            max_length=max_length,
            artifacts=[Artifact(file="model.onnx", precision="fp32", providers=["cuda", "cpu"])],
        ),
    )
    shutil.rmtree(version_dir, ignore_errors=True)
    work.rename(version_dir)
    return version_dir


# name: (labels, problem_type, transformers' text-classification pipeline function)
HEADS = {
    "softmax3": (LABELS, "single_label_classification", "softmax"),
    "multilabel4": (["drowsy", "nausea", "headache", "rash"], "multi_label_classification", "sigmoid"),
    "onelogit": (["LABEL_0"], None, "sigmoid"),
    "regression": (["rating"], "regression", "none"),
}


def make_head_checkpoint(path, labels: list[str], problem_type: str | None, seed: int):
    """A tiny random BERT sequence classifier with this head, and the tiny tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    path.mkdir(parents=True)
    tokenizer = _bert_tokenizer(path)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, problem_type=problem_type,
                        id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)})
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # a wider classifier than the default init, so scores spread and rankings are clear
        model.classifier.weight.mul_(20)
    model.save_pretrained(path)
    return path


def make_slow_model_repo(root: Path) -> Path:
    """A "slow" random BERT (hidden 256, 4 layers, 256 tokens) exported as <repo>/slow/1: a few hundred ms per full
    batch, enough to hold the engine busy (tests.support.servers.start_busy_batch). Returns the repository."""
    checkpoint = make_tiny_checkpoint(root / "checkpoint", hidden=256, layers=4, positions=256)
    export_tiny_model(checkpoint, root / "repo" / "slow" / "1", max_length=256)
    return root / "repo"


# A token classifier's labels (BIO tags of two entity types), for token-classification tests.
TOKEN_LABELS = ["O", "B-DRUG", "I-DRUG", "B-COND", "I-COND"]


def make_token_checkpoint(path: Path, arch: str = "bert", seed: int = 0, hidden: int = 32, layers: int = 2,
                          positions: int = 64) -> Path:
    """A Hugging Face folder with a random small `*ForTokenClassification` model of `arch` (TOKEN_LABELS) and the
    tiny tokenizer. The classifier is widened (weights x20, a spread bias) so a token's labels are not near-ties
    and every label, O included, comes up on the corpus."""
    import torch
    from transformers import AutoConfig, AutoModelForTokenClassification

    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    tokenizer = _roberta_tokenizer(path) if arch in ROBERTA_STYLE else _bert_tokenizer(path)
    labels = {"id2label": dict(enumerate(TOKEN_LABELS)), "label2id": {l: i for i, l in enumerate(TOKEN_LABELS)}}
    if arch == "bert":
        more = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=2 * hidden,
                    max_position_embeddings=positions, initializer_range=0.2)
    elif arch == "distilbert":
        more = dict(dim=hidden, n_layers=layers, n_heads=2, hidden_dim=2 * hidden, max_position_embeddings=positions,
                    initializer_range=0.2)
    else:
        more = _more_config(arch, hidden, layers, positions, tokenizer)
    config = AutoConfig.for_model(arch, vocab_size=len(tokenizer), **more, **labels)
    torch.manual_seed(seed)
    model = AutoModelForTokenClassification.from_config(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(20)
        model.classifier.bias.copy_(torch.tensor([1.0, 0.0, -0.5, 0.0, -0.5]))
    if "token_type_ids" not in inspect.signature(model.forward).parameters:  # as its real tokenizer: not made
        tokenizer.model_input_names = tokenizer.init_kwargs["model_input_names"] = ["input_ids", "attention_mask"]
        tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return path
