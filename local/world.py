"""The one assembler of the local world: every local service ``make demo``, ``make up``, the tests,
the benchmarks and the reliability rig run against, started and stopped in one place.

:class:`LocalWorld` starts what its caller asks for, in the order it asks: the Pub/Sub emulator,
fake-gcs-server (publishing object notifications to a topic), the local metadata server, the
backend emulators through their kits (:mod:`local.kits`), fault proxies in front of any service
(:mod:`local.faultproxy`), and functions-framework processes for ``main.py``'s functions. It
creates buckets, topics and subscriptions, says which environment variables point a function at
the world (:meth:`LocalWorld.function_env`), and :meth:`LocalWorld.close` stops everything it
started, functions first, leaving no process behind. :func:`config_doc` and :func:`pipeline_doc`
build the routing configs the suites serve.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

from handlers.backends import registry
from local.faultproxy import FaultProxy
from local.kits import EmulatorHandle, Fixtures, Timing, kit, kits_for
from local.metadata_server import MetadataServer
from local.services import (
    LOCAL_PROJECT,
    FakeGcs,
    FunctionServer,
    ManagedService,
    PubSubEmulator,
    ensure_bucket,
    ensure_pull_subscription,
    ensure_push_subscription,
    ensure_topic,
    live_processes_in_group,
    storage_client,
)

_S = TypeVar("_S", bound=ManagedService)
ROOT = Path(__file__).resolve().parents[1]
REGION = "europe-west1"


class LocalWorld:
    """Every service of one local world; a context manager (``close`` on exit, idempotent).

    ``work_dir`` holds the logs (and whatever the caller writes there, like the generated config);
    without one the world makes a temporary directory and removes it on close unless ``keep_dir``.
    ``functions_dir`` is where ``main.py`` and ``handlers/`` are served from.
    """

    def __init__(
        self,
        work_dir: Path | None = None,
        *,
        project: str = LOCAL_PROJECT,
        functions_dir: Path = ROOT,
        keep_dir: bool = False,
    ) -> None:
        self._own_dir = work_dir is None
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="local-world-"))
        self.keep_dir = keep_dir
        self.project = project
        self.functions_dir = functions_dir
        self.pubsub: PubSubEmulator | None = None
        self.gcs: FakeGcs | None = None
        self.metadata: MetadataServer | None = None
        self.emulators: dict[str, EmulatorHandle] = {}  # first backend name of each kit -> handle
        self.fixtures: dict[str, Fixtures] = {}  # same keys
        self.proxies: dict[str, FaultProxy] = {}
        self.functions: dict[str, FunctionServer] = {}
        self.services: list[ManagedService] = []  # every process started, in start order
        self.shutdown_seconds = 0.0
        self._closed = False

    @property
    def logs_dir(self) -> Path:
        return self.work_dir / "logs"

    # -- services -----------------------------------------------------------------------------------
    def start_pubsub(self, port: int | None = None) -> PubSubEmulator:
        """Google's Pub/Sub emulator (Java)."""
        self.pubsub = self._track(PubSubEmulator(log_dir=self.logs_dir))
        self.pubsub.start(port=port)
        return self.pubsub

    def start_gcs(
        self, port: int | None = None, *, notify_topic: str | None = None, bucket: str | None = None
    ) -> FakeGcs:
        """fake-gcs-server; with ``notify_topic`` (created here) it publishes a notification per
        object finalized (in ``bucket`` only, when given) to that topic of the Pub/Sub emulator."""
        self.gcs = self._track(FakeGcs(log_dir=self.logs_dir))
        if notify_topic is None:
            self.gcs.start(port=port)
            return self.gcs
        host = self._pubsub_host()
        ensure_topic(self.project, notify_topic, emulator_host=host)
        self.gcs.start(port=port, pubsub_host=host, project=self.project, topic=notify_topic, bucket=bucket)
        return self.gcs

    def start_metadata(self) -> MetadataServer:
        """The local GCE metadata server (what google-auth asks for the project and a token)."""
        self.metadata = MetadataServer(project=self.project).start()
        return self.metadata

    def start_backends(
        self,
        backends: Iterable[str],
        *,
        pipelines: Iterable[Any] = (),
        files: Mapping[str, Sequence[Path]] | None = None,
        timing: Timing | None = None,
        speed: float | None = None,
        notify_url: str | None = None,
        own_process: bool = False,
        **options: Any,
    ) -> dict[str, EmulatorHandle]:
        """One emulator per kit serving ``backends``, holding the fixtures ``pipelines`` (config
        pipelines) need, plus the entries of ``files`` (backend name -> fixture files).

        ``notify_url`` goes to the emulators that push status changes as CloudEvents
        (``registry.spec().push.event_type``; Data Fusion publishes to Pub/Sub instead);
        ``options`` go to every emulator's ``serve``."""
        files = files or {}
        pipelines = list(pipelines)
        started: dict[str, EmulatorHandle] = {}
        for name, found in kits_for(backends).items():
            paths = [p for b in found.backends for p in files.get(b, ())]
            fixtures = found.fixtures(pipelines, paths, timing)
            pushes = any(_pushes_to_url(b) for b in found.backends)
            extra = {"notify_url": notify_url} if notify_url and pushes else {}
            handle = found.serve(fixtures, speed=speed, own_process=own_process, **extra, **options)
            self.emulators[name], self.fixtures[name] = handle, fixtures
            started[name] = handle
        return started

    def enable_status_topics(self, pipelines: Iterable[Any] = ()) -> list[str]:
        """The topics the started emulators publish run status events to (Data Fusion's), created
        and turned on for ``pipelines``; route them to ``on_message``."""
        topics: list[str] = []
        for name, handle in self.emulators.items():
            found = kit(name).status_topics(handle.url, self.project, pipelines)
            if found:
                self.create(topics=found)
            topics += found
        return topics

    def add_fault_proxy(self, name: str, upstream: str, **settings: Any) -> FaultProxy:
        """A :class:`~local.faultproxy.FaultProxy` named ``name`` in front of ``upstream``."""
        proxy = FaultProxy(upstream, name=name, **settings).start()
        self.proxies[name] = proxy
        return proxy

    def add_function(
        self, target: str, env: Mapping[str, str], *, log_name: str | None = None
    ) -> FunctionServer:
        """A functions-framework process for ``main.py``'s ``target`` (not started yet); it replaces
        an earlier one of the same target (the platform starting a new instance)."""
        server = self._track(
            FunctionServer(
                self.functions_dir,
                target,
                signature_type="http" if target == "api" else "cloudevent",
                env=env,
                log_dir=self.logs_dir / (log_name or target),
            )
        )
        self.functions[target] = server
        return server

    def start_functions(
        self, servers: Iterable[FunctionServer], ports: Mapping[str, int] | None = None, timeout: float = 30
    ) -> None:
        """Start function processes in parallel (each one imports the functions)."""
        servers = list(servers)
        ports = ports or {}
        with cf.ThreadPoolExecutor(max(1, len(servers)), thread_name_prefix="world-start") as pool:
            jobs = [pool.submit(s.start, port=ports.get(s.target), timeout=timeout) for s in servers]
            for job in jobs:
                job.result()

    # -- resources ----------------------------------------------------------------------------------
    def create(
        self,
        *,
        buckets: Iterable[str] = (),
        topics: Iterable[str] = (),
        pull: Mapping[str, str] | None = None,
        push: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        """Buckets, topics, pull subscriptions (name -> topic) and push subscriptions (name ->
        (topic, endpoint)); creating what exists already is fine."""
        if self.gcs is not None:
            client = storage_client(self.gcs.url, project=self.project)
            for bucket in buckets:
                ensure_bucket(client, bucket)
        if topics or pull or push:
            host = self._pubsub_host()
            for topic in topics:
                ensure_topic(self.project, topic, emulator_host=host)
            for name, topic in (pull or {}).items():
                ensure_pull_subscription(self.project, topic, name, emulator_host=host)
            for name, (topic, endpoint) in (push or {}).items():
                ensure_push_subscription(self.project, topic, name, endpoint, emulator_host=host)

    # -- environment --------------------------------------------------------------------------------
    def backend_env(self, *, through_proxies: bool = False) -> dict[str, str]:
        """The endpoint variables of every backend served (through its fault proxy, named like its
        emulator, when asked) and the fixtures' fake credentials; every other endpoint override of
        the registry is ``""`` (unset), so one inherited from the caller's shell cannot leak in."""
        env = {name: "" for name in registry.endpoint_envs()}
        for name, handle in self.emulators.items():
            url = self.proxies[name].url if through_proxies else handle.url
            for backend in kit(name).backends:
                env.update(kit(name).endpoint_env(backend, url))
            env.update(self.fixtures[name].env)
        return env

    def function_env(self, *, through_proxies: bool = False, **extra: str) -> dict[str, str]:
        """What a function process needs to run in this world (``extra`` last)."""
        gcs = self.proxies["ledger"].url if through_proxies else self._gcs_url()
        return {
            **self.backend_env(through_proxies=through_proxies),
            "STORAGE_EMULATOR_HOST": gcs,
            "PUBSUB_EMULATOR_HOST": self._pubsub_host(),
            "GOOGLE_CLOUD_PROJECT": self.project,
            "PIPELINES_ANONYMOUS_AUTH": "true",
            "NO_PROXY": no_proxy(),
            "no_proxy": no_proxy(),
            **extra,
        }

    # -- introspection ------------------------------------------------------------------------------
    def process_groups(self) -> list[dict[str, Any]]:
        """Every started process group and its live pids (for tests and ``--pids-file``)."""
        groups = []
        for service in self.services:
            if service.pid is not None:
                label = service.target if isinstance(service, FunctionServer) else service.name
                groups.append(
                    {"name": label, "pgid": service.pid, "pids": live_processes_in_group(service.pid)}
                )
        return groups

    # -- stop ---------------------------------------------------------------------------------------
    def close(self) -> list[str]:
        """Stop everything; idempotent; tries every service and returns the problems met.

        Functions first (no more work is taken), in parallel; then proxies, emulators, the
        metadata server, fake-gcs-server and the Pub/Sub emulator, in parallel. Each process
        ``stop`` returns only when its process group is empty.
        """
        if self._closed:
            return []
        self._closed = True
        started = time.monotonic()
        problems: list[str] = []
        functions = [s for s in self.services if isinstance(s, FunctionServer)]
        others = [s for s in self.services if not isinstance(s, FunctionServer)]
        stoppers = [proxy.stop for proxy in self.proxies.values()]
        stoppers += [handle.shutdown for handle in self.emulators.values()]
        if self.metadata is not None:
            stoppers.append(self.metadata.stop)
        with cf.ThreadPoolExecutor(max_workers=8, thread_name_prefix="world-stop") as pool:
            list(pool.map(lambda s: _stop_quietly(s, problems), functions))
            jobs = [pool.submit(_stop_quietly, s, problems) for s in others]
            jobs += [pool.submit(_call_quietly, stop, problems) for stop in stoppers]
            cf.wait(jobs)
        self.shutdown_seconds = time.monotonic() - started
        if self._own_dir and not self.keep_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        return problems

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- helpers ------------------------------------------------------------------------------------
    def _track(self, service: _S) -> _S:
        self.services.append(service)
        return service

    def _pubsub_host(self) -> str:
        if self.pubsub is None:
            raise RuntimeError("start the Pub/Sub emulator first")
        return self.pubsub.host

    def _gcs_url(self) -> str:
        if self.gcs is None:
            raise RuntimeError("start fake-gcs-server first")
        return self.gcs.url


def _pushes_to_url(backend: str) -> bool:
    push = registry.spec(backend).push
    return push is not None and push.event_type is not None


def _stop_quietly(service: ManagedService, problems: list[str]) -> None:
    # A gunicorn worker sometimes deadlocks in its own exit after SIGINT (one thread left, waiting on
    # a lock); stop() then ends the group with SIGKILL after the grace, so keep that grace short.
    grace = 1.5 if isinstance(service, FunctionServer) else 3.0
    try:
        service.stop(grace=grace)
    except Exception as exc:
        problems.append(f"{service.name}: {exc}")


def _call_quietly(stop: Any, problems: list[str]) -> None:
    try:
        stop()
    except Exception as exc:
        problems.append(f"emulator: {exc}")


def no_proxy() -> str:
    """``NO_PROXY`` with loopback added: calls to the world never go through a proxy."""
    current = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
    return ",".join(x for x in (current, "127.0.0.1", "localhost") if x)


def pipeline_doc(backend: str, name: str, **fields: Any) -> dict[str, Any]:
    """A pipeline of the routing config on ``backend``: its kit's config fields, then ``fields``."""
    return {"backend": backend, **kit(backend).pipeline_fields(backend, name), **fields}


def config_doc(
    *,
    ledger_bucket: str,
    completion_topic: str,
    pipelines: Mapping[str, Any],
    triggers: Mapping[str, Any],
    project: str = LOCAL_PROJECT,
    ledger_prefix: str = "ledger/",
    lease: str = "10m",
    **settings: Any,
) -> dict[str, Any]:
    """A routing config document: the settings every local suite uses (``settings`` override them)."""
    return {
        "settings": {
            "project": project,
            "region": REGION,
            "ledger": {"bucket": ledger_bucket, "prefix": ledger_prefix, "lease": lease},
            "completion_topic": completion_topic,
            "max_event_age": "1h",
            **settings,
        },
        "pipelines": dict(pipelines),
        "triggers": dict(triggers),
    }


@contextlib.contextmanager
def environment(env: Mapping[str, str]) -> Any:
    """``os.environ`` updated with ``env`` for the block (empty values unset), restored afterwards
    (for callers that run the functions or the emulators' workers in this process)."""
    saved = dict(os.environ)
    try:
        for name, value in env.items():
            if value:
                os.environ[name] = value
            else:
                os.environ.pop(name, None)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
