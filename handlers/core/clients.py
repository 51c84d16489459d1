"""Google clients, built lazily and once per process (thread-safe).

A cold start imports only what the function needs: one authorized HTTP session (``requests`` +
google-auth) shared by the ledger (Cloud Storage JSON API), the publisher (Pub/Sub REST) and the
backends; no Google client library with its gRPC/protobuf stack.
Tests and the local stack point them at emulators through the standard environment variables
(``STORAGE_EMULATOR_HOST``, ``PUBSUB_EMULATOR_HOST``) and the backend endpoint overrides.

``PIPELINES_ANONYMOUS_AUTH=true`` makes the HTTP session send no Google credentials, and only to
loopback addresses: a request to any other host is refused before it is sent (it exists for the
local emulators only).
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import urlparse

from handlers.core import http
from handlers.core.errors import BackendUnavailable, PermanentError

_lock = threading.RLock()  # re-entrant: one client may be built from another (publisher -> session)
_cache: dict[str, Any] = {}


def _once(key: str, build: Any) -> Any:
    value = _cache.get(key)
    if value is None:
        with _lock:
            value = _cache.get(key)
            if value is None:
                value = build()
                _cache[key] = value
    return value


def reset() -> None:
    """Forget every client (tests switching emulators)."""
    with _lock:
        _cache.clear()


def is_loopback(url: str) -> bool:
    """Whether ``url`` names this machine: ``localhost`` or a loopback address (127.0.0.0/8, ::1),
    decided by the address itself, never by a name that merely starts like one."""
    import ipaddress

    host = (urlparse(url).hostname or "").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def anonymous_auth() -> bool:
    """``PIPELINES_ANONYMOUS_AUTH=true``: send no Google credentials (the local emulators only)."""
    return os.environ.get("PIPELINES_ANONYMOUS_AUTH", "").lower() in ("1", "true", "yes")


class LoopbackOnly(PermanentError):
    """An unauthenticated session was asked to reach a host that is not this machine (permanent: a
    deployment that sets ``PIPELINES_ANONYMOUS_AUTH`` is misconfigured, and no retry cures it)."""


def _loopback_only(session: Any) -> Any:
    """A session that refuses, before sending, any request whose host is not loopback: anonymous
    auth exists for the local emulators and can never reach a real service."""
    send = session.send

    def checked(request: Any, **kwargs: Any) -> Any:
        if not is_loopback(request.url):
            raise LoopbackOnly(
                f"PIPELINES_ANONYMOUS_AUTH is set: refusing to send a request to {urlparse(request.url).hostname}"
            )
        return send(request, **kwargs)

    session.send = checked
    return session


POOL_SIZE = 64  # connections kept per host: the sweep's concurrent checks (tracking.SWEEP_WORKERS)


def _pooled(session: Any) -> Any:
    """Keep as many connections per host as threads use them (requests keeps 10: the rest would be
    opened and thrown away on every call under a concurrent sweep)."""
    from requests.adapters import HTTPAdapter

    for prefix in ("https://", "http://"):
        session.mount(prefix, HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE))
    return session


def google_session() -> Any:
    """An ``AuthorizedSession`` with default credentials (cloud-platform scope)."""

    def build() -> Any:
        import google.auth
        from google.auth.transport.requests import AuthorizedSession

        if anonymous_auth():
            from google.auth.credentials import AnonymousCredentials

            return _loopback_only(_pooled(AuthorizedSession(AnonymousCredentials())))
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        return _pooled(AuthorizedSession(credentials, auth_request=token_request()))

    return _once("google_session", build)


def token_request() -> Any:
    """The transport google-auth fetches tokens through (the metadata server): it follows no
    redirect, so a token source that redirects fails the refresh (retryable) instead of sending the
    request to wherever it points."""
    import requests
    from google.auth.transport.requests import Request

    session = requests.Session()
    session.max_redirects = 0
    return Request(session)


def plain_session() -> Any:
    """A pooled ``requests`` session without credentials (the local emulators)."""

    def build() -> Any:
        import requests

        return _pooled(requests.Session())

    return _once("plain_session", build)


class _Published:
    """The answer of :meth:`RestPublisher.publish`, shaped like the gRPC client's future."""

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id

    def result(self, timeout: float | None = None) -> str:
        return self.message_id


class RestPublisher:
    """Pub/Sub ``topics.publish`` over REST, through the process's authorized HTTP session.

    The functions publish one small message per finished run. google-cloud-pubsub's gRPC client would
    add about 150 ms and 10 MB to every cold start that publishes (grpc, protobuf, its batching
    threads) for no benefit at this volume; ``bench`` measures the difference. ``PUBSUB_EMULATOR_HOST``
    points it at the emulator (plain HTTP, no credentials), as it does the gRPC client.
    """

    def __init__(self, session: Any, endpoint: str) -> None:
        self.session = session
        self.endpoint = endpoint.rstrip("/")

    def publish(self, topic: str, data: bytes, **attributes: str) -> _Published:
        import base64

        body = {"messages": [{"data": base64.b64encode(data).decode(), "attributes": attributes}]}
        answer = http.send_json(
            self.session,
            "POST",
            f"{self.endpoint}/v1/{topic}:publish",
            what="pubsub topics.publish",
            json=body,
        )
        ids = answer.get("messageIds") or []
        if not ids:
            raise BackendUnavailable("pubsub topics.publish: no message id in the answer")
        return _Published(str(ids[0]))


def publisher() -> Any:
    def build() -> Any:
        emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
        if emulator:
            return RestPublisher(plain_session(), f"http://{emulator}")
        return RestPublisher(google_session(), "https://pubsub.googleapis.com")

    return _once("publisher", build)
