"""The `bertserve` console script."""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from app.settings import settings_or_exit

# prometheus_client's multiprocess value files, <type>_<pid>.db (gauges: gauge_<mode>_<pid>.db): what we write.
_METRIC_FILE = re.compile(r"(counter|histogram|summary|gauge_[a-z]+)_[0-9]+\.db")


def _metrics_dir(given: Path | None) -> Path:
    """The folder for the workers' metric files. One the user gave is created if missing and never removed; of
    its contents only metric files (a previous run's, whose counts would otherwise come back) are deleted, and a
    folder holding anything else is refused untouched. None given: a new temp folder, removed when this process
    (uvicorn's supervisor) exits, after its workers."""
    if given is None:
        folder = Path(tempfile.mkdtemp(prefix="bertserve-metrics-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        return folder
    try:
        given.mkdir(parents=True, exist_ok=True)
        entries = sorted(given.iterdir())
    except OSError as exc:
        print(f"bertserve: BERTSERVE_METRICS_DIR {given} is not a usable folder: {exc.strerror or exc}",
              file=sys.stderr)
        raise SystemExit(2) from None
    foreign = [e for e in entries if e.is_symlink() or not e.is_file() or not _METRIC_FILE.fullmatch(e.name)]
    if foreign:
        names = ", ".join(e.name + ("/" if e.is_dir() else "") for e in foreign[:3]) + (", ..." * (len(foreign) > 3))
        print(f"bertserve: BERTSERVE_METRICS_DIR {given} holds {len(foreign)} item(s) that are not bertserve metric "
              f"files ({names}); nothing was deleted: give it a folder of its own", file=sys.stderr)
        raise SystemExit(2)
    for entry in entries:
        entry.unlink()
    return given


def serve(args: argparse.Namespace) -> None:
    overrides = {
        "host": args.host, "port": args.port, "workers": args.workers, "model_repository": args.model_repository,
        "ssl_certfile": args.ssl_certfile, "ssl_keyfile": args.ssl_keyfile,
    }
    # Workers build their Settings from the environment: command-line values go there first.
    os.environ.update({f"BERTSERVE_{k.upper()}": str(v) for k, v in overrides.items() if v is not None})
    settings = settings_or_exit()
    if settings.provider != "auto":  # a provider asked for by name must exist here; say why not before serving
        from app.engine import available

        why_not = available(settings.provider)
        if why_not:
            print(f"bertserve: BERTSERVE_PROVIDER={settings.provider} cannot run here: {why_not}", file=sys.stderr)
            raise SystemExit(2)
    from app.tracing import sampler_problem  # the OTEL_* variables are read by each worker: checked once, here

    if problem := sampler_problem():
        print(f"bertserve: bad setting {problem}", file=sys.stderr)
        raise SystemExit(2)
    from app.api.grpc.port import exit_if_unbindable  # sockets only: one line, not a worker's traceback

    exit_if_unbindable(settings)
    # Before anything imports prometheus_client (it picks its value store at import): metric files shared by
    # all workers, so counters add up.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir(settings.metrics_dir))
    from app import audit  # (imports prometheus_client: only now) the log must open here, or no worker could write it

    if settings.audit_required and (problem := audit.check_writable(settings)):
        print(f"bertserve: BERTSERVE_AUDIT_REQUIRED: the audit log cannot be opened: {problem}", file=sys.stderr)
        raise SystemExit(2)
    import uvicorn

    from app import shutdown
    from app.logs import log_config

    shutdown.exit_zero_after_uvicorn()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        # uvloop + httptools: plain asyncio + h11 with several workers stalls ~40 ms per response (no TCP_NODELAY).
        loop="uvloop",
        http="app.api.http_limits:LimitedHttpToolsProtocol",  # httptools with read deadline, head and connection caps
        ws="none",  # no WebSocket route: an upgrade request is served as plain HTTP, within the same limits
        log_config=log_config(settings.log_level, settings.log_format),
        access_log=False,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        timeout_graceful_shutdown=int(settings.drain_timeout_s) + 1,
    )


def audit_verify(args: argparse.Namespace) -> None:
    from app.audit import verify

    broken = verify(args.files)
    if broken:
        print(f"bertserve audit verify: BROKEN: {broken}", file=sys.stderr)
        raise SystemExit(1)
    print(f"bertserve audit verify: {len(args.files)} file(s): every chain is whole")


def engines(args: argparse.Namespace) -> None:
    overrides = {"model_repository": args.model_repository, "workers": args.workers, "batch_autotune": False}
    settings = settings_or_exit(**{k: v for k, v in overrides.items() if v is not None})
    from app.engine_cache import command

    raise SystemExit(command(settings, args.model, args.remeasure))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bertserve", description="Serve BERT-family text classifiers.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("serve", help="Serve every model in the repository over HTTP.")
    p.add_argument("--host", help="Bind address (BERTSERVE_HOST, default 127.0.0.1).")
    p.add_argument("--port", type=int, help="TCP port (BERTSERVE_PORT, default 8000).")
    p.add_argument("--workers", type=int, help="Worker processes (BERTSERVE_WORKERS, default 1).")
    p.add_argument("--model-repository", type=Path, help="Model folder (BERTSERVE_MODEL_REPOSITORY, default models).")
    p.add_argument("--ssl-certfile", type=Path, help="PEM certificate: serve HTTPS (BERTSERVE_SSL_CERTFILE).")
    p.add_argument("--ssl-keyfile", type=Path, help="PEM private key (BERTSERVE_SSL_KEYFILE).")
    p.set_defaults(func=serve)

    p = commands.add_parser("engines", help="Show the engine each model version serves with on this host, as "
                            "recorded in the engine cache (BERTSERVE_ENGINE_CACHE); --remeasure: measure again.")
    p.add_argument("--model-repository", type=Path, help="Model folder (BERTSERVE_MODEL_REPOSITORY, default models).")
    p.add_argument("--workers", type=int, help="Workers the server runs with: the layout is part of the key "
                   "(BERTSERVE_WORKERS, default 1).")
    p.add_argument("--model", help="Only this model's versions (default: all).")
    p.add_argument("--remeasure", action="store_true", help="Measure the engines again, loading each version as the "
                   "server would (no server needed), and record the new choice.")
    p.set_defaults(func=engines)

    p = commands.add_parser("audit", help="Work with the audit log (BERTSERVE_AUDIT_LOG).")
    verbs = p.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("verify", help="Check the hash chains of audit files (each worker's, with its rotated "
                         "ones); exit 1 naming the first broken record.")
    p.add_argument("files", nargs="+", type=Path, help="Audit files, e.g. audit.jsonl.* (any order).")
    p.set_defaults(func=audit_verify)

    from app.lifecycle.commands import add_commands  # argument definitions only; torch loads when a command runs

    add_commands(commands)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
