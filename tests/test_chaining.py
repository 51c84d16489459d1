"""Specification: completion events launch the next pipelines, exactly once, including fan-ins.

The completion messages are the real ones: pulled from the completion topic on the Pub/Sub
emulator, then delivered (several times) to ``on_message`` through functions-framework.
"""

from __future__ import annotations

import json

from handlers.follow.tracking import Tracker
from handlers.launch.service import LaunchService
from tests.support import events as ev


def _object_event(name: str, generation: int = 1):
    from handlers.model.events import parse_object_finalized

    return parse_object_finalized(ev.storage_finalized("landing", name, generation=generation))


def as_delivery(world, completion: dict):
    """The completion message as on_message receives it from an Eventarc Pub/Sub trigger."""
    return ev.pubsub_message(
        world.completion_topic,
        json.dumps(completion["event"]).encode(),
        attributes=completion["attributes"],
        message_id=completion["message_id"],
    )


def chain_config(world, dataflow, *, fan_in: bool = False):
    pipelines = {
        "ingest": {
            **dataflow.pipeline_options("ingest"),
            "parameters": {"input": "gs://{bucket}/{name}", "day": "{event_time:%Y-%m-%d}"},
            "outputs": {"table": "raw.{stem}"},
        },
        "enrich": {
            **dataflow.pipeline_options("enrich"),
            "parameters": {
                "source": "{upstream.outputs.table}",
                "day": "{upstream.parameters.day}",
                "upstream": "{upstream.run_key}",
            },
        },
    }
    triggers = {
        "landing": {"storage": {"bucket": "landing", "prefix": "in/"}, "pipeline": "ingest"},
        "after-ingest": {"completion": {"upstream": "ingest"}, "pipeline": "enrich"},
    }
    if fan_in:
        pipelines["audit"] = {
            **dataflow.pipeline_options("audit"),
            "parameters": {"day": "{event_time:%Y-%m-%d}"},
        }
        pipelines["report"] = {
            **dataflow.pipeline_options("report"),
            "parameters": {
                "key": "{join_key}",
                "a": "{upstreams.enrich.parameters.source}",
                "b": "{upstreams.audit.run_key}",
            },
        }
        triggers["audit-landing"] = {
            "storage": {"bucket": "landing", "prefix": "audit/"},
            "pipeline": "audit",
        }
        triggers["report-when-both"] = {
            "completion": {"upstream": ["enrich", "audit"], "join_key": "{upstream.parameters.day}"},
            "pipeline": "report",
        }
    path = world.write_config(pipelines, triggers)
    runtime = world.runtime(world.config(pipelines, triggers))
    return path, runtime


def finish_all(world, dataflow, runtime, expect: int):
    dataflow.advance(30)
    Tracker(runtime).sweep()
    return world.completions(expect=expect)


def jobs_of(dataflow, pipeline: str):
    return [j for j in dataflow.jobs() if j["name"].startswith(pipeline + "-")]


def test_a_completion_delivered_five_times_launches_the_next_pipeline_once(world, dataflow, call):
    path, runtime = chain_config(world, dataflow)
    LaunchService(runtime).start(runtime.config.triggers["landing"], _object_event("in/orders.csv"))
    (done,) = finish_all(world, dataflow, runtime, expect=1)
    assert done["attributes"]["pipeline"] == "ingest" and done["attributes"]["state"] == "SUCCEEDED"
    for _ in range(5):
        assert call("on_message", as_delivery(world, done), path).status_code == 200
    (job,) = jobs_of(dataflow, "enrich")
    day = done["event"]["data"]["parameters"]["day"]
    assert job["parameters"] == {
        "source": "raw.orders",
        "day": day,
        "upstream": done["attributes"]["run_key"],
    }
    # and the chained run's own completion names its trigger
    completions = finish_all(world, dataflow, runtime, expect=2)
    assert [c["attributes"]["pipeline"] for c in completions] == ["ingest", "enrich"]
    assert completions[1]["event"]["data"]["event"]["kind"] == "completion"


def test_a_failed_upstream_does_not_launch_a_success_only_chain(world, dataflow, call):
    path, runtime = chain_config(world, dataflow)
    dataflow.set_outcome("ingest", succeed=False, reason="bad input")
    LaunchService(runtime).start(runtime.config.triggers["landing"], _object_event("in/x.csv"))
    (failed,) = finish_all(world, dataflow, runtime, expect=1)
    assert failed["attributes"]["state"] == "FAILED"
    assert call("on_message", as_delivery(world, failed), path).status_code == 200
    assert jobs_of(dataflow, "enrich") == []


def test_fan_in_launches_once_when_all_upstreams_succeeded_despite_duplicates(world, dataflow, call):
    path, runtime = chain_config(world, dataflow, fan_in=True)
    service = LaunchService(runtime)
    service.start(runtime.config.triggers["landing"], _object_event("in/day.csv"))
    service.start(runtime.config.triggers["audit-landing"], _object_event("audit/day.csv"))
    first = finish_all(world, dataflow, runtime, expect=2)  # ingest + audit
    by = {c["attributes"]["pipeline"]: c for c in first}
    # ingest's completion launches enrich; audit's arrives at the fan-in (twice: duplicates)
    for _ in range(2):
        call("on_message", as_delivery(world, by["ingest"]), path)
        call("on_message", as_delivery(world, by["audit"]), path)
    assert jobs_of(dataflow, "report") == []  # enrich has not completed yet
    second = finish_all(world, dataflow, runtime, expect=3)
    enrich = next(c for c in second if c["attributes"]["pipeline"] == "enrich")
    for _ in range(3):
        assert call("on_message", as_delivery(world, enrich), path).status_code == 200
        assert call("on_message", as_delivery(world, by["audit"]), path).status_code == 200
    (report,) = jobs_of(dataflow, "report")
    day = by["ingest"]["event"]["data"]["parameters"]["day"]
    assert report["parameters"] == {"key": day, "a": "raw.day", "b": by["audit"]["attributes"]["run_key"]}


def test_fan_in_never_launches_for_a_key_where_an_upstream_failed_and_says_so(world, dataflow, call):
    path, runtime = chain_config(world, dataflow, fan_in=True)
    dataflow.set_outcome("audit", succeed=False, reason="audit broke")
    service = LaunchService(runtime)
    service.start(runtime.config.triggers["landing"], _object_event("in/d.csv"))
    service.start(runtime.config.triggers["audit-landing"], _object_event("audit/d.csv"))
    first = {c["attributes"]["pipeline"]: c for c in finish_all(world, dataflow, runtime, expect=2)}
    assert first["audit"]["attributes"]["state"] == "FAILED"
    call("on_message", as_delivery(world, first["audit"]), path)
    call("on_message", as_delivery(world, first["ingest"]), path)
    enrich = next(
        c
        for c in finish_all(world, dataflow, runtime, expect=4)
        if c["attributes"].get("pipeline") == "enrich"
    )
    for _ in range(2):
        call("on_message", as_delivery(world, enrich), path)
        call("on_message", as_delivery(world, first["audit"]), path)
    assert jobs_of(dataflow, "report") == []
    abandoned = [c for c in world.completions() if c["attributes"].get("event_type") == "join.abandoned"]
    assert len(abandoned) == 1
    data = abandoned[0]["event"]["data"]
    assert data["trigger"] == "report-when-both" and data["abandoned_by"]["pipeline"] == "audit"
