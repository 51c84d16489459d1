"""Test plumbing for the emulator specs (tests/test_*_emulator.py and the backend tests).

Every local emulator has the same control API under ``/_emulator/`` (docs/emulators.md); the kits
(:mod:`local.kits`) talk to it, and these are the spellings the specs use:

- ``control(emulator, method, path, body=None)``: one control call, its JSON answer;
- ``recorded_requests(emulator)``: the protocol requests the emulator recorded, oldest first;
- ``advance(emulator, seconds)`` / ``reset_emulator(emulator, settings=None)``: clock and reset;
- ``emulator_fixture(serve)``: a module-scoped ``emulator`` fixture (``emulator = emulator_fixture(serve)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from local.emulators.base import ServerHandle
from local.kits.base import EmulatorHandle
from local.kits.base import control as _control


def control(emulator: EmulatorHandle, method: str, path: str, body: Any = None, *, timeout: float = 5) -> Any:
    """``<method> /_emulator/<path>`` with ``body`` as JSON; raises on an HTTP error; the JSON answer
    (None for an empty one)."""
    return _control(emulator.url, method, path, body, timeout=timeout)


def recorded_requests(emulator: EmulatorHandle, *, timeout: float = 5) -> list[dict[str, Any]]:
    """Every protocol request the emulator received (``GET /_emulator/requests``), oldest first."""
    return list(control(emulator, "GET", "requests", timeout=timeout)["requests"])


def advance(emulator: EmulatorHandle, seconds: float, *, timeout: float = 5) -> None:
    """Move the emulator clock forward (``POST /_emulator/clock {"advance_seconds": N}``)."""
    control(emulator, "POST", "clock", {"advance_seconds": seconds}, timeout=timeout)


def reset_emulator(emulator: EmulatorHandle, settings: Any = None, *, timeout: float = 5) -> None:
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
