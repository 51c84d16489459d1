"""Specification, end to end on the local world: a Fabric Dataflow Gen2 named in the config, kept in
the repo, synced, and run by events, its parameters checked before anything runs.

The config names the workspace and the dataflow by display name and keeps the dataflow's definition
(a copy of examples/fabric/sales-dataflow); the launch service, the ledger (fake-gcs-server) and the
completion topic (the Pub/Sub emulator) are the real ones. A file whose metadata carries a batch size
the dataflow cannot take ends LAUNCH_FAILED with the reason and no Fabric run; a good one runs through
the dataflow execute path with typed parameters and ends SUCCEEDED.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from handlers.backends.contract import SyncChange
from handlers.follow.tracking import Tracker
from handlers.launch.service import LaunchService
from handlers.model.events import parse_object_finalized
from local.kits.fabric import FabricHarness
from tests.support import events as ev

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fabric" / "sales-dataflow"


def test_a_dataflow_named_in_the_config_is_synced_checked_and_run(world, fabric_emulator, tmp_path):
    fabric = FabricHarness(fabric_emulator)
    fabric.reset()
    ws_id, ws_name = str(uuid.uuid4()), f"Sales {uuid.uuid4().hex[:8]}"
    fabric.control("workspaces", {"id": ws_id, "displayName": ws_name})
    shutil.copytree(EXAMPLE, tmp_path / "sales-dataflow")
    pipelines = {
        "sales": {
            "backend": "fabric",
            "workspace": ws_name,
            "item": "sales-dataflow",
            "definition": "sales-dataflow/",
            "parameters": {
                "Region": "{metadata.region|emea}",
                "Day": "{event_time:%Y-%m-%d}",
                "BatchSize": "{metadata.batch|500}",
            },
        }
    }
    triggers = {"landing": {"storage": {"bucket": "sales-landing"}, "pipeline": "sales"}}
    backend = fabric.backend()
    runtime = world.runtime(world.config(pipelines, triggers), fabric=backend)
    # GIVEN sync created the dataflow from the repo's files
    step = backend.plan_sync(runtime.config.pipelines["sales"], str(tmp_path))
    assert step is not None and step.change is SyncChange.CREATE
    dataflow = backend.apply_sync(step)
    trigger = runtime.config.triggers["landing"]
    service = LaunchService(runtime)
    # WHEN a file arrives whose batch size is not an Integer
    service.start(
        trigger,
        parse_object_finalized(ev.storage_finalized("sales-landing", "a.csv", metadata={"batch": "many"})),
    )
    # AND a good one
    service.start(
        trigger,
        parse_object_finalized(
            ev.storage_finalized("sales-landing", "b.csv", metadata={"batch": "250", "region": "amer"})
        ),
    )
    fabric.advance(120)
    Tracker(runtime).sweep()
    done = {c["event"]["data"]["parameters"]["BatchSize"]: c for c in world.completions(expect=2)}
    # THEN the bad one failed before anything ran, saying why
    bad = done["many"]
    assert bad["attributes"]["state"] == "LAUNCH_FAILED"
    assert "'BatchSize': 'many' is not an Integer" in bad["event"]["data"]["reason"]
    # AND the good one ran once, on the dataflow execute path, with typed parameters, and succeeded
    assert done["250"]["attributes"]["state"] == "SUCCEEDED"
    runs = [r for r in fabric.requests_received() if r["method"] == "POST" and "/jobs/execute/" in r["path"]]
    assert [r["path"] for r in runs] == [
        f"/v1/workspaces/{ws_id}/dataflows/{dataflow}/jobs/execute/instances"
    ]
    sent = {p["parameterName"]: p["value"] for p in runs[0]["body"]["executionData"]["parameters"]}
    assert sent["BatchSize"] == 250 and sent["Region"] == "amer"
    [instance] = [i for i in fabric.instances() if i["jobType"] == "Execute"]
    assert instance["parameters"]["BatchSize"] == 250 and instance["definitionVersion"] == 1
