"""The base of the kits' test harnesses: one emulator behind the interface the cross-backend
contract tests (tests/test_backend_contract.py) drive: control calls, clock, fault injection,
recorded requests, credentials and reset. Each kit module adds its backend's side (registering a
pipeline, building the backend client, reading launches back)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from local.kits.base import EmulatorHandle, control


class EmulatorHarness:
    """What the cross-backend harnesses share: the emulator's common control API.

    ``fault_operations`` maps the harness's operation names (``launch``, ``status``, ``find``,
    ``cancel``) to the emulator's fault operations, for :meth:`inject`.
    """

    fault_operations: Mapping[str, str] = {}

    def __init__(self, emulator_handle: EmulatorHandle) -> None:
        self.emulator = emulator_handle
        self.url: str = emulator_handle.url

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        return control(self.url, method, path, body, timeout=10)

    def advance(self, seconds: float) -> None:
        self._control("POST", "clock", {"advance_seconds": seconds})

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
        return list(self._control("GET", "requests")["requests"])

    # True: backend() authenticates with google-auth against the emulator's own OAuth token endpoint
    # (local/emulators/base.GoogleTokens), which then refuses missing or expired tokens.
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

    def reset(self, settings: Any = None) -> None:
        """Forget jobs, faults and recorded requests; then restore ``settings`` when given."""
        self._control("POST", "reset")
        if settings is not None:
            self._control("POST", "settings", settings)
