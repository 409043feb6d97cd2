"""What the repository holds: `bertserve models` (each version's head, quantization and gate figures), and a
published version named as the commands name one (NAME or NAME:VERSION)."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.errors import ModelLoadError
from app.lifecycle import LifecycleError
from app.repository import read_config, version_dirs


def find_version(repository: Path, reference: str) -> tuple[str, int, Path]:
    """NAME or NAME:VERSION -> (name, version, folder); the latest version when none is named."""
    name, _, wanted = reference.partition(":")
    versions = version_dirs(repository).get(name)
    if not versions:
        published = sorted(version_dirs(repository)) or "none"
        raise LifecycleError(f"no model {name!r} in {repository}; published models: {published}")
    if not wanted:
        return name, *versions[-1]
    if not wanted.isdigit() or int(wanted) not in dict(versions):
        raise LifecycleError(f"{name} has no version {wanted!r}; versions: {[v for v, _ in versions]}")
    return name, int(wanted), dict(versions)[int(wanted)]


def describe_version(path: Path) -> str:
    try:
        config = read_config(path)
    except ModelLoadError as exc:
        return f"unreadable: {exc}"
    artifacts = ", ".join(f"{a.file} ({a.numerics})" for a in config.artifacts)
    head = config.head
    kind = "token-classification (per token, softmax)" if config.task == "token-classification" else \
        f"{head.kind} head ({head.function})"
    text = f"{kind} over {len(config.labels)} label(s), max_length {config.max_length}; {artifacts}"
    report = config.report or {}
    attempts = [a for a in report.get("gate", {}).get("attempts", []) if a.get("passed")]
    if attempts:
        gate = attempts[0]
        text += f"; gate: agreement {gate['agreement']:.4f}, max prob diff {gate['max_prob_diff']:.4f}"
        if "candidate_accuracy" in gate:
            text += f", accuracy fp32 {gate['fp32_accuracy']:.4f} / int8 {gate['candidate_accuracy']:.4f}"
    elif report.get("gate", {}).get("attempts"):
        text += "; gate: no int8 recipe passed (fp32 only)"
    return text


def main(args: argparse.Namespace) -> None:
    repository = Path(args.model_repository)
    found = version_dirs(repository)
    if not found:
        print(f"no models in {repository}")
        return
    for name, versions in found.items():
        print(f"{name}: versions {', '.join(str(v) for v, _ in versions)}")
        for version, path in versions:
            print(f"  {version}: {describe_version(path)}")
