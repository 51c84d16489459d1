"""Specification: the Fabric emulator answers what a real Fabric client expects.

``msfabricpysdkcore`` (Microsoft Fabric's community Python SDK, pinned in requirements-dev.txt) is
driven against the emulator unchanged: its requests to api.fabric.microsoft.com and
login.microsoftonline.com are redirected to loopback at the transport (local.kits.fabric.
fabric_hosts_redirected). It finds a workspace by name, creates a dataflow from a definition
(a long-running operation), reads the definition back, discovers its parameters and runs it.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from handlers.backends.fabric import definitions
from local.emulators.base import ServerHandle
from local.emulators.fabric import serve
from local.kits.fabric import FabricHarness, fabric_hosts_redirected
from tests.support.emulator_client import emulator_fixture

msfabric = pytest.importorskip("msfabricpysdkcore")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fabric" / "sales-dataflow"
TENANT = "7b7b7b7b-0000-4000-8000-00000000000b"
SP_APP = "sdk-client-app"
SECRET = "sdk-client-secret-not-real"

emulator = emulator_fixture(serve)


@pytest.fixture
def fabric(emulator: ServerHandle) -> Iterator[FabricHarness]:
    harness = FabricHarness(emulator)
    harness.reset()
    harness.control("settings", {"page_size": 2, "lro_seconds": 0})
    harness.control(
        "clients",
        {
            "tenant": TENANT,
            "client_id": SP_APP,
            "client_secret": SECRET,
            "service_principal_allowed_for_dataflows": True,
        },
    )
    yield harness
    harness.reset()


def test_the_sdk_creates_finds_reads_and_runs_a_dataflow(fabric: FabricHarness) -> None:
    ws_id, ws_name = str(uuid.uuid4()), f"SDK workspace {uuid.uuid4().hex[:6]}"
    for n in range(3):  # more workspaces than one page, so the SDK follows continuationUri
        fabric.control("workspaces", {"id": str(uuid.uuid4()), "displayName": f"other {n}"})
    fabric.control("workspaces", {"id": ws_id, "displayName": ws_name})
    definition = definitions.encode(definitions.read_folder(EXAMPLE))
    with fabric_hosts_redirected(fabric.url) as redirected:
        client = msfabric.FabricClientCore(tenant_id=TENANT, client_id=SP_APP, client_secret=SECRET)
        workspace = client.get_workspace_by_name(ws_name)
        assert workspace.id == ws_id
        created = client.create_dataflow(ws_id, "sdk-flow", definition=definition)
        flows = client.list_dataflows(ws_id)
        assert [f.display_name for f in flows] == ["sdk-flow"] and flows[0].id == created.id
        got = client.get_dataflow_definition(ws_id, created.id)
        parameters = client.discover_dataflow_parameters(ws_id, created.id)
        response = client.run_on_demand_execute(ws_id, created.id, wait_for_completion=False)
    # THEN every call went to the emulator, and it answered as the SDK expects
    assert redirected and all(
        u.startswith(("https://api.fabric", "https://login.microsoft")) for u in redirected
    )
    parts = {p["path"]: base64.b64decode(p["payload"]) for p in got["definition"]["parts"]}
    assert parts["mashup.pq"] == (EXAMPLE / "mashup.pq").read_bytes()
    assert [(p["name"], p["type"], p["isRequired"]) for p in parameters] == [
        ("Region", "String", True),
        ("Day", "Date", True),
        ("BatchSize", "Integer", False),
    ]
    assert response.status_code == 202 and "/jobs/instances/" in response.headers["Location"]
    [instance] = fabric.instances()
    assert instance["jobType"] == "Execute" and instance["principal"]["client_id"] == SP_APP
