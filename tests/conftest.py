"""Shared pytest fixtures: real local services over loopback.

Session-scoped: ``local_project_env`` (autouse), ``local_world`` (the one assembler,
:mod:`local.world`) and the services it starts on demand: ``pubsub_emulator``, ``gcs_server``,
``dataflow_emulator``, ``cdap_emulator``, ``fabric_emulator``.
Function-scoped: ``gcs`` (a storage client for fake-gcs-server), ``unique_name``.

The Pub/Sub emulator is required: when it is missing the fixtures FAIL (never skip) with install
instructions, so CI cannot go green without it.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from google.cloud import storage

# Make the repository root importable (``deploy``, ``handlers``) however pytest is launched.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from local.services import (  # noqa: E402
    GCS_NOTIFICATION_TOPIC,
    LOCAL_PROJECT,
    FakeGcs,
    PubSubEmulator,
    ServiceError,
    storage_client,
)
from local.world import LocalWorld  # noqa: E402


def _start_or_fail(what: str, start: Callable[[], object]) -> None:
    """Run ``start``; turn a ServiceError into a test failure showing only its message (no skip)."""
    try:
        start()
    except ServiceError as err:
        problem = str(err)
    else:
        return
    pytest.fail(f"{what} unavailable: {problem}", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def local_project_env() -> Iterator[str]:
    """GOOGLE_CLOUD_PROJECT=local-project for the whole session (restored afterwards)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GOOGLE_CLOUD_PROJECT", LOCAL_PROJECT)
        yield LOCAL_PROJECT


@pytest.fixture(scope="session")
def local_world() -> Iterator[LocalWorld]:
    """The session's local world (:mod:`local.world`): each service starts when a test first needs it."""
    with LocalWorld() as world:
        yield world


@pytest.fixture(scope="session")
def pubsub_emulator(local_world: LocalWorld) -> Iterator[PubSubEmulator]:
    """Google's Pub/Sub emulator, started once; PUBSUB_EMULATOR_HOST is set while it runs."""
    _start_or_fail("Pub/Sub emulator", local_world.start_pubsub)
    assert local_world.pubsub is not None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PUBSUB_EMULATOR_HOST", local_world.pubsub.host)
        yield local_world.pubsub


@pytest.fixture(scope="session")
def gcs_server(local_world: LocalWorld, pubsub_emulator: PubSubEmulator) -> Iterator[FakeGcs]:
    """fake-gcs-server, started once, publishing OBJECT_FINALIZE notifications to
    ``projects/local-project/topics/gcs-notifications``; STORAGE_EMULATOR_HOST is set while it runs.
    """
    _start_or_fail("fake-gcs-server", lambda: local_world.start_gcs(notify_topic=GCS_NOTIFICATION_TOPIC))
    assert local_world.gcs is not None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", local_world.gcs.url)
        yield local_world.gcs


@pytest.fixture
def gcs(gcs_server: FakeGcs) -> storage.Client:
    """A google-cloud-storage client talking to the session's fake-gcs-server."""
    return storage_client(gcs_server.url)


@pytest.fixture
def unique_name() -> str:
    """A short unique lowercase id (letter first, 11 chars): valid as a bucket, topic or subscription name."""
    return "t" + uuid.uuid4().hex[:10]


# ---------------------------------------------------------------------------------------------
# Pipeline backends and the test world (lead's fixtures)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def dataflow_emulator(local_world: LocalWorld, gcs_server: FakeGcs) -> Iterator[object]:
    """The project's Dataflow v1b3 emulator; DATAFLOW_API_ENDPOINT points at it for the session."""
    handle = local_world.start_backends(["dataflow"])["dataflow"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DATAFLOW_API_ENDPOINT", handle.url)
        mp.setenv("PIPELINES_ANONYMOUS_AUTH", "true")
        yield handle


@pytest.fixture
def dataflow(dataflow_emulator: object) -> Iterator[object]:
    """A clean Dataflow emulator (jobs, faults and requests forgotten) behind the harness interface."""
    from local.kits.dataflow import DataflowHarness

    harness = DataflowHarness(dataflow_emulator)
    harness.reset()
    yield harness
    harness.reset()


@pytest.fixture
def world(
    local_world: LocalWorld,
    gcs: storage.Client,
    unique_name: str,
    tmp_path: Path,
    dataflow_emulator: object,
) -> Iterator[object]:
    """A fresh ledger bucket and completion topic; builds configs and runtimes against the emulators."""
    from handlers.core import clients
    from handlers.launch.runtime import reset_default
    from tests.support.world import World

    clients.reset()
    reset_default()
    yield World(local_world, gcs, unique_name, tmp_path)
    reset_default()


@pytest.fixture
def call(monkeypatch: pytest.MonkeyPatch) -> Callable[..., object]:
    """Deliver a CloudEvent to an entry point of main.py through functions-framework, in-process."""
    import functions_framework
    from cloudevents.conversion import to_structured

    from handlers.launch.runtime import reset_default

    def deliver(target: str, event: object, config_path: Path) -> object:
        monkeypatch.setenv("PIPELINES_CONFIG", str(config_path))
        reset_default()
        app = functions_framework.create_app(target, str(Path(_ROOT) / "main.py"), "cloudevent")
        headers, body = to_structured(event)
        return app.test_client().post("/", headers=headers, data=body)

    return deliver


@pytest.fixture(scope="session")
def cdap_emulator(local_world: LocalWorld) -> object:
    """The project's Data Fusion / CDAP emulator, started once (checking bearer tokens, like Data Fusion)."""
    return local_world.start_backends(["datafusion"], require_auth=True)["datafusion"]


@pytest.fixture(scope="session")
def fabric_emulator(local_world: LocalWorld) -> object:
    """The project's Microsoft Fabric + Entra ID emulator, started once."""
    return local_world.start_backends(["fabric"])["fabric"]


@pytest.fixture(scope="session")
def dataproc_emulator(local_world: LocalWorld) -> object:
    """The project's Dataproc Serverless batches emulator, started once."""
    return local_world.start_backends(["dataproc"])["dataproc"]


@pytest.fixture(params=["dataflow", "dataflow-flex", "datafusion", "fabric", "dataproc"])
def harness(request: pytest.FixtureRequest, dataflow_emulator: object) -> Iterator[object]:
    """Each backend's emulator behind one harness interface (its kit's, :mod:`local.kits`)."""
    from handlers.backends import registry
    from local.kits import kit

    name = request.param
    emulators = {
        "dataflow": "dataflow_emulator",
        "datafusion": "cdap_emulator",
        "fabric": "fabric_emulator",
        "dataproc": "dataproc_emulator",
    }
    handle = request.getfixturevalue(emulators[kit(name).backends[0]])
    h = kit(name).harness(handle, name)
    h.google_auth = registry.spec(name).auth == "google"  # real google-auth token refresh on 401
    h.reset()
    yield h
    h.reset()
