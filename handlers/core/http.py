"""One place that turns HTTP answers into the project's error tree.

- connection errors, timeouts, 408, 429 and 5xx -> :class:`BackendUnavailable` (retryable), with the
  ``Retry-After`` header (seconds or an HTTP date) when the server sent one;
- 409 whose status is ``ALREADY_EXISTS`` -> :class:`AlreadyExists`;
- 404 -> :class:`NotFound`;  other 4xx -> :class:`BackendRejected` (permanent);
- 3xx -> :class:`BackendRejected` (permanent): redirects are never followed, so a token is never
  carried to another host and no request leaves for an address nobody configured;
- a 2xx answer that is not what was asked for (not JSON, the wrong shape) -> :class:`BackendUnavailable`
  (retryable, within the event's maximum age: a proxy's hiccup is the usual cause);
- an answer body over :data:`MAX_BODY_BYTES`, or one still arriving after the read timeout ->
  :class:`BackendUnavailable`; what is read is capped, never the whole of a hostile answer.

Every bearer token sent is remembered by :mod:`handlers.core.logs`, so an upstream that echoes it
back (in an error text, a JSON field, URL-encoded...) never gets it into a log, record or event.

Error bodies are read as Google JSON (``{"error": {"code", "message", "status"}}``), Fabric JSON
(``{"errorCode", "message"}``) or plain text (CDAP), without ever branching on message text.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import os
import time
from collections.abc import Mapping
from typing import Any

from handlers.core import logs
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
MAX_BODY_BYTES = 8 * 1024 * 1024  # the most of one answer read: Google's and Fabric's are kilobytes
MAX_MESSAGE_CHARS = 500  # the most of an error text kept in a message


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
    reason_phrase = str(getattr(response, "reason", "") or "")
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping):
            status = err.get("status")
            return _short(err.get("message") or reason_phrase), status if isinstance(status, str) else None
        if "errorCode" in body:
            return _short(body.get("message") or reason_phrase), _short(body["errorCode"])
        if "message" in body:
            return _short(body["message"]), None
    text = (getattr(response, "text", "") or "").strip()
    if text[:1] == "<":  # an HTML error page (a proxy, a load balancer, a login page): not worth keeping
        text = "an HTML page" + (f" ({reason_phrase})" if reason_phrase else "")
    return (_short(text) or reason_phrase or f"HTTP {response.status_code}"), None


def _short(value: Any) -> str:
    """``value`` as text of at most :data:`MAX_MESSAGE_CHARS` (upstream texts have no size limit)."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "..."


def raise_for_status(response: Any, *, what: str, **ctx: Any) -> None:
    """Raise the matching project error for a non-2xx ``requests`` response."""
    code = response.status_code
    if 300 <= code < 400:
        raise BackendRejected(
            f"{what}: HTTP {code}: redirected elsewhere; redirects are not followed (check the endpoint)",
            status=code,
            **ctx,
        )
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


def exchange(
    session: Any,
    method: str,
    url: str,
    *,
    what: str,
    timeout: Any = None,
    ctx: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Send one request and read its answer (no redirect followed, the body read capped, the bearer
    token remembered); network failures become :class:`BackendUnavailable`. The status is the
    caller's to judge: :func:`send` maps it with :func:`raise_for_status`, Fabric and Entra with
    their own error bodies."""
    import requests

    context = dict(ctx or {})
    timeout = timeout or default_timeout()
    kwargs.setdefault("allow_redirects", False)
    try:
        response = session.request(method, url, timeout=timeout, stream=True, **kwargs)
        _remember_token(response)
        read_capped(response, what=what, timeout=timeout, ctx=context)
    except requests.Timeout as exc:
        raise BackendUnavailable(f"{what}: timed out ({exc.__class__.__name__})", **context) from exc
    except requests.RequestException as exc:  # refused, reset, broken mid-body, unreadable
        raise BackendUnavailable(f"{what}: connection failed ({exc.__class__.__name__})", **context) from exc
    except PipelineError:
        raise
    except Exception as exc:
        from google.auth import exceptions as auth_errors  # loaded already by any Google session

        if isinstance(exc, auth_errors.RefreshError | auth_errors.TransportError):
            raise BackendUnavailable(f"{what}: credentials: {exc}", **context) from exc
        raise
    return response


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
    """Send one request (:func:`exchange`); HTTP errors as above."""
    response = exchange(session, method, url, what=what, timeout=timeout, ctx=ctx, **kwargs)
    raise_for_status(response, what=what, **dict(ctx or {}))
    return response


def _remember_token(response: Any) -> None:
    """Remember the bearer token this request carried, so that no echo of it is ever written."""
    request = getattr(response, "request", None)
    value = request.headers.get("Authorization") if request is not None else None
    if isinstance(value, str) and " " in value:
        logs.remember_secret(value.split(None, 1)[1].strip())


def read_capped(response: Any, *, what: str, timeout: Any, ctx: Mapping[str, Any] | None = None) -> bytes:
    """Read a streamed answer's body, at most :data:`MAX_BODY_BYTES` and for at most the read timeout
    in all (a server that trickles bytes never holds the caller): too big or too slow is
    :class:`BackendUnavailable`. The body is then the response's ``content`` as usual."""
    import urllib3  # requests' own transport, loaded with it

    read_seconds = float(timeout[1] if isinstance(timeout, tuple | list) else timeout)
    deadline = time.monotonic() + read_seconds
    raw = getattr(response, "raw", None)
    read1 = getattr(raw, "read1", None)  # what has arrived, at once: a trickle cannot hold a read
    if read1 is None and not hasattr(response, "iter_content"):
        return bytes(getattr(response, "content", b"") or b"")  # an answer already read in full
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            if read1 is not None:
                chunk = read1(64 * 1024, decode_content=True)
            else:
                chunk = next(response.iter_content(64 * 1024), b"")
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise BackendUnavailable(
                    f"{what}: HTTP {response.status_code}: the answer is larger than {MAX_BODY_BYTES} bytes"
                    " (not read further)",
                    **dict(ctx or {}),
                )
            if time.monotonic() > deadline:
                raise BackendUnavailable(
                    f"{what}: HTTP {response.status_code}: the answer was still arriving after"
                    f" {read_seconds:g} s (not read further)",
                    **dict(ctx or {}),
                )
            chunks.append(chunk)
    except urllib3.exceptions.HTTPError as exc:  # a read timed out, the connection broke mid-body
        response.close()
        raise BackendUnavailable(
            f"{what}: HTTP {response.status_code}: the answer broke off ({exc.__class__.__name__})",
            **dict(ctx or {}),
        ) from None
    except BaseException:
        if hasattr(response, "close"):
            response.close()
        raise
    body = b"".join(chunks)
    response._content = body  # requests' own attribute for a body already read
    response._content_consumed = True
    return body


def send_json(session: Any, method: str, url: str, *, what: str, **kwargs: Any) -> Any:
    """:func:`send` and decode the JSON body (``{}`` when empty)."""
    response = send(session, method, url, what=what, **kwargs)
    if not response.content:
        return {}
    try:
        return response.json()
    except ValueError as exc:
        raise BackendUnavailable(f"{what}: answer is not JSON") from exc
