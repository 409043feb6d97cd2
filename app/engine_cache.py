"""The engine cache: which engine serves a model version on this host, measured once and recorded, so that every
start and every worker of the host serves the same one (README: Engines).

- **Folder**: BERTSERVE_ENGINE_CACHE, else `.engine-cache` in the version's model repository when it can be written
  there, else `bertserve-engine-cache-<uid>` in the temp folder (a read-only repository: a baked image). A folder
  that cannot be used at all: every load measures, with a warning.
- **Key**: everything the choice depends on (`cache_key`): the CPU model and its bf16 / INT8 flags, the core count,
  the workers and the layout of each candidate, the runtimes' versions and onnxruntime's providers, the provider
  setting, the fidelity margin, OpenVINO's precision setting, the sha256 of each candidate artifact and of the
  golden outputs, and the entry format (the measuring rule). Another key, another entry: measured again.
- **Entry** `<model>-<version>-<key digest>.json`: the key, the choice (provider, artifact, precision), the rule
  that made it, every candidate's figures (gate and timing rounds), when and by which process. Written atomically
  (a temporary file, then os.replace); one that cannot be read or does not match its key is measured again (logged).
- **One measurement at a time per host**: a process measures only while holding an exclusive lock on
  `measuring.lock` in the folder; the others wait on it, then read the entry it wrote and only prove the chosen
  engine on the golden texts. So workers never time engines against each other.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app import engine as engines
from app.repository import GOLDEN_FILE, Artifact, Provider, file_sha256
from app.settings import Settings

log = logging.getLogger("bertserve.engine_cache")

FORMAT = 1  # entries and the measuring rule (app.loader): a change of either re-measures every entry
FOLDER_NAME = ".engine-cache"
LOCK_FILE = "measuring.lock"
_digests: dict[tuple[str, int, int, int], str] = {}


def _digest(path: Path) -> str:
    """A file's sha256, remembered while its inode, size and modification time stay the same."""
    stat = path.stat()
    mark = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if mark not in _digests:
        _digests[mark] = file_sha256(path)
    return _digests[mark]


def _usable(folder: Path, private: bool = False) -> str | None:
    """None when entries can be written in `folder` (created if missing), else why not."""
    try:
        folder.mkdir(mode=0o700 if private else 0o777, parents=not private, exist_ok=True)
        if private and folder.stat().st_uid != os.getuid():
            return f"{folder} belongs to another user"
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as exc:
        return f"{folder}: {exc.strerror or exc}"
    return None


def cache_folder(settings: Settings, repository: Path) -> tuple[Path | None, str]:
    """The cache folder for versions of `repository`, and where it comes from (or, with None, why there is none)."""
    if settings.engine_cache is not None:
        why = _usable(settings.engine_cache)
        return (None, f"BERTSERVE_ENGINE_CACHE {why}") if why else (settings.engine_cache, "BERTSERVE_ENGINE_CACHE")
    beside = repository / FOLDER_NAME
    if (why_not_beside := _usable(beside)) is None:
        return beside, "beside the model repository"
    temporary = Path(tempfile.gettempdir()) / f"bertserve-engine-cache-{os.getuid()}"
    if (why := _usable(temporary, private=True)) is None:
        # /models shows the origin to every caller: no path in it, the log has the reason
        log.info("engine cache in %s: the model repository's %s", temporary, why_not_beside)
        return temporary, "temporary folder (the model repository is not writable)"
    return None, f"{why_not_beside}; {why}"


def cache_key(settings: Settings, path: Path, candidates: Sequence[tuple[Provider, Artifact]]) -> dict[str, Any]:
    """What the engine choice of the version in `path` depends on, as a JSON-able dict (see the module docstring)."""
    golden = path / GOLDEN_FILE
    return {
        "format": FORMAT,
        "cpu": engines.cpu_features(),
        "cpu_count": os.cpu_count(),
        "workers": settings.workers,
        "layout": {p: list(settings.engine_layout(p)) for p in sorted({p for p, _ in candidates})},
        "runtimes": engines.runtime_versions(),
        "provider": settings.provider,
        "fidelity_margin": settings.fidelity_margin,
        "openvino_precision": settings.openvino_precision,
        "candidates": [{"provider": p, "artifact": a.file, "precision": a.precision, "sha256": _digest(path / a.file),
                        **({"guard": a.guard.model_dump()} if a.guard else {})}
                       for p, a in candidates],
        "golden_sha256": _digest(golden) if golden.is_file() else None,
    }


def key_digest(key: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class EngineCache:
    """The entries of one cache folder (see the module docstring)."""

    def __init__(self, folder: Path, origin: str = "") -> None:
        self.folder, self.origin = folder, origin

    @classmethod
    def for_repository(cls, settings: Settings, repository: Path) -> tuple[EngineCache | None, str]:
        folder, origin = cache_folder(settings, repository)
        return (cls(folder, origin) if folder else None), origin

    def entry_path(self, name: str, version: int, key: dict[str, Any]) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        return self.folder / f"{safe}-{version}-{key_digest(key)[:16]}.json"

    def read(self, file: Path, key: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The entry in `file`, or None: missing, or unreadable or not for `key` (logged: it will be re-measured)."""
        try:
            entry = json.loads(file.read_text())
            if not isinstance(entry, dict) or not {"provider", "artifact"} <= set(entry["choice"]):
                raise ValueError("not an engine cache entry")
            if key is not None and entry.get("key") != key:
                raise ValueError("its key differs from the file name's")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("engine cache entry %s cannot be used (%s): the engines are measured again", file, exc)
            return None
        return entry

    def write(self, file: Path, entry: dict[str, Any]) -> None:
        """Atomically: readers see the previous entry or this one, never a part."""
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{file.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(entry, out, indent=1)
                out.write("\n")
            os.replace(tmp, file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @contextmanager
    def measuring(self) -> Iterator[float]:
        """Hold the host's measuring lock (waiting for it as long as another process measures); yields the seconds
        waited. The kernel releases it if the holder dies."""
        started = time.monotonic()
        with open(self.folder / LOCK_FILE, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield time.monotonic() - started
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def entries(self, name: str, version: int) -> list[tuple[Path, dict[str, Any] | None]]:
        """Every entry recorded for the version (any key), oldest first."""
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        files = sorted(self.folder.glob(f"{safe}-{version}-*.json"), key=lambda f: f.stat().st_mtime)
        return [(f, self.read(f)) for f in files]


def describe_key(key: dict[str, Any]) -> str:
    """The parts of a key a person tells entries apart by."""
    layout = ", ".join(f"{p} {s}x{t}" for p, (s, t) in key.get("layout", {}).items())
    return (f"{key.get('workers')} worker(s), {layout}, provider={key.get('provider')}, "
            f"fidelity margin {key.get('fidelity_margin')}, openvino precision {key.get('openvino_precision')}")


def command(settings: Settings, model: str | None, remeasure: bool) -> int:
    """`bertserve engines`: the recorded choice of every version of the repository for these settings on this host;
    with remeasure, each is measured again (loaded as the server would) and recorded. Exit status 1 when a version
    cannot load."""
    from app.errors import ModelLoadError
    from app.loader import candidate_groups, load_model
    from app.repository import read_config, version_dirs

    repository = settings.model_repository
    versions = version_dirs(repository)
    if model is not None:
        versions = {n: v for n, v in versions.items() if n == model}
        if not versions:
            print(f"bertserve engines: {repository} has no model {model}")
            return 1
    cache, origin = EngineCache.for_repository(settings, repository)
    print(f"engine cache: {cache.folder if cache else 'none'} ({origin}); CPU: {engines.cpu_name()}")
    status = 0
    for name, found in versions.items():
        for version, path in found:
            if remeasure:
                try:
                    loaded = load_model(name, version, path, settings, remeasure=True)
                except ModelLoadError as exc:
                    print(f"{name} {version}: cannot load: {exc}")
                    status = 1
                    continue
                choice = loaded.engine_choice
                print(f"{name} {version}: measured now: {loaded.engine}, {choice['rule']}"
                      f" ({_figures(choice['candidates'])}) -> {choice['cache'].get('entry')}")
                continue
            if cache is None:
                print(f"{name} {version}: no engine cache")
                continue
            try:
                config = read_config(path)
                groups, _ = candidate_groups(settings.provider, config.artifacts_for)
                file = cache.entry_path(name, version, cache_key(settings, path, [c for g in groups for c in g]))
            except (OSError, ModelLoadError) as exc:
                print(f"{name} {version}: cannot read it: {exc}")
                status = 1
                continue
            entry = cache.read(file)
            if entry is None:
                print(f"{name} {version}: not measured for these settings on this host (the next load measures it)")
            else:
                c = entry["choice"]
                print(f"{name} {version}: {c['provider']} on {c['artifact']} ({c.get('precision')}), {entry['rule']}"
                      f" ({_figures(entry['candidates'])}), measured {entry.get('measured_at')} -> {file}")
            others = [f for f, _ in cache.entries(name, version) if f != file]
            if others:
                print(f"  {len(others)} other entr{'y' if len(others) == 1 else 'ies'} (other settings, artifacts or "
                      f"runtimes): {', '.join(f.name for f in others)}")
    return status


def _figures(candidates: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{t['provider']} on {t['artifact']}: " + (f"{t.get('sequences_per_s')} seq/s, agreement "
                                                   f"{t.get('agreement', '-')}" if t.get("passed") else
                                                   f"failed: {t.get('why')}")
        for t in candidates)
