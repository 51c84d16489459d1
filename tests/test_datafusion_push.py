"""Specification: Data Fusion pushes each pipeline run's status changes to Pub/Sub (6.7+, the
instance's ``eventPublishConfig``), and ``on_message`` completes the run at once: no sweep needed.

The event is CDAP's ``ProgramStatusEvent`` as its ``ProgramStatusEventPublisher`` writes it (Gson,
no message attributes). It only says which run to look at: the run is named by the
``eventpipelines.run_key`` runtime argument in ``userArgs``, and its state is then read from CDAP,
so a forged event completes nothing. Real services: the CDAP emulator publishes to the Pub/Sub
emulator, which pushes to a functions-framework ``on_message``; completions are pulled from the
completion topic.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from handlers.backends.contract import RunState, SyncChange
from handlers.backends.datafusion import DataFusion, parse_status_event, recognises_status_event
from handlers.core.errors import EventError
from handlers.launch.service import LaunchService
from handlers.model.events import parse_object_finalized
from local.emulators.base import ServerHandle
from local.emulators.cdap import serve
from local.services import LOCAL_PROJECT, FunctionServer, delete_subscription, ensure_push_subscription
from tests.support import events as ev
from tests.support.emulator_client import control
from tests.support.world import wait_until

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
INSTANCE = "events-local"
IGNORED = '"message": "job was not launched by this project: ignored"'
APP = "enrich-word-counts"


@pytest.fixture(scope="module")
def cdap(pubsub_emulator: Any) -> Iterator[ServerHandle]:
    """A CDAP emulator that publishes status events to the session's Pub/Sub emulator."""
    handle = serve(require_auth=False, pubsub_emulator_host=pubsub_emulator.host)
    yield handle
    handle.shutdown()


@pytest.fixture(autouse=True)
def _fresh(cdap: ServerHandle) -> None:
    control(cdap, "POST", "reset")
    fast = {"pending_seconds": 0.3, "starting_seconds": 0.3, "run_seconds": 0.6}
    control(cdap, "POST", "settings", {"deploy_behavior": fast})


def pipeline_doc(cdap: ServerHandle) -> dict[str, Any]:
    return {
        "backend": "datafusion",
        "instance": INSTANCE,
        "app": APP,
        "definition": "datafusion/enrich-word-counts.json",
        "parameters": {"counts": "gs://{bucket}/{name}", "day": "{event_time:%Y-%m-%d}"},
    }


TRIGGERS = {"landing": {"storage": {"bucket": "landing"}, "pipeline": "enrich"}}


def enable_event_publishing(cdap: ServerHandle, topic: str) -> dict[str, Any]:
    """What deploy does: instances.patch with updateMask=eventPublishConfig."""
    answer = requests.patch(
        f"{cdap.url}/v1/projects/{LOCAL_PROJECT}/locations/europe-west1/instances/{INSTANCE}",
        params={"updateMask": "eventPublishConfig"},
        json={"eventPublishConfig": {"enabled": True, "topic": f"projects/{LOCAL_PROJECT}/topics/{topic}"}},
        timeout=5,
    )
    answer.raise_for_status()
    operation: dict[str, Any] = answer.json()
    return operation


def deploy_from_json(cdap: ServerHandle, runtime: Any) -> str:
    backend = DataFusion(session=requests.Session(), endpoint=cdap.url)
    step = backend.plan_sync(runtime.config.pipelines["enrich"], str(EXAMPLES))
    assert step is not None and step.change == SyncChange.CREATE
    return backend.apply_sync(step)


def launch(runtime: Any, name: str = "counts/2026-12-06.txt") -> str:
    event = parse_object_finalized(ev.storage_finalized("landing", name))
    outcome = LaunchService(runtime).start(runtime.config.triggers["landing"], event)
    assert outcome.result == "launched", outcome
    return str(outcome.run_key)


def published(cdap: ServerHandle) -> list[dict[str, Any]]:
    return list(control(cdap, "GET", "events")["events"])


def cdap_requests(cdap: ServerHandle, suffix: str = "") -> list[dict[str, Any]]:
    return [
        r
        for r in control(cdap, "GET", "requests")["requests"]
        if "/runs" in r["path"] and suffix in r["path"]
    ]


def status_event(run_key: str | None, status: str = "COMPLETED", **details: Any) -> dict[str, Any]:
    user_args = {"counts": "gs://landing/x"} | ({"eventpipelines.run_key": run_key} if run_key else {})
    return {
        "publishTime": 1796570023351,
        "version": "v1",
        "instanceName": INSTANCE,
        "projectName": LOCAL_PROJECT,
        "programStatusEventDetails": {
            "runID": "9a1964c6-f187-11f1-970b-05dd867ae929",
            "programName": "DataPipelineWorkflow",
            "applicationName": APP,
            "namespace": "default",
            "status": status,
            "eventTime": 1796570013343,
            "userArgs": user_args,
            "systemArgs": {"logical.start.time": "1796570013343"},
            "workflowId": "",
            **details,
        },
    }


# ------------------------------------------------------------------------------------------ the event


def test_the_event_names_the_run_by_the_run_key_runtime_argument() -> None:
    pushed = parse_status_event({}, status_event("storage-landing-abc"))
    assert pushed is not None
    assert (pushed.run_key, pushed.job_id, pushed.raw_state) == (
        "storage-landing-abc",
        "9a1964c6-f187-11f1-970b-05dd867ae929",
        "COMPLETED",
    )


def test_a_message_is_recognised_by_its_data_since_the_writer_sets_no_attributes() -> None:
    assert recognises_status_event({}, status_event("k"))
    assert not recognises_status_event({}, {"order": 1})
    assert not recognises_status_event({"programStatusEventDetails": "x"}, None)


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"programStatusEventDetails": "nope"}, "data.programStatusEventDetails"),
        (status_event("k", status="DONE"), "data.programStatusEventDetails.status"),
        (status_event("k", status="completed"), "data.programStatusEventDetails.status"),
        (status_event("k", runID=""), "data.programStatusEventDetails.runID"),
        (status_event("k", userArgs="eventpipelines.run_key=k"), "data.programStatusEventDetails.userArgs"),
    ],
)
def test_a_malformed_event_is_an_event_error_naming_its_field(event: dict[str, Any], field: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_status_event({}, event)
    assert caught.value.context()["field"] == field


@pytest.mark.parametrize(
    "event",
    [
        status_event(None),  # a run started without our key: someone else's
        status_event("k", programName="phase-1"),  # a Spark phase inside the workflow, not the pipeline
    ],
)
def test_events_about_runs_or_programs_that_are_not_ours_name_no_run(event: dict[str, Any]) -> None:
    assert parse_status_event({}, event) is None


# ------------------------------------------------------------------------------------------ on_message


def test_a_forged_event_for_a_run_key_not_in_the_ledger_changes_nothing(
    world: Any, cdap: ServerHandle, call: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAFUSION_API_ENDPOINT", cdap.url)
    config = world.write_config({"enrich": pipeline_doc(cdap)}, TRIGGERS)
    forged = status_event("storage-landing-" + "f" * 16)
    assert call("on_message", ev.pubsub_message("cdf-status", forged), config).status_code == 200
    runtime = world.runtime(world.config({"enrich": pipeline_doc(cdap)}, TRIGGERS))
    assert world.runs(runtime) == []
    assert world.completions(timeout=0.5) == []
    assert cdap_requests(cdap) == []  # not even asked: there is no such run


def test_a_forged_completed_event_for_a_run_still_running_does_not_complete_it(
    world: Any, cdap: ServerHandle, call: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a run launched and still RUNNING in CDAP (its run takes a minute)
    monkeypatch.setenv("DATAFUSION_API_ENDPOINT", cdap.url)
    control(
        cdap,
        "POST",
        "settings",
        {"deploy_behavior": {"pending_seconds": 0, "starting_seconds": 0, "run_seconds": 60}},
    )
    config = world.write_config({"enrich": pipeline_doc(cdap)}, TRIGGERS)
    runtime = world.runtime(world.config({"enrich": pipeline_doc(cdap)}, TRIGGERS))
    deploy_from_json(cdap, runtime)
    key = launch(runtime)
    # WHEN an event claims it COMPLETED
    forged = status_event(key)
    assert call("on_message", ev.pubsub_message("cdf-status", forged), config).status_code == 200
    # THEN CDAP was asked, said RUNNING, and the run is still active with no completion
    assert cdap_requests(cdap, "/runs/")
    assert runtime.ledger.get(key).state == RunState.RUNNING
    assert key in runtime.ledger.active_keys()
    assert world.completions(timeout=0.5) == []


@pytest.mark.parametrize("status", ["DONE", "SUCCEEDED", ""])
def test_an_event_with_a_status_cdap_does_not_have_is_acknowledged_and_changes_nothing(
    world: Any, cdap: ServerHandle, call: Any, monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    monkeypatch.setenv("DATAFUSION_API_ENDPOINT", cdap.url)
    config = world.write_config({"enrich": pipeline_doc(cdap)}, TRIGGERS)
    event = status_event("storage-landing-" + "a" * 16, status=status)
    assert call("on_message", ev.pubsub_message("cdf-status", event), config).status_code == 200
    assert cdap_requests(cdap) == []
    assert world.completions(timeout=0.5) == []


# ------------------------------------------------------------------------------------------ end to end


def test_a_pipeline_deployed_from_its_json_is_completed_by_its_pushed_status_without_any_sweep(
    world: Any,
    cdap: ServerHandle,
    local_world: Any,
    tmp_path: Path,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN on_message served by functions-framework, pushed to by a subscription on the status topic
    monkeypatch.setenv("DATAFUSION_API_ENDPOINT", cdap.url)
    topic = f"{unique_name}-cdf-status"
    local_world.create(topics=[topic])
    config = world.write_config({"enrich": pipeline_doc(cdap)}, TRIGGERS)
    runtime = world.runtime(world.config({"enrich": pipeline_doc(cdap)}, TRIGGERS))
    env = {
        k: os.environ[k] for k in ("STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")
    }
    env |= {
        "PIPELINES_CONFIG": str(config),
        "DATAFUSION_API_ENDPOINT": cdap.url,
        "PIPELINES_ANONYMOUS_AUTH": "true",
    }
    subscription = f"{unique_name}-cdf-status-push"
    with FunctionServer(ROOT, "on_message", env=env, log_dir=tmp_path).start() as server:
        push_url = f"{server.url}/projects/{LOCAL_PROJECT}/topics/{topic}"
        ensure_push_subscription(LOCAL_PROJECT, topic, subscription, push_url)
        try:
            # AND the instance publishing its pipeline events to that topic (what deploy enables)
            operation = enable_event_publishing(cdap, topic)
            assert operation["done"] and operation["response"]["eventPublishConfig"]["enabled"]
            # WHEN the pipeline is deployed from the example JSON and launched
            version = deploy_from_json(cdap, runtime)
            key = launch(runtime)
            # THEN its completion is published, by on_message alone: this test runs no sweep
            wait_until(lambda: not runtime.ledger.active_keys(), timeout=30, what="the run completed")
            completed_at = time.time()
            # (the inner program's last event may still be on its way: Pub/Sub keeps no order)
            wait_until(
                lambda: server.log_text().count(IGNORED) >= 3, timeout=15, what="the inner program's events"
            )
        finally:
            delete_subscription(LOCAL_PROJECT, subscription)
        log = server.log_text()
    (completion,) = [
        c for c in world.completions(expect=1) if c["event"]["type"] == "io.eventpipelines.run.completed.v1"
    ]
    assert completion["attributes"]["run_key"] == key
    assert completion["event"]["data"]["state"] == RunState.SUCCEEDED
    assert runtime.ledger.get(key).state == RunState.SUCCEEDED
    # AND the events CDAP published name the run, its deployed app and its arguments
    sent = [e for e in published(cdap) if e["topic"] == f"projects/{LOCAL_PROJECT}/topics/{topic}"]
    assert all(e["published"] for e in sent)
    events = [
        e for e in sent if e["event"]["programStatusEventDetails"]["programName"] == "DataPipelineWorkflow"
    ]
    statuses = [e["event"]["programStatusEventDetails"]["status"] for e in events]
    assert statuses == ["PENDING", "STARTING", "RUNNING", "COMPLETED"], events
    # the events of the Spark program inside the workflow reached on_message too, and named no run
    assert len(sent) - len(events) == 3
    assert log.count(IGNORED) >= 3, log  # (at least once: Pub/Sub may deliver one twice)
    details = events[-1]["event"]["programStatusEventDetails"]
    assert details["applicationName"] == APP and details["userArgs"]["eventpipelines.run_key"] == key
    assert details["userArgs"]["counts"] == "gs://landing/counts/2026-12-06.txt"
    assert json.loads(
        requests.get(f"{cdap.url}/api/v3/namespaces/default/apps/{APP}", timeout=5).json()["configuration"]
    )
    assert (
        requests.get(f"{cdap.url}/api/v3/namespaces/default/apps/{APP}", timeout=5).json()["appVersion"]
        == version
    )
    assert '"message": "job status changed"' in log and '"backend_state": "COMPLETED"' in log, log
    # AND the completion followed CDAP's COMPLETED event within seconds (the sweep runs every minutes)
    # (the emulator's clock is the wall clock here: nothing advanced it)
    latency = completed_at - events[-1]["event"]["publishTime"] / 1000
    assert 0 <= latency < 10, latency
