"""Specification: a delegated refresh token outlives the process, kept in Secret Manager.

The Fabric emulator's Entra stand-in rotates refresh tokens strictly here (a used one is revoked),
so a cold start that began from the token deployed in the env var would fail: the token provider
must read the secret's latest version, and add every rotated token as a new version. Runs against
the local Secret Manager stand-in (local/emulators/secretmanager.py), whose request bodies are
checked against the secretmanager v1 discovery document.
"""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from handlers.backends.fabric.entra import TokenProvider
from handlers.backends.fabric.secrets import SecretStore, crc32c
from handlers.core import logs
from local.emulators import secretmanager
from local.emulators.base import ServerHandle
from local.emulators.fabric import serve
from local.kits.fabric import entra_clients
from tests.support import emulator_client
from tests.support.emulator_client import emulator_fixture, recorded_requests, reset_emulator

TENANT = "4d4d4d4d-0000-4000-8000-00000000000a"
USER_APP = "kept-token-user-app"
SECRET = "kept-token-client-secret"
REFRESH = "kept-token-first-refresh-token"

emulator = emulator_fixture(serve)
secret_manager = emulator_fixture(secretmanager.serve)


@pytest.fixture
def secret(emulator: ServerHandle, secret_manager: ServerHandle) -> Iterator[str]:
    reset_emulator(emulator, {"token_lifetime_seconds": 3600})
    reset_emulator(secret_manager)
    clients = entra_clients(TENANT, USER_APP, "unused-sp", SECRET, REFRESH)
    clients[0]["revoke_used_refresh_tokens"] = True
    emulator_client.control(emulator, "POST", "clients", clients)
    name = f"projects/p1/secrets/fabric-refresh-{uuid.uuid4().hex[:8]}"
    emulator_client.control(secret_manager, "POST", "secrets", {"name": name, "value": REFRESH})
    yield name


def bearer_session() -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = "Bearer local-test-token"
    return session


def cold_start(emulator: ServerHandle, secret_manager: ServerHandle, name: str) -> TokenProvider:
    """A new process: a new provider, whose env var holds the token deployed long ago."""
    environ = {
        "FABRIC_TENANT_ID": TENANT,
        "FABRIC_CLIENT_ID": USER_APP,
        "FABRIC_REFRESH_TOKEN": "deployed-long-ago-and-revoked",
        "FABRIC_REFRESH_TOKEN_SECRET": name,
    }
    store = SecretStore(session=bearer_session(), endpoint=secret_manager.url)
    return TokenProvider(token_endpoint=emulator.url, env=environ, secret_store=store)


def versions(secret_manager: ServerHandle, name: str) -> list[str]:
    return list(emulator_client.control(secret_manager, "GET", "secrets")["secrets"][name])


def test_each_cold_start_begins_from_the_latest_rotated_token(
    emulator: ServerHandle, secret_manager: ServerHandle, secret: str
) -> None:
    stream = io.StringIO()
    logs.set_stream(stream)
    try:
        # WHEN a first process gets a token, then a second one (a cold start) does
        first = cold_start(emulator, secret_manager, secret).token()
        rotated_once = versions(secret_manager, secret)[-1]
        second = cold_start(emulator, secret_manager, secret).token()
    finally:
        logs.set_stream(None)
    # THEN both got tokens: the first from the secret's version 1 (not the env var), the second from
    # the token the first rotation added as version 2; the second rotation added version 3
    assert first.startswith("emu-at-") and second.startswith("emu-at-")
    kept = versions(secret_manager, secret)
    assert kept[0] == REFRESH and kept[1] == rotated_once and len(kept) == 3
    assert all(v.startswith("emu-rt-") for v in kept[1:])
    grants = [r["body"] for r in recorded_requests(emulator) if r["path"].endswith("/token")]
    assert f"refresh_token={REFRESH}" in grants[0] and f"refresh_token={rotated_once}" in grants[1]
    # AND the versions were added as the discovery document shapes them, with a CRC32C
    added = [r["body"] for r in recorded_requests(secret_manager) if r["path"].endswith(":addVersion")]
    assert [set(b["payload"]) for b in added] == [{"data", "dataCrc32c"}] * 2
    assert base64.b64decode(added[0]["payload"]["data"]).decode() == rotated_once
    # AND no token ever reached a log line
    assert not any(token in stream.getvalue() for token in [*kept, first, second])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"payload": {"data": "aGk=", "dataCrc32C": "1"}}, 'Unknown name "dataCrc32C"'),
        ({"payload": {"data": "aGk=", "dataCrc32c": "123"}}, "Checksum mismatch"),
        ({"payload": "aGk="}, "Invalid value at 'payload'"),
    ],
)
def test_the_stand_in_refuses_what_secret_manager_refuses(
    secret_manager: ServerHandle, secret: str, body: dict[str, Any], message: str
) -> None:
    r = bearer_session().post(f"{secret_manager.url}/v1/{secret}:addVersion", json=body, timeout=5)
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert message in r.json()["error"]["message"]
    assert versions(secret_manager, secret) == [REFRESH]


def test_the_stand_in_answers_latest_and_numbered_versions(secret_manager: ServerHandle, secret: str) -> None:
    store = SecretStore(session=bearer_session(), endpoint=secret_manager.url)
    assert store.add(secret, "second") == f"{secret}/versions/2"
    assert store.latest(secret) == "second"
    one = bearer_session().get(f"{secret_manager.url}/v1/{secret}/versions/1:access", timeout=5).json()
    assert base64.b64decode(one["payload"]["data"]) == REFRESH.encode()
    assert one["payload"]["dataCrc32c"] == str(crc32c(REFRESH.encode()))
    assert (
        requests.get(f"{secret_manager.url}/v1/{secret}/versions/latest:access", timeout=5).status_code == 401
    )
