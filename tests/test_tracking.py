"""Specification: every run is followed to its end and announced exactly once on the completion topic.

Real services only: runs launch on the Dataflow emulator, the ledger lives in fake-gcs-server,
completion events are pulled back from the Pub/Sub emulator and validated against the committed
JSON Schema (handlers/schemas/run-completed.v1.json).
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import os
from pathlib import Path

import pytest
import requests
from cloudevents.http import from_http

from handlers.backends.contract import RunState
from handlers.follow.tracking import Tracker
from handlers.launch.service import LaunchService
from handlers.model.completions import completion_id
from local.services import FunctionServer
from tests.support import events as ev
from tests.support.world import wait_until

ROOT = Path(__file__).resolve().parents[1]


def setup_runs(
    world,
    dataflow,
    *,
    count: int = 1,
    mode: str = "batch",
    timeout: str | None = None,
    succeed: bool = True,
    reason: str = "",
    success_after: str | None = None,
):
    """Launch ``count`` runs of pipeline "wc" from storage events; return (runtime, run keys)."""
    opts = dataflow.pipeline_options("wc", mode=mode)
    if not succeed:
        dataflow.set_outcome("wc", succeed=False, reason=reason)
    pipeline = {
        **opts,
        "mode": mode,
        "parameters": {"inputFile": "gs://{bucket}/{name}"},
        "outputs": {"counts": "gs://out/{stem}/counts.txt", "echo": "{params.inputFile}"},
    }
    if timeout:
        pipeline["timeout"] = timeout
    if success_after:
        pipeline["success_after"] = success_after
    config = world.config({"wc": pipeline}, {"landing": {"storage": {"bucket": "landing"}, "pipeline": "wc"}})
    runtime = world.runtime(config)
    service = LaunchService(runtime)
    keys = []
    for i in range(count):
        outcome = service.start(config.triggers["landing"], _object_event(f"file-{i}.txt", generation=i + 1))
        assert outcome.result == "launched"
        keys.append(outcome.run_key)
    return runtime, keys


def _object_event(name: str, generation: int = 1):
    from handlers.model.events import parse_object_finalized

    return parse_object_finalized(ev.storage_finalized("landing", name, generation=generation))


def events_of(world, expect: int, timeout: float = 5.0):
    return [
        c
        for c in world.completions(expect=expect, timeout=timeout)
        if c["event"]["type"] == "io.eventpipelines.run.completed.v1"
    ]


def test_a_successful_run_publishes_one_completion_with_the_full_contract(world, dataflow):
    runtime, (key,) = setup_runs(world, dataflow)
    tracker = Tracker(runtime)
    # WHILE the job runs, sweeps publish nothing
    assert tracker.sweep().finished == {}
    dataflow.advance(30)
    report = tracker.sweep()
    assert report.finished == {key: "SUCCEEDED"}
    (c,) = events_of(world, 1)
    event, attrs = c["event"], c["attributes"]
    assert attrs == {
        "content-type": "application/cloudevents+json; charset=UTF-8",
        "event_type": "run.completed",
        "pipeline": "wc",
        "state": "SUCCEEDED",
        "trigger": "landing",
        "run_key": key,
        "backend": "dataflow",
        "schema_version": "1",
    }
    # a generic CloudEvents consumer (the cloudevents SDK) reads the message as the event it is:
    # the Pub/Sub binding's structured mode, told by the content-type attribute
    read = from_http({"content-type": attrs["content-type"]}, json.dumps(event).encode())
    assert (read["id"], read["type"], read["source"], read["subject"]) == (
        event["id"],
        "io.eventpipelines.run.completed.v1",
        event["source"],
        f"runs/{key}",
    )
    assert read["dataschema"] == event["dataschema"] and read.data == event["data"]
    data = event["data"]
    assert event["id"] == completion_id(key, "SUCCEEDED") and event["subject"] == f"runs/{key}"
    assert data["parameters"] == {"inputFile": "gs://landing/file-0.txt"}
    assert data["outputs"] == {"counts": "gs://out/file-0/counts.txt", "echo": "gs://landing/file-0.txt"}
    assert data["event"]["bucket"] == "landing" and data["event"]["generation"] == "1"
    assert data["job"]["id"] == dataflow.jobs()[0]["id"] and "console.cloud.google.com" in data["job"]["url"]
    assert data["backend_state"] == "JOB_STATE_DONE" and data["duration_seconds"] >= 0
    # AND the run left the active index: later sweeps read nothing and publish nothing more
    assert runtime.ledger.active_keys() == []
    assert tracker.sweep().checked == 0
    assert len(events_of(world, 2, timeout=1)) == 1


def test_a_failed_run_carries_the_jobs_error_text(world, dataflow):
    runtime, (key,) = setup_runs(world, dataflow, succeed=False, reason="Division by zero in ParseFn")
    dataflow.advance(30)
    assert Tracker(runtime).sweep().finished == {key: "FAILED"}
    (c,) = events_of(world, 1)
    assert c["attributes"]["state"] == "FAILED"
    assert "Division by zero in ParseFn" in c["event"]["data"]["reason"]
    assert (
        runtime.ledger.get(key).error["message"].startswith("Division by zero")
        or "Division by zero" in runtime.ledger.get(key).error["message"]
    )


def test_a_run_past_its_timeout_is_cancelled_and_reported_timed_out(world, dataflow):
    runtime, (key,) = setup_runs(world, dataflow, timeout="1m", mode="batch")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    assert Tracker(runtime, clock=lambda: later).sweep().finished == {key: "TIMED_OUT"}
    cancels = [
        r
        for r in requests.get(f"{dataflow.url}/_emulator/requests").json()["requests"]
        if r["method"] == "PUT"
    ]
    assert [c["body"]["requestedState"] for c in cancels] == ["JOB_STATE_CANCELLED"]
    (c,) = events_of(world, 1)
    assert c["attributes"]["state"] == "TIMED_OUT" and "timeout" in c["event"]["data"]["reason"]


def test_a_streaming_run_past_its_timeout_is_drained(world, dataflow):
    runtime, (key,) = setup_runs(world, dataflow, timeout="1m", mode="streaming", success_after="1h")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    dataflow.advance(10)  # RUNNING, but not for an hour yet
    assert Tracker(runtime, clock=lambda: later).sweep().finished == {key: "TIMED_OUT"}
    puts = [
        r["body"]["requestedState"]
        for r in requests.get(f"{dataflow.url}/_emulator/requests").json()["requests"]
        if r["method"] == "PUT"
    ]
    assert puts == ["JOB_STATE_DRAINED"]


def test_a_streaming_pipeline_succeeds_when_it_reaches_running(world, dataflow):
    runtime, (key,) = setup_runs(world, dataflow, mode="streaming")
    tracker = Tracker(runtime)
    assert tracker.sweep().finished == {}  # still starting
    dataflow.advance(5)
    assert tracker.sweep().finished == {key: "SUCCEEDED"}
    assert dataflow.jobs()[0]["currentState"] == "JOB_STATE_RUNNING"  # the job itself keeps running


def test_four_sweeps_at_once_publish_one_event_per_run(world, dataflow):
    runtime, keys = setup_runs(world, dataflow, count=6)
    dataflow.advance(30)
    with cf.ThreadPoolExecutor(max_workers=4) as pool:
        reports = list(pool.map(lambda _: Tracker(runtime).sweep(), range(4)))
    events = events_of(world, 6)
    assert sorted(c["attributes"]["run_key"] for c in events) == sorted(keys)
    assert len({c["event"]["id"] for c in events}) == 6
    assert sum(len(r.finished) for r in reports) == 6  # each run finished by exactly one sweep


def test_a_crash_between_the_ledger_write_and_the_publish_is_recovered_with_the_same_id(world, dataflow):
    runtime, (key,) = setup_runs(world, dataflow)
    dataflow.advance(30)

    class Crash(Exception):
        pass

    def crash(_run):
        raise Crash("process died before publishing")

    report = Tracker(runtime, before_publish=crash).sweep()
    assert key in report.errors
    assert runtime.ledger.get(key).completion["published"] is False
    assert events_of(world, 1, timeout=1) == []
    # a sweep right away leaves it alone (the publish lease is still held) ...
    assert Tracker(runtime).sweep().finished == {}
    # ... and once the lease has passed, the next sweep publishes it, once, with the deterministic id
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)
    assert Tracker(runtime, clock=lambda: later).sweep().finished == {key: "SUCCEEDED"}
    (c,) = events_of(world, 1)
    assert c["event"]["id"] == completion_id(key, "SUCCEEDED")
    assert runtime.ledger.active_keys() == []


def test_a_launch_failure_publishes_a_launch_failed_completion(world, dataflow):
    dataflow.register("strict", params=[{"name": "required", "label": "r", "helpText": "r"}])
    config = world.config(
        {"strict": {"backend": "dataflow", "template": dataflow.template_path("strict")}},
        {"landing": {"storage": {"bucket": "landing"}, "pipeline": "strict"}},
    )
    runtime = world.runtime(config)
    outcome = LaunchService(runtime).start(config.triggers["landing"], _object_event("x.txt"))
    assert outcome.result == "failed"
    assert Tracker(runtime).sweep().finished == {outcome.run_key: "LAUNCH_FAILED"}
    (c,) = events_of(world, 1)
    assert c["event"]["data"]["job"] is None and c["event"]["data"]["reason"]


def test_a_sweep_that_runs_out_of_time_leaves_the_rest_for_the_next(world, dataflow):
    runtime, keys = setup_runs(world, dataflow, count=3)
    dataflow.advance(30)
    first = Tracker(runtime).sweep(budget_seconds=0)
    assert first.finished == {} and first.left_for_next == 3
    assert sorted(Tracker(runtime).sweep().finished) == sorted(keys)


def test_checks_still_queued_when_the_budget_runs_out_are_reported_as_left_for_the_next_sweep(
    world, dataflow
):
    runtime, keys = setup_runs(world, dataflow, count=3)
    dataflow.advance(30)
    # every status call takes 0.5 s; one worker; the budget ends during the first call
    requests.post(
        f"{dataflow.url}/_emulator/faults",
        json={"operation": "jobs.get", "latency_ms": 500, "times": -1},
        timeout=5,
    ).raise_for_status()
    first = Tracker(runtime).sweep(budget_seconds=0.3, workers=1)
    assert first.checked == 1 and first.left_for_next == 2
    assert sorted(runtime.ledger.active_keys()) == sorted(set(keys) - set(first.finished))
    requests.delete(f"{dataflow.url}/_emulator/faults", timeout=5)
    assert sorted({*first.finished, *Tracker(runtime).sweep().finished}) == sorted(keys)


def test_an_unreachable_backend_is_retried_by_later_sweeps_without_losing_the_run(world, dataflow):
    runtime, (key,) = setup_runs(world, dataflow)
    dataflow.advance(30)
    dataflow.inject("status", 503, times=-1)
    report = Tracker(runtime).sweep()
    assert key in report.errors and runtime.ledger.active_keys() == [key]
    requests.delete(f"{dataflow.url}/_emulator/faults", timeout=5)
    assert Tracker(runtime).sweep().finished == {key: "SUCCEEDED"}


def test_push_and_poll_racing_publish_one_event(world, dataflow, tmp_path):
    # GIVEN on_job_status served by functions-framework, and the Dataflow emulator pushing statusChanged to it
    opts = dataflow.pipeline_options("wc")
    config_path = world.write_config(
        {"wc": {**opts, "parameters": {"inputFile": "gs://{bucket}/{name}"}}},
        {"landing": {"storage": {"bucket": "landing"}, "pipeline": "wc"}},
    )
    env = {
        k: os.environ[k]
        for k in (
            "STORAGE_EMULATOR_HOST",
            "PUBSUB_EMULATOR_HOST",
            "DATAFLOW_API_ENDPOINT",
            "PIPELINES_ANONYMOUS_AUTH",
            "GOOGLE_CLOUD_PROJECT",
        )
    }
    env["PIPELINES_CONFIG"] = str(config_path)
    runtime = world.runtime(
        world.config({"wc": opts}, {"landing": {"storage": {"bucket": "landing"}, "pipeline": "wc"}})
    )
    with FunctionServer(ROOT, "on_job_status", env=env, log_dir=tmp_path).start() as server:
        requests.post(
            f"{dataflow.url}/_emulator/notify", json={"url": server.url}, timeout=5
        ).raise_for_status()
        try:
            outcomes = [
                LaunchService(runtime).start(runtime.config.triggers["landing"], _object_event(f"r{i}.txt"))
                for i in range(3)
            ]
            # WHEN the jobs finish, pushes arrive while two sweeps poll at the same moment
            dataflow.advance(30)
            with cf.ThreadPoolExecutor(max_workers=2) as pool:
                list(pool.map(lambda _: Tracker(runtime).sweep(), range(2)))
            wait_until(lambda: not runtime.ledger.active_keys(), timeout=20, what="all runs completed")
            wait_until(
                lambda: all(
                    n["delivered"]
                    for n in requests.get(f"{dataflow.url}/_emulator/notifications").json()["notifications"]
                ),
                timeout=20,
                what="every push delivered",
            )
        finally:
            requests.post(f"{dataflow.url}/_emulator/notify", json={"url": None}, timeout=5)
        log = server.log_text()
    # THEN exactly one completion per run
    events = events_of(world, 3)
    assert sorted(c["attributes"]["run_key"] for c in events) == sorted(o.run_key for o in outcomes), log
    assert '"message": "job status changed"' in log  # the push path really ran


def test_the_push_path_alone_completes_a_run_without_any_sweep(world, dataflow, call):
    runtime, (key,) = setup_runs(world, dataflow)
    config_path = world.write_config(
        {"wc": {**dataflow.pipeline_options("wc")}},
        {"landing": {"storage": {"bucket": "landing"}, "pipeline": "wc"}},
    )
    dataflow.advance(30)
    job = dataflow.jobs()[0]
    from cloudevents.http import CloudEvent

    status_event = CloudEvent(
        {
            "type": "google.cloud.dataflow.job.v1beta3.statusChanged",
            "source": "//dataflow.googleapis.com/projects/local-project/locations/europe-west1",
            "subject": f"jobs/{job['id']}",
            "id": "evt-1",
        },
        {"payload": {k: v for k, v in job.items() if k != "parameters"}},
    )
    assert call("on_job_status", status_event, config_path).status_code == 200
    assert runtime.ledger.get(key).state == RunState.SUCCEEDED
    (c,) = events_of(world, 1)
    assert c["attributes"]["run_key"] == key


@pytest.mark.parametrize("labels", [{}, {"pipeline-trigger": "someone-else"}])
def test_status_events_of_foreign_jobs_are_ignored(world, dataflow, call, labels):
    config_path = world.write_config(
        {"wc": {**dataflow.pipeline_options("wc")}},
        {"landing": {"storage": {"bucket": "landing"}, "pipeline": "wc"}},
    )
    from cloudevents.http import CloudEvent

    event = CloudEvent(
        {
            "type": "google.cloud.dataflow.job.v1beta3.statusChanged",
            "source": "//dataflow.googleapis.com/projects/p/locations/l",
            "id": "x",
        },
        {"payload": {"id": "j", "name": "n", "currentState": "JOB_STATE_DONE", "labels": labels}},
    )
    assert call("on_job_status", event, config_path).status_code == 200


def test_a_lost_answer_to_the_deciding_write_still_publishes_at_once(world, dataflow):
    """fake-gcs-server cannot lose an answer, so the fault is injected at the storage client boundary:
    the write reaches the (real) bucket, then the client reports the 412 its own retry would get."""
    runtime, (key,) = setup_runs(world, dataflow)
    dataflow.advance(30)
    store = runtime.ledger.store
    real_replace = store.replace
    lost = {"done": False}

    def replace_then_lose_the_answer(name, data, generation):
        new_generation = real_replace(name, data, generation)
        if not lost["done"] and b'"decided_by"' in data:
            lost["done"] = True
            from handlers.launch.ledger import Conflict

            raise Conflict(name)
        return new_generation

    store.replace = replace_then_lose_the_answer
    assert Tracker(runtime).sweep().finished == {key: "SUCCEEDED"}
    assert lost["done"]
    (c,) = events_of(world, 1)
    assert c["event"]["id"] == completion_id(key, "SUCCEEDED")


def test_a_run_whose_backend_cannot_be_asked_for_long_is_reported_as_stalled(world, dataflow):
    import io

    from handlers.core import logs

    runtime, (key,) = setup_runs(world, dataflow)
    dataflow.inject("status", 503, times=-1)
    captured = io.StringIO()
    logs.set_stream(captured)
    try:
        Tracker(runtime).sweep()  # just launched: unreachable, but not stalled yet
        assert "run stalled" not in captured.getvalue()
        much_later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
        Tracker(runtime, clock=lambda: much_later).sweep()
    finally:
        logs.set_stream(None)
        requests.delete(f"{dataflow.url}/_emulator/faults", timeout=5)
    stalled = [line for line in captured.getvalue().splitlines() if "run stalled" in line]
    assert len(stalled) == 1 and key in stalled[0] and '"severity": "WARNING"' in stalled[0]
    assert runtime.ledger.active_keys() == [key]  # still tracked: nothing is lost
