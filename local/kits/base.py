"""What the kits share: fixtures, stand-in timings, emulator handles and :class:`EmulatorKit`.

Every emulator takes its fixtures as keyword arguments of ``serve`` (``templates=[...]``,
``apps=[...]``, ``items=[...]``, ``clients=[...]``) and accepts the same entries later on its control
API (``POST /_emulator/<kwarg>``), so a :class:`Fixtures` is just those lists plus the environment
variables (fake credentials) the functions need to use them.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import requests

from handlers.backends import registry


class EmulatorHandle(Protocol):
    """A running emulator: its root URL and how to stop it."""

    url: str

    def shutdown(self) -> None: ...


@dataclass(frozen=True)
class Timing:
    """How the stand-in jobs a kit registers behave, in emulator seconds.

    ``pending_seconds`` is the wait before the job runs (Data Fusion splits it between PENDING and
    STARTING); ``dedupe`` lets Fabric refuse a second run of an item while one is active (off: one
    instance per event); ``poll_after_seconds`` is the Retry-After Fabric announces on a run.
    """

    pending_seconds: float = 1.0
    run_seconds: float = 3.0
    dedupe: bool = True
    poll_after_seconds: float = 1.0


@dataclass
class Fixtures:
    """The emulator's registrations (``serve`` keyword -> entries) and the env vars that go with them."""

    registrations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


class FixtureError(ValueError):
    """A fixtures file could not be loaded; the message names the file and the reason."""


def load_files(load: Any, files: Sequence[Path], what: str) -> list[dict[str, Any]]:
    """Every entry of ``files`` through the emulator's loader, as registration JSON."""
    entries: list[dict[str, Any]] = []
    for path in files:
        try:
            entries.extend(entry.to_json() for entry in load(path))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise FixtureError(f"cannot load {what} from {path}: {exc}") from exc
    return entries


class EmulatorProcess:
    """An emulator run as ``python -m <module> --port 0`` (so it shares no GIL with its caller)."""

    def __init__(self, module: str, options: Mapping[str, Any]) -> None:
        args = [f"--{k.replace('_', '-')}={v}" for k, v in options.items() if v is not None]
        self._proc = subprocess.Popen(
            [sys.executable, "-m", module, "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self._proc.stdout is not None
        try:
            self.url: str = str(json.loads(self._proc.stdout.readline())["url"])
        except Exception:
            self.shutdown()
            raise

    def shutdown(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def control(url: str, method: str, path: str, body: Any = None, *, timeout: float = 60) -> Any:
    """``<method> <url>/_emulator/<path>`` with ``body`` as JSON; the JSON answer (None if empty)."""
    answer = requests.request(method, f"{url}/_emulator/{path}", json=body, timeout=timeout)
    answer.raise_for_status()
    return answer.json() if answer.content else None


class EmulatorKit:
    """The common part of a kit; a subclass sets the class attributes and writes :meth:`fixtures`,
    :meth:`pipeline_fields`, :meth:`harness` and its side of :meth:`jobs`."""

    backends: ClassVar[tuple[str, ...]]
    titles: ClassVar[Mapping[str, str]]
    emulator_module: ClassVar[str]
    fixtures_option: ClassVar[str]  # ``local.stack up --<option> FILE`` (the emulator's ``serve`` keyword)
    fixtures_help: ClassVar[str]
    serve_options: ClassVar[Mapping[str, Any]] = {}  # always passed to its ``serve``
    launch_path: ClassVar[re.Pattern[str]]
    jobs_path: ClassVar[str]  # GET /_emulator/<jobs_path> answers {jobs_path: [...]}

    def title(self, backend: str) -> str:
        return self.titles[backend]

    def available(self) -> bool:
        try:
            return callable(getattr(importlib.import_module(self.emulator_module), "serve", None))
        except Exception:
            return False

    def ours(self, pipelines: Iterable[Any]) -> list[Any]:
        """The config pipelines on this kit's backends."""
        return [p for p in pipelines if p.backend in self.backends]

    def serve(
        self,
        fixtures: Fixtures,
        *,
        speed: float | None = None,
        notify_url: str | None = None,
        own_process: bool = False,
        **options: Any,
    ) -> EmulatorHandle:
        options = {**self.serve_options, **options}
        if speed is not None:
            options["speed"] = speed
        if notify_url is not None:
            options["notify_url"] = notify_url
        if own_process:
            handle: EmulatorHandle = EmulatorProcess(self.emulator_module, options)
            with contextlib.ExitStack() as undo:
                undo.callback(handle.shutdown)
                for kind, entries in fixtures.registrations.items():
                    for entry in entries:
                        control(handle.url, "POST", kind, entry)
                undo.pop_all()
            return handle
        module: Any = importlib.import_module(self.emulator_module)
        served: EmulatorHandle = module.serve(port=0, **fixtures.registrations, **options)
        return served

    def endpoint_env(self, backend: str, url: str) -> dict[str, str]:
        return {name: url for name in registry.spec(backend).endpoint_envs}

    def jobs(self, url: str) -> list[dict[str, Any]]:
        items = control(url, "GET", self.jobs_path)[self.jobs_path]
        return [
            {
                "backend": self.backends[0],
                "id": str(self.job_id(i)),
                "input": str(self.job_input(i)),
                "raw": i,
            }
            for i in items
        ]

    def job_id(self, job: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def job_input(self, job: Mapping[str, Any]) -> Any:
        return (job.get("parameters") or {}).get("inputFile")

    def launch_statuses(self, url: str) -> Counter[str]:
        recorded = control(url, "GET", "requests")["requests"]
        return Counter(
            f"{self.backends[0]} {r['status']}"
            for r in recorded
            if r["method"] == "POST" and self.is_launch_path(r["path"])
        )

    def is_launch_path(self, path: str) -> bool:
        return bool(self.launch_path.search(path))

    def harness(self, handle: EmulatorHandle, backend: str) -> Any:
        raise NotImplementedError

    def status_topics(self, url: str, project: str, pipelines: Iterable[Any]) -> list[str]:
        return []
