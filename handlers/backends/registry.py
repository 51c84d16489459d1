"""Pipeline backends behind one contract (:mod:`handlers.backends.contract`).

``BACKENDS`` maps the ``backend:`` name used in the routing config to ``module:Class``. Modules are
imported on first use only, so a function imports just the backends its config names.
Each backend module also exposes ``OPTION_KEYS`` (its pipeline fields) and ``check_options(options)``
(config validation returning a list of problems).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

BACKENDS: dict[str, str] = {
    "dataflow": "handlers.backends.dataflow:ClassicTemplate",
    "dataflow-flex": "handlers.backends.dataflow:FlexTemplate",
    "fabric": "handlers.backends.fabric.jobs:Fabric",
    "datafusion": "handlers.backends.datafusion:DataFusion",
}


def backend_module(name: str) -> ModuleType:
    return importlib.import_module(BACKENDS[name].split(":", 1)[0])


def backend_class(name: str) -> Any:
    module_name, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module_name), cls)
