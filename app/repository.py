"""The model repository: `<root>/<name>/<version>/` folders, each with a `bertserve.json` model config.

A version folder holds:
  bertserve.json     this module's ModelConfig (labels, max length, artifacts, optional quality report)
  *.onnx             one or more exported graphs (e.g. model.onnx in fp32, model.int8.onnx)
  tokenizer.json     a Hugging Face fast tokenizer (plus the other tokenizer files, kept for users)
  golden.json        optional: sample texts with their fp32 PyTorch scores (the head's function: softmax, sigmoid
                     or none), which every engine must reproduce before it serves (written by `bertserve export`;
                     older folders have none)

Folders without bertserve.json, or whose name is not an integer, are not versions and are ignored, so a
publisher can write into a temporary folder and rename it into place atomically. Beside the version folders, an
optional serving.json (ModelServing: version policy, traffic weights, shadow); wanted_versions reads what each
model asks to load. Every file is read only where its real place lies in the repository (`inside`): a link
leading out of it is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.errors import ModelLoadError, validation_message
from app.scores import Head, ProblemType, ScoreFunction, pipeline_function

CONFIG_FILE = "bertserve.json"
POLICY_FILE = "serving.json"  # optional, beside the version folders: which versions to serve
TOKENIZER_FILE = "tokenizer.json"
GOLDEN_FILE = "golden.json"
log = logging.getLogger("bertserve.repository")
CARD_FILE = "README.md"  # the model card app.lifecycle.card writes into each version folder it publishes

Provider = Literal["cpu", "openvino", "cuda"]


class GuardSpec(BaseModel):
    """An INT8 artifact's guard (app.guard): rows whose softmax top-two margin is under `margin` are decided by
    `reference`, the fp32 graph."""

    model_config = ConfigDict(extra="forbid")

    margin: float = Field(gt=0, lt=1, description="Top-two probability margin under which fp32 decides the row.")
    reference: str = Field(description="The fp32 ONNX file inside the version folder that decides them.")

    @field_validator("reference")
    @classmethod
    def _plain_name(cls, file: str) -> str:
        return plain_file_name(file)


def plain_file_name(file: str) -> str:
    # A name, never a path: `../x`, `/etc/x` or `sub/x` would open a file outside the version folder.
    if not file or file in (".", "..") or any(c in file for c in "/\\\0"):
        raise ValueError("a plain file name inside the version folder (no path separator, not '.' or '..')")
    return file


class Artifact(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="ONNX file name inside the version folder.")
    precision: Literal["fp32", "fp16", "int8"]
    providers: list[Provider] = Field(description="Providers this artifact is meant for, best first.")
    quantization: str | None = Field(None, description="How it was quantized, e.g. 'dynamic int8 per-channel'.")
    guard: GuardSpec | None = Field(None, description="INT8 only: near-ties decided by the fp32 graph (app.guard).")

    @field_validator("file")
    @classmethod
    def _plain_name(cls, file: str) -> str:
        return plain_file_name(file)

    @property
    def numerics(self) -> str:
        """How its numbers are stored, in one phrase: the quantization recipe, else the precision."""
        return self.quantization or self.precision


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    task: Literal["text-classification", "token-classification"] = Field(
        "text-classification", description="text-classification: a score per label per text (or pair); "
        "token-classification: a label per token, answered as entities (app.tokens).")
    labels: list[str] = Field(min_length=1, description="The head's labels in id2label order (one for a single "
                              "logit or a regression value).")
    problem_type: ProblemType | None = Field(None, description="The checkpoint's problem_type; null: not recorded "
                                             "(folders exported before it was).")
    function: ScoreFunction | None = Field(None, description="The head's score function, derived as transformers' "
                                           "text-classification pipeline does (recorded for readers).")
    regression_bound: float | None = Field(None, gt=0, description="A regression head: the absolute difference "
                                           "within which two engines' values count as the same decision.")
    max_length: int = Field(ge=2)
    artifacts: list[Artifact] = Field(min_length=1, description="Preference order per provider: first wins.")
    report: dict[str, Any] | None = Field(None, description="Quality figures measured when it was published.")

    @model_validator(mode="after")
    def _labels_and_function(self) -> "ModelConfig":
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        derived = pipeline_function(len(self.labels), self.problem_type)
        if self.function is not None and self.function != derived:
            raise ValueError(f"function {self.function!r} is not the one its head implies ({derived!r}, from "
                             f"{len(self.labels)} label(s) and problem_type {self.problem_type!r})")
        fp32 = {a.file for a in self.artifacts if a.precision == "fp32"}
        for artifact in self.artifacts:
            if artifact.guard is not None and (artifact.precision != "int8" or artifact.guard.reference not in fp32):
                raise ValueError(f"artifact {artifact.file}: a guard belongs to an int8 artifact and names a listed "
                                 "fp32 artifact as its reference")
        return self

    @property
    def head(self) -> Head:
        """How its logits become scores and decisions (app.scores.Head)."""
        return Head(tuple(self.labels), self.problem_type, self.regression_bound)

    def artifact_for(self, provider: Provider) -> Artifact | None:
        return next(iter(self.artifacts_for(provider)), None)

    def artifacts_for(self, provider: Provider) -> list[Artifact]:
        """The artifacts `provider` may run, best first. OpenVINO takes fp32 graphs (it runs onnxruntime's dynamic
        INT8 graphs slower than fp32); folders exported before it existed list it nowhere, so fp32 means it."""
        listed = [a for a in self.artifacts if provider in a.providers]
        if provider == "openvino" and not listed:
            listed = [a for a in self.artifacts if a.precision == "fp32"]
        return listed


class Golden(BaseModel):
    """Reference outputs of a version (golden.json): the fp32 PyTorch scores of sample texts (the field keeps its
    name "probabilities": it holds the head's scores, softmax, sigmoid or raw regression values), and the gate any
    engine must pass on them before it serves on a machine the exporter never saw."""

    model_config = ConfigDict(extra="forbid")

    # A pair model's golden inputs are pairs: ["text", "text_pair"] in JSON, a tuple here (app.tokenizer.TextInput).
    texts: list[str | tuple[str, str]] = Field(min_length=1)
    probabilities: list[list[float]] = Field(
        default_factory=list,
        description="The head's scores of the fp32 PyTorch model (bertserve.json's function), one row per text.")
    # A token model's form: per text, the softmax of each of its tokens (special ones too, cut to max_length).
    token_probabilities: list[list[list[float]]] | None = Field(
        None, description="A token-classification model: per text, per token, the fp32 PyTorch softmax over the "
        "labels (probabilities is then empty); agreement is counted per token.")
    min_agreement: float = Field(ge=0, le=1, description="Least share of decisions equal to the reference.")
    max_prob_diff: float = Field(gt=0, description="Largest score difference to the reference.")
    source: str = Field("", description="Where the texts came from.")

    def verdict(self, figures: dict[str, float]) -> str | None:
        """None when an engine's figures on these texts (app.scores.Head.drift) pass the gate, else why not."""
        if figures["agreement"] < self.min_agreement:
            return f"agreement {figures['agreement']:.4f} < {self.min_agreement}"
        if figures["max_prob_diff"] > self.max_prob_diff:
            return f"max score difference {figures['max_prob_diff']:.4f} > {self.max_prob_diff}"
        return None

    def reference(self) -> np.ndarray:
        """The reference rows an engine's scores are compared with: one per text, or one per token of each text
        in order (a token model)."""
        if self.token_probabilities is not None:
            return np.asarray([row for text in self.token_probabilities for row in text], dtype=np.float32)
        return np.asarray(self.probabilities, dtype=np.float32)

    def rows(self) -> list[list[float]]:
        if self.token_probabilities is not None:
            return [row for text in self.token_probabilities for row in text]
        return self.probabilities

    @model_validator(mode="after")
    def _one_row_per_text(self) -> "Golden":
        if self.token_probabilities is not None:
            if self.probabilities or len(self.token_probabilities) != len(self.texts):
                raise ValueError(f"{len(self.texts)} texts but {len(self.token_probabilities)} lists of token "
                                 "probabilities (and probabilities must then be empty)")
            return self
        if len(self.probabilities) != len(self.texts):
            raise ValueError(f"{len(self.texts)} texts but {len(self.probabilities)} rows of probabilities")
        return self


class VersionPolicy(BaseModel):
    """Which published versions to serve (Triton's version policies). Default: the latest one."""

    model_config = ConfigDict(extra="forbid")

    latest: int | None = Field(None, ge=1, description="Serve the N highest versions.")
    specific: list[int] | None = Field(None, min_length=1, description="Serve exactly these versions.")
    all: bool = Field(False, description="Serve every version.")

    @model_validator(mode="after")
    def _one_kind(self) -> "VersionPolicy":
        if sum([self.latest is not None, self.specific is not None, self.all]) > 1:
            raise ValueError("give one of latest, specific, all")
        return self

    def select(self, versions: list[int]) -> list[int]:
        if self.all:
            return versions
        if self.specific is not None:
            return [v for v in versions if v in self.specific]
        return versions[-(self.latest or 1):]


class PredictionLogServing(BaseModel):
    """serving.json "prediction_log": this model's share of requests logged and what of their texts (each field
    optional: the global BERTSERVE_PREDICTION_LOG_SAMPLE / _TEXT). The sinks are global only."""

    model_config = ConfigDict(extra="allow")  # unknown keys: warned and ignored (see ModelServing)

    sample: float | None = Field(None, ge=0, le=1, description="Share of this model's answered requests logged.")
    text: Literal["none", "hash", "full"] | None = Field(None, description="What of the texts is logged.")


class ModelServing(BaseModel):
    """A model's serving.json: which versions load, and how requests naming no version are routed among them.

    Compatibility: a key this release does not know (one a newer release added, read by an older or rolled-back
    replica) is warned about, naming it, once per change of the file, and ignored; never a bad_serving_json. Keys it
    knows are validated strictly."""

    model_config = ConfigDict(extra="allow")

    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    traffic: dict[int, float] | None = Field(
        None, description='Canary: weights of loaded versions for requests naming no version, e.g. {"2": 90, "3": 10}.'
    )
    shadow: int | None = Field(
        None, ge=1, description="A loaded version that also runs each answered request, after the answer, to compare."
    )
    v1_return_probabilities: bool = Field(
        False, description="KServe V1 `:predict` answers each text's softmax probabilities by class id "
        "(huggingfaceserver's --return_probabilities) instead of the predicted class id (app.api.v1)."
    )
    prediction_log: PredictionLogServing = Field(
        default_factory=PredictionLogServing, description="This model's prediction log sample and text mode."
    )

    def unknown_keys(self) -> list[str]:
        """The keys of the file this release does not know (ignored), nested ones as `prediction_log.<key>`."""
        return sorted([*(self.model_extra or {}),
                       *(f"prediction_log.{k}" for k in (self.prediction_log.model_extra or {}))])

    @model_validator(mode="after")
    def _weights(self) -> "ModelServing":
        if self.traffic is not None:
            if any(v < 1 for v in self.traffic):
                raise ValueError("traffic: versions are positive integers")
            if any(not 0 <= w < float("inf") for w in self.traffic.values()):
                raise ValueError("traffic: weights are finite numbers >= 0")
        return self


M = TypeVar("M", bound=BaseModel)


def _read(schema: type[M], path: Path) -> M:
    """A JSON file of the repository, validated; a problem is a ModelLoadError naming the file and the field."""
    try:
        return schema.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror})", "unreadable") from None
    except ValidationError as exc:
        raise ModelLoadError(f"{path}: {validation_message(exc.errors(), root='(root)')}", "invalid_config") from None


def inside(root: Path, path: Path) -> Path:
    """`path`, refused when its real place (every symlink followed) is outside the repository `root`: a version
    must not serve files from elsewhere. Links that stay inside keep working (a Kubernetes ConfigMap or Secret
    volume's own `..data` links)."""
    if not path.resolve().is_relative_to(root.resolve()):
        raise ModelLoadError(f"{path}: a link leading outside the model repository {root} (refused)",
                             "outside_repository")
    return path


def read_config(path: Path, root: Path | None = None) -> ModelConfig:
    """The version's config, once its files (the folder, bertserve.json, tokenizer.json, the artifacts) are
    known to lie in the repository `root` (default: the folder two above, that of `<root>/<name>/<version>`)."""
    root = path.parent.parent if root is None else root
    config_path = inside(root, inside(root, path) / CONFIG_FILE)
    config = _read(ModelConfig, config_path)
    for needed in [TOKENIZER_FILE, *(a.file for a in config.artifacts)]:
        if not (path / needed).is_file():
            raise ModelLoadError(f"{path / needed}: missing (named by {config_path})", "missing_files")
        inside(root, path / needed)
    return config


def read_golden(path: Path, labels: int, root: Path | None = None) -> Golden | None:
    """The version's golden outputs, or None for a folder exported without them (root: as read_config)."""
    golden_path = path / GOLDEN_FILE
    if not golden_path.is_file():
        return None
    golden = _read(Golden, inside(path.parent.parent if root is None else root, golden_path))
    if any(len(row) != labels for row in golden.rows()):
        raise ModelLoadError(f"{golden_path}: rows of probabilities do not have the model's {labels} labels",
                             "invalid_config")
    return golden


def write_config(path: Path, config: ModelConfig) -> None:
    (path / CONFIG_FILE).write_text(json.dumps(config.model_dump(exclude_none=True), indent=2) + "\n")


def write_golden(path: Path, golden: Golden) -> None:
    (path / GOLDEN_FILE).write_text(golden.model_dump_json() + "\n")


def version_dirs(root: Path) -> dict[str, list[tuple[int, Path]]]:
    """Every `<name>/<version>/` holding a config, versions ascending. Nothing is read but directory names."""
    found: dict[str, list[tuple[int, Path]]] = {}
    if not root.is_dir():
        return found
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = sorted(
            (int(v.name), v)
            for v in model_dir.iterdir()
            if v.is_dir() and v.name.isdigit() and (v / CONFIG_FILE).is_file()
        )
        if versions:
            found[model_dir.name] = versions
    return found


def read_serving(model_dir: Path, root: Path | None = None) -> ModelServing:
    """The model's serving.json (version policy, traffic weights, shadow), or the defaults without one; refused,
    like every file of a version, when it is a link leading outside the repository `root` (default: the folder
    above `model_dir`)."""
    path = model_dir / POLICY_FILE
    if not path.is_file():
        _warned_unknown.pop(str(path), None)
        return ModelServing()
    serving = _read(ModelServing, inside(model_dir.parent if root is None else root, path))
    unknown = serving.unknown_keys()
    if _warned_unknown.get(str(path), []) != unknown:  # once per change of the file's unknown keys
        _warned_unknown[str(path)] = unknown
        if unknown:
            log.warning("%s: unknown key(s) %s ignored (written for a newer release?); the known keys are in force",
                        path, ", ".join(unknown))
    return serving


_warned_unknown: dict[str, list[str]] = {}  # serving.json path -> the unknown keys last warned about


@dataclass(frozen=True)
class Wanted:
    """One model as a scan of the repository finds it: its version folders, its serving.json (None when that file
    cannot be used: `refused` says why) and the versions to load, ascending (none without a usable serving.json:
    the registry then keeps what runs)."""

    folders: dict[int, Path]
    serving: ModelServing | None = None
    versions: tuple[int, ...] = ()
    refused: str | None = None

    @classmethod
    def select(cls, folders: dict[int, Path], serving: ModelServing, max_loaded: int) -> "Wanted":
        """Every version given a traffic weight or named as shadow (the operator named them: they lift the cap),
        and those the version policy selects besides them, at most `max_loaded` of these (the highest kept). A
        named version with no folder is not invented: the registry refuses the table that names it."""
        named = {v for v, w in (serving.traffic or {}).items() if w > 0}
        named |= {serving.shadow} if serving.shadow else set()
        # The policy picks the serving versions among the others: a shadow never takes the place of the latest.
        others = [v for v in sorted(folders) if v != serving.shadow]
        rest = [v for v in serving.version_policy.select(others) if v not in named][-max_loaded:]
        return cls(folders, serving, tuple(v for v in sorted(folders) if v in named or v in rest))


def wanted_versions(root: Path, max_loaded: int) -> dict[str, Wanted]:
    """Per model of the repository, what its folders and serving.json ask to load (Wanted.select), or why its
    serving.json cannot be used."""
    wanted: dict[str, Wanted] = {}
    for name, versions in version_dirs(root).items():
        folders = dict(versions)
        try:
            serving = read_serving(root / name, root)
        except ModelLoadError as exc:
            wanted[name] = Wanted(folders, refused=str(exc))
        else:
            wanted[name] = Wanted.select(folders, serving, max_loaded)
    return wanted


def next_version(root: Path, name: str) -> int:
    """One above every numbered folder of the model, published or not, so nothing is ever overwritten."""
    model_dir = root / name
    taken = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()] if model_dir.is_dir() else []
    return max(taken, default=0) + 1


def file_sha256(path: Path) -> str:
    """A file's sha256 (hex): artifacts in model cards and audit records, training data in reports."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
