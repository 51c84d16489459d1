"""Structured JSON logs that Cloud Logging understands.

One JSON object per line on stdout with ``severity``, ``message``, ``time`` and
``logging.googleapis.com/labels`` (event id, run key, trigger, pipeline, job id), so a run can be
followed across invocations with one label filter. Context is bound per thread with
:func:`bind` (functions-framework serves requests on many threads).

Secrets never reach a log line: values whose key looks like a secret are masked, and so is any
text that carries a known secret (:func:`remember_secret`: the bearer tokens this process sends, the
credentials it reads) in any of the forms an upstream may echo it back in: raw, truncated to a
prefix, suffix or any run of 8 characters or more, URL-encoded, base64, JSON-escaped
(:func:`scrub`). Bearer headers and JWTs are masked whoever they belong to. The same scrub guards
every place upstream text is kept (error messages, run records, completion events, API answers).
Writing never fails on text from outside: what the stream cannot encode is written as JSON escapes.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

LABEL_KEYS = ("event_id", "run_key", "trigger", "pipeline", "job_id", "backend")
_SECRET_HINTS = ("secret", "token", "password", "authorization", "credential", "api_key")

MASK = "***"
FRAGMENT = 8  # the shortest run of a secret's characters that is masked wherever it appears
MAX_SECRETS = 64  # the most recent secrets remembered (tokens rotate: old ones drop out)
# Masked whoever they belong to: an Authorization value, a JSON Web Token (three base64url parts), a
# Google access token. No part can make a failed match rescan a long run (linear in the text).
_GENERIC = re.compile(
    r"(?i)(\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}"
    r"|\beyJ[A-Za-z0-9_]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"
    r"|\bya29\.[A-Za-z0-9._-]{8,}"
)

_secrets: OrderedDict[str, None] = OrderedDict()
_grams: frozenset[str] = frozenset()
_secrets_lock = threading.Lock()

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


def _forms(secret: str) -> set[str]:
    """The ways an upstream may echo ``secret`` back: raw, URL-encoded, base64 (standard and URL-safe,
    padded or not), JSON-escaped."""
    raw = secret.encode("utf-8", "surrogatepass")
    b64 = base64.b64encode(raw).decode("ascii")
    url64 = base64.urlsafe_b64encode(raw).decode("ascii")
    return {
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        b64,
        b64.rstrip("="),
        url64,
        json.dumps(secret)[1:-1],
    }


def remember_secret(secret: str | None) -> None:
    """From now on, mask ``secret`` (and its forms, and any 8-character run of them) everywhere.
    Values shorter than 8 characters are too short to find safely and are ignored."""
    global _grams
    if not isinstance(secret, str) or len(secret) < FRAGMENT:
        return
    with _secrets_lock:
        if secret in _secrets:
            _secrets.move_to_end(secret)
            return
        _secrets[secret] = None
        while len(_secrets) > MAX_SECRETS:
            _secrets.popitem(last=False)
        grams: set[str] = set()
        for known in _secrets:
            for form in _forms(known):
                grams.update(form[i : i + FRAGMENT] for i in range(len(form) - FRAGMENT + 1))
        _grams = frozenset(grams)


def forget_secrets() -> None:
    """Forget every remembered secret (tests)."""
    global _grams
    with _secrets_lock:
        _secrets.clear()
        _grams = frozenset()


def scrub(text: str) -> str:
    """``text`` with every known secret fragment (see :func:`remember_secret`) and every bearer
    value or JWT replaced by ``***``. Linear in the text."""
    if not isinstance(text, str) or len(text) < FRAGMENT:
        return text
    grams = _grams
    if grams:
        spans: list[list[int]] = []
        for i in range(len(text) - FRAGMENT + 1):
            if text[i : i + FRAGMENT] in grams:
                if spans and i <= spans[-1][1]:
                    spans[-1][1] = i + FRAGMENT
                else:
                    spans.append([i, i + FRAGMENT])
        if spans:
            out, last = [], 0
            for start, end in spans:
                out.append(text[last:start])
                out.append(MASK)
                last = end
            out.append(text[last:])
            text = "".join(out)
    return _GENERIC.sub(lambda m: (m.group(1) or "") + MASK, text)


def scrub_tree(value: Any) -> Any:
    """:func:`scrub` every string (keys included) in a JSON-like value."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub_tree(k): scrub_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_tree(v) for v in value]
    return value


def redact(value: Any, key: str = "") -> Any:
    """Mask values stored under secret-looking keys, recursively, and scrub every string."""
    if key and any(h in key.lower() for h in _SECRET_HINTS):
        return MASK
    if isinstance(value, dict):
        return {scrub_tree(k): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return scrub(value)
    if value is not None and not isinstance(value, int | float | bool):
        return scrub(str(value))  # an exception or any object: its text is what would be written
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
        "message": scrub(message),
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
