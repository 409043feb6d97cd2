"""Logging: one JSON object per line (or plain text), each carrying the request ID of the request being served
(a line outside any request has none: no field in JSON, `-` in text). Every line of the process goes through one
handler and formatter, the libraries' (opentelemetry, grpc, uvicorn, onnxruntime, warnings.warn) too: one record
is one line, control characters escaped, its message and exception capped in length."""

from __future__ import annotations

import contextvars
import logging
import os
import re
import sys
import traceback
from typing import Any

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def exception_summary(exc: BaseException) -> str:
    """An exception for the log without its message: the type and where it was raised (the innermost frames).
    Messages of exceptions raised while handling a request may quote the client's text, which never goes into
    the logs; the place in the code is what an operator needs to find the fault."""
    frames = traceback.extract_tb(exc.__traceback__)[-4:]
    where = " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{type(exc).__module__}.{type(exc).__qualname__} at {where or '?'}"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.get()
        if rid is not None:  # else left unset: the text format's default says `-`, JSON leaves the field out
            record.request_id = rid
        return True


# A library's message may quote whatever it was handed (a client's header, a file's text): bounded, so one
# record cannot write kilobytes. A traceback keeps more, and both ends: its outer frames and its innermost one.
MAX_MESSAGE_CHARS, MAX_EXCEPTION_CHARS = 2000, 8000
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _capped(text: str, limit: int, both_ends: bool = False) -> str:
    if len(text) <= limit:
        return text
    cut = f"[{len(text) - limit} characters cut]"
    head = limit // 2 if both_ends else limit
    return f"{text[:head]}{cut}{text[len(text) - (limit - head):]}"


def _escaped(text: str) -> str:
    """Control characters as Python escapes (a newline as `\\n`): a message cannot start a forged line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": _capped(record.getMessage(), MAX_MESSAGE_CHARS),  # orjson escapes what JSON must
        }
        if getattr(record, "request_id", None):
            entry["request_id"] = record.request_id
        if getattr(record, "trace_id", None):  # the access-log line of a traced request (app.tracing)
            entry["trace_id"] = record.trace_id
        if record.exc_info:
            entry["exception"] = _capped(self.formatException(record.exc_info), MAX_EXCEPTION_CHARS, both_ends=True)
        return orjson.dumps(entry).decode()


class TextFormatter(logging.Formatter):
    """The plain-text line: as logging.Formatter's, on one line (escaped) and capped like the JSON one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(process)d] %(name)s %(request_id)s: %(message)s",
                         defaults={"request_id": "-"})

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _capped(record.message, MAX_MESSAGE_CHARS)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _capped(super().formatException(ei), MAX_EXCEPTION_CHARS, both_ends=True)

    def formatStack(self, stack_info: str) -> str:
        return _capped(stack_info, MAX_EXCEPTION_CHARS, both_ends=True)

    def format(self, record: logging.LogRecord) -> str:
        return _escaped(super().format(record))  # the newlines before a traceback too: one record, one line


def _handler() -> logging.Handler:
    """The one handler: standard error. Python's warnings (warnings.warn) are routed through it too, as the
    `py.warnings` logger's records; they would otherwise be written raw."""
    logging.captureWarnings(True)
    return logging.StreamHandler(sys.stderr)


JsonFormatter.converter = __import__("time").gmtime


def log_config(level: str, fmt: str) -> dict[str, Any]:
    """A logging dictConfig (app.main's, and uvicorn's log_config) for the whole process, so every line has the
    same shape: the root logger's handler takes the libraries' records, ours and uvicorn's go to the same one."""
    handler = {"()": _handler, "formatter": "default", "filters": ["request_id"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": _RequestIdFilter}},
        "formatters": {"default": {"()": JsonFormatter if fmt == "json" else TextFormatter}},
        "handlers": {"default": handler},
        # The libraries' records from warning up (their info and debug lines are chatter), or from `level` if higher
        "root": {"handlers": ["default"], "level": max(logging.WARNING, logging.getLevelName(level.upper()))},
        "loggers": {
            "bertserve": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }
