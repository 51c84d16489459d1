"""Google clients, built lazily and once per process (thread-safe).

A cold start imports only what the function needs: the storage client for the ledger, the
publisher only where completions are published, the authorized HTTP session only for backends.
Tests and the local stack point them at emulators through the standard environment variables
(``STORAGE_EMULATOR_HOST``, ``PUBSUB_EMULATOR_HOST``) and the backend endpoint overrides.

``PIPELINES_ANONYMOUS_AUTH=true`` makes the HTTP session send no Google credentials; it is refused
unless every backend endpoint override points at loopback (it exists for the local emulators only).
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import urlparse

ENDPOINT_ENVS = (
    "DATAFLOW_API_ENDPOINT",
    "DATAFUSION_API_ENDPOINT",
    "FABRIC_API_ENDPOINT",
    "FABRIC_TOKEN_ENDPOINT",
)
_lock = threading.Lock()
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
    host = urlparse(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def anonymous_auth() -> bool:
    if os.environ.get("PIPELINES_ANONYMOUS_AUTH", "").lower() not in ("1", "true", "yes"):
        return False
    overrides = [os.environ[e] for e in ENDPOINT_ENVS if os.environ.get(e)]
    if not overrides or not all(is_loopback(u) for u in overrides):
        raise RuntimeError("PIPELINES_ANONYMOUS_AUTH is only allowed when every backend endpoint is loopback")
    return True


def google_session() -> Any:
    """An ``AuthorizedSession`` with default credentials (cloud-platform scope)."""

    def build() -> Any:
        import google.auth
        from google.auth.transport.requests import AuthorizedSession

        if anonymous_auth():
            from google.auth.credentials import AnonymousCredentials

            return AuthorizedSession(AnonymousCredentials())
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        return AuthorizedSession(credentials)

    return _once("google_session", build)


def storage_client() -> Any:
    def build() -> Any:
        from google.cloud import storage

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            return storage.Client(
                project=os.environ.get("GOOGLE_CLOUD_PROJECT", "local-project"),
                credentials=AnonymousCredentials(),
            )
        return storage.Client()

    return _once("storage", build)


def publisher() -> Any:
    def build() -> Any:
        from google.cloud import pubsub_v1

        return pubsub_v1.PublisherClient()

    return _once("publisher", build)
