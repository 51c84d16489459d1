"""The per-process runtime: config, ledger and backends, wired once and injected everywhere.

Entry points call :func:`default_runtime` (built lazily, once per process, from the environment);
tests and the command line build their own with :func:`make_runtime`, handing in clients pointed at
local emulators.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from handlers.backends import registry
from handlers.backends.contract import Backend, guarded
from handlers.core import clients
from handlers.launch.ledger import Ledger
from handlers.launch.store import GcsStore
from handlers.model.config import Config, cached_config


@dataclass
class Runtime:
    config: Config
    ledger: Ledger
    backend_overrides: dict[str, Backend] = field(default_factory=dict)
    _publisher: Any = None
    _backends: dict[str, Backend] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def backend(self, name: str) -> Backend:
        """The backend ``name``, behind the guard that makes a malformed answer a retryable error and
        keeps echoed secrets out of what it returns (:class:`~handlers.backends.contract.GuardedBackend`)."""
        if name in self.backend_overrides:
            return guarded(self.backend_overrides[name])
        with self._lock:
            if name not in self._backends:
                self._backends[name] = guarded(registry.spec(name).build())
            return self._backends[name]

    @property
    def publisher(self) -> Any:
        if self._publisher is None:
            self._publisher = clients.publisher()
        return self._publisher


def make_runtime(
    config: Config,
    *,
    ledger_session: Any = None,
    publisher: Any = None,
    backends: dict[str, Backend] | None = None,
) -> Runtime:
    """``ledger_session``: the HTTP session the ledger talks to Cloud Storage through (default: the
    process's own, pointed at ``STORAGE_EMULATOR_HOST`` when set)."""
    store = GcsStore(config.settings.ledger_bucket, session=ledger_session)
    return Runtime(
        config=config,
        ledger=Ledger(store, config.settings.ledger_prefix),
        backend_overrides=dict(backends or {}),
        _publisher=publisher,
    )


_default: Runtime | None = None
_default_lock = threading.Lock()


def default_runtime() -> Runtime:
    """The process-wide runtime (config from ``PIPELINES_CONFIG``, clients from the environment)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = make_runtime(cached_config())
    return _default


def reset_default() -> None:
    global _default
    with _default_lock:
        _default = None
    cached_config.cache_clear()
