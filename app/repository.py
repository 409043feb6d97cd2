"""The model repository: `<root>/<name>/<version>/` folders, each with a `bertserve.json` model config.

A version folder holds:
  bertserve.json     this module's ModelConfig (labels, max length, artifacts, optional quality report)
  *.onnx             one or more exported graphs (e.g. model.onnx in fp32, model.int8.onnx)
  tokenizer.json     a Hugging Face fast tokenizer (plus the other tokenizer files, kept for users)

Folders without bertserve.json, or whose name is not an integer, are not versions and are ignored, so a
publisher can write into a temporary folder and rename it into place atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.errors import ModelLoadError

CONFIG_FILE = "bertserve.json"
POLICY_FILE = "serving.json"  # optional, beside the version folders: which versions to serve
TOKENIZER_FILE = "tokenizer.json"

Provider = Literal["cpu", "cuda"]


class Artifact(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="ONNX file name inside the version folder.")
    precision: Literal["fp32", "fp16", "int8"]
    providers: list[Provider] = Field(description="Providers this artifact is meant for, best first.")
    quantization: str | None = Field(None, description="How it was quantized, e.g. 'dynamic int8 per-channel'.")


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    task: Literal["text-classification"] = "text-classification"
    labels: list[str] = Field(min_length=2)
    max_length: int = Field(ge=2)
    artifacts: list[Artifact] = Field(min_length=1, description="Preference order per provider: first wins.")
    report: dict[str, Any] | None = Field(None, description="Quality figures measured when it was published.")

    @model_validator(mode="after")
    def _unique_labels(self) -> "ModelConfig":
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        return self

    def artifact_for(self, provider: Provider) -> Artifact | None:
        return next((a for a in self.artifacts if provider in a.providers), None)


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


class ModelServing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)


def read_config(path: Path) -> ModelConfig:
    config_path = path / CONFIG_FILE
    try:
        config = ModelConfig.model_validate_json(config_path.read_bytes())
    except OSError as exc:
        raise ModelLoadError(f"{config_path}: cannot read ({exc.strerror})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ModelLoadError(f"{config_path}: {where}: {first['msg']}") from None
    for needed in [TOKENIZER_FILE, *(a.file for a in config.artifacts)]:
        if not (path / needed).is_file():
            raise ModelLoadError(f"{path / needed}: missing (named by {config_path})")
    return config


def write_config(path: Path, config: ModelConfig) -> None:
    (path / CONFIG_FILE).write_text(json.dumps(config.model_dump(exclude_none=True), indent=2) + "\n")


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


def read_policy(model_dir: Path) -> VersionPolicy:
    path = model_dir / POLICY_FILE
    if not path.is_file():
        return VersionPolicy()
    try:
        return ModelServing.model_validate_json(path.read_bytes()).version_policy
    except (OSError, ValidationError) as exc:
        raise ModelLoadError(f"{path}: {str(exc).splitlines()[0]}") from None


def wanted_versions(root: Path, max_loaded: int) -> dict[str, list[tuple[int, Path]] | str]:
    """Per model, the versions its policy selects (at most `max_loaded`, the highest kept), ascending;
    or, for a model whose serving.json is broken, why."""
    wanted: dict[str, list[tuple[int, Path]] | str] = {}
    for name, versions in version_dirs(root).items():
        try:
            selected = read_policy(root / name).select([v for v, _ in versions])
        except ModelLoadError as exc:
            wanted[name] = str(exc)
            continue
        wanted[name] = [(v, p) for v, p in versions if v in selected][-max_loaded:]
    return wanted


def next_version(root: Path, name: str) -> int:
    """One above every numbered folder of the model, published or not, so nothing is ever overwritten."""
    model_dir = root / name
    taken = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()] if model_dir.is_dir() else []
    return max(taken, default=0) + 1
