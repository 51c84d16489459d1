"""Microsoft Entra ID access tokens for the Fabric REST API (OAuth 2.0 token endpoint, v2.0).

A :class:`TokenProvider` (one per Fabric backend, so one per process) hands out bearer tokens for
the scope ``https://api.fabric.microsoft.com/.default`` in two modes::

    delegated          grant_type=refresh_token       a user's refresh token (+ optional client secret)
    service_principal  grant_type=client_credentials  an app registration's client id + secret

Both POST a form to ``{endpoint}/{tenant}/oauth2/v2.0/token``; ``FABRIC_TOKEN_ENDPOINT`` overrides
``https://login.microsoftonline.com`` (the local emulator). Fabric's Dataflow Gen2 *execute* API does
not accept service principals, so dataflows need the delegated mode (see ``docs/backends/fabric.md``).

Secrets come from the environment only (Secret Manager values mounted as env vars), never from the
routing config. A prefix (default ``FABRIC``) lets several tenants or apps coexist::

    <PREFIX>_TENANT_ID   <PREFIX>_CLIENT_ID   <PREFIX>_CLIENT_SECRET   <PREFIX>_REFRESH_TOKEN

Tokens are cached per ``(prefix, mode)`` until ``expires_in`` minus a margin (the smaller of 5 minutes
and 10 % of the lifetime), refreshed by one thread at a time. A refresh token rotated by Entra is kept
in memory and used for the next refresh. Errors::

    a missing env var                         -> CredentialsError (a ConfigError: permanent), naming it
    Entra's {"error": ...} answer (400/401)   -> EntraRejected (permanent), reason = the error code
    429 / 5xx / timeouts / connection errors  -> BackendUnavailable (retryable)
    temporarily_unavailable / server_error    -> BackendUnavailable (retryable), whatever the status

The refresh-token grant asks for ``offline_access`` too, so Entra returns a rotated refresh token.

A rotated refresh token is also kept where the next cold start finds it when
``<PREFIX>_REFRESH_TOKEN_SECRET`` names a Secret Manager secret (:mod:`handlers.backends.fabric.secrets`):
read as ``latest`` once per process, added as a new version on each rotation.

No token, secret or refresh token ever reaches a log line or an error message.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from handlers.backends.fabric import secrets as fabric_secrets
from handlers.core import http, logs
from handlers.core.errors import BackendRejected, BackendUnavailable, ConfigError, PipelineError

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
ENDPOINT_ENV = "FABRIC_TOKEN_ENDPOINT"
FABRIC_SCOPE = "https://api.fabric.microsoft.com/.default"
# The refresh-token grant also asks for offline_access, without which Entra need not return a new
# refresh token, and delegated runs would stop once the stored one expires.
DELEGATED_SCOPE = f"{FABRIC_SCOPE} offline_access"
# Entra's error codes that say "try again later" whatever the HTTP status (AADSTS50196, 90033...).
RETRYABLE_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
DEFAULT_PREFIX = "FABRIC"
DELEGATED = "delegated"
SERVICE_PRINCIPAL = "service_principal"
MODES = (DELEGATED, SERVICE_PRINCIPAL)
MAX_MARGIN_SECONDS = 300.0
MARGIN_FRACTION = 0.1
DEFAULT_EXPIRES_IN = 3599.0  # Entra always sends expires_in; this only guards a malformed answer


class CredentialsError(ConfigError):
    """A credential env var is missing or empty. Permanent; ``field`` names the env var."""

    def __init__(self, env_var: str, why: str) -> None:
        super().__init__([f"{env_var}: {why}"], source="fabric credentials")
        self.env_var = env_var
        self.field = env_var


class EntraRejected(BackendRejected):
    """Entra refused the credentials (``invalid_client``, ``invalid_grant``...). Permanent."""


@dataclass(frozen=True)
class _Cached:
    token: str
    refresh_at: float


def env_names(prefix: str) -> dict[str, str]:
    """The env var names read for ``prefix`` (``tenant``, ``client_id``, ``client_secret``, ``refresh_token``)."""
    return {
        "tenant": f"{prefix}_TENANT_ID",
        "client_id": f"{prefix}_CLIENT_ID",
        "client_secret": f"{prefix}_CLIENT_SECRET",
        "refresh_token": f"{prefix}_REFRESH_TOKEN",
    }


def refresh_margin(lifetime: float) -> float:
    """How long before expiry a cached token is renewed: min(5 min, 10 % of its lifetime)."""
    return min(MAX_MARGIN_SECONDS, MARGIN_FRACTION * max(0.0, lifetime))


class TokenProvider:
    """Thread-safe, caching source of Fabric bearer tokens.

    ``env`` (default: ``os.environ``, read at each fetch) is where credentials and the endpoint
    override are looked up; tests pass an explicit mapping. ``clock`` returns epoch seconds.
    """

    def __init__(
        self,
        token_endpoint: str | None = None,
        session: Any = None,
        clock: Callable[[], float] = time.time,
        *,
        env: Mapping[str, str] | None = None,
        timeout: Any = None,
        secret_store: Any = None,
    ) -> None:
        self._env = env
        self._secret_store = secret_store
        self._loaded: set[str] = set()  # prefixes whose kept refresh token was read (once per process)
        self._endpoint = token_endpoint
        self._session = session
        self.clock = clock
        self.timeout = timeout or http.default_timeout()
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[str, str], threading.Lock] = {}
        self._cache: dict[tuple[str, str], _Cached] = {}
        self._rotated: dict[str, str] = {}  # prefix -> the refresh token Entra rotated to

    # -- public --------------------------------------------------------------------------------
    @property
    def env(self) -> Mapping[str, str]:
        return os.environ if self._env is None else self._env

    @property
    def endpoint(self) -> str:
        """The authority base URL: the explicit one, else ``FABRIC_TOKEN_ENDPOINT`` (read now), else Entra."""
        return (self._endpoint or self.env.get(ENDPOINT_ENV) or DEFAULT_AUTHORITY).rstrip("/")

    @property
    def session(self) -> Any:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    import requests

                    self._session = requests.Session()
        return self._session

    def token(self, credentials_prefix: str = DEFAULT_PREFIX, mode: str = DELEGATED) -> str:
        """A valid access token for ``credentials_prefix`` in ``mode`` (cached, refreshed when due)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        key = (credentials_prefix, mode)
        cached = self._cache.get(key)
        if cached is not None and self.clock() < cached.refresh_at:
            return cached.token
        with self._key_lock(key):  # one refresh at a time per credential; the others wait and reuse it
            cached = self._cache.get(key)
            if cached is not None and self.clock() < cached.refresh_at:
                return cached.token
            cached = self._fetch(credentials_prefix, mode)
            self._cache[key] = cached
            return cached.token

    def invalidate(
        self, credentials_prefix: str = DEFAULT_PREFIX, mode: str = DELEGATED, token: str | None = None
    ) -> None:
        """Forget the cached token (when ``token`` is given: only if it is still the cached one)."""
        key = (credentials_prefix, mode)
        with self._key_lock(key):
            cached = self._cache.get(key)
            if cached is not None and (token is None or cached.token == token):
                del self._cache[key]

    # -- internals -----------------------------------------------------------------------------
    def _key_lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._lock:
            lock = self._key_locks.get(key)
            if lock is None:
                lock = self._key_locks[key] = threading.Lock()
            return lock

    def _read(self, name: str, why: str) -> str:
        value = (self.env.get(name) or "").strip()
        if not value:
            raise CredentialsError(name, f"not set ({why})")
        return value

    def _form(self, prefix: str, mode: str) -> tuple[str, dict[str, str], list[str]]:
        """(tenant, form fields, secret values to keep out of messages)."""
        names = env_names(prefix)
        tenant = self._read(names["tenant"], "the Microsoft Entra tenant id of the Fabric tenant")
        client_id = self._read(names["client_id"], "the app registration's application (client) id")
        form = {"client_id": client_id, "scope": FABRIC_SCOPE}
        secrets: list[str] = []
        if mode == SERVICE_PRINCIPAL:
            secret = self._read(names["client_secret"], "the app registration's client secret")
            form.update(grant_type="client_credentials", client_secret=secret)
            secrets.append(secret)
        else:
            refresh = (
                self._rotated.get(prefix)
                or self._kept(prefix)
                or self._read(
                    names["refresh_token"], "a delegated user's refresh token, needed for Dataflow Gen2 runs"
                )
            )
            form.update(grant_type="refresh_token", refresh_token=refresh, scope=DELEGATED_SCOPE)
            secrets.append(refresh)
            secret = (self.env.get(names["client_secret"]) or "").strip()
            if secret:  # confidential clients must also authenticate on the refresh grant
                form["client_secret"] = secret
                secrets.append(secret)
        return tenant, form, secrets

    def _fetch(self, prefix: str, mode: str) -> _Cached:

        tenant, form, secrets = self._form(prefix, mode)
        for secret in secrets:
            logs.remember_secret(secret)  # masked wherever an echo of it would be written
        url = f"{self.endpoint}/{quote(tenant, safe='')}/oauth2/v2.0/token"
        what = f"entra token ({prefix}, {mode})"
        # no redirect followed (it would carry the secrets elsewhere); the body read is capped
        response = http.exchange(self.session, "POST", url, what=what, timeout=self.timeout, data=form)
        if 300 <= response.status_code < 400:
            raise BackendRejected(
                f"{what}: HTTP {response.status_code}: redirects are not followed",
                status=response.status_code,
            )
        if response.status_code >= 400:
            raise self._error(response, what, prefix, mode, secrets)
        try:
            body = response.json()
        except ValueError:
            body = None
        token = body.get("access_token") if isinstance(body, Mapping) else None
        if not isinstance(token, str) or not token:
            raise BackendUnavailable(f"{what}: the answer carries no access_token")
        logs.remember_secret(token)
        try:
            lifetime = float(body.get("expires_in", DEFAULT_EXPIRES_IN))
        except (TypeError, ValueError):
            lifetime = DEFAULT_EXPIRES_IN
        rotated = body.get("refresh_token")
        if mode == DELEGATED and isinstance(rotated, str) and rotated:
            logs.remember_secret(rotated)
            if rotated != self._rotated.get(prefix):
                self._keep(prefix, rotated)
            self._rotated[prefix] = rotated
        logs.info("entra token acquired", prefix=prefix, mode=mode, expires_in=round(lifetime))
        return _Cached(token=token, refresh_at=self.clock() + lifetime - refresh_margin(lifetime))

    @property
    def secret_store(self) -> Any:
        if self._secret_store is None:
            self._secret_store = fabric_secrets.SecretStore()
        return self._secret_store

    def _kept(self, prefix: str) -> str | None:
        """The refresh token kept in Secret Manager (its latest version), read once per process;
        None when no secret is named (the env var is then the only source)."""
        name = fabric_secrets.secret_name(self.env, prefix)
        if name is None or prefix in self._loaded:
            return None
        value = self.secret_store.latest(name)
        self._loaded.add(prefix)
        if value:
            logs.remember_secret(value)  # masked wherever an upstream echoes it back
            self._rotated[prefix] = value
            logs.info("fabric refresh token read from its secret", prefix=prefix, secret=name)
        return value or None

    def _keep(self, prefix: str, rotated: str) -> None:
        """Add the rotated refresh token as a new version of its secret. A failure is logged, not
        raised: the token is still good in this process, and the older one until it expires."""
        name = fabric_secrets.secret_name(self.env, prefix)
        if name is None:
            return
        try:
            version = self.secret_store.add(name, rotated)
        except PipelineError as exc:
            logs.warning(
                "fabric refresh token not kept in its secret", prefix=prefix, secret=name, error=exc.message
            )
            return
        logs.info("fabric refresh token kept in its secret", prefix=prefix, version=version)

    def _error(self, response: Any, what: str, prefix: str, mode: str, secrets: list[str]) -> Exception:
        code = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, Mapping) else None
        if not isinstance(error, str):
            error = None  # Google's {"error": {...}}, a number: not an Entra error code
        if code in http.RETRYABLE_STATUS or error in RETRYABLE_ERRORS:
            return BackendUnavailable(
                f"{what}: HTTP {code}" + (f" {error}" if isinstance(error, str) else ""),
                status=code,
                retry_after=http.retry_after_seconds(response.headers),
            )
        names = env_names(prefix)
        if mode == SERVICE_PRINCIPAL:
            check = f"{names['client_id']} / {names['client_secret']}"
        else:
            check = f"{names['client_id']} / {names['refresh_token']}"
        if not isinstance(error, str):
            return BackendRejected(f"{what}: HTTP {code}; check {check}", status=code)
        raw_description = body.get("error_description") if isinstance(body, Mapping) else None
        lines = str(raw_description or "").strip().splitlines()  # absent or empty: no description
        description = lines[0][:300] if lines else ""
        for secret in secrets:  # Entra never echoes secrets, but never trust an error text (and the
            description = description.replace(secret, "***")  # error's own scrub masks every form)
        return EntraRejected(
            f"{what}: HTTP {code} {error}: check {check}" + (f" ({description})" if description else ""),
            status=code,
            reason=error,
            field=check,
        )
