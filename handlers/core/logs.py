"""Structured JSON logs that Cloud Logging understands.

One JSON object per line on stdout with ``severity``, ``message``, ``time`` and
``logging.googleapis.com/labels`` (event id, run key, trigger, pipeline, job id), so a run can be
followed across invocations with one label filter. Context is bound per thread with
:func:`bind` (functions-framework serves requests on many threads).

Secrets never reach a log line: values whose key looks like a secret are masked. Writing never
fails on text from outside: what the stream cannot encode is written as JSON escapes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

LABEL_KEYS = ("event_id", "run_key", "trigger", "pipeline", "job_id", "backend")
_SECRET_HINTS = ("secret", "token", "password", "authorization", "credential", "api_key")

_local = threading.local()
_write_lock = threading.Lock()
_stream: TextIO | None = None


def set_stream(stream: TextIO | None) -> None:
    """Send log lines to ``stream`` (default: stdout at write time)."""
    global _stream
    _stream = stream


def _context() -> dict[str, Any]:
    ctx: dict[str, Any] | None = getattr(_local, "ctx", None)
    if ctx is None:
        ctx = {}
        _local.ctx = ctx
    return ctx


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every log line written by this thread inside the block."""
    ctx = _context()
    saved = dict(ctx)
    ctx.update({k: v for k, v in fields.items() if v is not None})
    try:
        yield
    finally:
        ctx.clear()
        ctx.update(saved)


def redact(value: Any, key: str = "") -> Any:
    """Mask values stored under secret-looking keys, recursively."""
    if key and any(h in key.lower() for h in _SECRET_HINTS):
        return "***"
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def log(severity: str, message: str, /, **fields: Any) -> None:
    """Write one structured log line (a ``message`` field, e.g. from an error context, is kept as
    ``error_message``)."""
    if "message" in fields:
        fields["error_message"] = fields.pop("message")
    ctx = _context()
    merged = {**ctx, **{k: v for k, v in fields.items() if v is not None}}
    labels = {k: str(merged[k]) for k in LABEL_KEYS if k in merged}
    entry = {
        "severity": severity,
        "message": message,
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        **redact(merged),
    }
    if labels:
        entry["logging.googleapis.com/labels"] = labels
    line = json.dumps(entry, default=str, ensure_ascii=False)
    with _write_lock:
        stream = _stream or sys.stdout
        try:
            stream.write(line + "\n")
        except UnicodeEncodeError:
            # Text no encoding can carry (a lone surrogate from a hostile event) or a stream that is
            # not UTF-8: the same object with every non-ASCII character escaped, still one JSON line.
            stream.write(json.dumps(entry, default=str, ensure_ascii=True) + "\n")
        stream.flush()


def debug(message: str, /, **fields: Any) -> None:
    log("DEBUG", message, **fields)


def info(message: str, /, **fields: Any) -> None:
    log("INFO", message, **fields)


def warning(message: str, /, **fields: Any) -> None:
    log("WARNING", message, **fields)


def error(message: str, /, **fields: Any) -> None:
    log("ERROR", message, **fields)
