"""One place that turns HTTP answers into the project's error tree.

- connection errors, timeouts, 408, 429 and 5xx -> :class:`BackendUnavailable` (retryable), with the
  ``Retry-After`` header (seconds or an HTTP date) when the server sent one;
- 409 whose status is ``ALREADY_EXISTS`` -> :class:`AlreadyExists`;
- 404 -> :class:`NotFound`;  other 4xx -> :class:`BackendRejected` (permanent).

Error bodies are read as Google JSON (``{"error": {"code", "message", "status"}}``), Fabric JSON
(``{"errorCode", "message"}``) or plain text (CDAP), without ever branching on message text.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import os
from collections.abc import Mapping
from typing import Any

from handlers.core.errors import AlreadyExists, BackendRejected, BackendUnavailable, NotFound, PipelineError

DEFAULT_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds
TIMEOUT_ENV = "PIPELINES_HTTP_TIMEOUT"


def default_timeout() -> tuple[float, float]:
    """(connect, read) seconds for every backend, token and ledger call.

    ``PIPELINES_HTTP_TIMEOUT`` overrides the default: ``"30"`` (both) or ``"5,30"`` (connect, read).
    A timed-out call is retryable: a slow answer never holds a function past its own deadline.
    """
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        parts = [float(x) for x in raw.split(",")]
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected seconds, or 'connect,read' seconds") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected one or two positive numbers")
    return parts[0], parts[1]


RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The ``Retry-After`` header as seconds (it may be a number or an HTTP date)."""
    if not headers:
        return None
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def error_details(response: Any) -> tuple[str, str | None]:
    """(message, machine-readable reason) from any of the error body styles."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping):
            return str(err.get("message") or response.reason), err.get("status")
        if "errorCode" in body:
            return str(body.get("message") or response.reason), str(body["errorCode"])
        if "message" in body:
            return str(body["message"]), None
    text = (getattr(response, "text", "") or "").strip()
    return (text[:500] or str(getattr(response, "reason", "")) or f"HTTP {response.status_code}"), None


def raise_for_status(response: Any, *, what: str, **ctx: Any) -> None:
    """Raise the matching project error for a non-2xx ``requests`` response."""
    code = response.status_code
    if code < 400:
        return
    message, reason = error_details(response)
    text = f"{what}: HTTP {code}" + (f" {reason}" if reason else "") + f": {message}"
    if code in RETRYABLE_STATUS:
        raise BackendUnavailable(text, status=code, retry_after=retry_after_seconds(response.headers), **ctx)
    if code == 409 and reason == "ALREADY_EXISTS":
        raise AlreadyExists(text, status=code, reason=reason, **ctx)
    if code == 404:
        raise NotFound(text, **ctx)
    raise BackendRejected(text, status=code, reason=reason, **ctx)


def send(
    session: Any,
    method: str,
    url: str,
    *,
    what: str,
    timeout: Any = None,
    ctx: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Send one request; network failures become :class:`BackendUnavailable`, HTTP errors as above."""
    import requests

    context = dict(ctx or {})
    try:
        response = session.request(method, url, timeout=timeout or default_timeout(), **kwargs)
    except requests.Timeout as exc:
        raise BackendUnavailable(f"{what}: timed out ({exc.__class__.__name__})", **context) from exc
    except requests.ConnectionError as exc:
        raise BackendUnavailable(f"{what}: connection failed ({exc.__class__.__name__})", **context) from exc
    except PipelineError:
        raise
    except Exception as exc:
        from google.auth import exceptions as auth_errors  # loaded already by any Google session

        if isinstance(exc, auth_errors.RefreshError | auth_errors.TransportError):
            raise BackendUnavailable(f"{what}: credentials: {exc}", **context) from exc
        raise
    raise_for_status(response, what=what, **context)
    return response


def send_json(session: Any, method: str, url: str, *, what: str, **kwargs: Any) -> Any:
    """:func:`send` and decode the JSON body (``{}`` when empty)."""
    response = send(session, method, url, what=what, **kwargs)
    if not response.content:
        return {}
    try:
        return response.json()
    except ValueError as exc:
        raise BackendUnavailable(f"{what}: answer is not JSON") from exc
