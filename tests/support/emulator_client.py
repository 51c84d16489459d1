"""Test plumbing shared by the emulator specs and the backend harnesses.

Every local emulator (``local/*_emulator.py``) has the same control API under ``/_emulator/``
(docs/emulators.md); this module is the one place the tests talk to it:

- ``control(emulator, method, path, body=None)``: one control call, its JSON answer;
- ``recorded_requests(emulator)``: the protocol requests the emulator recorded, oldest first;
- ``advance(emulator, seconds)`` / ``reset_emulator(emulator, settings=None)``: clock and reset;
- ``emulator_fixture(serve)``: a module-scoped ``emulator`` fixture (``emulator = emulator_fixture(serve)``);
- ``EmulatorHarness``: the base of the cross-backend harnesses (tests/support/*_harness.py): control
  calls, clock, fault injection, request log and reset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import pytest
import requests

from local.emulators.base import ServerHandle


class HasUrl(Protocol):
    """A running emulator (a ``ServerHandle``) or anything else that knows its root URL."""

    url: str


def control(emulator: HasUrl, method: str, path: str, body: Any = None, *, timeout: float = 5) -> Any:
    """``<method> /_emulator/<path>`` with ``body`` as JSON; raises on an HTTP error; the JSON answer
    (None for an empty one)."""
    r = requests.request(method, f"{emulator.url}/_emulator/{path}", json=body, timeout=timeout)
    r.raise_for_status()
    return r.json() if r.content else None


def recorded_requests(emulator: HasUrl, *, timeout: float = 5) -> list[dict[str, Any]]:
    """Every protocol request the emulator received (``GET /_emulator/requests``), oldest first."""
    return list(control(emulator, "GET", "requests", timeout=timeout)["requests"])


def advance(emulator: HasUrl, seconds: float, *, timeout: float = 5) -> None:
    """Move the emulator clock forward (``POST /_emulator/clock {"advance_seconds": N}``)."""
    control(emulator, "POST", "clock", {"advance_seconds": seconds}, timeout=timeout)


def reset_emulator(emulator: HasUrl, settings: Any = None, *, timeout: float = 5) -> None:
    """``POST /_emulator/reset`` (jobs, faults and recorded requests forgotten), then, given
    ``settings``, ``POST /_emulator/settings`` with them."""
    control(emulator, "POST", "reset", timeout=timeout)
    if settings is not None:
        control(emulator, "POST", "settings", settings, timeout=timeout)


def emulator_fixture(serve: Callable[..., ServerHandle]) -> Any:
    """A module-scoped pytest fixture running ``serve(port=0)`` for the module's tests, shut down
    after them. Assign it to the fixture's name: ``emulator = emulator_fixture(serve)``."""

    @pytest.fixture(scope="module")
    def emulator() -> Iterator[ServerHandle]:
        handle = serve(port=0)
        yield handle
        handle.shutdown()

    return emulator


class EmulatorHarness:
    """What the cross-backend harnesses share: the emulator's common control API.

    ``fault_operations`` maps the harness's operation names (``launch``, ``status``, ``find``,
    ``cancel``) to the emulator's fault operations, for :meth:`inject`.
    """

    fault_operations: Mapping[str, str] = {}

    def __init__(self, emulator_handle: Any) -> None:
        self.emulator = emulator_handle
        self.url: str = emulator_handle.url

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        return control(self, method, path, body, timeout=10)

    def advance(self, seconds: float) -> None:
        advance(self, seconds, timeout=10)

    def inject(
        self,
        operation: str,
        status: int,
        *,
        times: int = 1,
        retry_after: float | None = None,
        after_effect: bool = False,
    ) -> None:
        rule: dict[str, Any] = {
            "operation": self.fault_operations[operation],
            "status": status,
            "times": times,
            "after_effect": after_effect,
        }
        if retry_after is not None:
            rule["retry_after"] = retry_after
        self._control("POST", "faults", rule)

    def requests_received(self) -> list[dict[str, Any]]:
        return recorded_requests(self, timeout=10)

    # True: backend() authenticates with google-auth against the emulator's own OAuth token endpoint
    # (local/_emulator_base.GoogleTokens), which then refuses missing or expired tokens.
    google_auth = False

    def google_session(self) -> Any:
        """An ``AuthorizedSession`` whose user credentials refresh at the emulator's ``/oauth2/token``;
        turns the emulator's token check on."""
        from google.auth.transport.requests import AuthorizedSession
        from google.oauth2.credentials import Credentials

        from local.emulators.base import GoogleTokens

        self._control("POST", "google-tokens", {"enforce": True})
        credentials = Credentials(
            token=None,
            refresh_token=GoogleTokens.REFRESH_TOKEN,
            token_uri=f"{self.url}/oauth2/token",
            client_id="local-client",
            client_secret="local-secret",
        )
        return AuthorizedSession(credentials)

    def expire_credentials(self) -> bool:
        """End every access token the emulator issued (only with ``google_auth``)."""
        if not self.google_auth:
            return False
        self._control("POST", "google-tokens", {"expire": True})
        return True

    def reset(self) -> None:
        reset_emulator(self, timeout=10)
