"""Atomic publishing: build a version in a hidden staging folder, then rename it into place."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.lifecycle import LifecycleError
from app.lifecycle.card import write_card
from app.repository import next_version

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise LifecycleError(f"model name {name!r}: use letters, digits, '.', '_' or '-', starting with a letter or digit")


@contextmanager
def staging(repository: Path, name: str) -> Iterator[Path]:
    """A `.tmp-*` folder inside `<repository>/<name>/` (same file system, so the final rename is atomic).
    The server ignores it; on any failure it is removed, with the model folder if this created it."""
    check_name(name)
    model_dir = repository / name
    created = not model_dir.exists()
    folder = model_dir / f".tmp-{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if created and model_dir.is_dir() and not any(model_dir.iterdir()):
            model_dir.rmdir()


def publish(folder: Path, version: int | None) -> Path:
    """Write the model card (app.lifecycle.card) and rename the staged folder to `<version>` (default: next free
    number). Returns the version folder."""
    model_dir = folder.parent
    version = next_version(model_dir.parent, model_dir.name) if version is None else version
    target = model_dir / str(version)
    if target.exists():
        raise LifecycleError(f"{target} already exists; pick another --version or leave it out")
    # Last, as it lists every file's sha256; here, so that every command that publishes (export, distill,
    # build-demo) writes one.
    write_card(folder, model_dir.name, version)
    os.rename(folder, target)
    return target
