"""Specification: one contract, four backends.

Every backend (Dataflow classic, Dataflow flex, Data Fusion/CDAP, Fabric) is driven through the same
launch service, ledger, tracker and completion topic, against its own local emulator. The harnesses
(the kits' harnesses, local/kits/*.py) only know how to steer each emulator; every assertion is on what the
emulator received or on the published completion events.
"""

from __future__ import annotations

import time

from handlers.backends.contract import JobStatus, LaunchRequest, RunState
from handlers.core.times import from_iso
from handlers.follow.tracking import Tracker
from handlers.launch.service import LaunchService
from tests.support import events as ev


def setup(world, harness, *, name: str = "contract", mode: str = "batch", timeout: str | None = None):
    pipeline = {
        **harness.pipeline_options(name, mode=mode),
        "mode": mode,
        "parameters": {"input": "gs://{bucket}/{name}", "day": "{event_time:%Y-%m-%d}"},
    }
    if timeout:
        pipeline["timeout"] = timeout
    config = world.config({name: pipeline}, {"landing": {"storage": {"bucket": "landing"}, "pipeline": name}})
    runtime = world.runtime(config, **{harness.name: harness.backend()})
    return runtime, config.triggers["landing"]


def object_event(name: str):
    from handlers.model.events import parse_object_finalized

    return parse_object_finalized(ev.storage_finalized("landing", name))


def launch(runtime, trigger, name: str = "in/data.csv"):
    outcome = LaunchService(runtime).start(trigger, object_event(name))
    return outcome, runtime.ledger.get(outcome.run_key)


def test_launch_sends_the_rendered_parameters(world, harness):
    runtime, trigger = setup(world, harness)
    outcome, run = launch(runtime, trigger)
    assert outcome.result == "launched" and run.job["id"]
    (received,) = [x for x in harness.launches() if x["status"] in (200, 202)]
    assert received["parameters"]["input"] == "gs://landing/in/data.csv"
    assert received["parameters"]["day"] == run.parameters["day"]
    assert harness.runs_started() == 1


def test_a_run_goes_to_success_and_is_announced_once(world, harness):
    runtime, trigger = setup(world, harness)
    outcome, _ = launch(runtime, trigger)
    status = runtime.backend(harness.name).status(runtime.ledger.get(outcome.run_key).job_ref)
    assert isinstance(status, JobStatus) and not status.state.terminal
    harness.advance(60)
    assert Tracker(runtime).sweep().finished == {outcome.run_key: "SUCCEEDED"}
    (c,) = world.completions(expect=1)
    assert c["attributes"]["backend"] == harness.name and c["event"]["data"]["job"]["id"]


def test_a_failure_carries_its_reason(world, harness):
    runtime, trigger = setup(world, harness)
    harness.set_outcome("contract", succeed=False, reason="Table sales_raw does not exist")
    outcome, _ = launch(runtime, trigger)
    harness.advance(60)
    assert Tracker(runtime).sweep().finished == {outcome.run_key: "FAILED"}
    (c,) = world.completions(expect=1)
    reason = c["event"]["data"]["reason"]
    assert reason and ("sales_raw" in reason or (harness.name == "datafusion" and "FAILED" in reason))


def test_cancel_stops_the_job_and_the_run_ends_cancelled(world, harness):
    runtime, trigger = setup(world, harness)
    outcome, run = launch(runtime, trigger)
    harness.advance(1.5)
    backend = runtime.backend(harness.name)
    backend.cancel(run.job_ref)
    harness.advance(30)
    assert backend.status(run.job_ref).state is RunState.CANCELLED
    assert Tracker(runtime).sweep().finished == {outcome.run_key: "CANCELLED"}


def test_a_timed_out_run_is_cancelled_through_the_backend(world, harness):
    import datetime as dt

    runtime, trigger = setup(world, harness, timeout="1m")
    outcome, run = launch(runtime, trigger)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
    assert Tracker(runtime, clock=lambda: later).sweep().finished == {outcome.run_key: "TIMED_OUT"}
    harness.advance(30)
    assert runtime.backend(harness.name).status(run.job_ref).state is RunState.CANCELLED


def test_an_uncertain_start_does_not_launch_twice(world, harness):
    runtime, trigger = setup(world, harness)
    harness.inject("launch", 503, after_effect=True)  # started, then the answer is lost
    outcome, run = launch(runtime, trigger)
    assert outcome.result in ("launched", "adopted") and run.job["id"]
    assert harness.runs_started() == 1


def test_throttling_with_retry_after_is_honoured(world, harness):
    runtime, trigger = setup(world, harness)
    harness.inject("launch", 429, times=1, retry_after=1)
    t0 = time.monotonic()
    outcome, _ = launch(runtime, trigger)
    assert outcome.result == "launched" and time.monotonic() - t0 >= 1.0
    assert next(x["status"] for x in harness.launches()) == 429
    assert harness.runs_started() == 1


def test_an_expired_token_is_refreshed(world, harness):
    runtime, trigger = setup(world, harness)
    _outcome, run = launch(runtime, trigger)
    assert harness.expire_credentials()
    # WHEN the next call carries the expired token, the backend answers 401 ...
    assert runtime.backend(harness.name).status(run.job_ref).state in (RunState.PENDING, RunState.RUNNING)
    # ... and the client fetched a new token and repeated the call, which succeeded
    statuses = [r["status"] for r in harness.requests_received()]
    assert 401 in statuses and statuses[-1] == 200


def test_find_returns_the_job_a_run_started(world, harness):
    runtime, trigger = setup(world, harness)
    _outcome, run = launch(runtime, trigger)
    pipeline = runtime.config.pipelines["contract"]
    request = LaunchRequest(
        run.run_key, run.job_name, pipeline, run.parameters, requested_at=from_iso(run.created_at)
    )
    found = runtime.backend(harness.name).find(request)
    assert found is not None and found.job_id == run.job["id"]


def test_a_crashed_launch_whose_job_already_finished_is_adopted_not_relaunched(world, harness):
    from handlers.core.times import iso, now
    from handlers.launch.ledger import Run
    from handlers.route.identity import RunKey

    runtime, trigger = setup(world, harness)
    event = object_event("in/crash.csv")
    key = str(RunKey.of(trigger.name, event.identity))
    pipeline = runtime.config.pipelines["contract"]
    # GIVEN an invocation that claimed the run, started the job, and crashed before recording it
    stale = runtime.ledger.create(
        Run(
            key,
            trigger.name,
            "contract",
            harness.name,
            RunState.CLAIMED,
            RunKey.parse(key).job_name("contract"),
            owner="crashed",
            lease_until=iso(now()),
            attempts=1,
        )
    )
    runtime.backend(harness.name).launch(
        LaunchRequest(
            key,
            stale.job_name,
            pipeline,
            {"input": "gs://landing/in/crash.csv", "day": "2026-11-22"},
            labels={
                "pipeline-trigger": trigger.name,
                "pipeline": "contract",
                "run-key-hash": key.rsplit("-", 1)[1],
            },
            requested_at=from_iso(stale.created_at),
        )
    )
    harness.advance(600)  # ... and the job has finished since
    # WHEN the platform redelivers the event
    outcome = LaunchService(runtime).start(trigger, event)
    # THEN the finished job is found in any state and recorded; nothing new starts
    assert outcome.result == "adopted"
    assert harness.runs_started() == 1
    assert runtime.ledger.get(key).job["id"] == outcome.job_id
