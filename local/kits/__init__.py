"""Backend kits: what the local world needs to know about each backend family, in one place.

A kit says how to start its backend's emulator, which environment variables point the functions
at it, which fixtures (templates, apps, items, fake credentials) a config needs registered there,
the config fields of a pipeline on it, how to read back the jobs it ran, and which harness the
contract tests drive it through. :mod:`local.world` (the one assembler of the local world), the
demo stack, the benchmarks, the reliability rig and the tests ask :func:`kit` and never branch on a
backend's name.

Adding a backend: its kit module (a :class:`~local.kits.base.EmulatorKit` subclass is the short
way) and one line in :data:`KITS`.
"""

from __future__ import annotations

import functools
import importlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from local.kits.base import EmulatorHandle, Fixtures, Timing

__all__ = ["KITS", "EmulatorHandle", "Fixtures", "Kit", "Timing", "kit", "names"]


class Kit(Protocol):
    """One backend family's local kit (see the module docstring)."""

    backends: tuple[str, ...]  # the registry's backend names it serves
    emulator_module: str  # where its emulator lives (``python -m`` runs it on its own)
    fixtures_option: str  # ``local.stack up --<option> FILE`` adds a fixtures file
    fixtures_help: str

    def title(self, backend: str) -> str:
        """A short name for people (``Data Fusion``)."""
        ...

    def available(self) -> bool:
        """Whether this checkout has the emulator."""
        ...

    def fixtures(
        self, pipelines: Iterable[Any], files: Sequence[Path] = (), timing: Timing | None = None
    ) -> Fixtures:
        """What the emulator must hold for these config pipelines (the ones on other backends are
        ignored): the entries of ``files``, plus a stand-in for every pipeline none of them covers."""
        ...

    def serve(
        self,
        fixtures: Fixtures,
        *,
        speed: float | None = None,
        notify_url: str | None = None,
        own_process: bool = False,
        **options: Any,
    ) -> EmulatorHandle:
        """Start the emulator with ``fixtures`` registered; ``own_process``: not in this process."""
        ...

    def endpoint_env(self, backend: str, url: str) -> dict[str, str]:
        """The environment variables that point backend ``backend`` of the functions at ``url``."""
        ...

    def pipeline_fields(self, backend: str, pipeline: str) -> dict[str, Any]:
        """The config fields of a pipeline named ``pipeline`` on ``backend`` (without parameters)."""
        ...

    def jobs(self, url: str) -> list[dict[str, Any]]:
        """Every job the emulator holds: ``{"backend", "id", "input", "raw"}`` (``input``: its
        ``inputFile`` parameter)."""
        ...

    def launch_statuses(self, url: str) -> Counter[str]:
        """The answers the emulator gave to launch requests, as ``"<backend> <status>"``."""
        ...

    def is_launch_path(self, path: str) -> bool:
        """Whether a request path (no query) is a launch (run/start) request of this backend."""
        ...

    def harness(self, handle: EmulatorHandle, backend: str) -> Any:
        """The test harness driving the emulator for backend ``backend`` (the contract tests)."""
        ...

    def status_topics(self, url: str, project: str, pipelines: Iterable[Any]) -> list[str]:
        """Pub/Sub topics (in ``project``) the emulator at ``url`` now publishes run status events
        to, for ``on_message``: set up here as deploy does in the cloud; ``[]`` when it pushes none."""
        ...


# The one registry of kits: backend name -> module exporting ``KIT``.
KITS: Mapping[str, str] = {
    "dataflow": "local.kits.dataflow",
    "dataflow-flex": "local.kits.dataflow",
    "datafusion": "local.kits.datafusion",
    "fabric": "local.kits.fabric",
    "dataproc": "local.kits.dataproc",
}


def names() -> tuple[str, ...]:
    """Every backend name that has a kit (imports nothing)."""
    return tuple(KITS)


@functools.cache
def kit(backend: str) -> Kit:
    """The kit serving backend ``backend``; ``KeyError`` for a backend without one."""
    module: Any = importlib.import_module(KITS[backend])
    found: Kit = module.KIT
    return found


def kits_for(backends: Iterable[str]) -> dict[str, Kit]:
    """One entry per kit serving ``backends``, keyed by the first of them asked for (a kit serving
    two backends, like Dataflow's, starts one emulator for both)."""
    out: dict[str, Kit] = {}
    for backend in backends:
        found = kit(backend)
        if all(k is not found for k in out.values()):
            out[backend] = found
    return out
