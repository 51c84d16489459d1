"""Specification: faults the fault and crash suites do not inject, each with its defined behaviour
(docs/RELIABILITY.md, "Faults with a defined behaviour").

Real services only: the ledger in fake-gcs-server, completions on the Pub/Sub emulator, launches
on the Dataflow and Fabric emulators (their own fault rules, or a fault proxy in front of them).
Asserted from what reached the emulators, the ledger and the completion topic.
"""

from __future__ import annotations

import datetime as dt

import pytest

from handlers.backends.contract import RunState
from handlers.core.errors import RetryableError
from handlers.core.times import now
from handlers.follow.tracking import Tracker
from handlers.launch.service import LaunchService
from handlers.model.events import parse_object_finalized
from tests.support import events as ev


def _object_event(name: str):
    return parse_object_finalized(ev.storage_finalized("landing", name))


def _completions(world, expect: int):
    return [
        c["event"]
        for c in world.completions(expect=expect, timeout=5)
        if c["event"]["type"] == "io.eventpipelines.run.completed.v1"
    ]


# --------------------------------------------------------------------------------------------
# A backend down for longer than max_event_age
# --------------------------------------------------------------------------------------------
def test_a_backend_down_longer_than_max_event_age_ends_the_claim_launch_failed_and_announces_it(
    world, dataflow
):
    config = world.config(
        {"wc": {**dataflow.pipeline_options("wc"), "parameters": {"inputFile": "gs://{bucket}/{name}"}}},
        {"landing": {"storage": {"bucket": "landing"}, "pipeline": "wc"}},
        launch_budget="1s",
        max_event_age="10m",
        lease="1m",
    )
    runtime = world.runtime(config)
    dataflow.inject("launch", 503, times=1000)  # Dataflow answers 503 to every launch

    # Every delivery gives up (the platform would redeliver until the event is too old) ...
    with pytest.raises(RetryableError):
        LaunchService(runtime).start(config.triggers["landing"], _object_event("down.txt"))
    (run,) = world.runs(runtime)
    assert run.state == RunState.CLAIMED and "503" in (run.error or {}).get("message", "")
    assert dataflow.jobs() == [] and {launch["status"] for launch in dataflow.launches()} == {503}

    # ... within max_event_age the sweep leaves the claim for a redelivery ...
    assert Tracker(runtime).sweep().finished == {}
    assert Tracker(runtime, clock=lambda: now() + dt.timedelta(minutes=10)).sweep().finished == {}
    assert world.runs(runtime)[0].state == RunState.CLAIMED

    # ... and once no redelivery can come (max_event_age plus a lease later) it ends the run.
    later = now() + dt.timedelta(minutes=11, seconds=1)
    assert Tracker(runtime, clock=lambda: later).sweep().finished == {run.run_key: "LAUNCH_FAILED"}
    (ended,) = world.runs(runtime)
    assert ended.state == RunState.LAUNCH_FAILED and ended.job is None
    (completion,) = _completions(world, 1)
    data = completion["data"]
    assert data["state"] == "LAUNCH_FAILED" and data["run_key"] == run.run_key
    assert "max_event_age" in data["reason"] and "503" in data["reason"]
    assert runtime.ledger.active_keys() == []
    assert Tracker(runtime, clock=lambda: later).sweep().finished == {}
    assert len(_completions(world, 2)) == 1
