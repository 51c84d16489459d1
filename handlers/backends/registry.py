"""The backend registry: every ``backend:`` name of the routing config, and where it is declared.

``DECLARED_IN`` maps each name to the module whose ``SPECS`` declare it (a
:class:`~handlers.backends.contract.BackendSpec`). This table is the one place besides a backend's
own module that names a backend. Modules are imported on first use only, so a function imports
just the backends its config names; the rest of the project asks :func:`spec` and never branches
on a backend's name.
"""

from __future__ import annotations

import functools
import importlib

from handlers.backends.contract import BackendSpec

DECLARED_IN: dict[str, str] = {
    "dataflow": "handlers.backends.dataflow",
    "dataflow-flex": "handlers.backends.dataflow",
    "datafusion": "handlers.backends.datafusion",
    "fabric": "handlers.backends.fabric.jobs",
    "dataproc": "handlers.backends.dataproc",
}


def names() -> tuple[str, ...]:
    """Every backend name, in declaration order (imports nothing)."""
    return tuple(DECLARED_IN)


@functools.cache
def spec(name: str) -> BackendSpec:
    """The declaration of backend ``name``; ``KeyError`` for a name the registry does not know."""
    module = importlib.import_module(DECLARED_IN[name])
    for declared in module.SPECS:
        if declared.name == name:
            return declared
    raise KeyError(f"{DECLARED_IN[name]} declares no backend {name!r}")


def specs() -> list[BackendSpec]:
    """Every declaration (imports every backend module: for deploy, docs and the local world)."""
    return [spec(name) for name in DECLARED_IN]


def endpoint_envs() -> tuple[str, ...]:
    """Every environment variable that points a backend at another endpoint."""
    return tuple(dict.fromkeys(env for s in specs() for env in s.endpoint_envs))
