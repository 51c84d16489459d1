"""Where a delegated refresh token outlives the process: a Secret Manager secret, one version per rotation.

Entra rotates a delegated user's refresh token on each refresh-token grant (the scope asks for
``offline_access``). When ``<PREFIX>_REFRESH_TOKEN_SECRET`` names a secret
(``projects/P/secrets/S``), the token provider reads that secret's ``latest`` version once per
process (a cold start), instead of the env var mounted at deploy time, and adds each rotated token
as a new version, so the next cold start begins from the newest token::

    GET  {endpoint}/v1/{secret}/versions/latest:access   -> payload.data (base64)
    POST {endpoint}/v1/{secret}:addVersion               {"payload": {"data", "dataCrc32c"}}

``SECRET_MANAGER_ENDPOINT`` overrides ``https://secretmanager.googleapis.com`` (the local stand-in,
:mod:`local.emulators.secretmanager`). The token's value never reaches a log line, an error
message, the ledger or an event: only the secret's name and the version number do. The runtime
account needs ``roles/secretmanager.secretAccessor`` and ``roles/secretmanager.secretVersionAdder``
on that secret.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping
from typing import Any

from handlers.core import http
from handlers.core.errors import ConfigError

DEFAULT_ENDPOINT = "https://secretmanager.googleapis.com"
ENDPOINT_ENV = "SECRET_MANAGER_ENDPOINT"
SECRET_SUFFIX = "_REFRESH_TOKEN_SECRET"
_NAME_RE = re.compile(r"^projects/[^/]+/secrets/[A-Za-z0-9_-]{1,255}$")


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli): Secret Manager checks ``dataCrc32c`` against it."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def secret_name(env: Mapping[str, str], prefix: str) -> str | None:
    """The secret ``<PREFIX>_REFRESH_TOKEN_SECRET`` names, checked; None when unset."""
    name = (env.get(prefix + SECRET_SUFFIX) or "").strip()
    if not name:
        return None
    if not _NAME_RE.match(name):
        raise ConfigError(
            [f"{prefix}{SECRET_SUFFIX}: must be a secret name like projects/P/secrets/S"],
            source="fabric credentials",
        )
    return name


class SecretStore:
    """Reads a secret's latest version and adds versions (an authorized Google session, built lazily)."""

    def __init__(self, session: Any = None, endpoint: str | None = None, timeout: Any = None) -> None:
        self._session = session
        self.endpoint = (endpoint or os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")
        self.timeout = timeout or http.default_timeout()

    @property
    def session(self) -> Any:
        if self._session is None:
            from handlers.core import clients  # the Google session: only when a secret is kept

            self._session = clients.google_session()
        return self._session

    def _request(self, method: str, url: str, what: str, **kwargs: Any) -> Any:
        return http.send_json(self.session, method, url, what=what, timeout=self.timeout, **kwargs)

    def latest(self, name: str) -> str:
        """The text of ``name``'s latest version."""
        body = self._request(
            "GET", f"{self.endpoint}/v1/{name}/versions/latest:access", f"secret {name} latest"
        )
        data = (body.get("payload") or {}).get("data") or ""
        return base64.b64decode(data).decode("utf-8").strip()

    def add(self, name: str, value: str) -> str:
        """Add ``value`` as a new version of ``name``; returns the version's name (no value in it)."""
        data = value.encode("utf-8")
        body = {"payload": {"data": base64.b64encode(data).decode("ascii"), "dataCrc32c": str(crc32c(data))}}
        answer = self._request(
            "POST", f"{self.endpoint}/v1/{name}:addVersion", f"secret {name} addVersion", json=body
        )
        return str(answer.get("name") or "")
