"""app.logs: every record of the process, the libraries' too, comes out through the service's formatter, one line
each, escaped and capped (a library's message may quote a client's text)."""

from __future__ import annotations

import json
import logging
import logging.config
import warnings

import pytest

from app.logs import MAX_EXCEPTION_CHARS, MAX_MESSAGE_CHARS, log_config

LIBRARIES = ("opentelemetry.trace.span", "grpc._cython.cygrpc", "onnxruntime", "uvicorn.error", "bertserve.api")


@pytest.fixture
def configure(capsys):
    """configure(fmt) -> a function returning the lines written to standard error since; the logging set-up is
    put back after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def configure(fmt: str):
        logging.config.dictConfig(log_config("info", fmt))
        capsys.readouterr()
        return lambda: capsys.readouterr().err.splitlines()

    yield configure
    logging.captureWarnings(False)
    root.handlers[:], root.level = saved[0], saved[1]


def test_a_librarys_records_come_out_as_the_services_json_one_line_each_and_capped(configure):
    lines = configure("json")
    forged = "Member doesn't match: FORGED\n{\"level\": \"critical\"} " + "x" * 30_000
    for name in LIBRARIES:
        logging.getLogger(name).warning("%s", forged)
    with warnings.catch_warnings():
        # As the handler set it up (pytest's own catch_warnings undid it). Off first: an earlier test's app left it
        # on, and turning it on again is then a no-op that keeps pytest's hook
        logging.captureWarnings(False)
        logging.captureWarnings(True)
        warnings.simplefilter("always")
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
    out = lines()
    entries = [json.loads(line) for line in out]
    assert [e["logger"] for e in entries] == [*LIBRARIES, "py.warnings"]
    assert all(e["level"] == "warning" for e in entries) and "a library's warning" in entries[-1]["message"]
    for entry in entries[:-1]:
        assert entry["message"].startswith(forged[:40]) and entry["message"].endswith("characters cut]")
        assert len(entry["message"]) < MAX_MESSAGE_CHARS + 40
    assert all(len(line) < MAX_MESSAGE_CHARS + 500 for line in out)


def test_the_text_format_writes_one_escaped_line_per_record_a_traceback_included(configure):
    lines = configure("text")
    logging.getLogger("opentelemetry.trace.span").warning("quoted: %s", "a\nFORGED level=critical\x1b[2J")
    try:
        raise ValueError("boom\n" + "y" * 20_000)
    except ValueError:
        logging.getLogger("grpc._server").exception("a library's failure")
    first, second = lines()
    assert " WARNING " in first and " opentelemetry.trace.span -: quoted" in first
    assert first.endswith(r"quoted: a\nFORGED level=critical\x1b[2J")
    assert " ERROR " in second and r"a library's failure\nTraceback" in second and "ValueError" in second
    assert len(second) < MAX_MESSAGE_CHARS + MAX_EXCEPTION_CHARS
