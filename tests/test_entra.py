"""Specification of handlers/backends/fabric/entra.py: Fabric bearer tokens from the Entra ID token endpoint.

Runs against the Entra stand-in of the local Fabric emulator; credentials come from an explicit env
mapping (the process environment is never read or changed). GIVEN / WHEN / THEN, asserting what
reached the token endpoint.
"""

from __future__ import annotations

import io
import threading
from typing import Any
from urllib.parse import parse_qs

import pytest

from handlers.backends.fabric.entra import CredentialsError, EntraRejected, TokenProvider, refresh_margin
from handlers.core import logs
from handlers.core.errors import BackendUnavailable, ConfigError, PermanentError
from local.emulators.base import ServerHandle
from local.emulators.fabric import serve
from local.kits.fabric import entra_clients
from tests.support import emulator_client
from tests.support.emulator_client import emulator_fixture, recorded_requests, reset_emulator

TENANT = "3c3c3c3c-0000-4000-8000-00000000000a"
USER_APP = "entra-user-app"
SP_APP = "entra-sp-app"
SECRET = "entra-test-client-secret-123"
REFRESH = "entra-test-refresh-token-456"


emulator = emulator_fixture(serve)


@pytest.fixture(autouse=True)
def _fresh(emulator: ServerHandle) -> None:
    reset_emulator(emulator, {"token_lifetime_seconds": 3600})
    control(emulator, "clients", entra_clients(TENANT, USER_APP, SP_APP, SECRET, REFRESH))


def control(emulator: ServerHandle, path: str, body: Any = None, method: str = "POST") -> Any:
    return emulator_client.control(emulator, method, path, body)


def env(prefix: str = "FABRIC", **overrides: str) -> dict[str, str]:
    values = {"TENANT_ID": TENANT, "CLIENT_ID": USER_APP, "REFRESH_TOKEN": REFRESH, **overrides}
    return {f"{prefix}_{k}": v for k, v in values.items() if v}


def token_requests(emulator: ServerHandle) -> list[dict[str, list[str]]]:
    """The forms POSTed to the token endpoint, oldest first."""
    recorded = recorded_requests(emulator)
    return [parse_qs(r["body"]) for r in recorded if r["path"].endswith("/oauth2/v2.0/token")]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def provider(emulator: ServerHandle, environ: dict[str, str], **kwargs: Any) -> TokenProvider:
    return TokenProvider(token_endpoint=emulator.url, env=environ, **kwargs)


# -------------------------------------------------------------------------------------------- grants


def test_delegated_mode_uses_the_refresh_token_grant_for_the_fabric_scope(emulator: ServerHandle) -> None:
    tokens = provider(emulator, env())
    # WHEN a delegated token is asked for twice
    first = tokens.token("FABRIC", "delegated")
    second = tokens.token("FABRIC", "delegated")
    # THEN one refresh_token grant reached Entra, and the token was cached
    assert first == second
    [form] = token_requests(emulator)
    assert form == {
        "grant_type": ["refresh_token"],
        "client_id": [USER_APP],
        "refresh_token": [REFRESH],
        "scope": ["https://api.fabric.microsoft.com/.default offline_access"],
    }


def test_a_confidential_client_also_sends_its_secret_on_the_refresh_grant(emulator: ServerHandle) -> None:
    provider(emulator, env(CLIENT_SECRET=SECRET)).token("FABRIC", "delegated")
    assert token_requests(emulator)[0]["client_secret"] == [SECRET]


def test_service_principal_mode_uses_client_credentials(emulator: ServerHandle) -> None:
    tokens = provider(emulator, env(CLIENT_ID=SP_APP, CLIENT_SECRET=SECRET, REFRESH_TOKEN=""))
    tokens.token("FABRIC", "service_principal")
    [form] = token_requests(emulator)
    assert form["grant_type"] == ["client_credentials"] and form["client_secret"] == [SECRET]
    assert "refresh_token" not in form
    assert control(emulator, "tokens", method="GET")["tokens"][-1]["app_only"] is True


def test_the_endpoint_comes_from_fabric_token_endpoint(emulator: ServerHandle) -> None:
    tokens = TokenProvider(env={**env(), "FABRIC_TOKEN_ENDPOINT": emulator.url + "/"})
    assert tokens.endpoint == emulator.url
    assert tokens.token()
    assert TokenProvider(env={}).endpoint == "https://login.microsoftonline.com"


def test_several_credential_prefixes_coexist(emulator: ServerHandle) -> None:
    environ = {**env("FABRIC"), **env("FABRIC_SALES", CLIENT_ID=SP_APP, CLIENT_SECRET=SECRET)}
    tokens = provider(emulator, environ)
    user = tokens.token("FABRIC", "delegated")
    app = tokens.token("FABRIC_SALES", "service_principal")
    assert user != app
    assert [f["client_id"] for f in token_requests(emulator)] == [[USER_APP], [SP_APP]]


# ------------------------------------------------------------------------------------ cache lifetime


def test_a_token_is_renewed_ten_percent_before_expiry_for_short_lifetimes(emulator: ServerHandle) -> None:
    control(emulator, "settings", {"token_lifetime_seconds": 600})
    clock = Clock()
    tokens = provider(emulator, env(), clock=clock)
    first = tokens.token()
    clock.now += 539  # margin = min(300, 60) = 60 s
    assert tokens.token() == first
    clock.now += 2
    assert tokens.token() != first
    assert len(token_requests(emulator)) == 2


def test_the_margin_is_five_minutes_for_hour_long_tokens() -> None:
    assert refresh_margin(3600) == 300
    assert refresh_margin(600) == 60
    assert refresh_margin(0) == 0


def test_invalidate_forgets_the_cached_token_once(emulator: ServerHandle) -> None:
    tokens = provider(emulator, env())
    first = tokens.token()
    tokens.invalidate("FABRIC", "delegated", token="not-the-cached-one")
    assert tokens.token() == first
    tokens.invalidate("FABRIC", "delegated", token=first)
    assert tokens.token() != first


def test_a_rotated_refresh_token_is_used_for_the_next_refresh(emulator: ServerHandle) -> None:
    # GIVEN an app whose refresh tokens are single use
    control(
        emulator,
        "clients",
        {
            "tenant": TENANT,
            "client_id": "strict-app",
            "client_secret": SECRET,
            "refresh_tokens": [REFRESH],
            "revoke_used_refresh_tokens": True,
        },
    )
    tokens = provider(emulator, env(CLIENT_ID="strict-app"))
    first = tokens.token()
    # WHEN the token must be refreshed again
    tokens.invalidate()
    second = tokens.token()
    # THEN the second grant used the refresh token Entra handed back, not the revoked original
    assert second != first
    forms = token_requests(emulator)
    assert forms[0]["refresh_token"] == [REFRESH]
    assert forms[1]["refresh_token"][0].startswith("emu-rt-")


def test_concurrent_callers_share_one_refresh(emulator: ServerHandle) -> None:
    control(emulator, "faults", {"operation": "token", "latency_ms": 150})
    tokens = provider(emulator, env())
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(tokens.token())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and len(got) == 8
    assert len(token_requests(emulator)) == 1


# -------------------------------------------------------------------------------------------- errors


def test_a_missing_env_var_is_a_permanent_config_error_naming_it(emulator: ServerHandle) -> None:
    tokens = provider(emulator, env(CLIENT_ID=SP_APP))
    with pytest.raises(CredentialsError) as caught:
        tokens.token("FABRIC", "service_principal")
    assert isinstance(caught.value, ConfigError) and not caught.value.retryable
    assert caught.value.env_var == "FABRIC_CLIENT_SECRET"
    assert "FABRIC_CLIENT_SECRET" in str(caught.value)
    assert token_requests(emulator) == []


def test_a_wrong_secret_is_permanent_names_the_env_var_and_never_shows_the_secret(
    emulator: ServerHandle,
) -> None:
    wrong = "wrong-secret-value-789"
    tokens = provider(emulator, env(CLIENT_ID=SP_APP, CLIENT_SECRET=wrong))
    with pytest.raises(EntraRejected) as caught:
        tokens.token("FABRIC", "service_principal")
    error = caught.value
    assert isinstance(error, PermanentError) and error.status == 401 and error.reason == "invalid_client"
    assert "FABRIC_CLIENT_SECRET" in error.message
    assert wrong not in str(error.context()) and SECRET not in str(error.context())


def test_a_revoked_refresh_token_is_invalid_grant_naming_its_env_var(emulator: ServerHandle) -> None:
    tokens = provider(emulator, env(REFRESH_TOKEN="revoked-refresh-token"))
    with pytest.raises(EntraRejected) as caught:
        tokens.token()
    assert caught.value.reason == "invalid_grant" and caught.value.status == 400
    assert "FABRIC_REFRESH_TOKEN" in caught.value.message
    assert "revoked-refresh-token" not in caught.value.message


def test_entra_outages_are_retryable_with_retry_after(emulator: ServerHandle) -> None:
    control(emulator, "faults", {"operation": "token", "status": 503, "retry_after": 3})
    with pytest.raises(BackendUnavailable) as caught:
        provider(emulator, env()).token()
    assert caught.value.retryable and caught.value.status == 503 and caught.value.retry_after == 3


def test_temporarily_unavailable_is_retryable_whatever_its_status(emulator: ServerHandle) -> None:
    # GIVEN Entra answers 400 temporarily_unavailable (AADSTS50196, a throttled loop), then recovers
    message = "temporarily_unavailable: AADSTS50196: The server terminated an operation because it encountered a loop."
    control(emulator, "faults", {"operation": "token", "status": 400, "message": message})
    tokens = provider(emulator, env())
    with pytest.raises(BackendUnavailable) as caught:
        tokens.token()
    # THEN it is retryable (not an EntraRejected), and the next attempt gets a token
    assert caught.value.retryable and "temporarily_unavailable" in caught.value.message
    assert tokens.token().startswith("emu-at-")


def test_the_refresh_grant_asks_for_offline_access_and_uses_the_rotated_token_next(
    emulator: ServerHandle,
) -> None:
    tokens = provider(emulator, env())
    tokens.token("FABRIC", "delegated")
    tokens.invalidate("FABRIC", "delegated")
    tokens.token("FABRIC", "delegated")
    first, second = token_requests(emulator)
    assert "offline_access" in first["scope"][0].split()
    # THEN the second grant used the refresh token Entra rotated to, not the configured one
    assert first["refresh_token"] == [REFRESH] and second["refresh_token"][0].startswith("emu-rt-")


def test_a_token_endpoint_timeout_is_retryable(emulator: ServerHandle) -> None:
    control(emulator, "faults", {"operation": "token", "latency_ms": 500})
    with pytest.raises(BackendUnavailable, match="timed out"):
        provider(emulator, env(), timeout=(1.0, 0.1)).token()


def test_no_secret_or_token_ever_reaches_a_log_line(emulator: ServerHandle) -> None:
    stream = io.StringIO()
    logs.set_stream(stream)
    try:
        issued = [provider(emulator, env(CLIENT_SECRET=SECRET)).token()]
        issued.append(
            provider(emulator, env(CLIENT_ID=SP_APP, CLIENT_SECRET=SECRET)).token(
                "FABRIC", "service_principal"
            )
        )
        with pytest.raises(EntraRejected):
            provider(emulator, env(CLIENT_ID=SP_APP, CLIENT_SECRET="bad-" + SECRET)).token(
                "FABRIC", "service_principal"
            )
    finally:
        logs.set_stream(None)
    captured = stream.getvalue()
    assert "entra token acquired" in captured
    for secret in (SECRET, REFRESH, *issued):
        assert secret not in captured
