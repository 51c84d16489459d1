"""Specification: faults the fault and crash suites do not inject, each with its defined behaviour
(docs/RELIABILITY.md, "Faults with a defined behaviour").

Real services only: the ledger in fake-gcs-server, completions on the Pub/Sub emulator, launches
on the Dataflow and Fabric emulators (their own fault rules, or a fault proxy in front of them).
Asserted from what reached the emulators, the ledger and the completion topic.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import time

import pytest

from handlers.backends.contract import RunState
from handlers.core.clients import RestPublisher, plain_session
from handlers.core.errors import RetryableError
from handlers.core.times import now
from handlers.follow.tracking import Tracker
from handlers.launch.ledger import Ledger
from handlers.launch.runtime import Runtime, make_runtime
from handlers.launch.service import LaunchService
from handlers.launch.store import GcsStore
from handlers.model.completions import completion_id
from handlers.model.events import parse_object_finalized
from local.faultproxy import FaultProxy
from local.kits.base import control
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


# --------------------------------------------------------------------------------------------
# 429, 503 and lost answers on the Pub/Sub publish of a completion
# --------------------------------------------------------------------------------------------
PUBLISH = r"^POST /v1/projects/[^/]+/topics/[^/]+:publish"


def test_faults_on_the_completion_publish_end_with_the_completion_published_under_one_id(world, dataflow):
    """429 and 503 (never applied) and a lost answer (applied, answer dropped) on the publish: every
    later sweep publishes again, with the same CloudEvent id and the same event, until one publish
    is answered; then the run leaves the active index and nothing more is published."""
    config = world.config(
        {"wc": {**dataflow.pipeline_options("wc"), "parameters": {"inputFile": "gs://{bucket}/{name}"}}},
        {"landing": {"storage": {"bucket": "landing"}, "pipeline": "wc"}},
        publish_lease="30s",
    )
    with FaultProxy(f"http://{world.pubsub_host}", name="pubsub") as proxy:
        runtime = make_runtime(config, publisher=RestPublisher(plain_session(), proxy.url))
        outcome = LaunchService(runtime).start(config.triggers["landing"], _object_event("pub.txt"))
        dataflow.advance(30)
        clock = [now()]

        def sweep():
            return Tracker(runtime, clock=lambda: clock[0]).sweep()

        for kind in ("429", "503", "lost"):
            proxy.set_faults({kind: 1.0}, match=PUBLISH, limit=1)
            report = sweep()
            assert outcome.run_key in report.errors or report.republished == [], (kind, report)
            assert proxy.counters()["injected"][kind] == 1
            clock[0] += dt.timedelta(seconds=31)  # the publish lease ends: the next sweep publishes
        proxy.clear_faults()
        sweep()
        clock[0] += dt.timedelta(seconds=31)
        assert sweep().checked == 0  # published and out of the active index

    events = _completions(world, 3)
    assert len(events) == 2  # the lost answer's message and the one answered
    assert {e["id"] for e in events} == {completion_id(outcome.run_key, "SUCCEEDED")}
    assert events[0] == events[1]
    (run,) = world.runs(runtime)
    assert run.completion["published"] is True and run.completion["republish_attempts"] == 3
    assert runtime.ledger.active_keys() == []


# --------------------------------------------------------------------------------------------
# 412 / 409 storms from the ledger, and a lost answer to the create of a failed run's record
# --------------------------------------------------------------------------------------------
LEDGER_CREATE = r"^POST /upload/storage/v1/b/[^/]+/o\?.*ifGenerationMatch=0"


def _ledger_behind(proxy: FaultProxy, config) -> Runtime:
    store = GcsStore(config.settings.ledger_bucket, base_url=proxy.url)
    return Runtime(config=config, ledger=Ledger(store, config.settings.ledger_prefix))


def test_a_lost_answer_to_the_create_of_a_failed_runs_record_still_announces_the_failure(
    world, dataflow, gcs_server
):
    """The LAUNCH_FAILED record is written but the answer is lost: the store's retry meets it (412).
    The run must still enter the active index, so the sweep announces it once."""
    config = world.config(
        {"wc": {**dataflow.pipeline_options("wc"), "parameters": {"owner": "{metadata.owner}"}}},
        {"landing": {"storage": {"bucket": "landing"}, "pipeline": "wc"}},
    )
    with FaultProxy(gcs_server.url, name="ledger") as proxy:
        proxy.set_faults({"lost": 1.0}, match=LEDGER_CREATE, limit=1)
        runtime = _ledger_behind(proxy, config)
        outcome = LaunchService(runtime).start(config.triggers["landing"], _object_event("no-owner.txt"))
        assert outcome.result == "failed" and proxy.counters()["injected"]["lost"] == 1
        proxy.clear_faults()
        assert Tracker(runtime).sweep().finished == {outcome.run_key: "LAUNCH_FAILED"}

    (completion,) = _completions(world, 1)
    assert completion["data"]["state"] == "LAUNCH_FAILED" and "metadata.owner" in completion["data"]["reason"]
    assert dataflow.launches() == []


def test_412_and_409_storms_on_the_ledger_end_with_one_job_and_one_completion_per_event(
    world, dataflow, gcs_server
):
    """Half the conditional writes answer 412 (another writer won) and half the writes 409: claims,
    compare-and-swaps and marker writes re-read or retry; every event still gets one job."""
    config = world.config(
        {"wc": {**dataflow.pipeline_options("wc"), "parameters": {"inputFile": "gs://{bucket}/{name}"}}},
        {"landing": {"storage": {"bucket": "landing"}, "pipeline": "wc"}},
    )
    names = [f"storm-{i}.txt" for i in range(6)]
    with FaultProxy(gcs_server.url, name="ledger", seed=3) as proxy:
        proxy.set_faults({"412": 0.5, "409": 0.3})
        runtime = _ledger_behind(proxy, config)
        service = LaunchService(runtime, sleep=lambda s: None)
        for name in names:
            for _ in range(20):  # the platform redelivers after a retryable failure
                try:
                    service.start(config.triggers["landing"], _object_event(name))
                    break
                except RetryableError:
                    continue
        dataflow.advance(30)
        tracker = Tracker(runtime)
        for _ in range(20):
            try:
                tracker.sweep()
            except RetryableError:
                pass
            if not runtime.ledger.active_keys():
                break
        injected = proxy.counters()["injected"]

    assert injected.get("412", 0) > 5 and injected.get("409", 0) > 5, injected
    launched = sorted(job["parameters"]["inputFile"] for job in dataflow.launches() if job["status"] == 200)
    assert launched == sorted(f"gs://landing/{n}" for n in names)
    completions = _completions(world, len(names))
    assert len(completions) == len(names) == len({c["id"] for c in completions})


# --------------------------------------------------------------------------------------------
# A lease shorter than a slow launch
# --------------------------------------------------------------------------------------------
def test_a_lease_shorter_than_a_slow_launch_never_lets_a_second_delivery_launch_the_run(world, dataflow):
    """ledger.lease 1s, a launch request that takes 3 s: before sending, the launching delivery
    renews its claim for as long as a request may take, so a redelivery arriving meanwhile waits
    for it and finds the job instead of sending a second launch request."""
    config = world.config(
        {"wc": {**dataflow.pipeline_options("wc"), "parameters": {"inputFile": "gs://{bucket}/{name}"}}},
        {"landing": {"storage": {"bucket": "landing"}, "pipeline": "wc"}},
        lease="1s",
    )
    runtime = world.runtime(config)
    control(
        dataflow.url,
        "POST",
        "faults",
        {"operation": dataflow.fault_operations["launch"], "latency_ms": 3000, "times": 1},
    )
    event = _object_event("slow.txt")
    trigger = config.triggers["landing"]
    with cf.ThreadPoolExecutor(2) as pool:
        first = pool.submit(LaunchService(runtime).start, trigger, event)
        time.sleep(1.6)  # the first claim's 1 s lease has ended by its own terms
        second = pool.submit(LaunchService(runtime, wait_for_owner_seconds=10).start, trigger, event)
        outcomes = sorted(str(f.result(timeout=30).result) for f in (first, second))

    assert outcomes == ["duplicate", "launched"]
    assert len(dataflow.launches()) == 1 and len(dataflow.jobs()) == 1


# --------------------------------------------------------------------------------------------
# The config changing between two deliveries of one event
# --------------------------------------------------------------------------------------------
def test_parameters_changed_between_two_deliveries_launch_what_the_first_claim_recorded(world, dataflow):
    """The first delivery claims the run (recording its rendered parameters) and gives up on a down
    backend; the config's parameters change; the redelivery takes the claim over and launches the
    record's parameters: one run, one identity, the parameters it was claimed with."""

    def config(template: str):
        return world.config(
            {"wc": {**dataflow.pipeline_options("wc"), "parameters": {"inputFile": template}}},
            {"landing": {"storage": {"bucket": "landing"}, "pipeline": "wc"}},
            launch_budget="1s",
        )

    before, after = config("gs://{bucket}/{name}"), config("gs://elsewhere/{name}")
    event = _object_event("changed.txt")
    dataflow.inject("launch", 503, times=1000)
    with pytest.raises(RetryableError):
        LaunchService(world.runtime(before)).start(before.triggers["landing"], event)
    control(dataflow.url, "DELETE", "faults")

    outcome = LaunchService(world.runtime(after)).start(after.triggers["landing"], event)

    assert outcome.result == "launched"
    (launch,) = [launch for launch in dataflow.launches() if launch["status"] == 200]
    assert launch["parameters"] == {"inputFile": "gs://landing/changed.txt"}


def test_a_trigger_renamed_between_two_deliveries_launches_once_when_it_says_its_former_name(world, dataflow):
    """A trigger's name is in its run keys. Renamed with ``renamed_from: <former name>``, it keeps
    them: a redelivery of an event the old name already launched is a duplicate, not a second run.
    Renamed without it, it is a new trigger, and the same event launches again (what the config
    said: a new trigger over the same objects)."""
    pipelines = {
        "wc": {**dataflow.pipeline_options("wc"), "parameters": {"inputFile": "gs://{bucket}/{name}"}}
    }
    before = world.config(pipelines, {"landing": {"storage": {"bucket": "landing"}, "pipeline": "wc"}})
    renamed = world.config(
        pipelines,
        {"landing-csv": {"storage": {"bucket": "landing"}, "pipeline": "wc", "renamed_from": "landing"}},
    )
    bare = world.config(pipelines, {"landing-csv": {"storage": {"bucket": "landing"}, "pipeline": "wc"}})
    event = _object_event("renamed.txt")

    first = LaunchService(world.runtime(before)).start(before.triggers["landing"], event)
    again = LaunchService(world.runtime(renamed)).start(renamed.triggers["landing-csv"], event)

    assert (first.result, again.result) == ("launched", "duplicate")
    assert again.run_key == first.run_key
    assert len([x for x in dataflow.launches() if x["status"] == 200]) == 1
    fresh = LaunchService(world.runtime(bare)).start(bare.triggers["landing-csv"], event)
    assert fresh.result == "launched" and fresh.run_key != first.run_key


def test_two_triggers_that_would_share_run_keys_are_refused_at_load(world, dataflow):
    from handlers.core.errors import ConfigError

    pipelines = {
        "wc": {**dataflow.pipeline_options("wc"), "parameters": {"inputFile": "gs://{bucket}/{name}"}}
    }
    with pytest.raises(ConfigError) as refused:
        world.config(
            pipelines,
            {
                "landing": {"storage": {"bucket": "landing"}, "pipeline": "wc"},
                "landing-csv": {
                    "storage": {"bucket": "landing"},
                    "pipeline": "wc",
                    "renamed_from": "landing",
                },
            },
        )
    assert "would share run keys with trigger 'landing'" in str(refused.value)


# --------------------------------------------------------------------------------------------
# Clock skew between instances
# --------------------------------------------------------------------------------------------
def test_an_instance_whose_clock_runs_past_a_live_lease_adopts_the_job_instead_of_starting_another(
    world, dataflow
):
    """Instance B's clock is 10 minutes ahead, so it reads instance A's live claim as expired and
    takes it over while A's start is on its way. Where find() is exact (a job name) the two starts
    meet as one job: B's answers 409 or A's does, and both deliveries follow that one job. (Where it
    guesses, Fabric, clocks must agree within the lease: docs/RELIABILITY.md.)"""
    config = world.config(
        {"wc": {**dataflow.pipeline_options("wc"), "parameters": {"inputFile": "gs://{bucket}/{name}"}}},
        {"landing": {"storage": {"bucket": "landing"}, "pipeline": "wc"}},
    )
    runtime = world.runtime(config)
    control(
        dataflow.url,
        "POST",
        "faults",
        {"operation": dataflow.fault_operations["launch"], "latency_ms": 2000, "times": 1},
    )
    event = _object_event("skew.txt")
    trigger = config.triggers["landing"]
    ahead = LaunchService(runtime, clock=lambda: now() + dt.timedelta(minutes=10))
    with cf.ThreadPoolExecutor(2) as pool:
        first = pool.submit(LaunchService(runtime).start, trigger, event)
        time.sleep(0.8)  # A's start is held by the emulator
        second = pool.submit(ahead.start, trigger, event)
        outcomes = [f.result(timeout=30) for f in (first, second)]

    assert len(dataflow.jobs()) == 1
    assert {o.job_id for o in outcomes} == {dataflow.jobs()[0]["id"]}
